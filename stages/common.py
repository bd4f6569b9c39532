"""Shared plumbing: output paths, atomic writes, file manifests, logging, devices."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

MODELS = Path("models")
METRICS = Path("metrics")
OUTPUTS = Path("outputs")
DATA = Path("data")

log = logging.getLogger("stages")


def setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "INFO"), format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def checkpoint_dir(model: str) -> Path:
    return MODELS / model / "checkpoint"


def artifact_dir(model: str, variant: str) -> Path:
    return MODELS / model / variant


def validation_metrics_path(model: str, variant: str) -> Path:
    return METRICS / "validate" / model / f"{variant}.json"


def validation_outputs_dir(model: str, variant: str) -> Path:
    return OUTPUTS / model / variant


def validation_plot_path(model: str, variant: str) -> Path:
    """An artifact's image plot (e.g. a text-to-image contact sheet), declared as a DVC plot."""
    return METRICS / "images" / model / f"{variant}.png"


def adapter_dir(name: str) -> Path:
    return MODELS / "adapters" / name


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a scratch directory that replaces `final` only if the block completes."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def write_bytes(path: Path, data: bytes) -> None:
    """Write a file atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def read_lines(path: str | Path, key: str, what: str = "line") -> list[str]:
    """The non-empty lines of a small text file (prompts, questions); one clear error when there are none."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"{key}: file not found: {path}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise SystemExit(f"{key}: {path} has no {what}s (one per line; '#' starts a comment)")
    return lines


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_inventory(root: Path, exclude: tuple[str, ...] = ("manifest.json",)) -> list[dict]:
    """Every file below `root` with its size and sha256, sorted by path."""
    root = Path(root)
    files = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name not in exclude:
            files.append({"path": p.relative_to(root).as_posix(), "size": p.stat().st_size,
                          "sha256": sha256_file(p)})
    return files


def dir_size(root: Path) -> int:
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())


DEVICES_ENV = "OVBUILD_DEVICES"  # comma-separated: validate only on these (e.g. "" on a build-only host)


EXPORT_PACKAGES = ("openvino", "nncf", "optimum-intel", "openvino-tokenizers", "transformers", "torch")
RUNTIME_PACKAGES = ("openvino", "openvino-genai", "openvino-tokenizers")


def software_versions(packages: tuple[str, ...]) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in packages:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def available_devices() -> list[str]:
    """OpenVINO's devices on this host, narrowed by $OVBUILD_DEVICES when it is set."""
    import openvino as ov

    devices = list(ov.Core().available_devices)
    allowed = os.environ.get(DEVICES_ENV)
    if allowed is not None:
        wanted = {d.strip() for d in allowed.split(",") if d.strip()}
        devices = [d for d in devices if d in wanted or d.split(".")[0] in wanted]
    return devices


def device_names() -> dict[str, str]:
    """Each available device with its full name (what a result was measured on)."""
    import openvino as ov

    core = ov.Core()
    return {d: core.get_property(d, "FULL_DEVICE_NAME") for d in available_devices()}


def device_present(device: str) -> bool:
    return any(d == device or d.startswith(device + ".") for d in available_devices())
