"""Where an artifact can run on this host: on its target device, through the target's own software path with the
compute on another device (emulation), or not at all.

Emulation today: the NPU. The NPU plugin ships in the openvino wheel; its compiler does not. NPUW (the plugin's
partitioning layer) can place every partition on the CPU, so openvino-genai's NPU pipelines (static shapes,
prefill/generate split, MAX_PROMPT_LEN) run for real while the arithmetic is the CPU's. That exercises genai's NPU
path and NPUW, not the NPU compiler, NPU numerics or NPU speed.
"""

from __future__ import annotations

import functools

from stages.core.runtime import available_devices, device_present, log
from stages.core.schema import device_kind

NPUW_ON_CPU = {"NPU_USE_NPUW": "YES", "NPUW_DEVICES": "CPU", "NPUW_ONLINE_PIPELINE": "NONE"}
# The CPU plugin quantizes activations on the fly for int4/int8 weights, differently for NPUW's static partitions
# than for a dynamic CPU graph: off on both sides of an NPU-path vs CPU-path comparison (measured: with it, greedy
# SmolLM2 int4 output diverged on 2 of 4 prompts; without it, identical, logits within 1.2e-4).
EXACT_CPU = {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}
EMULATIONS = {"NPU": {"label": "NPU (NPUW on CPU)", "compute": "CPU", "options": {**NPUW_ON_CPU, **EXACT_CPU}}}
CPU_PATH = "cpu-path"  # an NPU target's artifact run on the CPU plugin too (EXACT_CPU), to compare the two paths


@functools.cache
def emulation_available(kind: str) -> bool:
    """Whether `kind`'s plugin can run here with its compute on the CPU (a one-op model compiled through it)."""
    if kind not in EMULATIONS or not device_present(EMULATIONS[kind]["compute"]):
        return False
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([1, 4], ov.Type.f32, name="x")
    model = ov.Model([ops.relu(x)], [x], "probe")
    try:
        compiled = ov.Core().compile_model(model, kind, NPUW_ON_CPU)
        compiled.create_infer_request().infer({"x": np.ones((1, 4), np.float32)})
        return True
    except RuntimeError as e:
        log.info("%s emulation unavailable: %s", kind, str(e).splitlines()[0] if str(e) else e)
        return False


def emulation(device: str) -> dict:
    """How an emulated target runs (for records and cards)."""
    spec = EMULATIONS[device_kind(device)]
    return {
        "label": spec["label"],
        "compute": spec["compute"],
        "covers": "the target's openvino-genai pipeline and plugin path (NPU: static shapes, NPUW partitioning)",
        "not_covered": "the device compiler, its numerics and its speed",
    }


def run_level(device: str, emulate: list[str]) -> tuple[str, str, dict, str]:
    """(level, device string to run on, plugin options, reason when not run) for a target device."""
    if device_present(device):
        return "validated", device, {}, ""
    kind = device_kind(device)
    if kind in emulate and device == kind and emulation_available(kind):
        return "emulated", device, dict(EMULATIONS[kind]["options"]), ""
    return (
        "not_validated",
        device,
        {},
        (f"device {device} is not present on this host (available: {', '.join(available_devices()) or 'none'})"),
    )


def host_devices(emulate: tuple[str, ...] = tuple(EMULATIONS)) -> dict:
    """What the devices stage records: device kinds present, and which absent ones can be emulated."""
    present = available_devices()
    return {
        "devices": present,
        "emulated": {
            k: EMULATIONS[k]["label"]
            for k in emulate
            if k not in {device_kind(d) for d in present} and emulation_available(k)
        },
    }
