"""The shipped params.yaml through the whole pipeline on real weights: SmolLM2-135M with its pruned draft, and
whisper tiny.en fp16/int8 on the real recordings (whisper base, Whisper int4, the flite set, the distilled draft,
the Gemma negative control, the image families and the LoRA are left to `make all` to keep the suite near 20
minutes; the Gemma tokenizer refusal is tested in test_fetch, the others have tiny-model tests)."""
import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO, scaffold

pytestmark = pytest.mark.slow


def test_default_pipeline_on_real_smollm2(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    # suite time: whisper tiny.en fp16 + int8 on the real recordings; base, int4, flite-slt are left to `make all`
    params["whisper"].update(models=["whisper-tiny-en"], variants=["fp16", "int8"])
    del params["speech_sets"]["flite-slt"]
    params["validate"]["whisper"]["speech_sets"] = ["librivox", "cards"]
    params["gate"]["rules"] = [r for r in params["gate"]["rules"] if "flite" not in r["metric"]]
    params["derived_drafts"] = {"smollm2-135m-d10": params["derived_drafts"]["smollm2-135m-d10"]}
    params["drafts"]["models"] = ["smollm2-135m-d10"]
    params["pairs"] = {"smollm2-d10": params["pairs"]["smollm2-d10"]}
    params["validate"]["speculative"].update(num_assistant_tokens=[3], assistant_confidence_thresholds=[])
    # the image families and the trained SmolLM2 LoRA run in `make all`; tests/test_images.py and test_lora.py
    # cover their code paths on tiny models
    params["text2image"]["models"], params["vlm"]["models"], params["adapters"] = [], [], {}
    scaffold(tmp_path, params)
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    def metrics(variant, model="smollm2-135m"):
        return json.loads((tmp_path / f"metrics/validate/{model}/{variant}.json").read_text())

    fp16, int8, int4 = (metrics(v)["metrics"]["perplexity"] for v in ("fp16", "int8", "int4-cpu"))
    # a real 135M model on English prose: far below the uniform-guess perplexity of its 49k vocabulary
    assert 10 < fp16 < 200
    assert abs(int8 - fp16) / fp16 < 0.02
    assert int4 > fp16 * 1.05, "int4 compression loss should be visible"
    npu = metrics("int4-npu")
    assert npu["status"] == "not_validated" and npu["proxy"]["metrics"]["perplexity"] > fp16
    gens = json.loads((tmp_path / "outputs/smollm2-135m/fp16/outputs.json").read_text())["generations"]
    assert "Paris" in gens[0]["output"]

    whisper = metrics("fp16", "whisper-tiny-en")["metrics"]
    assert whisper["wer_librivox"] <= 0.10  # real LibriVox recordings, Whisper-normalized
    assert whisper["utterances_cards"] == 5 and whisper["wer_cards"] < 0.4
    hyps = json.loads((tmp_path / "outputs/whisper-tiny-en/fp16/outputs.json").read_text())["hypotheses"]
    assert len(hyps["librivox"]) == 5 and all(h["hypothesis"] for h in hyps["librivox"])
    assert metrics("int8", "whisper-tiny-en")["devices"]["GPU"]["status"] == "not_validated"

    pair = json.loads((tmp_path / "metrics/validate/pairs/smollm2-d10.json").read_text())
    assert pair["status"] == "validated", pair
    assert pair["metrics"]["output_match"] == 1.0, pair["sweep"][0]["mismatches"]
    assert 0 <= pair["metrics"]["acceptance_rate"] <= 1 and pair["sweep"][0]["proposed_tokens"] > 0

    gate = json.loads((tmp_path / "metrics/gate.json").read_text())
    # no GPU or NPU here: SmolLM2 int8 and int4-cpu on GPU, int4-npu on NPU; whisper int8 on GPU
    assert gate["passed"] and gate["counts"]["not_validated"] == 4
    report = (tmp_path / "reports/summary.md").read_text()
    assert "smollm2-135m/int4-cpu" in report and "wer_librivox" in report and "smollm2-d10" in report

    perf = metrics("int4-cpu")["devices"]["CPU"]["metrics"]
    assert perf["ttft_ms"] > 0 and perf["tpot_ms"] > 0 and perf["peak_rss_mb"] > 100
    assert metrics("fp16", "whisper-tiny-en")["metrics"]["rtf"] > 0
    release = json.loads((tmp_path / "release/manifest.json").read_text())
    released = {a["name"] for a in release["artifacts"] if a["released"]}
    assert "smollm2-135m/int4-cpu" in released and "smollm2-135m/int4-npu" not in released
    card = (tmp_path / "release/smollm2-135m/int4-cpu/README.md").read_text()
    assert "license: apache-2.0" in card and "group_size=64" in card and "sha256:b179c952" in card
