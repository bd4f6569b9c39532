import json

import pytest
import yaml

from stages import gate
from stages.params import load_params
from tests.conftest import run_stage, write_params


def record(project, variant, status="validated", absent=(), **metrics):
    """A validation record as stages.validate writes it: validated on CPU (unless not_validated), plus a
    not_validated entry for each device in `absent`."""
    path = project / "metrics/validate/tiny" / f"{variant}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    missing = {"status": "not_validated", "reason": "device {} is not present on this host"}
    devices = {d: {**missing, "reason": missing["reason"].format(d)} for d in absent}
    if status == "validated":
        devices = {"CPU": {"status": "validated", "metrics": metrics}, **devices}
    body = {"status": status if not absent or status != "validated" else "partial",
            "device": "CPU" if status == "validated" else None,
            "metrics": metrics if status == "validated" else {}, "devices": devices}
    path.write_text(json.dumps(body))


def gens(project, variant, outputs):
    path = project / "outputs/tiny" / variant / "outputs.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"generations": [{"prompt": str(i), "output": o} for i, o in enumerate(outputs)]}))


@pytest.fixture
def validated(project):
    record(project, "fp16", perplexity=50.0)
    record(project, "int8", perplexity=51.0)
    record(project, "int4", perplexity=60.0)
    record(project, "int4-npu", status="not_validated", absent=["NPU"])
    return project


def rows_for(artifact):
    rows, _ = gate.evaluate(load_params())
    return [r for r in rows if r.artifact == artifact]


def test_within_thresholds_passes_and_not_validated_is_reported(validated):
    rows, _ = gate.evaluate(load_params())
    assert {r.status for r in rows if r.artifact != "tiny/int4-npu"} == {"pass"}
    (npu,) = rows_for("tiny/int4-npu")
    assert npu.status == "not_validated" and npu.device == "NPU" and "NPU" in npu.note


def test_each_target_device_is_gated(validated):
    record(validated, "int4", absent=["GPU"], perplexity=60.0)
    rows = rows_for("tiny/int4")
    assert {(r.device, r.status) for r in rows} == {("CPU", "pass"), ("GPU", "not_validated")}
    assert "device GPU is not present" in [r for r in rows if r.device == "GPU"][0].note
    params = yaml.safe_load((validated / "params.yaml").read_text())
    params["gate"]["mode"] = "release"
    write_params(validated, params)
    assert {(r.device, r.status) for r in rows_for("tiny/int4")} == {("CPU", "pass"), ("GPU", "fail")}


def test_relative_breach_fails_with_value_threshold_and_reference(validated):
    record(validated, "int8", perplexity=80.0)  # +60% over the reference, rule allows +50%
    failing = [r for r in rows_for("tiny/int8") if r.status == "fail"]
    assert len(failing) == 1
    assert (failing[0].value, failing[0].reference) == (80.0, 50.0)
    assert failing[0].threshold == "+50% vs ref (is +60.0%)"


def test_missing_metric_file_and_missing_value_fail(validated):
    (validated / "metrics/validate/tiny/int4.json").unlink()
    assert [r.status for r in rows_for("tiny/int4")] == ["fail"]
    record(validated, "int8")  # validated, but no perplexity
    assert {(r.status, r.note) for r in rows_for("tiny/int8")} == {("fail", "metric missing")}


def test_release_mode_fails_not_validated(validated):
    params = yaml.safe_load((validated / "params.yaml").read_text())
    params["gate"]["mode"] = "release"
    write_params(validated, params)
    (npu,) = rows_for("tiny/int4-npu")
    assert npu.status == "fail"


def test_generation_similarity_against_reference(validated):
    gens(validated, "fp16", ["the capital is Paris", "abc"])
    gens(validated, "int8", ["the capital is Paris", "xyz"])
    params = yaml.safe_load((validated / "params.yaml").read_text())
    params["gate"]["rules"].append({"metric": "generation_exact_match", "variants": ["int8"], "min": 0.9})
    write_params(validated, params)
    (row,) = [r for r in rows_for("tiny/int8") if r.metric == "generation_exact_match"]
    assert (row.value, row.status) == (0.5, "fail")


def test_cli_fails_with_table_and_still_writes_summary(validated):
    record(validated, "int8", perplexity=500.0)
    proc = run_stage("stages.gate", check=False)
    assert proc.returncode == 1
    assert "tiny/int8" in proc.stdout and "FAIL" in proc.stdout and "GATE FAILED" in proc.stderr
    summary = json.loads((validated / "metrics/gate.json").read_text())
    assert summary["passed"] is False and summary["counts"]["fail"] == 1
