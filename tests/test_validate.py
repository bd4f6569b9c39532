import json
import math

import pytest
import yaml

from tests.conftest import EVAL_TEXT, run_stage, write_params


@pytest.fixture
def exported(project):
    run_stage("stages.evalsets")
    run_stage("stages.fetch", "--model", "tiny")
    for variant in ("fp16", "int4-npu"):
        run_stage("stages.export", "--model", "tiny", "--variant", variant)
    return project


def test_cpu_artifact_gets_perplexity_and_generations(exported):
    run_stage("stages.validate", "--model", "tiny", "--variant", "fp16")
    record = json.loads((exported / "metrics/validate/tiny/fp16.json").read_text())
    assert record["status"] == "validated" and record["targets"] == ["CPU"] and record["device"] == "CPU"
    assert record["inference_precision"] == "f32"
    cpu = record["devices"]["CPU"]
    assert cpu["status"] == "validated" and cpu["device_name"] and cpu["metrics"] == record["metrics"]
    ppl = record["metrics"]["perplexity"]
    # a random-init model is close to uniform over its vocabulary: perplexity near the vocab size, finite
    vocab = json.loads((exported / "models/tiny/checkpoint/config.json").read_text())["vocab_size"]
    assert math.isfinite(ppl) and vocab / 4 < ppl < vocab * 4
    assert record["metrics"]["eval_tokens"] > 100
    outputs = json.loads((exported / "outputs/tiny/fp16/outputs.json").read_text())
    assert [g["prompt"] for g in outputs["generations"]] == ["Paris is", "def main():"]


def test_absent_target_device_is_not_validated_with_proxy_numbers(exported):
    run_stage("stages.validate", "--model", "tiny", "--variant", "int4-npu")
    record = json.loads((exported / "metrics/validate/tiny/int4-npu.json").read_text())
    assert record["status"] == "not_validated"
    assert "NPU: device NPU is not present on this host (available: CPU)" in record["reason"]
    assert record["metrics"] == {} and record["devices"]["NPU"]["status"] == "not_validated"
    assert record["proxy"]["device"] == "CPU" and record["proxy"]["metrics"]["perplexity"] > 0


def test_performance_metrics_come_from_a_fresh_process(exported):
    params = yaml.safe_load((exported / "params.yaml").read_text())
    params["validate"]["performance"] = True
    write_params(exported, params)
    run_stage("stages.validate", "--model", "tiny", "--variant", "fp16")
    m = json.loads((exported / "metrics/validate/tiny/fp16.json").read_text())["metrics"]
    assert 0 < m["load_s"] < 120 and m["ttft_ms"] > 0 and m["tpot_ms"] > 0 and m["throughput_tok_s"] > 0
    # EOS ignored: every prompt generated exactly max_new_tokens (2 prompts x 8), the warm-up not counted
    assert m["generated_tokens"] == 16
    assert 50 < m["peak_rss_mb"] < 8000


def test_every_target_device_gets_its_own_result(exported):
    params = yaml.safe_load((exported / "params.yaml").read_text())
    params["variants"]["fp16"]["targets"] = ["CPU", "GPU"]
    write_params(exported, params)
    run_stage("stages.validate", "--model", "tiny", "--variant", "fp16")
    record = json.loads((exported / "metrics/validate/tiny/fp16.json").read_text())
    assert record["status"] == "partial" and record["device"] == "CPU"
    assert record["devices"]["CPU"]["metrics"]["perplexity"] > 1
    assert record["devices"]["GPU"] == {"status": "not_validated",
                                        "reason": "device GPU is not present on this host (available: CPU)"}


def test_a_build_only_host_validates_nothing(exported):
    run_stage("stages.validate", "--model", "tiny", "--variant", "fp16", env={"OVBUILD_DEVICES": ""})
    record = json.loads((exported / "metrics/validate/tiny/fp16.json").read_text())
    assert record["status"] == "not_validated" and "proxy" not in record
    assert record["devices"]["CPU"]["reason"] == "device CPU is not present on this host (available: none)"


def test_adhoc_cli_scores_any_ir_on_any_text(exported, tmp_path):
    text = tmp_path / "any.txt"
    text.write_text(EVAL_TEXT)
    proc = run_stage("stages.validate", "--artifact", "models/tiny/fp16", "--device", "CPU", "--text", str(text))
    result = json.loads(proc.stdout)
    assert result["status"] == "validated" and result["metrics"]["perplexity"] > 1
    proc = run_stage("stages.validate", "--artifact", "models/tiny/fp16", "--device", "NPU", "--text", str(text))
    assert json.loads(proc.stdout)["status"] == "not_validated"
    proc = run_stage("stages.validate", "--artifact", "models/nope", "--text", str(text), check=False)
    assert proc.returncode != 0 and "--artifact: models/nope has no openvino_model.xml" in proc.stderr


def test_artifact_loads_as_is_in_optimum_intel(exported):
    from optimum.intel import OVModelForCausalLM
    from transformers import AutoTokenizer

    folder = exported / "models/tiny/fp16"
    model = OVModelForCausalLM.from_pretrained(folder, device="CPU")
    ids = AutoTokenizer.from_pretrained(folder)("Paris is", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
