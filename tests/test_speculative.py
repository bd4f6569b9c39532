"""Drafts end to end on tiny models: derive (prune + distil), export, pair (strict tokenizer check), speculative
validation through LLMPipeline(draft_model=...), gate and report; plus the refusals and a pre-exported IR draft."""

import json
import re
import subprocess
import sys

import pytest
import yaml

from stages.core.tiny import tiny_llm
from tests.conftest import (
    EVAL_TEXT,
    assert_nothing_written,
    distilled_draft,
    run_stage,
    scaffold,
    tiny_params,
    write_params,
)

REPEATS = ["a b c a b c a b c a b", "def f(x):\n    return x\n\ndef g(x):\n    return x\n"]  # prompt lookup's set


def speculative_params(main, other, text) -> dict:
    p = tiny_params(main, text)
    p["models"]["other"] = {"family": "llm", "source": {"type": "local", "path": str(other)}}
    p["calibration"] = {"distill": {"path": str(text), "max_chars": 4000}}
    p["build"] = ["tiny/fp16"]
    p["gate"]["rules"] = [r for r in p["gate"]["rules"] if r.get("variants", ["fp16"]) == ["fp16"]]
    p["derived_drafts"] = {"tiny-d1": distilled_draft("distill")}
    p["drafts"] = ["tiny-d1/int8", "other/int8"]
    p["pairs"] = {
        "good": {"main": "tiny/fp16", "draft": "tiny-d1/int8"},
        "bad": {"main": "tiny/fp16", "draft": "other/int8", "expect": "incompatible"},
    }
    p["prompt_sets"] = {"repeats": {"path": str(text.parent / "repeats.jsonl")}}
    p["prompt_lookup"] = {"lookup": {"main": "tiny/fp16", "prompts": "repeats"}}
    p["validate"]["speculative"] = {
        "prompts": ["Paris is", "def main():", "a b c a b c a b c a b"],
        "max_new_tokens": 8,
        "num_assistant_tokens": [2, 4],
        "assistant_confidence_thresholds": [0.3],
    }
    p["gate"]["rules"].append({"family": "speculative", "metric": "output_match", "min": 1.0})
    return p


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("spec")
    other = tiny_llm(root.parent / f"{root.name}-other", seed=1, vocab_size=320)  # a different tokenizer
    text = root.parent / f"{root.name}-text.txt"
    text.write_text(EVAL_TEXT * 3)
    (text.parent / "repeats.jsonl").write_text("".join(json.dumps(p) + "\n" for p in REPEATS))
    scaffold(root, speculative_params(tiny_checkpoint, other, text))
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro", "-P"], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, set(re.findall(r"Running stage '([^']+)'", proc.stdout))


def read(root, path):
    return json.loads((root / path).read_text())


def test_repro_runs_every_draft_stage(built):
    _, ran = built
    assert {
        "derive-draft@tiny-d1",
        "export-draft@tiny-d1/int8",
        "export-draft@other/int8",
        "pair@good",
        "pair@bad",
        "validate-speculative@good",
        "validate-speculative@bad",
    } <= ran


def test_derived_draft_is_pruned_distilled_and_shares_the_tokenizer(built):
    root, _ = built
    manifest = read(root, "models/tiny-d1/checkpoint/manifest.json")
    assert manifest["source"]["keep_layers"] == 1 and manifest["base"]["layers"] == 2
    assert manifest["parameters"] < manifest["base_parameters"]
    kd = manifest["distillation"]
    assert kd["held_out_kl_after"] < kd["held_out_kl_before"], kd
    assert 0 <= kd["held_out_top1_agreement_after"] <= 1
    assert (root / "models/tiny-d1/checkpoint/tokenizer.json").read_bytes() == (
        root / "models/tiny/checkpoint/tokenizer.json"
    ).read_bytes()


