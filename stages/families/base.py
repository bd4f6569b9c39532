"""The interface every family implements, and the export path they share (optimum-intel's CLI flow)."""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from stages.params import Params, Variant

# optimum-intel 2.2.0 refuses these model types on transformers 5 (MAX_TRANSFORMERS_VERSION "5.0"); verified with
# transformers 5.5.4 (export + openvino_genai LLMPipeline generation), so the cap is raised to that version only.
EXPORT_CAP_LIFTS = {"gemma3_text": "Gemma3TextOpenVINOConfig"}
EXPORT_CAP_VERIFIED = "5.5.4"


@dataclass
class Validation:
    """What validating one artifact on one device yields."""

    metrics: dict[str, Any]  # numbers the gate reads
    outputs: dict[str, Any] = field(default_factory=dict)  # saved next to the metrics (generations, hypotheses)
    info: dict[str, Any] = field(default_factory=dict)  # how it was measured (eval set, precision, sizes)
    files: dict[str, bytes] = field(default_factory=dict)  # written below the outputs folder (e.g. images)
    plot_image: Optional[bytes] = None  # a PNG for DVC's image plots (e.g. a contact sheet)


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

    def config(self, alpha: Optional[float] = None):
        import openvino_genai as ov_genai

        return ov_genai.AdapterConfig(self.adapter(), self.alpha if alpha is None else alpha)


class Family:
    name: str = ""
    task: str = ""  # optimum task, e.g. text-generation-with-past
    latency_metric: str = ""  # the performance metric plotted against size
    pipeline_tag: str = ""  # the Hugging Face hub pipeline tag, for model cards
    usage: str = ""  # a model card's code sample; {path} and {device} are filled in
    library: str = "transformers"
    calibration_chars: int = 1000  # characters per calibration sample cut from a calibration text set

    def export(self, checkpoint: Path, variant: Variant, out: Path, calibration: Optional[list[str]] = None,
               trust_remote_code: bool = False) -> None:
        """Mirror `optimum-cli export openvino`: export (fp16 or fp32), then weight compression with NNCF,
        always with the explicit recipe (the CLI silently swaps in per-model defaults when none is given)."""
        from optimum.exporters.openvino import model_configs
        from optimum.exporters.openvino.__main__ import _main_quantize, main_export
        from optimum.intel.openvino.configuration import OVConfig

        for config_class in EXPORT_CAP_LIFTS.values():
            getattr(model_configs, config_class).MAX_TRANSFORMERS_VERSION = EXPORT_CAP_VERIFIED
        qconfig = variant.quantization_config()
        if qconfig is not None and calibration:
            qconfig = {**qconfig, **self.calibration_config(checkpoint, calibration)}
        ov_config = OVConfig(dtype="fp16") if qconfig is None else OVConfig(quantization_config=qconfig)
        main_export(str(checkpoint), output=out, task=self.task, ov_config=ov_config, stateful=True,
                    convert_tokenizer=True, library_name=self.library, trust_remote_code=trust_remote_code)
        if qconfig is not None:
            _main_quantize(str(checkpoint), task=self.task, library_name=self.library, quantization_config=qconfig,
                           output=out, cache_dir=None, trust_remote_code=trust_remote_code)

    def calibration_config(self, checkpoint: Path, samples: list[str]) -> dict:
        """The quantization-config keys that pass calibration text to optimum-intel."""
        return {"dataset": samples, "tokenizer": str(checkpoint)}

    def compressed_irs(self, artifact: Path) -> list[Path]:
        """The IRs NNCF compresses; each one's rt_info must carry the recipe."""
        return [artifact / "openvino_model.xml"]

    def report_metrics(self, params: Params) -> list[str]:
        """The metric columns of this family's report table (the first is plotted against size)."""
        return []

    def validate(self, artifact: Path, device: str, params: Params, precision: str,
                 adapters: list[AdapterRun] = ()) -> Validation:
        """Accuracy on one device; with adapters, also per adapter (metric names `<metric>@<adapter>`)."""
        raise NotImplementedError

    def performance(self, artifact: Path, device: str, params: Params, precision: str) -> dict[str, float]:
        """Speed on a fixed, warmed-up workload (load + compile time included); run in its own process."""
        return {}

    @staticmethod
    def outputs(folder: Path) -> dict:
        """What validation saved in an artifact's outputs folder ({} when it has not run)."""
        path = Path(folder) / "outputs.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def compare(self, params: Params, reference: Path, current: Path) -> dict[str, float]:
        """Metrics of an artifact's outputs (folder `current`) relative to the reference variant's (`reference`)."""
        return {}
