"""Stage speechsets: materialise every speech eval set as data/speech/<name>/{manifest.jsonl, *.wav} at 16 kHz mono.

    python -m stages.speechsets

Sources: a JSONL manifest (audio path + reference text), a folder with a Sphinx-style transcription file
("<s> text </s> (utterance_id)"), a Hugging Face `datasets` split (online users), or sentences spoken by flite.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from stages.common import DATA, atomic_dir, log, setup_logging
from stages.evalsets import slice_text
from stages.params import (FliteSpeech, HFSpeech, ManifestSpeech, Params, SphinxSpeech, load_stage_params,
                           stage_parser)

SAMPLE_RATE = 16000
SPHINX_LINE = re.compile(r"^\s*(?:<s>)?\s*(?P<text>.*?)\s*(?:</s>)?\s*\((?P<id>[^()]+)\)\s*$")


class SpeechSetError(SystemExit):
    pass


def speech_set_dir(name: str) -> Path:
    return DATA / "speech" / name


def load_audio(path: Path, expected_rate: int | None = None) -> np.ndarray:
    """Mono float32 at 16 kHz, through soundfile + scipy's polyphase resampler."""
    import soundfile as sf
    from scipy.signal import resample_poly

    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types for missing / corrupt files
        raise SpeechSetError(f"{path}: unreadable audio ({e})") from None
    if expected_rate is not None and rate != expected_rate:
        raise SpeechSetError(f"{path}: sample rate {rate} Hz, manifest says {expected_rate} Hz")
    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        g = np.gcd(rate, SAMPLE_RATE)
        audio = resample_poly(audio, SAMPLE_RATE // g, rate // g).astype(np.float32)
    if audio.size == 0:
        raise SpeechSetError(f"{path}: no audio samples")
    return audio


def numbered_lines(path: Path, what: str):
    """(line number, line) for every non-blank line of a text file that must exist."""
    if not path.is_file():
        raise SpeechSetError(f"{path}: {what} not found")
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            yield i, line


def read_manifest(path: Path) -> list[dict]:
    """Entries {"audio": path relative to the manifest, "text": reference}; each line checked."""
    entries = []
    for i, line in numbered_lines(path, "manifest"):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise SpeechSetError(f"{path}:{i}: not JSON ({e.msg})") from None
        if not isinstance(entry, dict) or not entry.get("audio"):
            raise SpeechSetError(f"{path}:{i}: needs an \"audio\" path")
        if not str(entry.get("text", "")).strip():
            raise SpeechSetError(f"{path}:{i}: empty reference text for {entry['audio']}")
        entries.append({**entry, "audio": str((path.parent / entry["audio"]).resolve())})
    if not entries:
        raise SpeechSetError(f"{path}: manifest has no entries")
    return entries


def from_sphinx(spec: SphinxSpeech) -> list[dict]:
    folder = Path(spec.dir)
    transcription = folder / spec.transcription
    entries = []
    for i, line in numbered_lines(transcription, "transcription file"):
        m = SPHINX_LINE.match(line)
        if not m or not m["text"].strip():
            raise SpeechSetError(f"{transcription}:{i}: expected '<s> text </s> (id)', got {line!r}")
        entries.append({"audio": str(folder / f"{m['id']}.wav"), "text": m["text"].strip()})
    return entries


def sentences(text: str, min_words: int, max_words: int) -> list[str]:
    """Plain sentences (letters, digits and simple punctuation) of a bounded length."""
    out = []
    for s in re.split(r"(?<=[.!?])\s+", text):
        s = s.strip()
        if (min_words <= len(s.split()) <= max_words and s[0].isupper()  # not a fragment cut by the slice
                and re.fullmatch(r"[A-Za-z0-9 ,;:'\-.!?]+", s)):
            out.append(s)
    return out


def from_flite(spec: FliteSpeech, workdir: Path) -> list[dict]:
    if shutil.which("flite") is None:
        raise SpeechSetError("flite is not installed (apt-get install flite)")
    chosen = sentences(slice_text(spec.text, "text"), spec.min_words, spec.max_words)[:spec.count]
    if len(chosen) < spec.count:
        raise SpeechSetError(f"text: only {len(chosen)} usable sentences, count asks for {spec.count}")
    entries = []
    for i, sentence in enumerate(chosen):
        wav = workdir / f"flite-{i:04d}.wav"
        subprocess.run(["flite", "-voice", spec.voice, "-t", sentence, "-o", str(wav)], check=True)
        entries.append({"audio": str(wav), "text": sentence})
    return entries


def from_hf(spec: HFSpeech, workdir: Path) -> list[dict]:
    """A hub dataset split (needs network or a warm `datasets` cache)."""
    import soundfile as sf
    from datasets import load_dataset

    ds = load_dataset(spec.path, spec.name, split=spec.split, streaming=True)
    entries = []
    for i, row in enumerate(ds):
        if i >= spec.max_samples:
            break
        audio = row[spec.audio_column]
        wav = workdir / f"hf-{i:05d}.wav"
        sf.write(str(wav), np.asarray(audio["array"], dtype=np.float32), audio["sampling_rate"])
        entries.append({"audio": str(wav), "text": row[spec.text_column]})
    return entries


def collect(spec, workdir: Path) -> list[dict]:
    if isinstance(spec, ManifestSpeech):
        return read_manifest(Path(spec.path))
    if isinstance(spec, SphinxSpeech):
        return from_sphinx(spec)
    if isinstance(spec, FliteSpeech):
        return from_flite(spec, workdir)
    return from_hf(spec, workdir)


def build(name: str, spec) -> int:
    """Resample every utterance to 16 kHz mono wav; the set appears only when all of it is readable."""
    import soundfile as sf

    with tempfile.TemporaryDirectory() as work, atomic_dir(speech_set_dir(name)) as out:
        lines = []
        for i, entry in enumerate(collect(spec, Path(work))):
            if not entry["text"].strip():
                raise SpeechSetError(f"{entry['audio']}: empty reference text")
            audio = load_audio(Path(entry["audio"]), entry.get("sampling_rate"))
            wav = f"{i:05d}.wav"
            sf.write(str(out / wav), audio, SAMPLE_RATE, subtype="PCM_16")
            lines.append(json.dumps({"audio": wav, "text": entry["text"].strip(), "source": Path(entry["audio"]).name}))
        (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return len(lines)


def main(argv=None) -> None:
    args = stage_parser(__doc__).parse_args(argv)
    setup_logging()
    params: Params = load_stage_params(args)
    (DATA / "speech").mkdir(parents=True, exist_ok=True)
    for name, spec in params.speech_sets.items():
        log.info("speech set %s: %d utterances", name, build(name, spec))


if __name__ == "__main__":
    main()
