"""Stage measure (perf/dvc.yaml): the host-dependent numbers of one artifact on each device it ran on: load +
compile time, TTFT, TPOT, throughput / real-time factor / seconds per image, peak RSS, and the hardware's name.

    python -m stages.measure --artifact MODEL/VARIANT

Each device's workload runs in a fresh process after a warm-up on fixed inputs, so the peak RSS is the artifact's
alone. Written to metrics/perf/<model>/<variant>.json, apart from the accuracy records: timings change on every
run, accuracy does not.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from stages.check_params import load_checked_stage_params
from stages.core.devices import emulation, run_level
from stages.core.errors import run_stage
from stages.core.io import read_json, write_json
from stages.core.paths import artifact_dir, performance_path, split_artifact, validation_path
from stages.core.runtime import device_name, log, setup_logging
from stages.families import get_family
from stages.params import Params, stage_parser
from stages.runner import make_context


def _child(params: Params, artifact: str, device: str, level: str, options: dict) -> dict:
    import resource

    model, variant = split_artifact(artifact)
    family = get_family(params.family_of(model))
    ctx = make_context(
        params,
        family,
        model,
        adapters=[],
        device_config=family.device_options(device, params.variants[variant], options),
    )
    ctx.compile_options = options if level == "emulated" else None
    result = family.performance(artifact_dir(artifact), device, ctx)
    return {**result, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(params: Params, artifact: str) -> dict:
    record = read_json(validation_path(artifact), f"validation record (run `dvc repro validate@{artifact}`)")
    out = {"artifact": artifact, "devices": {}}
    if not params.validate_.performance:
        out["skipped"] = "validate.performance is false"
    for device, result in record["devices"].items():
        if result["status"] not in ("validated", "emulated") or not params.validate_.performance:
            continue
        level, run_device, options, _ = run_level(device, params.validate_.emulate)
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            numbers = pool.submit(_child, params, artifact, run_device, level, options).result()
        hardware = device_name(emulation(device)["compute"] if level == "emulated" else run_device)
        out["devices"][device] = {"level": level, "hardware": hardware, "metrics": numbers}
        log.info("%s on %s (%s): %s", artifact, device, level, numbers)
    write_json(performance_path(artifact), out)
    return out


def main(argv=None) -> None:
    args = stage_parser(__doc__, artifact=True).parse_args(argv)
    setup_logging()
    measure(load_checked_stage_params(args), args.artifact)


if __name__ == "__main__":
    run_stage(main)
