"""stages.regress: metrics/gate.json now vs at a baseline git revision, read through DVC's metrics API.

No models and no OpenVINO: a scaffolded git + DVC repo with hand-written gate.json states. What DVC does here
(dvc 3.67): `Repo.metrics.show(targets=["metrics/gate.json"], revs=[rev])` reads the committed file from the
revision's git tree although no dvc.lock was ever committed and the gate stage never ran (the state committed by
the fixture has no dvc.lock), so the tests need no `dvc repro` / `dvc commit`.
"""

import copy
import json
import subprocess

import pytest

from stages import regress
from stages.core.errors import BuildError
from tests.conftest import EVAL_TEXT, run_stage, scaffold, tiny_params, write_params

pytestmark = pytest.mark.fast  # the edit-loop tier (make test-fast): no real weights, no dvc repro, no export

RULES = [
    {"family": "llm", "metric": "perplexity", "max_increase_pct": 5},
    {"family": "whisper", "metric": "wer_*", "max_increase": 0.02},
    {"family": "speculative", "metric": "acceptance_rate", "max_decrease_pct": 10},
    {"metric": "tpot_ms", "artifacts": ["tiny/int4*"], "max_increase_pct": 50},
]


def device(metrics=None):
    """A device entry as stages.gate writes it; metrics=None: not validated on this host."""
    return (
        {"status": "validated", "metrics": metrics}
        if metrics is not None
        else {"status": "not_validated", "metrics": {}}
    )


def artifact(family, **devices):
    primary = next((d for d, r in devices.items() if r["status"] == "validated"), None)
    return {
        "family": family,
        "status": "validated" if primary else "not_validated",
        "device": primary,
        "metrics": devices[primary]["metrics"] if primary else {},
        "devices": devices,
    }


def gate(artifacts):
    """A gate.json; not-validated devices get the row (and reason) stages.gate writes for them."""
    rows = [
        {
            "artifact": name,
            "device": dev,
            "metric": "*",
            "value": None,
            "threshold": "mode=dev",
            "reference": None,
            "status": "not_validated",
            "note": f"device {dev} is not present on this host",
        }
        for name, a in artifacts.items()
        for dev, r in a["devices"].items()
        if r["status"] == "not_validated"
    ]
    return {"mode": "dev", "passed": True, "counts": {}, "rows": rows, "artifacts": artifacts}


STATE_A = {
    "tiny/fp16": artifact("llm", CPU=device({"perplexity": 20.0, "tpot_ms": 10.0})),
    "tiny/int8": artifact("llm", CPU=device({"perplexity": 20.5}), GPU=device({"perplexity": 20.6})),
    "tiny/int4": artifact("llm", CPU=device({"perplexity": 22.0, "tpot_ms": 8.0, "eval_tokens": 256})),
    "whisper-tiny/fp16": artifact("whisper", CPU=device({"wer_librivox": 0.10, "wer_cards": 0.20, "rtf": 0.3})),
    "pair:spec": artifact("speculative", CPU=device({"acceptance_rate": 0.6})),
}


def write_gate(root, artifacts):
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics" / "gate.json").write_text(json.dumps(gate(artifacts), indent=2))


def git(root, *args):
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def commit(root, message, tag=None):
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)
    if tag:
        git(root, "tag", tag)


