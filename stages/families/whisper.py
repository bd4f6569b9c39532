"""Whisper speech-to-text: WER/CER per speech set through openvino_genai.WhisperPipeline; the source checkpoint in
transformers fp32 on the same utterances."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import Field
from tqdm import tqdm

from stages.core import metrics as m
from stages.core.paths import speech_set_dir
from stages.core.schema import Strict
from stages.core.speech import SAMPLE_RATE, load_audio, speech_set
from stages.families import register
from stages.families.base import Comparison, Family, RunContext, Validation, worst


class WhisperSettings(Strict):
    reference: str = "fp16"  # the variant others are compared with (besides the source checkpoint)
    speech_sets: list[str] = Field(min_length=1)
    language: str | None = None  # e.g. "en" for multilingual models; None for English-only ones
    task: Literal["transcribe", "translate"] = "transcribe"
    max_new_tokens: int = Field(default=128, gt=0)
    performance_utterances: int = Field(default=3, gt=0)  # from the first speech set, after one warm-up


def whisper_pipeline(artifact: Path, device: str, ctx: RunContext):
    import openvino_genai as ov_genai

    s: WhisperSettings = ctx.settings
    pipe = ov_genai.WhisperPipeline(str(artifact), device, **ctx.pipeline_config())
    config = pipe.get_generation_config()
    config.max_new_tokens = s.max_new_tokens
    if config.is_multilingual:
        if s.language:
            config.language = f"<|{s.language}|>"
        config.task = s.task
    return pipe, config


def transcripts(entries: list[dict], hypotheses: list[str]) -> list[dict]:
    return [
        {"audio": Path(e["audio"]).name, "reference": e["text"], "hypothesis": h} for e, h in zip(entries, hypotheses)
    ]


def set_metrics(name: str, entries: list[dict], hypotheses: list[str]) -> dict[str, float]:
    rates = m.error_rates([e["text"] for e in entries], hypotheses)
    return {f"wer_{name}": rates["wer"], f"cer_{name}": rates["cer"], f"utterances_{name}": float(len(entries))}


class TorchWhisper:
    """The source checkpoint through transformers (fp32, greedy), with the language/task validation uses."""

    def __init__(self, checkpoint: Path, s: WhisperSettings):
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.processor = WhisperProcessor.from_pretrained(checkpoint)
        self.model = WhisperForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
        multilingual = self.model.generation_config.is_multilingual
        self.kwargs = {"max_new_tokens": s.max_new_tokens}
        if multilingual:
            self.kwargs |= {"task": s.task, **({"language": s.language} if s.language else {})}

    def transcribe(self, audio) -> str:
        import torch

        features = self.processor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        with torch.no_grad():
            ids = self.model.generate(features, **self.kwargs)
        return self.processor.batch_decode(ids, skip_special_tokens=True)[0].strip()


@register
class WhisperFamily(Family):
    name = "whisper"
    Settings = WhisperSettings
    task = "automatic-speech-recognition-with-past"
    latency_metric = "rtf"
    pipeline_tag = "automatic-speech-recognition"
    accuracy_metrics = ("wer_*", "cer_*", "transcript_exact_match")
    comparison_metrics = ("transcript_exact_match", "transcript_wer")
    default_rules = ({"metric": "wer_*", "against": "source", "max_increase": 0.02},)
    usage = """import librosa
import openvino_genai as ov_genai

pipe = ov_genai.WhisperPipeline("{path}", "{device}")
audio, _ = librosa.load("speech.wav", sr=16000)
print(pipe.generate(audio.tolist()).texts[0])

