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

from stages.core.errors import BuildError, run_stage, user_input
from stages.core.io import atomic_dir
from stages.core.paths import DATA, speech_set_dir
from stages.core.runtime import log, setup_logging
from stages.core.schema import FliteSpeech, HFSpeech, ManifestSpeech, SphinxSpeech
from stages.core.speech import SAMPLE_RATE, load_audio, numbered_lines, read_manifest
from stages.core.textdata import load_hub_split, slice_text
from stages.params import Params, load_stage_params, stage_parser

SPHINX_LINE = re.compile(r"^\s*(?:<s>)?\s*(?P<text>.*?)\s*(?:</s>)?\s*\((?P<id>[^()]+)\)\s*$")


def from_sphinx(spec: SphinxSpeech) -> list[dict]:
    folder = Path(spec.dir)
    transcription = folder / spec.transcription
    entries = []
    for i, line in numbered_lines(transcription, "transcription file"):
        m = SPHINX_LINE.match(line)
        if not m or not m["text"].strip():
            raise BuildError(f"{transcription}:{i}: expected '<s> text </s> (id)', got {line!r}")
        entries.append({"audio": str(folder / f"{m['id']}.wav"), "text": m["text"].strip()})
    return entries


def sentences(text: str, min_words: int, max_words: int) -> list[str]:
    """Plain sentences (letters, digits and simple punctuation) of a bounded length."""
    out = []
    for s in re.split(r"(?<=[.!?])\s+", text):
        s = s.strip()
        if (
            min_words <= len(s.split()) <= max_words
            and s[0].isupper()  # not a fragment cut by the slice
            and re.fullmatch(r"[A-Za-z0-9 ,;:'\-.!?]+", s)
        ):
            out.append(s)
    return out


def from_flite(spec: FliteSpeech, workdir: Path, key: str) -> list[dict]:
    if shutil.which("flite") is None:
        raise BuildError("flite is not installed (apt-get install flite)")
    chosen = sentences(slice_text(spec.text, f"{key}.text")[0], spec.min_words, spec.max_words)[: spec.count]
    if len(chosen) < spec.count:
        raise BuildError(f"{key}.count: only {len(chosen)} usable sentences, count asks for {spec.count}")
    entries = []
    for i, sentence in enumerate(chosen):
        wav = workdir / f"flite-{i:04d}.wav"
        subprocess.run(["flite", "-voice", spec.voice, "-t", sentence, "-o", str(wav)], check=True)
        entries.append({"audio": str(wav), "text": sentence})
    return entries


def from_hf(spec: HFSpeech, workdir: Path, key: str) -> list[dict]:
    """A hub dataset split (needs the hub at HF_ENDPOINT or a warm `datasets` cache), streamed. Audio is taken as
    the stored file bytes (decode(False)) and read by soundfile: `datasets` 5 decodes only through torchcodec,
    whose PyPI wheels need CUDA libraries."""
    ds, origin = load_hub_split(spec, key, streaming=True)
    entries = []
    with user_input(f"{key}: dataset {spec.path} split {spec.split}"):
        for i, row in enumerate(ds.decode(False)):
            if i >= spec.max_samples:
                break
            for column in (spec.audio_column, spec.text_column):
                if column not in row:
                    raise BuildError(f"{key}: column '{column}' not in {spec.path} (columns: {', '.join(row)})")
            entries.append(
                {
                    "audio": str(stored_audio(row[spec.audio_column], workdir / f"hf-{i:05d}", key)),
                    "text": row[spec.text_column],
                    "origin": origin,
                }
            )
    return entries


def stored_audio(audio: dict, stem: Path, key: str) -> Path:
    """An undecoded `datasets` audio value ({"bytes", "path"}, or a decoded {"array", "sampling_rate"}) as a file."""
    import soundfile as sf

    if audio.get("bytes"):
        path = stem.with_suffix(Path(audio.get("path") or "x.wav").suffix or ".wav")
        path.write_bytes(audio["bytes"])
        return path
    if audio.get("array") is not None:
        path = stem.with_suffix(".wav")
        sf.write(str(path), np.asarray(audio["array"], dtype=np.float32), audio["sampling_rate"])
        return path
    if audio.get("path") and Path(audio["path"]).is_file():
        return Path(audio["path"])
    raise BuildError(f"{key}: an audio value with neither bytes, array nor a readable path: {audio.get('path')}")


def collect(spec, workdir: Path, key: str) -> list[dict]:
    if isinstance(spec, ManifestSpeech):
        return read_manifest(Path(spec.path))
    if isinstance(spec, SphinxSpeech):
        return from_sphinx(spec)
    if isinstance(spec, FliteSpeech):
        return from_flite(spec, workdir, key)
    return from_hf(spec, workdir, key)


def build(name: str, spec) -> int:
    """Resample every utterance to 16 kHz mono wav; the set appears only when all of it is readable."""
    import soundfile as sf

    with tempfile.TemporaryDirectory() as work, atomic_dir(speech_set_dir(name)) as out:
        lines = []
        entries = collect(spec, Path(work), f"speech_sets.{name}")
        if not entries:
            raise BuildError(f"speech_sets.{name}: no utterances")
        for i, entry in enumerate(entries):
            if not entry["text"].strip():
                raise BuildError(f"{entry['audio']}: empty reference text")
            audio = load_audio(Path(entry["audio"]), entry.get("sampling_rate"))
            wav = f"{i:05d}.wav"
            sf.write(str(out / wav), audio, SAMPLE_RATE, subtype="PCM_16")
            lines.append(json.dumps({"audio": wav, "text": entry["text"].strip(), "source": Path(entry["audio"]).name}))
        (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")
        if entries[0].get("origin"):  # a hub dataset: which commit the utterances came from
            (out / "origin.json").write_text(json.dumps(entries[0]["origin"], indent=2) + "\n")
    return len(lines)


def main(argv=None) -> None:
    args = stage_parser(__doc__).parse_args(argv)
    setup_logging()
    params: Params = load_stage_params(args)
    (DATA / "speech").mkdir(parents=True, exist_ok=True)
    for name, spec in params.speech_sets.items():
        log.info("speech set %s: %d utterances", name, build(name, spec))


if __name__ == "__main__":
    run_stage(main)
