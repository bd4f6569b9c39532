"""Stage evalsets: materialise the eval and calibration text sets from local files into data/.

    python -m stages.evalsets
"""
from __future__ import annotations

import gzip
import re
from pathlib import Path

from stages.common import DATA, log, setup_logging, write_text
from stages.params import TextSet, load_stage_params, stage_parser


class EvalSetError(SystemExit):
    pass


def read_text_file(path: Path) -> str:
    """Plain text, gzip or dictzip (.dz is gzip-compatible)."""
    if not path.is_file():
        raise EvalSetError(f"{path}: text file not found")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", errors="replace")


def slice_text(text_set: TextSet, name: str) -> str:
    text = read_text_file(Path(text_set.path))
    if text_set.start_after:
        pos = text.find(text_set.start_after)
        if pos < 0:
            raise EvalSetError(f"{name}.start_after: '{text_set.start_after}' not found in {text_set.path}")
        text = text[pos + len(text_set.start_after):]
    text = re.sub(r"\s+", " ", text)[text_set.skip_chars:text_set.skip_chars + text_set.max_chars].strip()
    if not text:
        raise EvalSetError(f"{name}: no text left in {text_set.path} after start_after/skip_chars")
    return text


def eval_text_path(name: str) -> Path:
    return DATA / "eval" / f"{name}.txt"


def calibration_path(name: str) -> Path:
    return DATA / "calibration" / f"{name}.txt"


def eval_text(name: str) -> str:
    path = eval_text_path(name)
    if not path.is_file():
        raise EvalSetError(f"{path}: eval set '{name}' not built; run `dvc repro evalsets`")
    return path.read_text()


def calibration_samples(name: str, chars_per_sample: int = 1000) -> list[str]:
    text = calibration_path(name).read_text()
    return [text[i:i + chars_per_sample] for i in range(0, len(text), chars_per_sample)]


def main(argv=None) -> None:
    args = stage_parser(__doc__).parse_args(argv)
    setup_logging()
    params = load_stage_params(args)
    built = {eval_text_path(n): slice_text(s, f"eval_sets.{n}") for n, s in params.eval_sets.items()}
    built |= {calibration_path(n): slice_text(s, f"calibration.{n}") for n, s in params.calibration.items()}
    for folder in (DATA / "eval", DATA / "calibration"):  # declared outputs exist even when a set is empty
        folder.mkdir(parents=True, exist_ok=True)
    for path, text in built.items():  # all read before any is written
        write_text(path, text)
        log.info("wrote %s (%d chars)", path, len(text))


if __name__ == "__main__":
    main()
