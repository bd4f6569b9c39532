"""Transcribe one speech set with the int8 IR through WhisperPipeline and with the transformers fp32 model.

    python benchmarks/whisper_speed.py [--model whisper-tiny-en] [--variant int8] [--speech-set flite-slt]

Needs `dvc repro` to have built models/<model>/{checkpoint,<variant>} and data/speech. Prints the wall time of
each engine on the same audio, their ratio (goal: OpenVINO >= 3x) and both WERs.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from stages.common import artifact_dir, checkpoint_dir
from stages.families.whisper import error_rates, whisper_pipeline
from stages.params import load_params
from stages.speechsets import SAMPLE_RATE, load_audio, read_manifest, speech_set_dir


def run_openvino(artifact: Path, audios, settings, precision: str) -> tuple[float, list[str]]:
    pipe, config = whisper_pipeline(artifact, "CPU", precision, settings)
    pipe.generate(audios[0].tolist(), config)  # warm-up
    start = time.perf_counter()
    texts = [pipe.generate(a.tolist(), config).texts[0] for a in audios]
    return time.perf_counter() - start, texts


def run_transformers(checkpoint: Path, audios, settings) -> tuple[float, list[str]]:
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(checkpoint)
    model = WhisperForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    kwargs = {"max_new_tokens": settings.max_new_tokens}
    if model.generation_config.is_multilingual:
        kwargs |= {"language": settings.language, "task": settings.task}

    def transcribe(audio):
        features = processor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        with torch.inference_mode():
            ids = model.generate(features, **kwargs)
        return processor.batch_decode(ids, skip_special_tokens=True)[0]

    transcribe(audios[0])  # warm-up
    start = time.perf_counter()
    texts = [transcribe(a) for a in audios]
    return time.perf_counter() - start, texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="whisper-tiny-en")
    ap.add_argument("--variant", default="int8")
    ap.add_argument("--speech-set", default="flite-slt")
    args = ap.parse_args()
    params = load_params()
    settings = params.validate_settings.whisper
    entries = read_manifest(speech_set_dir(args.speech_set) / "manifest.jsonl")
    audios = [load_audio(Path(e["audio"]), SAMPLE_RATE) for e in entries]
    refs = [e["text"] for e in entries]
    seconds = sum(len(a) for a in audios) / SAMPLE_RATE
    print(f"{len(audios)} utterances ({seconds:.0f} s of audio) from '{args.speech_set}'")
    rows = [("transformers fp32", *run_transformers(checkpoint_dir(args.model), audios, settings))]
    precision = params.validate_settings.inference_precision
    rows.append((f"WhisperPipeline {args.variant} IR, {precision}",
                 *run_openvino(artifact_dir(args.model, args.variant), audios, settings, precision)))
    base = rows[0][1]
    print(f"{'engine':40s} {'wall s':>8s} {'speedup':>8s} {'RTF':>7s} {'WER':>7s}")
    for name, wall, texts in rows:
        print(f"{name:40s} {wall:8.2f} {base / wall:7.2f}x {wall / seconds:7.3f} {error_rates(refs, texts)['wer']:7.3f}")


if __name__ == "__main__":
    main()
