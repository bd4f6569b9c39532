"""Transcribe one speech set with an IR through WhisperPipeline and with the transformers fp32 model, in one run.

    python benchmarks/whisper_speed.py [--params params.yaml] [--model whisper-tiny-en] [--variant int8]
                                       [--speech-set flite-slt] [--limit N] [--device CPU]

Needs `dvc repro` to have built models/<model>/{checkpoint,<variant>} and data/speech (run from the pipeline root).
Both engines run as the validate / reference stages run them (stages.families.whisper.whisper_pipeline and
TorchWhisper, with validate.whisper's language, task and max_new_tokens; inference precision from
validate.inference_precision). Prints the wall time of each engine on the same audio (loading and one warm-up
excluded), their ratio (goal: OpenVINO >= 4x at f32), the real-time factor, both WERs, and the time WhisperPipeline spent
in feature extraction + encoder with the ratio that leaves as a ceiling (the encoder always sees 30 s of audio).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from stages.check_params import family_settings
from stages.core.errors import BuildError
from stages.core.metrics import error_rates
from stages.core.paths import artifact_dir, checkpoint_dir
from stages.core.speech import SAMPLE_RATE, load_audio, speech_set
from stages.families.base import RunContext
from stages.families.whisper import TorchWhisper, whisper_pipeline
from stages.params import load_params


def timed(transcribe, audios) -> tuple[float, list[str]]:
    """Wall time of transcribing every clip (after one warm-up transcription) and the transcripts."""
    transcribe(audios[0])  # warm-up
    start = time.perf_counter()
    texts = [transcribe(a) for a in audios]
    return time.perf_counter() - start, texts


def run_openvino(artifact: Path, audios, device: str, ctx: RunContext) -> tuple[float, list[str], float]:
    """(wall s, transcripts, s spent in feature extraction + encoder: the part no decoding speed-up can cut)."""
    pipe, config = whisper_pipeline(artifact, device, ctx)
    fixed = []

    def transcribe(audio):
        result = pipe.generate(audio.tolist(), config)
        metrics = result.perf_metrics
        encoder_ms = sum(metrics.whisper_raw_metrics.encode_inference_durations) / 1000  # raw durations are in us
        fixed.append(metrics.get_features_extraction_duration().mean + encoder_ms)
        return result.texts[0].strip()

    wall, texts = timed(transcribe, audios)
    return wall, texts, sum(fixed[1:]) / 1000  # without the warm-up


def run_transformers(checkpoint: Path, audios, settings) -> tuple[float, list[str], None]:
    return *timed(TorchWhisper(checkpoint, settings).transcribe, audios), None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", default="whisper-tiny-en")
    ap.add_argument("--variant", default="int8")
    ap.add_argument("--speech-set", default="flite-slt")
    ap.add_argument("--limit", type=int, default=None, help="only the first N utterances")
    ap.add_argument("--device", default="CPU", help="OpenVINO device for WhisperPipeline")
    ap.add_argument(
        "--precisions",
        nargs="+",
        default=None,
        choices=["f32", "f16", "bf16"],
        help="INFERENCE_PRECISION_HINT values, one row each (default: validate.inference_precision, then bf16)",
    )
    args = ap.parse_args(argv)
    params = load_params(args.params)
    settings = family_settings(params, "whisper")
    if settings is None:
        raise SystemExit(f"{args.params}: no validate.whisper section")
    checkpoint, artifact = checkpoint_dir(args.model), artifact_dir(f"{args.model}/{args.variant}")
    for folder in (checkpoint, artifact):
        if not folder.is_dir():
            raise SystemExit(f"{folder}: not built (run `dvc repro` first)")
    try:
        entries = speech_set(args.speech_set)[: args.limit]
        audios = [load_audio(Path(e["audio"]), SAMPLE_RATE) for e in entries]
    except BuildError as e:
        raise SystemExit(str(e)) from None
    if not audios:
        raise SystemExit(f"--limit {args.limit}: no utterances left")
    refs = [e["text"] for e in entries]
    seconds = sum(len(a) for a in audios) / SAMPLE_RATE
    print(f"{len(audios)} utterances ({seconds:.0f} s of audio) from '{args.speech_set}'")
    rows = [("transformers fp32", *run_transformers(checkpoint, audios, settings))]
    validated = params.validate_.inference_precision
    for precision in args.precisions or dict.fromkeys([validated, "bf16"]):
        ctx = RunContext(settings, precision, model=args.model)
        rows.append(
            (f"WhisperPipeline {args.variant} IR, {precision}", *run_openvino(artifact, audios, args.device, ctx))
        )
    base = rows[0][1]
    print(f"{'engine':40s} {'wall s':>8s} {'speedup':>8s} {'RTF':>7s} {'WER':>7s} {'enc s':>7s} {'bound':>7s}")
    for name, wall, texts, fixed in rows:
        # bound: the speedup if decoding took no time at all (features + encoder only)
        extra = f"{fixed:7.2f} {base / fixed:6.2f}x" if fixed else f"{'-':>7s} {'-':>7s}"
        print(
            f"{name:40s} {wall:8.2f} {base / wall:7.2f}x {wall / seconds:7.3f} "
            f"{error_rates(refs, texts)['wer']:7.3f} {extra}"
        )


if __name__ == "__main__":
    main()
