"""The gate on hand-written validation records: rules against the source and against a variant, per device, and
every way it could pass without evidence (a rule matching nothing, no accuracy rule, NaN, a missing metric)."""

import json

import pytest
import yaml

from stages import gate
from stages.check_params import load_checked
from stages.params import load_params
from tests.conftest import run_stage, write_params

pytestmark = pytest.mark.fast  # the edit-loop tier (make test-fast): no real weights, no dvc repro, no export


def record(project, variant, devices=None, absent=(), **metrics):
    """A validation record as stages.validate writes it: validated on CPU (or on `devices`, {device: level}),
    plus a not_validated entry for each device in `absent`."""
    path = project / "metrics/validate/tiny" / f"{variant}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    devices = {"CPU": "validated"} if devices is None else devices
    entries = {d: {"status": level, "metrics": metrics} for d, level in devices.items()}
    entries |= {d: {"status": "not_validated", "reason": f"device {d} is not present on this host"} for d in absent}
    ran = [d for d, level in devices.items() if level in ("validated", "emulated")]
    path.write_text(
        json.dumps(
            {
                "status": "validated" if ran else "not_validated",
                "family": "llm",
                "device": ran[0] if ran else None,
                "devices": entries,
            }
        )
    )


def source(project, **metrics):
    path = project / "metrics/reference/tiny.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": "tiny", "family": "llm", "status": "validated", "metrics": metrics}))


def gens(project, folder, outputs):
    path = project / "outputs/tiny" / folder / "outputs.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"generations": [{"prompt": str(i), "output": o} for i, o in enumerate(outputs)]}))


@pytest.fixture
def validated(project):
    source(project, perplexity=50.0)
    record(project, "fp16", perplexity=50.1)
    record(project, "int8", perplexity=51.0)
    record(project, "int4", perplexity=60.0)
    record(project, "int4-npu", devices={}, absent=["NPU"])
    return project


def set_rules(project, rules, **gate_settings):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["gate"].update(rules=rules, **gate_settings)
    write_params(project, params)


def rows_for(artifact=None, full=True):
    rows, _ = gate.evaluate(load_checked() if full else load_params())
    return [r for r in rows if artifact is None or r.artifact == artifact]


def test_within_thresholds_passes_and_not_validated_is_reported(validated):
    rows = rows_for()
    assert {r.status for r in rows if r.artifact != "tiny/int4-npu"} == {"pass"}
    (npu,) = rows_for("tiny/int4-npu")
    assert npu.status == "not_validated" and npu.device == "NPU" and "NPU" in npu.note
    (fp16_vs_source,) = [r for r in rows_for("tiny/fp16") if r.against == "source"]
    assert (fp16_vs_source.value, fp16_vs_source.reference) == (50.1, 50.0)
    assert fp16_vs_source.threshold == "+1% vs source (is +0.20%)"


def test_each_target_device_is_gated(validated):
    record(validated, "int4", absent=["GPU"], perplexity=60.0)
    assert {(r.device, r.status) for r in rows_for("tiny/int4")} == {("CPU", "pass"), ("GPU", "not_validated")}
    set_rules(validated, yaml.safe_load((validated / "params.yaml").read_text())["gate"]["rules"], mode="release")
    assert {(r.device, r.status) for r in rows_for("tiny/int4")} == {("CPU", "pass"), ("GPU", "fail")}


def test_relative_breach_fails_with_value_threshold_and_reference(validated):
    record(validated, "int8", perplexity=80.0)  # +59.7% over the fp16 reference, the rule allows +50%
    failing = [r for r in rows_for("tiny/int8") if r.status == "fail"]
    assert len(failing) == 1
    assert (failing[0].value, failing[0].reference, failing[0].against) == (80.0, 50.1, "fp16")
    assert failing[0].threshold == "+50% vs fp16 (is +59.68%)"


def test_fp16_that_drifted_from_the_source_fails(validated):
    """An export bug shared by every variant shows only against the source: int8 vs fp16 still passes."""
    record(validated, "fp16", perplexity=55.0)
    record(validated, "int8", perplexity=55.2)
    (row,) = [r for r in rows_for("tiny/fp16") if r.status == "fail"]
    assert (row.against, row.value, row.reference) == ("source", 55.0, 50.0)
    assert all(r.status == "pass" for r in rows_for("tiny/int8"))


def test_missing_metric_file_missing_value_and_nan_fail(validated):
    (validated / "metrics/validate/tiny/int4.json").unlink()
    assert [r.status for r in rows_for("tiny/int4")] == ["fail"]
    record(validated, "int8")  # validated, but no perplexity
    assert {(r.status, r.note) for r in rows_for("tiny/int8") if r.metric == "perplexity"} == {
        ("fail", "metric missing")
    }
    record(validated, "int8", perplexity="nan")  # how write_json stores a NaN
    notes = {r.note for r in rows_for("tiny/int8") if r.metric == "perplexity"}
    assert notes == {"value is nan: not a finite number"}


