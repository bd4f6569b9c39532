"""The interface every family implements, and the export path they share (optimum-intel's CLI flow).

A family owns everything about its model type: its optimum task, its validation settings (`validate.<name>` in
params, a pydantic model), the inputs its validation reads, how to run an artifact through openvino-genai, how to
run the source checkpoint in PyTorch on the same inputs, how to compare two runs' outputs, which of its metrics
count as accuracy evidence, and the gate rules that apply when params set none for it.
"""

from __future__ import annotations

import abc
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from stages.core.determinism import deterministic_torch
from stages.core.errors import BuildError
from stages.core.schema import Strict, Variant
from stages.core.tokenizers import fix_digit_split_conversion


@dataclass
class Validation:
    """What running one artifact (or the source checkpoint) on one device yields."""

    metrics: dict[str, float]  # numbers the gate reads (accuracy only: nothing host-dependent)
    outputs: dict[str, Any] = field(default_factory=dict)  # saved as outputs.json (generations, hypotheses)
    info: dict[str, Any] = field(default_factory=dict)  # how it was measured (eval set, precision, sizes)
    files: dict[str, bytes] = field(default_factory=dict)  # written below the outputs folder (e.g. images)
    plot_image: bytes | None = None  # a PNG for DVC's image plots (e.g. a contact sheet)


@dataclass
class Comparison:
    """One run's outputs against another's (the source checkpoint, or a reference variant)."""

    metrics: dict[str, float]
    worst: list[dict] = field(default_factory=list)  # the examples that moved most, worst first


@dataclass
class AdapterRun:
    """A LoRA as validation uses it: registered when the pipeline is built, chosen per generate() call."""

    name: str
    path: Path  # the adapter's .safetensors file
    alpha: float  # openvino-genai's weight for it
    reference: dict[str, Any] = field(default_factory=dict)  # the PEFT reference's metrics (adapter stage)

    @functools.cached_property
    def _adapter(self):
        import openvino_genai as ov_genai

        return ov_genai.Adapter(str(self.path))

    def adapter(self):
        """The one Adapter object: genai matches adapters by object, so a second one for the same file is
        silently not applied."""
        return self._adapter

    def config(self, alpha: float | None = None):
        import openvino_genai as ov_genai

        return ov_genai.AdapterConfig(self.adapter(), self.alpha if alpha is None else alpha)


def register_adapters(adapters: list[AdapterRun]) -> dict:
    """Pipeline-construction keyword that registers every adapter (empty when there are none)."""
    import openvino_genai as ov_genai

    return {"adapters": ov_genai.AdapterConfig([a.adapter() for a in adapters])} if adapters else {}


@dataclass
class RunContext:
    """Everything a family needs to run one model on one device: its settings and the device's options."""

    settings: Any  # the family's validate.<name> settings
    precision: str  # inference precision hint (f32 / f16 / bf16)
    model: str = ""
    adapters: list[AdapterRun] = field(default_factory=list)
    device_config: dict[str, Any] = field(default_factory=dict)  # pipeline options for the device (e.g. NPU)
    compile_options: dict[str, Any] | None = None  # ov.Core().compile_model options, when they differ
    scorers: dict[str, Path] = field(default_factory=dict)  # scorer name -> checkpoint folder

    def pipeline_config(self) -> dict[str, Any]:
        """Keyword properties for an openvino-genai pipeline on this device."""
        return {"INFERENCE_PRECISION_HINT": self.precision, **self.device_config}

    def compile_config(self) -> dict[str, Any]:
        """Properties for ov.Core().compile_model on this device (genai-only options left out)."""
        if self.compile_options is not None:
            return {"INFERENCE_PRECISION_HINT": self.precision, **self.compile_options}
        genai_only = {"MAX_PROMPT_LEN", "MIN_RESPONSE_LEN", "GENERATE_HINT", "PREFILL_HINT", "CACHE_DIR"}
        return {k: v for k, v in self.pipeline_config().items() if k not in genai_only}