def changed(edits):
    """STATE_A with {artifact: {device: metrics or None (not validated now)}} applied."""
    state = copy.deepcopy(STATE_A)
    for name, devices in edits.items():
        for dev, metrics in devices.items():
            state[name]["devices"][dev] = device(metrics)
    return state


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A scaffolded pipeline (no model: the checkpoint path is a dummy) as a git + DVC repo: commit "init" has no
    gate.json, commit "A" (tag `v1`) has STATE_A. cwd set to it."""
    text = tmp_path / "eval.txt"
    text.write_text(EVAL_TEXT)
    params = tiny_params(tmp_path / "no-checkpoint", text) | {"regression": {"baseline": "HEAD", "rules": RULES}}
    scaffold(tmp_path, params)
    commit(tmp_path, "init")
    write_gate(tmp_path, STATE_A)
    commit(tmp_path, "A", tag="v1")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def result(root):
    return json.loads((root / "metrics" / "regression.json").read_text())


def rows_by_key(root):
    return {(r["artifact"], r["device"], r["metric"]): r for r in result(root)["rows"]}


def table_line(stdout, *words):
    lines = [line for line in stdout.splitlines() if all(w in line for w in words)]
    assert len(lines) == 1, f"expected one table row with {words}:\n{stdout}"
    return lines[0]


def test_perplexity_increase_beyond_pct_fails(repo):
    write_gate(repo, {**STATE_A, "tiny/int4": artifact("llm", CPU=device({"perplexity": 24.2, "tpot_ms": 8.0}))})
    proc = run_stage("stages.regress", cwd=repo, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "REGRESSION: 1 metric(s) worse than allowed vs HEAD" in proc.stderr
    assert "Traceback" not in proc.stderr
    line = table_line(proc.stdout, "tiny/int4", "perplexity")
    for text in ("CPU", "22", "24.2", "+2.2 (+10.0%)", "+5%", "FAIL"):
        assert text in line, f"{text!r} not in {line!r}"
    out = result(repo)
    assert out["baseline"] == "HEAD" and out["passed"] is False
    assert [r["artifact"] for r in out["rows"] if r["status"] == "fail"] == ["tiny/int4"]


def test_change_within_tolerance_passes(repo, capsys):
    # +4.1% perplexity (5% allowed), a perplexity drop (only increases are bounded), tpot_ms +25% (50% allowed)
    write_gate(
        repo,
        changed(
            {"tiny/int4": {"CPU": {"perplexity": 22.9, "tpot_ms": 10.0}}, "tiny/int8": {"CPU": {"perplexity": 19.0}}}
        ),
    )
    assert regress.main([]) == 0
    rows = rows_by_key(repo)
    assert rows[("tiny/int4", "CPU", "perplexity")]["status"] == "pass"
    assert rows[("tiny/int4", "CPU", "tpot_ms")]["status"] == "pass"
    assert rows[("tiny/int8", "CPU", "perplexity")]["status"] == "pass"
    assert ("tiny/fp16", "CPU", "tpot_ms") not in rows  # the tpot_ms rule covers tiny/int4* only
    assert ("tiny/int4", "CPU", "eval_tokens") not in rows  # no rule
    assert result(repo)["passed"] is True
    assert "no regression vs HEAD" in capsys.readouterr().out


def test_missing_not_compared_and_new(repo):
    state = changed({"tiny/int8": {"GPU": None}})  # GPU not validated on this host now
    del state["tiny/int4"]  # artifact gone
    state["tiny/fp16"] = artifact("llm", CPU=device({"tpot_ms": 10.0}))  # perplexity absent
    state["tiny/int4-npu"] = artifact("llm", NPU=device({"perplexity": 30.0}))  # new since the baseline
    write_gate(repo, state)
    assert regress.main([]) == 1
    rows = rows_by_key(repo)
    fp16 = rows[("tiny/fp16", "CPU", "perplexity")]
    assert (fp16["status"], fp16["note"]) == ("fail", "missing now (metric absent)")
    int4 = rows[("tiny/int4", "CPU", "perplexity")]
    assert int4["status"] == "fail" and int4["note"].startswith("missing now") and int4["old"] == 22.0
    gpu = rows[("tiny/int8", "GPU", "perplexity")]
    assert gpu["status"] == "not_compared" and "device GPU is not present on this host" in gpu["note"]
    assert rows[("tiny/int4-npu", "NPU", "perplexity")]["status"] == "new"
    assert sum(r["status"] == "fail" for r in result(repo)["rows"]) == 3  # fp16 ppl, int4 ppl, int4 tpot_ms


def test_fnmatch_rule_covers_every_wer(repo):
    write_gate(repo, changed({"whisper-tiny/fp16": {"CPU": {"wer_librivox": 0.11, "wer_cards": 0.25, "rtf": 0.9}}}))
    assert regress.main([]) == 1
    rows = {k[2]: r for k, r in rows_by_key(repo).items() if k[0] == "whisper-tiny/fp16"}
    assert set(rows) == {"wer_librivox", "wer_cards"}  # rtf: no rule; perplexity rule is llm-only
    assert rows["wer_librivox"]["status"] == "pass" and rows["wer_librivox"]["allowed"] == "+0.02 vs baseline"
    assert rows["wer_cards"]["status"] == "fail"


def test_decrease_bound(repo):
    write_gate(repo, changed({"pair:spec": {"CPU": {"acceptance_rate": 0.5}}}))
    assert regress.main([]) == 1
    row = rows_by_key(repo)[("pair:spec", "CPU", "acceptance_rate")]
    assert row["status"] == "fail" and row["allowed"] == "-10% vs baseline" and "-16.67%" in row["note"]


def test_unknown_or_empty_baseline_is_one_clear_error(repo):
    proc = run_stage("stages.regress", "--baseline", "no-such-rev", cwd=repo, check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "baseline revision 'no-such-rev' not found" in proc.stderr
    proc = run_stage("stages.regress", "--baseline", "HEAD~1", cwd=repo, check=False)  # "init": no gate.json
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "baseline revision 'HEAD~1' has no readable metrics/gate.json (not committed there)" in proc.stderr
    assert not (repo / "metrics" / "regression.json").exists()


def test_older_gate_format_baseline_is_refused(repo):
    (repo / "metrics" / "gate.json").write_text(
        json.dumps(
            {
                "mode": "dev",
                "passed": True,
                "artifacts": {"tiny/fp16": {"status": "validated", "metrics": {"perplexity": 20.0}}},
            }
        )
    )
    commit(repo, "old format")
    write_gate(repo, STATE_A)
    with pytest.raises(BuildError, match="baseline revision 'HEAD': metrics/gate.json has no per-artifact"):
        regress.main([])


def test_baseline_given_as_tag(repo):
    write_gate(repo, changed({"tiny/int8": {"CPU": {"perplexity": 25.0}}}))
    commit(repo, "B")  # HEAD is now the worse state; the tag v1 still points at A
    assert regress.main([]) == 0  # params baseline HEAD: workspace == HEAD
    assert regress.main(["--baseline", "v1"]) == 1
    assert result(repo)["baseline"] == "v1"
    assert [(r["artifact"], r["device"]) for r in result(repo)["rows"] if r["status"] == "fail"] == [
        ("tiny/int8", "CPU")
    ]
    params = tiny_params(repo / "no-checkpoint", repo / "eval.txt") | {"regression": {"baseline": "v1", "rules": RULES}}
    write_params(repo, params)
    assert regress.main([]) == 1  # the baseline comes from params when --baseline is not given


def test_a_rule_that_covers_nothing_fails_naming_it(repo):
    params = tiny_params(repo / "no-checkpoint", repo / "eval.txt") | {
        "regression": {
            "baseline": "HEAD",
            "rules": [*RULES, {"family": "llm", "metric": "perplexty", "max_increase_pct": 1}],
        }
    }
    write_params(repo, params)
    assert regress.main([]) == 1
    failed = [r for r in result(repo)["rows"] if r["status"] == "fail"]
    assert [(r["artifact"], r["metric"]) for r in failed] == [("rule:llm", "perplexty")]
    assert "regression.rules.4 matches no metric" in failed[0]["note"]
