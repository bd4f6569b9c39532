"""Text sets (slices of local text files or of a `datasets` split) and prompt sets (prompt files or a `datasets`
column), materialised into data/eval, data/calibration and data/prompts by the evalsets stage; readers for what it
wrote."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

from stages.core.errors import BuildError, user_input
from stages.core.io import read_lines
from stages.core.paths import calibration_path, eval_text_path, prompt_set_path
from stages.core.schema import NAME_PATTERN, HFPromptSet, HFTextSet, PromptFile, TextSet


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


def hub_column(spec: HFTextSet | HFPromptSet, key: str) -> tuple[list, dict]:
    """One column of the first `max_samples` rows of a `datasets` split, and where it came from (with the resolved
    revision)."""
    split = spec.split if spec.max_samples is None else f"{spec.split}[:{spec.max_samples}]"
    ds, origin = load_hub_split(spec, key, split)
    if spec.column not in ds.column_names:
        raise BuildError(
            f"{key}.column: '{spec.column}' is not a column of {spec.path} (columns: {', '.join(ds.column_names)})"
        )
    return list(ds[spec.column]), {**origin, "rows": len(ds)}


def streamed_column(spec: HFPromptSet, key: str) -> tuple[list, dict]:
    """One column of the first `max_samples` rows, streamed and selected before decoding: a prompt column of an
    image dataset without downloading or decoding its images."""
    from itertools import islice

    ds, origin = load_hub_split(spec, key, streaming=True)

    def check(columns):
        if columns is not None and spec.column not in columns:
            raise BuildError(
                f"{key}.column: '{spec.column}' is not a column of {spec.path} (columns: {', '.join(columns)})"
            )

    check(ds.column_names)  # None when the stream does not declare its features: checked on the first row
    if ds.column_names is not None:
        ds = ds.select_columns([spec.column])
    with user_input(f"{key}: dataset {spec.path} split {spec.split}"):
        rows = list(islice(iter(ds), spec.max_samples))
    check(list(rows[0]) if rows else None)
    return [row[spec.column] for row in rows], {**origin, "rows": len(rows)}


def hf_text(spec: HFTextSet, key: str) -> tuple[str, dict]:
    """Rows of a `datasets` split joined by newlines, and where they came from."""
    rows, origin = hub_column(spec, key)
    return "\n".join(str(x) for x in rows), origin


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


def prompt_entries(spec: PromptFile | HFPromptSet, key: str) -> tuple[list[str], dict]:
    """A prompt set's prompts (verbatim; empty rows of a dataset skipped) and where they came from."""
    if isinstance(spec, PromptFile):
        return read_lines(spec.path, f"{key}.path", "prompt"), {"path": spec.path}
    rows, origin = streamed_column(spec, key)
    if kinds := sorted({type(r).__name__ for r in rows if not isinstance(r, str)}):
        raise BuildError(f"{key}.column: '{spec.column}' holds {', '.join(kinds)} values, not text")
    prompts = [r.strip() for r in rows if r.strip()]
    if not prompts:
        raise BuildError(f"{key}: column '{spec.column}' of {spec.path} has no non-empty rows")
    return prompts, origin


def write_prompt_set(path: Path, prompts: list[str]) -> None:
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in prompts), encoding="utf-8")


def is_prompt_set_name(ref: str) -> bool:
    """A prompt reference is a `prompt_sets` name (letters, digits, '-', '_') or else a file's path."""
    return re.fullmatch(NAME_PATTERN, ref) is not None


def prompts_path(ref: str) -> Path:
    """Where a prompt reference's prompts are read from: data/prompts/<name>.jsonl (built by evalsets) or the file."""
    return prompt_set_path(ref) if is_prompt_set_name(ref) else Path(ref)


def check_prompt_ref(ref: str, prompt_sets: dict, key: str) -> None:
    if is_prompt_set_name(ref):
        if ref not in prompt_sets:
            raise ValueError(f"{key}: unknown prompt set '{ref}' (prompt_sets; a file path needs a '/' or '.')")
    elif not Path(ref).is_file():
        raise ValueError(f"{key}: file not found: {ref}")


def read_prompts(ref: str, key: str, what: str = "prompt") -> list[str]:
    path = prompts_path(ref)
    if is_prompt_set_name(ref) and not path.is_file():
        raise BuildError(f"{path}: prompt set '{ref}' not built; run `dvc repro evalsets`")
    return read_lines(path, key, what)
