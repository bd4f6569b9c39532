"""LoRA adapters on a tiny LLM: registered at pipeline construction and switched per call (A, B, a blend, none)
through openvino-genai, matched against PEFT; the adapter stage (training, checks) and its bad inputs."""

import json
from pathlib import Path

import pytest

from tests.conftest import assert_nothing_written, run_stage, trained_lora, write_params


def random_lora(checkpoint: Path, out: Path, seed: int, targets: list[str], r: int = 4, lora_alpha: int = 8) -> Path:
    """A PEFT adapter with random (non-zero) A and B, so it visibly changes the model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(checkpoint),
        LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=targets, init_lora_weights=False),
    )
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def lora_setup(tmp_path_factory):
    """A tiny LLM exported to fp16 IR and two random adapters on different modules."""
    from stages.core.schema import Variant
    from stages.core.tiny import tiny_llm
    from stages.families.llm import LLMFamily

    root = tmp_path_factory.mktemp("lora")
    checkpoint = tiny_llm(root / "ckpt")
    LLMFamily().export(checkpoint, Variant(weight_format="fp16"), root / "fp16")
    a = random_lora(checkpoint, root / "a", 1, ["q_proj", "v_proj"])
    b = random_lora(checkpoint, root / "b", 2, ["up_proj", "o_proj"], r=8, lora_alpha=8)
    return root, checkpoint, a, b


def runs(a: Path, b: Path):
    from stages.families.base import AdapterRun

    return [
        AdapterRun("a", a / "adapter_model.safetensors", 8 / 4),
        AdapterRun("b", b / "adapter_model.safetensors", 1.0),
    ]


def test_switching_a_b_blend_none_matches_peft(lora_setup):
    import openvino_genai as ov_genai

    from stages.adapter import peft_perplexity
    from stages.families.llm import adapter_pipeline, eval_windows, perplexity, pipeline_perplexity
    from tests.conftest import EVAL_TEXT

    root, checkpoint, a, b = lora_setup
    run_a, run_b = runs(a, b)
    windows = eval_windows(root / "fp16", EVAL_TEXT, 64, 256)
    from stages.families.base import RunContext

    pipe = adapter_pipeline(root / "fp16", "CPU", RunContext(None, "f32"), [run_a, run_b])
    ppl = {
        label: pipeline_perplexity(pipe, windows, config, label)
        for label, config in [
            ("none", ov_genai.AdapterConfig()),
            ("a", run_a.config()),
            ("b", run_b.config()),
            ("blend", ov_genai.AdapterConfig([(run_a.adapter(), 1.0), (run_b.adapter(), 0.5)])),
            ("none again", ov_genai.AdapterConfig()),
            ("a half", run_a.config(alpha=1.0)),
        ]
    }
    # no adapter: the plain model (raw OpenVINO on the same windows)
    plain = perplexity(root / "fp16", EVAL_TEXT, "CPU", "f32", 64, 256)["perplexity"]
    assert ppl["none"] == pytest.approx(plain, rel=1e-4)
    assert ppl["none again"] == pytest.approx(ppl["none"], rel=1e-6), "switching back to none must undo the adapter"
    distinct = [ppl[k] for k in ("none", "a", "b", "blend", "a half")]
    assert min(abs(x - y) / x for i, x in enumerate(distinct) for y in distinct[i + 1 :]) > 1e-3, ppl
    # the PEFT reference (fp32 PyTorch) at the same alpha, on the same text and windows
    for run, folder in ((run_a, a), (run_b, b)):
        reference = peft_perplexity(checkpoint, folder, run.alpha, EVAL_TEXT, 64, 256)
        assert ppl[run.name] == pytest.approx(reference["perplexity"], rel=5e-3)
        assert reference["perplexity_base"] == pytest.approx(plain, rel=5e-3)


def test_generate_switches_per_call(lora_setup):
    import openvino_genai as ov_genai

    from stages.families.base import RunContext
    from stages.families.llm import generate

    root, _, a, b = lora_setup
    prompts = ["Paris is", "def main():", "The quick brown fox"]
    replies, _ = generate(root / "fp16", prompts, "CPU", RunContext(None, "f32"), 12, runs(a, b))
    assert set(replies) == {"none", "a", "b"}
    plain = ov_genai.LLMPipeline(str(root / "fp16"), "CPU", INFERENCE_PRECISION_HINT="f32")
    config = ov_genai.GenerationConfig(max_new_tokens=12, do_sample=False)
    assert [r["output"] for r in replies["none"]] == [plain.generate([p], config).texts[0] for p in prompts]
    assert [r["output"] for r in replies["a"]] != [r["output"] for r in replies["none"]]


@pytest.fixture
def lora_project(project):
    """The tiny pipeline project with a calibration set for training adapters."""
    import yaml

    params = yaml.safe_load((project / "params.yaml").read_text())
    (project / "train.txt").write_text((project / "eval.txt").read_text()[::-1] * 3)
    params["calibration"] = {"train": {"path": str(project / "train.txt")}}
    params["validate"]["llm"]["max_tokens"] = 128
    return project, params


def test_trained_adapter_through_the_pipeline(lora_project):
    project, params = lora_project
    params["adapters"] = {"tiny-lora": trained_lora()}
    params["gate"]["rules"] += [
        {"family": "llm", "metric": "effect_pct@*", "min": 0.01},
        {"family": "llm", "metric": "peft_delta_pct@*", "variants": ["fp16"], "max": 0.5},
    ]
    write_params(project, params)
    for stage in (
        ["stages.check_params", "--check"],
        ["stages.fetch", "--model", "tiny"],
        ["stages.evalsets"],
        ["stages.speechsets"],
        ["stages.adapter", "--adapter", "tiny-lora"],
        ["stages.plan"],
        ["stages.export", "--artifact", "tiny/fp16"],
        ["stages.validate", "--artifact", "tiny/fp16"],
    ):
        run_stage(*stage, cwd=project)
    manifest = json.loads((project / "models/adapters/tiny-lora/manifest.json").read_text())
    assert manifest["alpha"] == 2.0 and manifest["lora_modules"] == 4  # q_proj + v_proj in 2 layers
    assert manifest["training"]["steps"] == 4 and manifest["reference"]["perplexity"] > 0
    metrics = json.loads((project / "metrics/validate/tiny/fp16.json").read_text())["devices"]["CPU"]["metrics"]
    assert metrics["effect_pct@tiny-lora"] > 0.01
    assert metrics["peft_delta_pct@tiny-lora"] < 0.5
    assert metrics["perplexity@none"] == pytest.approx(metrics["perplexity"], rel=1e-4)
    outputs = json.loads((project / "outputs/tiny/fp16/CPU/outputs.json").read_text())
    assert len(outputs["adapter_generations"]["tiny-lora"]) == 2


def test_missing_adapter_file_is_one_clear_error(lora_project):
    project, params = lora_project
    params["adapters"] = {
        "gone": {"model": "tiny", "source": {"type": "file", "path": "/no/such/adapter.safetensors"}, "alpha": 1.0}
    }
    write_params(project, params)
    run_stage("stages.fetch", "--model", "tiny", cwd=project)
    proc = run_stage("stages.adapter", "--adapter", "gone", cwd=project, check=False)
    assert proc.returncode != 0
    assert "adapters.gone.source.path: adapter file not found: /no/such/adapter.safetensors" in proc.stderr
    assert_nothing_written(project / "models/adapters/gone")


def test_adapter_for_another_architecture_is_refused(lora_project, tmp_path):
    from stages.core.tiny import tiny_llm

    project, params = lora_project
    other = random_lora(tiny_llm(tmp_path / "wide", hidden=96), tmp_path / "wide-lora", 0, ["q_proj"])
    params["adapters"] = {"wide": {"model": "tiny", "source": {"type": "file", "path": str(other)}}}
    write_params(project, params)
    run_stage("stages.fetch", "--model", "tiny", cwd=project)
    proc = run_stage("stages.adapter", "--adapter", "wide", cwd=project, check=False)
    assert proc.returncode != 0
    assert (
        "adapters.wide: adapter_model.safetensors 'model.layers.0.self_attn.q_proj' has lora_A [4, 96]" in proc.stderr
    )
    assert "(an adapter for another architecture?)" in proc.stderr
    assert_nothing_written(project / "models/adapters/wide")
