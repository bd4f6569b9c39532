"""The shipped params.yaml through the whole pipeline on real weights: SmolLM2-135M (fp16, int8, int4-cpu, and
int4-npu through the emulated NPU path) with its pruned draft and prompt lookup on the code prompts, and whisper
tiny.en fp16/int8 on the real recordings. Whisper base, Whisper int4, the flite set, the distilled draft, the Gemma
negative control, the image families and the LoRA are left to `make all` to keep the suite short; each has a
tiny-model test."""

import json
import subprocess
import sys

import pytest
import yaml

from stages.families import FAMILIES
from tests.conftest import REPO, scaffold

pytestmark = pytest.mark.slow

KEEP_BUILD = [
    "smollm2-135m/fp16",
    "smollm2-135m/int8",
    "smollm2-135m/int4-cpu",
    "smollm2-135m/int4-npu-awq",
    "whisper-tiny-en/fp16",
    "whisper-tiny-en/int8",
]


def reduced_default() -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["build"] = KEEP_BUILD
    params["models"] = {k: params["models"][k] for k in ("smollm2-135m", "whisper-tiny-en")}
    del params["speech_sets"]["flite-slt"]
    params["validate"]["whisper"]["speech_sets"] = ["librivox", "cards"]
    for family in set(FAMILIES) - {"llm", "whisper"}:  # families this reduced build does not use
        params["validate"].pop(family, None)
    params["adapters"] = {}
    params["derived_drafts"] = {"smollm2-135m-d10": params["derived_drafts"]["smollm2-135m-d10"]}
    params["drafts"] = ["smollm2-135m-d10/int8"]
    params["pairs"] = {"smollm2-d10": params["pairs"]["smollm2-d10"]}
    params["validate"]["speculative"].update(num_assistant_tokens=[3], assistant_confidence_thresholds=[])
    params["validate"]["performance"] = False
    params["gate"]["rules"] = [
        narrowed(r)
        for r in params["gate"]["rules"]
        if r["family"] in ("llm", "whisper", "speculative")
        and "flite" not in r["metric"]
        and "@" not in r["metric"]
        and narrowed(r).get("variants") != []
    ]
    return params


def narrowed(rule: dict) -> dict:
    """The rule restricted to the variants this reduced build has of its family."""
    if "variants" not in rule:
        return rule
    built = {a.split("/")[1] for a in KEEP_BUILD if a.startswith("smollm2" if rule["family"] == "llm" else "whisper")}
    return {**rule, "variants": [v for v in rule["variants"] if v in built]}


def test_default_pipeline_on_real_smollm2(tmp_path):
    scaffold(tmp_path, reduced_default())
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro", "-P"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    def record(artifact):
        return json.loads((tmp_path / f"metrics/validate/{artifact}.json").read_text())

    def cpu(artifact):
        return record(artifact)["devices"]["CPU"]["metrics"]

    source = json.loads((tmp_path / "metrics/reference/smollm2-135m.json").read_text())["metrics"]
    fp16, int8, int4 = (cpu(f"smollm2-135m/{v}")["perplexity"] for v in ("fp16", "int8", "int4-cpu"))
    # a real 135M model on English prose: far below the uniform-guess perplexity of its 49k vocabulary
    assert 10 < source["perplexity"] < 200
    assert abs(fp16 / source["perplexity"] - 1) < 0.005, "fp16 IR within 0.5 % of PyTorch fp32"
    assert abs(int8 - fp16) / fp16 < 0.02
    assert int4 > fp16 * 1.05, "int4 compression loss should be visible"

    npu = record("smollm2-135m/int4-npu-awq")["devices"]["NPU"]
    assert npu["status"] == "emulated" and "NPUW" in npu["emulation"]["label"]
    assert npu["metrics"]["perplexity"] > fp16 and npu["metrics"]["prompt_limit_enforced"] == 1.0
    npu_out = json.loads((tmp_path / "outputs/smollm2-135m/int4-npu-awq/NPU/outputs.json").read_text())
    assert all(g["output"] for g in npu_out["generations"])
    gens = json.loads((tmp_path / "outputs/smollm2-135m/fp16/CPU/outputs.json").read_text())["generations"]
    assert "Paris" in gens[0]["output"]

    whisper = cpu("whisper-tiny-en/fp16")
    assert whisper["wer_librivox"] <= 0.10  # real LibriVox recordings, Whisper-normalized
    assert whisper["utterances_cards"] == 5 and whisper["wer_cards"] < 0.4
    hyps = json.loads((tmp_path / "outputs/whisper-tiny-en/fp16/CPU/outputs.json").read_text())["hypotheses"]
    assert len(hyps["librivox"]) == 5 and all(h["hypothesis"] for h in hyps["librivox"])
    assert record("whisper-tiny-en/int8")["devices"]["GPU"]["status"] == "not_validated"

    pair = json.loads((tmp_path / "metrics/validate/pairs/smollm2-d10.json").read_text())
    assert pair["status"] == "validated", pair
    assert pair["metrics"]["output_match"] == 1.0, pair["sweep"][0]["mismatches"]
    assert 0 <= pair["metrics"]["acceptance_rate"] <= 1 and pair["sweep"][0]["proposed_tokens"] > 0
    # prompt lookup on the code-completion prompts: same output, and it does take tokens from the prompt
    lookup = json.loads((tmp_path / "metrics/validate/pairs/smollm2-lookup-code.json").read_text())
    assert lookup["status"] == "validated" and lookup["metrics"]["output_match"] == 1.0, lookup
    assert lookup["metrics"]["tokens_per_step"] > 1.2 and lookup["metrics"]["acceptance_rate"] is None
    for name in ("smollm2-d10", "smollm2-lookup-code"):  # validate.performance: false skips the speed sweeps too
        speed = json.loads((tmp_path / f"metrics/perf/pairs/{name}.json").read_text())
        assert speed["status"] == "skipped" and not speed["metrics"] and "sweep" not in speed, speed

    gate = json.loads((tmp_path / "metrics/gate.json").read_text())
    assert gate["passed"], [r for r in gate["rows"] if r["status"] == "fail"]
    fp16_gated = gate["artifacts"]["smollm2-135m/fp16"]["devices"]["CPU"]
    assert fp16_gated["vs"]["source"]["generation_similarity"] >= 0.9  # the IR's replies vs transformers'
    # no GPU or NPU here: int8/int4-cpu on GPU (SmolLM2, whisper int8) are reported, the NPU one is emulated
    assert {(r["artifact"], r["device"]) for r in gate["rows"] if r["status"] == "not_validated"} == {
        ("smollm2-135m/int8", "GPU"),
        ("smollm2-135m/int4-cpu", "GPU"),
        ("whisper-tiny-en/int8", "GPU"),
    }
    report = (tmp_path / "reports/summary.md").read_text()
    assert "smollm2-135m/int4-cpu" in report and "wer_librivox" in report and "smollm2-d10" in report

    release = json.loads((tmp_path / "release/manifest.json").read_text())
    released = {a["name"] for a in release["artifacts"] if a["released"]}
    assert "smollm2-135m/int4-cpu" in released and "smollm2-135m/int4-npu-awq" not in released
    card = (tmp_path / "release/smollm2-135m/int4-cpu/README.md").read_text()
    assert "license: apache-2.0" in card and "group_size=64" in card and "sha256:" in card