def test_compatible_pair_is_validated_with_identical_greedy_output(built, tmp_path):
    root, _ = built
    pairing = read(root, "models/pairs/good/pairing.json")
    assert pairing["status"] == "paired" and "OpenVINO encodings" in pairing["tokenizer_check"]["checked"]
    rec = read(root, "metrics/validate/pairs/good.json")
    assert rec["status"] == "validated" and rec["main_device"] == "CPU" and rec["draft_device"] == "CPU"
    m = rec["metrics"]
    assert m["output_match"] == 1.0, rec["sweep"][0]["mismatches"]
    assert 0.0 <= m["acceptance_rate"] <= 1.0 and "tpot_ms" not in m  # timings live in metrics/perf
    settings = [
        {k: s[k] for k in ("num_assistant_tokens", "assistant_confidence_threshold") if k in s} for s in rec["sweep"]
    ]
    assert rec["best_setting"] in settings
    skipped = read(root, "metrics/perf/pairs/good.json")  # the project sets validate.performance: false
    assert skipped["status"] == "skipped" and not skipped["metrics"], skipped
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["validate"]["performance"] = True
    run_stage(
        "stages.speculative", "--pair", "good", "--speed", "--params", str(write_params(tmp_path, params)), cwd=root
    )
    perf = read(root, "metrics/perf/pairs/good.json")
    assert perf["metrics"]["tpot_ms"] > 0 and perf["baseline"]["tpot_ms"] > 0 and perf["metrics"]["tpot_speedup"] > 0
    assert [s.get("num_assistant_tokens", s.get("assistant_confidence_threshold")) for s in rec["sweep"]] == [2, 4, 0.3]
    assert all(s["proposed_tokens"] > 0 for s in rec["sweep"])


def test_prompt_lookup_records_accepted_tokens_from_its_steps_and_no_invented_proposals(built):
    root, _ = built
    rec = read(root, "metrics/validate/pairs/lookup.json")
    assert rec["status"] == "validated" and rec["draft"] == "prompt-lookup", rec
    assert rec["prompts"] == len(REPEATS)  # its own prompt set, not validate.speculative.prompts
    for s in rec["sweep"]:
        assert s["output_match"] == 1.0, s["mismatches"]
        # genai reports no proposal count in this mode: acceptance is unknown, never 0
        assert s["proposed_tokens"] is None and s["acceptance_rate"] is None
        assert s["accepted_tokens"] >= 0 and s["tokens_per_step"] >= 1.0
        assert s["draft_share"] == pytest.approx(1 - 1 / s["tokens_per_step"])


def test_headline_is_never_a_setting_that_changes_the_output():
    from stages.speculative import headline

    keeps = {"output_match": 1.0, "acceptance_rate": 0.2, "draft_share": 0.1, "tpot_speedup": 1.1}
    changes = {"output_match": 0.5, "acceptance_rate": 0.9, "draft_share": 0.6, "tpot_speedup": 2.0}
    assert headline([keeps, changes], speed=False) is keeps and headline([keeps, changes], speed=True) is keeps
    worse = {**changes, "output_match": 0.25}
    assert headline([worse, changes], speed=True) is None  # no speed for a pair that cannot keep the output
    assert headline([worse, changes], speed=False) is changes  # the closest; the gate fails on its output_match


def test_mismatched_draft_is_refused_with_a_diff_and_the_gate_accepts_the_negative_control(built):
    root, _ = built
    rec = read(root, "metrics/validate/pairs/bad.json")
    assert rec["status"] == "refused"
    assert any(p.startswith("vocabulary: ") for p in rec["problems"])
    gate = read(root, "metrics/gate.json")
    assert gate["passed"]
    rows = {(r["artifact"], r["metric"]): r for r in gate["rows"]}
    assert rows[("pair:bad", "tokenizer_check")]["status"] == "pass"
    assert rows[("pair:good", "output_match")]["status"] == "pass"
    report = (root / "reports/summary.md").read_text()
    assert "## Speculative decoding" in report and "refused by the tokenizer check" in report


def test_release_carries_the_validated_draft_and_withholds_the_refused_one(built):
    root, _ = built
    drafts = {a["name"]: a for a in read(root, "release/manifest.json")["artifacts"] if a["role"] == "draft"}
    assert drafts["tiny-d1/int8"]["released"] and drafts["tiny-d1/int8"]["reason"] == "validated as the draft of good"
    assert not drafts["other/int8"]["released"] and "bad: refused" in drafts["other/int8"]["reason"]
    card = (root / "release/tiny-d1/int8/README.md").read_text()
    assert "speculative-decoding" in card and "| good | tiny/fp16 | CPU | validated | 1 |" in card
    assert 'draft_model=ov_genai.draft_model("tiny-d1-int8", "CPU")' in card


