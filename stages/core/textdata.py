"""Text sets: slices of local text files or of a `datasets` split, materialised into data/eval and
data/calibration by the evalsets stage; readers for what it wrote."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

from stages.core.errors import BuildError, user_input
from stages.core.paths import calibration_path, eval_text_path
from stages.core.schema import HFTextSet, TextSet


def read_text_file(path: Path, key: str) -> str:
    """Plain text, gzip or dictzip (.dz is gzip-compatible)."""
    path = Path(path)
    if not path.is_file():
        raise BuildError(f"{key}.path: text file not found: {path}")
    with user_input(f"{key}.path: {path}"):
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    return raw.decode("utf-8", errors="replace")


def load_hub_split(spec, key: str, split: str | None = None, streaming: bool = False):
    """A `datasets` split pinned to the commit its revision resolves to now (asked first, so an unknown dataset or
    revision, a missing token or a hub that is down is one line instead of `datasets`' retries), and its origin."""
    from datasets import load_dataset

    where = f"{key}: dataset {spec.path}" + (f" / {spec.name}" if spec.name else "") + f" split {spec.split}"
    with user_input(where + (f" @ {spec.revision}" if spec.revision else "")):
        resolved = dataset_revision(spec)
        ds = load_dataset(
            spec.path, spec.name, split=split or spec.split, revision=resolved or spec.revision, streaming=streaming
        )
    origin = {
        "dataset": spec.path,
        "name": spec.name,
        "split": spec.split,
        "requested_revision": spec.revision,
        "resolved_revision": resolved,
    }
    return ds, origin


def dataset_revision(spec) -> str | None:
    """The commit a hub dataset's revision resolves to; None for a local folder or offline (HF_HUB_OFFLINE: the
    `datasets` cache answers)."""
    from huggingface_hub import HfApi, constants

    if Path(spec.path).exists() or constants.HF_HUB_OFFLINE:
        return None
    return HfApi().dataset_info(spec.path, revision=spec.revision).sha


def hf_text(spec: HFTextSet, key: str) -> tuple[str, dict]:
    """Rows of a `datasets` split joined by newlines, and where they came from (with the resolved revision)."""
    split = spec.split if spec.max_samples is None else f"{spec.split}[:{spec.max_samples}]"
    ds, origin = load_hub_split(spec, key, split)
    if spec.column not in ds.column_names:
        raise BuildError(
            f"{key}.column: '{spec.column}' is not a column of {spec.path} (columns: {', '.join(ds.column_names)})"
        )
    return "\n".join(str(x) for x in ds[spec.column]), {**origin, "rows": len(ds)}


def slice_text(spec: TextSet | HFTextSet, key: str) -> tuple[str, dict]:
    """The set's text (whitespace-normalised and sliced) and where it came from."""
    if isinstance(spec, HFTextSet):
        text, origin = hf_text(spec, key)
    else:
        text = read_text_file(Path(spec.path), key)
        origin = {"path": spec.path}
        if spec.start_after:
            pos = text.find(spec.start_after)
            if pos < 0:
                raise BuildError(f"{key}.start_after: '{spec.start_after}' not found in {spec.path}")
            text = text[pos + len(spec.start_after) :]
    text = re.sub(r"\s+", " ", text)[spec.skip_chars : spec.skip_chars + spec.max_chars].strip()
    if not text:
        raise BuildError(f"{key}: no text left after start_after / skip_chars")
    return text, origin


def eval_text(name: str) -> str:
    path = eval_text_path(name)
    if not path.is_file():
        raise BuildError(f"{path}: eval set '{name}' not built; run `dvc repro evalsets`")
    return path.read_text(encoding="utf-8")


def calibration_text(name: str) -> str:
    path = calibration_path(name)
    if not path.is_file():
        raise BuildError(f"{path}: calibration set '{name}' not built; run `dvc repro evalsets`")
    return path.read_text(encoding="utf-8")


def calibration_samples(name: str, chars_per_sample: int = 1000) -> list[str]:
    text = calibration_text(name)
    return [text[i : i + chars_per_sample] for i in range(0, len(text), chars_per_sample)]