def test_a_rule_pattern_that_matches_nothing_fails_naming_it(validated):
    """The params check refuses a pattern no family metric matches; at the gate, a rule whose metric no artifact
    produced (e.g. adapter metrics of an adapter that ran nowhere) still fails rather than passing empty."""
    rules = yaml.safe_load((validated / "params.yaml").read_text())["gate"]["rules"]
    set_rules(validated, rules + [{"family": "llm", "metric": "perplexity@*", "min": 0.1}])
    with pytest.raises(Exception, match=r"gate.rules.3.metric: 'perplexity@\*' matches no metric of llm"):
        load_checked()
    (row,) = [r for r in rows_for(full=False) if r.artifact == "rule:llm"]
    assert row.status == "fail" and row.metric == "perplexity@*" and "matches no metric" in row.note


def test_an_artifact_gated_on_no_accuracy_metric_fails(validated):
    set_rules(validated, [{"family": "llm", "metric": "eval_tokens", "min": 1}])
    record(validated, "fp16", perplexity=50.1, eval_tokens=200.0)
    rows = [r for r in rows_for("tiny/fp16") if r.status == "fail"]
    assert [(r.metric, r.note) for r in rows] == [
        ("(accuracy)", "no accuracy rule applies to this artifact on this device")
    ]


def test_family_default_rules_apply_when_params_name_none(validated):
    set_rules(validated, [])
    rows = rows_for("tiny/int4")
    assert {(r.metric, r.against) for r in rows} == {("perplexity", "source"), ("tokenizer_parity", "fp16")}
    assert {r.status for r in rows if r.metric == "perplexity"} == {"fail"}  # +20 % vs source > the default +5 %


def test_comparisons_are_per_device_against_the_same_device(validated):
    """Outputs, comparisons and rows per device; a reference that did not run on a device is said so."""
    record(validated, "fp16", devices={"CPU": "validated", "HETERO:CPU": "validated"}, perplexity=50.1)
    record(
        validated,
        "int8",
        devices={"CPU": "validated", "HETERO:CPU": "validated", "AUTO:CPU": "validated"},
        perplexity=51.0,
    )
    gens(validated, "fp16/CPU", ["the capital is Paris", "abc"])
    gens(validated, "fp16/HETERO_CPU", ["the capital is Paris", "xyz"])
    for device in ("CPU", "HETERO_CPU", "AUTO_CPU"):
        gens(validated, f"int8/{device}", ["the capital is Paris", "abc"])
    rules = yaml.safe_load((validated / "params.yaml").read_text())["gate"]["rules"]
    set_rules(
        validated, rules + [{"family": "llm", "metric": "generation_exact_match", "variants": ["int8"], "min": 0.9}]
    )
    rows = {r.device: r for r in rows_for("tiny/int8") if r.metric == "generation_exact_match"}
    assert (rows["CPU"].value, rows["CPU"].status) == (1.0, "pass")
    assert (rows["HETERO:CPU"].value, rows["HETERO:CPU"].status) == (0.5, "fail")  # vs fp16 on HETERO:CPU
    assert (
        rows["AUTO:CPU"].value == 1.0 and "fp16 compared on CPU (fp16 did not run on AUTO:CPU)" in rows["AUTO:CPU"].note
    )


def test_emulated_device_is_gated_and_labelled_and_fails_in_release_mode(validated):
    record(validated, "int4-npu", devices={"NPU": "emulated"}, perplexity=61.0)
    rows = rows_for("tiny/int4-npu")
    assert {(r.level, r.status) for r in rows} == {("emulated", "pass")}
    rules = yaml.safe_load((validated / "params.yaml").read_text())["gate"]["rules"]
    set_rules(validated, rules, mode="release")
    assert "release mode needs the real device" in " ".join(
        r.note for r in rows_for("tiny/int4-npu") if r.status == "fail"
    )


def test_cli_fails_with_table_and_still_writes_summary(validated):
    record(validated, "int8", perplexity=500.0)
    proc = run_stage("stages.gate", check=False)
    assert proc.returncode == 1
    assert "tiny/int8" in proc.stdout and "FAIL" in proc.stdout and "GATE FAILED" in proc.stderr
    summary = json.loads((validated / "metrics/gate.json").read_text())
    assert summary["passed"] is False and summary["counts"]["fail"] == 1
    assert summary["artifacts"]["tiny/source"]["devices"]["source"]["metrics"]["perplexity"] == 50.0


def test_merge_conflicted_record_is_one_clear_error(validated):
    path = validated / "metrics/validate/tiny/int8.json"
    path.write_text("<<<<<<< HEAD\n{}\n=======\n{}\n>>>>>>> branch\n")
    proc = run_stage("stages.gate", check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        "error: metrics/validate/tiny/int8.json: contains git merge-conflict markers; resolve them or re-run the "
        "stage that writes it"
    )