# or with optimum-intel
from optimum.intel import OVModelForSpeechSeq2Seq
model = OVModelForSpeechSeq2Seq.from_pretrained("{path}")"""

    def check_params(self, settings: WhisperSettings, params, key: str) -> None:
        for i, name in enumerate(settings.speech_sets):
            if name not in params.speech_sets:
                raise ValueError(f"{key}.speech_sets.{i}: unknown speech set '{name}'")

    def validation_metrics(self, settings: WhisperSettings, params, model: str) -> list[str]:
        return [f"{k}_{s}" for s in settings.speech_sets for k in ("wer", "cer", "utterances")]

    def plan_inputs(self, settings: WhisperSettings, params, model: str) -> dict[str, Path]:
        return {f"speech_set:{s}": speech_set_dir(s) for s in settings.speech_sets}

    def report_metrics(self, settings: WhisperSettings) -> list[str]:
        return [f"wer_{s}" for s in settings.speech_sets] + ["transcript_exact_match"]

    def compressed_irs(self, artifact: Path) -> list[Path]:
        return [artifact / "openvino_encoder_model.xml", artifact / "openvino_decoder_model.xml"]

    def _run(self, transcribe, s: WhisperSettings, label: str) -> Validation:
        metrics, outputs = {}, {}
        for name in s.speech_sets:
            entries = speech_set(name)
            hyps = [
                transcribe(load_audio(Path(e["audio"]), SAMPLE_RATE))
                for e in tqdm(entries, desc=f"transcribe {name} ({label})", unit="utt")
            ]
            metrics |= set_metrics(name, entries, hyps)
            outputs[name] = transcripts(entries, hyps)
        return Validation(
            metrics=metrics,
            outputs={"hypotheses": outputs},
            info={
                "speech_sets": s.speech_sets,
                "language": s.language,
                "task": s.task,
                "normalizer": "whisper EnglishTextNormalizer",
            },
        )

    def validate(self, artifact: Path, device: str, ctx: RunContext) -> Validation:
        pipe, config = whisper_pipeline(artifact, device, ctx)
        return self._run(
            lambda audio: pipe.generate(audio.tolist(), config).texts[0].strip(), ctx.settings, artifact.name
        )

    def reference(self, checkpoint: Path, ctx: RunContext) -> Validation:
        run = self._run(TorchWhisper(checkpoint, ctx.settings).transcribe, ctx.settings, "PyTorch fp32")
        run.info["how"] = "transformers WhisperForConditionalGeneration, fp32 PyTorch on CPU, greedy"
        return run

    def compare(self, reference: Path, current: Path, ctx: RunContext) -> Comparison:
        ref = self.outputs(reference).get("hypotheses", {})
        cur = self.outputs(current).get("hypotheses", {})
        pairs, moved = [], []
        for name in ctx.settings.speech_sets:
            a, b = ref.get(name, []), cur.get(name, [])
            if not a or [x["audio"] for x in a] != [y["audio"] for y in b]:
                return Comparison({})
            for x, y in zip(a, b):
                pairs.append((x["hypothesis"], y["hypothesis"]))
                change = m.utterance_wer(y["reference"], y["hypothesis"]) - m.utterance_wer(
                    x["reference"], x["hypothesis"]
                )
                if x["hypothesis"] != y["hypothesis"]:
                    moved.append(
                        {
                            "kind": "utterance",
                            "set": name,
                            "audio": y["audio"],
                            "reference": y["reference"],
                            "compared": x["hypothesis"],
                            "output": y["hypothesis"],
                            "wer_change": change,
                        }
                    )
        return Comparison(
            {
                "transcript_exact_match": m.share(a == b for a, b in pairs),
                "transcript_wer": m.error_rates([a or "-" for a, _ in pairs], [b for _, b in pairs])["wer"],
            },
            worst(moved, "wer_change", reverse=True),
        )

    def performance(self, artifact: Path, device: str, ctx: RunContext) -> dict[str, float]:
        """Load + compile time, then real-time factor, TTFT and TPOT over the first utterances of the first speech
        set, after one warm-up transcription."""
        s: WhisperSettings = ctx.settings
        start = time.perf_counter()
        pipe, config = whisper_pipeline(artifact, device, ctx)
        load_s = time.perf_counter() - start
        entries = speech_set(s.speech_sets[0])[: s.performance_utterances]
        clips = [load_audio(Path(e["audio"]), SAMPLE_RATE).tolist() for e in entries]
        pipe.generate(clips[0], config)
        compute_s, perf = 0.0, []
        for clip in tqdm(clips, desc=f"performance {artifact.name}", unit="utt"):
            begin = time.perf_counter()
            perf.append(pipe.generate(clip, config).perf_metrics)
            compute_s += time.perf_counter() - begin
        return {
            "load_s": load_s,
            "rtf": compute_s / (sum(map(len, clips)) / SAMPLE_RATE),
            "ttft_ms": m.mean(p.get_ttft().mean for p in perf),
            "tpot_ms": m.mean(p.get_tpot().mean for p in perf),
        }
