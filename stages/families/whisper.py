"""Whisper speech-to-text: WER/CER and real-time factor through openvino_genai.WhisperPipeline, per speech set."""
from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from stages.families.base import AdapterRun, Family, Validation
from stages.params import Params, WhisperValidation

# Whisper's English spelling map (MIT, from the openai-whisper sdist); scripts/setup.sh puts it here.
SPELLING_MAP = Path(sys.prefix) / "share" / "whisper" / "english.json"


@functools.lru_cache(maxsize=1)
def english_normalizer():
    """Whisper's English text normalizer (numbers, spelling variants, punctuation), as transformers ships it."""
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    if not SPELLING_MAP.is_file():
        raise SystemExit(f"{SPELLING_MAP}: Whisper spelling map missing; run scripts/setup.sh")
    return EnglishTextNormalizer(json.loads(SPELLING_MAP.read_text()))


def error_rates(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """Corpus WER and CER after normalization (so "four" and "4" are the same word)."""
    import jiwer

    norm = english_normalizer()
    refs = [norm(r) for r in references]
    hyps = [norm(h) for h in hypotheses]
    return {"wer": float(jiwer.wer(refs, hyps)), "cer": float(jiwer.cer(refs, hyps))}


def whisper_pipeline(artifact: Path, device: str, precision: str, s: WhisperValidation):
    import openvino_genai as ov_genai

    pipe = ov_genai.WhisperPipeline(str(artifact), device, INFERENCE_PRECISION_HINT=precision)
    config = pipe.get_generation_config()
    config.max_new_tokens = s.max_new_tokens
    if config.is_multilingual:
        if s.language:
            config.language = f"<|{s.language}|>"
        config.task = s.task
    return pipe, config


def transcribe_set(pipe, config, name: str) -> dict:
    from stages.speechsets import SAMPLE_RATE, load_audio, read_manifest, speech_set_dir

    entries = read_manifest(speech_set_dir(name) / "manifest.jsonl")
    hypotheses, compute_s, audio_s = [], 0.0, 0.0
    for entry in tqdm(entries, desc=f"transcribe {name}", unit="utt"):
        audio = load_audio(Path(entry["audio"]), SAMPLE_RATE)
        start = time.perf_counter()
        hypotheses.append(pipe.generate(audio.tolist(), config).texts[0].strip())
        compute_s += time.perf_counter() - start
        audio_s += len(audio) / SAMPLE_RATE
    rates = error_rates([e["text"] for e in entries], hypotheses)
    return {"metrics": {**rates, "rtf": compute_s / audio_s, "utterances": len(entries)},
            "hypotheses": [{"audio": Path(e["audio"]).name, "reference": e["text"], "hypothesis": h}
                           for e, h in zip(entries, hypotheses)]}


def performance(artifact: Path, device: str, precision: str, s: WhisperValidation) -> dict:
    """Load + compile time, then real-time factor, TTFT and TPOT over the first utterances of the first speech
    set, after one warm-up transcription."""
    from stages.speechsets import SAMPLE_RATE, load_audio, read_manifest, speech_set_dir

    start = time.perf_counter()
    pipe, config = whisper_pipeline(artifact, device, precision, s)
    load_s = time.perf_counter() - start
    entries = read_manifest(speech_set_dir(s.speech_sets[0]) / "manifest.jsonl")[:s.performance_utterances]
    clips = [load_audio(Path(e["audio"]), SAMPLE_RATE).tolist() for e in entries]
    pipe.generate(clips[0], config)
    compute_s, perf = 0.0, []
    for clip in tqdm(clips, desc=f"performance {artifact.name}", unit="utt"):
        begin = time.perf_counter()
        perf.append(pipe.generate(clip, config).perf_metrics)
        compute_s += time.perf_counter() - begin
    return {"load_s": load_s, "rtf": compute_s / (sum(map(len, clips)) / SAMPLE_RATE),
            "ttft_ms": float(sum(p.get_ttft().mean for p in perf) / len(perf)),
            "tpot_ms": float(sum(p.get_tpot().mean for p in perf) / len(perf))}


class WhisperFamily(Family):
    name = "whisper"
    task = "automatic-speech-recognition-with-past"
    latency_metric = "rtf"
    pipeline_tag = "automatic-speech-recognition"
    usage = """import librosa
import openvino_genai as ov_genai

pipe = ov_genai.WhisperPipeline("{path}", "{device}")
audio, _ = librosa.load("speech.wav", sr=16000)
print(pipe.generate(audio.tolist()).texts[0])

# or with optimum-intel
from optimum.intel import OVModelForSpeechSeq2Seq
model = OVModelForSpeechSeq2Seq.from_pretrained("{path}")"""

    def report_metrics(self, params: Params) -> list[str]:
        sets = params.validate_settings.whisper.speech_sets
        return [f"wer_{s}" for s in sets]

    def compressed_irs(self, artifact: Path) -> list[Path]:
        return [artifact / "openvino_encoder_model.xml", artifact / "openvino_decoder_model.xml"]

    def performance(self, artifact: Path, device: str, params: Params, precision: str) -> dict[str, float]:
        s = params.validate_settings.whisper
        return performance(artifact, device, precision, s) if s.speech_sets else {}

    def validate(self, artifact: Path, device: str, params: Params, precision: str,
                 adapters: list[AdapterRun] = ()) -> Validation:
        s = params.validate_settings.whisper
        pipe, config = whisper_pipeline(artifact, device, precision, s)
        metrics, outputs = {}, {}
        for name in s.speech_sets:
            result = transcribe_set(pipe, config, name)
            metrics |= {f"{k}_{name}": v for k, v in result["metrics"].items()}
            outputs[name] = result["hypotheses"]
        return Validation(metrics=metrics, outputs={"hypotheses": outputs},
                          info={"speech_sets": s.speech_sets, "language": s.language, "task": s.task,
                                "normalizer": "whisper EnglishTextNormalizer"})