class Family(abc.ABC):
    name: ClassVar[str]
    Settings: ClassVar[type[Strict]]  # validate.<name> in params
    task: ClassVar[str]  # optimum task, e.g. text-generation-with-past
    latency_metric: ClassVar[str]  # the performance metric plotted against size
    pipeline_tag: ClassVar[str]  # the Hugging Face hub pipeline tag, for model cards
    usage: ClassVar[str]  # a model card's code sample; {path} and {device} are filled in
    library: ClassVar[str] = "transformers"
    calibration_chars: ClassVar[int] = 1000  # characters per calibration sample cut from a calibration text set
    accuracy_metrics: ClassVar[tuple[str, ...]]  # fnmatch patterns: an artifact gated on none of them fails
    default_rules: ClassVar[tuple[dict, ...]]  # gate rules applied when params set none for this family
    comparison_metrics: ClassVar[tuple[str, ...]]  # metrics of compare() (value depends on what it compares with)
    adapter_families: ClassVar[bool] = False  # whether LoRA adapters apply to this family

    # ---------------------------------------------------------------- params
    def check_params(self, settings, params, key: str) -> None:  # noqa: B027 (optional hook)
        """Cross-references of the family's settings (raise ValueError("<sub.key>: message"))."""

    def metric_names(self, settings, params, model: str) -> list[str]:
        """Every metric name a model of this family can have in the gate (validation, comparison, adapters)."""
        return [*self.validation_metrics(settings, params, model), *self.comparison_metrics]

    @abc.abstractmethod
    def validation_metrics(self, settings, params, model: str) -> list[str]:
        """The metric names validate() records for a model (with these settings)."""

    def plan_inputs(self, settings, params, model: str) -> dict[str, Path]:
        """The data files/folders validation reads, by label: their content hashes go into the plan file, so a
        change re-validates exactly the artifacts that read them."""
        return {}

    def report_metrics(self, settings) -> list[str]:
        """The metric columns of this family's report table (the first is plotted against size)."""
        return list(self.accuracy_metrics)

    # ---------------------------------------------------------------- export
    def export(
        self,
        checkpoint: Path,
        variant: Variant,
        out: Path,
        calibration: list[str] | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        """Mirror `optimum-cli export openvino`: export (fp16 or fp32), then weight compression with NNCF,
        always with the explicit recipe (the CLI silently swaps in per-model defaults when none is given)."""
        from optimum.exporters.openvino.__main__ import _main_quantize, main_export
        from optimum.intel.openvino.configuration import OVConfig

        lift_export_caps()
        order_cross_attention_states()
        deterministic_torch()  # data-aware recipes calibrate on sampled inputs (e.g. hybrid SD: random latents)
        fix_digit_split_conversion()
        qconfig = variant.quantization_config()
        if qconfig is not None and calibration:
            qconfig = {**qconfig, **self.calibration_config(checkpoint, calibration)}
        ov_config = OVConfig(dtype="fp16") if qconfig is None else OVConfig(quantization_config=qconfig)
        main_export(
            str(checkpoint),
            output=out,
            task=self.task,
            ov_config=ov_config,
            stateful=True,
            convert_tokenizer=True,
            library_name=self.library,
            trust_remote_code=trust_remote_code,
        )
        if qconfig is not None:
            _main_quantize(
                str(checkpoint),
                task=self.task,
                library_name=self.library,
                quantization_config=qconfig,
                output=out,
                cache_dir=None,
                trust_remote_code=trust_remote_code,
            )

    def calibration_config(self, checkpoint: Path, samples: list[str]) -> dict:
        """The quantization-config keys that pass calibration text to optimum-intel."""
        return {"dataset": samples, "tokenizer": str(checkpoint)}

    def compressed_irs(self, artifact: Path) -> list[Path]:
        """The IRs NNCF compresses; each one's rt_info must carry the recipe."""
        return [artifact / "openvino_model.xml"]

    def device_options(self, device: str, variant: Variant, emulation: dict[str, Any]) -> dict[str, Any]:
        """openvino-genai pipeline options for running this family on `device` (`emulation`: the plugin options
        that move an absent target's compute to another device)."""
        return dict(emulation)

    def tokenizer_folders(self, artifact: Path) -> list[Path]:
        """Folders holding an HF tokenizer beside its OpenVINO tokenizer IR (checked for parity after export)."""
        return [artifact]

    # ---------------------------------------------------------------- running
    @abc.abstractmethod
    def validate(self, artifact: Path, device: str, ctx: RunContext) -> Validation:
        """Accuracy of an artifact on one device through openvino-genai; with adapters, also per adapter
        (metric names `<metric>@<adapter>`)."""

    @abc.abstractmethod
    def reference(self, checkpoint: Path, ctx: RunContext) -> Validation:
        """The source checkpoint in PyTorch fp32 on exactly the inputs validate() uses: the ground truth."""

    @abc.abstractmethod
    def compare(self, reference: Path, current: Path, ctx: RunContext) -> Comparison:
        """`current`'s saved outputs against `reference`'s (two outputs folders written by validate/reference)."""

    @abc.abstractmethod
    def performance(self, artifact: Path, device: str, ctx: RunContext) -> dict[str, float]:
        """Speed on a fixed, warmed-up workload (load + compile time included); run in its own process."""

    @staticmethod
    def outputs(folder: Path) -> dict:
        """What a run saved in an outputs folder ({} when it has not run)."""
        path = Path(folder) / "outputs.json"
        return json.loads(path.read_text()) if path.is_file() else {}


# optimum-intel 2.2.0 refuses these model types on transformers 5 (MAX_TRANSFORMERS_VERSION "5.0"); verified with
# transformers 5.5.4 (export + openvino_genai LLMPipeline generation), so the cap is raised to that version only.
EXPORT_CAP_LIFTS = {"gemma3_text": "Gemma3TextOpenVINOConfig"}
EXPORT_CAP_VERIFIED = "5.5.4"


def lift_export_caps() -> None:
    from optimum.exporters.openvino import model_configs

    for config_class in EXPORT_CAP_LIFTS.values():
        getattr(model_configs, config_class).MAX_TRANSFORMERS_VERSION = EXPORT_CAP_VERIFIED


def order_cross_attention_states() -> None:
    """optimum-intel turns an encoder-decoder's cross-attention K/V into states in the iteration order of a set of
    ov.Node (hashed by address), so the decoder IR's node order, names and bytes changed with every export; sort
    those nodes by their topological position instead. Idempotent."""
    from optimum.exporters.openvino import stateful

    original = stateful.find_output_nodes_of_dependent_subgraph
    if getattr(original, "ordered", False):
        return

    def ordered(model, sources):
        position = {node: i for i, node in enumerate(model.get_ordered_ops())}
        return sorted(original(model, sources), key=position.__getitem__)

    ordered.ordered = True
    stateful.find_output_nodes_of_dependent_subgraph = ordered


def worst(items: list[dict], key: str, n: int = 3, reverse: bool = False) -> list[dict]:
    """The n items with the lowest `key` (highest with reverse=True): who_what_benchmark's worst examples."""
    return sorted(items, key=lambda x: x[key], reverse=reverse)[:n]


def require(condition: bool, message: str) -> None:
    if not condition:
        raise BuildError(message)


def check_scorer(params, name: str, key: str) -> None:
    """A scorer named in a family's settings must be a `models` entry of family scorer."""
    if name not in params.models or params.models[name].family != "scorer":
        raise ValueError(f"{key}: '{name}' is not a model of family scorer")
