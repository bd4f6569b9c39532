"""Speech sets as the speechsets stage writes them (data/speech/<name>/{manifest.jsonl, *.wav}), and audio reading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from stages.core.errors import BuildError
from stages.core.paths import speech_set_dir

SAMPLE_RATE = 16000


def load_audio(path: Path, expected_rate: int | None = None) -> np.ndarray:
    """Mono float32 at 16 kHz, through soundfile + scipy's polyphase resampler."""
    import soundfile as sf
    from scipy.signal import resample_poly

    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types (LibsndfileError, RuntimeError, ...) for bad files
        raise BuildError(f"{path}: unreadable audio ({e})") from e
    if expected_rate is not None and rate != expected_rate:
        raise BuildError(f"{path}: sample rate {rate} Hz, manifest says {expected_rate} Hz")
    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        g = np.gcd(rate, SAMPLE_RATE)
        audio = resample_poly(audio, SAMPLE_RATE // g, rate // g).astype(np.float32)
    if audio.size == 0:
        raise BuildError(f"{path}: no audio samples")
    return audio


def numbered_lines(path: Path, what: str):
    """(line number, line) for every non-blank line of a text file that must exist."""
    if not path.is_file():
        raise BuildError(f"{path}: {what} not found")
    for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if line.strip():
            yield i, line


def read_manifest(path: Path) -> list[dict]:
    """Entries {"audio": absolute path, "text": reference} of a JSONL manifest (audio relative to it); each line
    checked."""
    entries = []
    for i, line in numbered_lines(path, "manifest"):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise BuildError(f"{path}:{i}: not JSON ({e.msg})") from e
        if not isinstance(entry, dict) or not entry.get("audio"):
            raise BuildError(f'{path}:{i}: needs an "audio" path')
        if not str(entry.get("text", "")).strip():
            raise BuildError(f"{path}:{i}: empty reference text for {entry['audio']}")
        entries.append({**entry, "audio": str((path.parent / entry["audio"]).resolve())})
    if not entries:
        raise BuildError(f"{path}: manifest has no entries")
    return entries


def speech_set(name: str) -> list[dict]:
    """The utterances of a built speech set."""
    path = speech_set_dir(name) / "manifest.jsonl"
    if not path.is_file():
        raise BuildError(f"{path}: speech set '{name}' not built; run `dvc repro speechsets`")
    return read_manifest(path)