def edited(root, change) -> dict:
    params = yaml.safe_load((root / "params.yaml").read_text())
    original = json.loads(json.dumps(params))
    change(params)
    write_params(root, params)
    return original


def test_pair_stage_fails_on_a_surprise_and_writes_nothing(built):
    root, _ = built
    original = edited(root, lambda p: p["pairs"]["bad"].update(expect="compatible"))
    try:
        out = root / "models/pairs/bad"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        proc = run_stage("stages.pair", "--pair", "bad", cwd=root, check=False)
        assert proc.returncode != 0
        assert "draft other/int8 is not tokenizer-compatible with tiny/fp16" in proc.stderr
        assert "vocabulary: " in proc.stderr and "token(s) only in main" in proc.stderr
        assert_nothing_written(out)
        edited(root, lambda p: p["pairs"]["good"].update(expect="incompatible"))
        proc = run_stage("stages.pair", "--pair", "good", cwd=root, check=False)
        assert proc.returncode != 0 and "expected the check to refuse draft tiny-d1/int8" in proc.stderr
    finally:
        write_params(root, original)
        run_stage("stages.pair", "--pair", "bad", cwd=root)


def test_absent_draft_device_is_not_validated(built):
    root, _ = built
    original = edited(root, lambda p: p["pairs"]["good"].update(draft_device="NPU"))
    try:
        run_stage("stages.pair", "--pair", "good", cwd=root)
        run_stage("stages.speculative", "--pair", "good", cwd=root)
        rec = read(root, "metrics/validate/pairs/good.json")
        assert rec["status"] == "not_validated" and "NPU" in rec["reason"] and rec["draft_device"] == "NPU"
        assert run_stage("stages.gate", cwd=root, check=False).returncode == 0
        rows = [r for r in read(root, "metrics/gate.json")["rows"] if r["artifact"] == "pair:good"]
        assert [r["status"] for r in rows] == ["not_validated"]
    finally:
        write_params(root, original)
        run_stage("stages.pair", "--pair", "good", cwd=root)


def test_pre_exported_ir_is_checked_not_re_exported(built):
    root, _ = built
    ir = root / "models/tiny-d1/int8"

    def add_prebuilt(p):
        p["models"]["prebuilt"] = {"family": "llm", "source": {"type": "local", "path": str(ir)}}
        p["build"] += ["prebuilt/int8", "prebuilt/fp16"]

    original = edited(root, add_prebuilt)
    try:
        run_stage("stages.fetch", "--model", "prebuilt", cwd=root)
        run_stage("stages.plan", cwd=root)
        run_stage("stages.export", "--artifact", "prebuilt/int8", cwd=root)
        manifest = read(root, "models/prebuilt/int8/manifest.json")
        assert manifest["prebuilt"] and manifest["rt_info"]["openvino_model.xml"]["mode"] == "int8_asym"
        assert (root / "models/prebuilt/int8/openvino_model.bin").read_bytes() == (
            ir / "openvino_model.bin"
        ).read_bytes()
        proc = run_stage("stages.export", "--artifact", "prebuilt/fp16", cwd=root, check=False)
        assert proc.returncode != 0 and "fp16 requested but NNCF compression recorded" in proc.stderr
        assert not (root / "models/prebuilt/fp16").exists()
    finally:
        write_params(root, original)


def test_pruning_must_drop_a_layer(tiny_checkpoint):
    from transformers import AutoModelForCausalLM

    from stages.core.errors import BuildError as DeriveError
    from stages.derive_draft import prune

    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    assert len(prune(model, 1).model.layers) == 1 and len(model.model.layers) == 2
    with pytest.raises(DeriveError, match="keep_layers: 2 keeps every layer of a 2-layer model"):
        prune(model, 2)
