"""EAGLE3 drafts end to end on tiny models: a draft head of optimum-intel's EAGLE3 architecture (it reads the main's
hidden states, so it has no tokenizer or vocabulary of its own to compare) exported with trust_remote_code, paired
after the structural check openvino-genai's EAGLE3 path needs, validated through LLMPipeline(draft_model=...)."""

import json

import pytest

from stages.core.tiny import tiny_llm
from tests.conftest import EVAL_TEXT, dvc, ran, scaffold, tiny_params

HIDDEN = 64


def tiny_eagle3_draft(out, main, seed: int = 1):
    """A random-init EAGLE3 head for `main` (optimum-intel's LlamaEagle3ForCausalLM, as AngelSlim's drafts are):
    one decoder layer over the concatenation of three of the main's hidden states, the identity token map."""
    import torch
    from optimum.exporters.openvino.model_patcher import LlamaEagle3ForCausalLM
    from transformers import LlamaConfig

    target = json.loads((main / "config.json").read_text())
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=target["vocab_size"],
        draft_vocab_size=target["vocab_size"],
        target_hidden_size=target["hidden_size"],
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    model = LlamaEagle3ForCausalLM(config).eval()
    model.model.t2d.fill_(True)  # d2t stays 0: draft id i is target id i
    model._tied_weights_keys = {}  # its list form predates transformers 5's save_pretrained
    model.save_pretrained(out, safe_serialization=True)
    saved = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**saved, "architectures": ["LlamaForCausalLMEagle3"]}, indent=1))
    return out


def eagle3_params(main, small, draft, text) -> dict:
    p = tiny_params(main, text)
    p["models"]["small"] = {"family": "llm", "source": {"type": "local", "path": str(small)}}
    p["models"]["eagle"] = {
        "family": "llm",
        "source": {"type": "local", "path": str(draft)},
        "trust_remote_code": True,  # optimum-intel loads EAGLE3 heads through its own remote-code classes
        "tokenizer_parity": "record",  # an EAGLE3 head has no tokenizer: the export's stand-in one is never run
    }
    p["build"] = ["tiny/fp16", "small/fp16"]
    p["gate"]["rules"] = [r for r in p["gate"]["rules"] if r.get("variants", ["fp16"]) == ["fp16"]]
    p["drafts"] = ["eagle/fp16"]
    p["pairs"] = {
        "eagle3": {"main": "tiny/fp16", "draft": "eagle/fp16"},
        # a main with 2 decoder layers: genai's EAGLE3 taps layers 2, N/2 and N-3 and needs N >= 10
        "eagle3-small-main": {"main": "small/fp16", "draft": "eagle/fp16", "expect": "incompatible"},
    }
    p["validate"]["speculative"] = {
        "prompts": ["Paris is", "The committee met"],
        "max_new_tokens": 8,
        "num_assistant_tokens": [2, 4],
        "assistant_confidence_thresholds": [0.3],  # not an EAGLE3 setting: left out of its sweep
    }
    p["gate"]["rules"].append({"family": "speculative", "metric": "output_match", "min": 1.0})
    return p


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("eagle3")
    main = tiny_llm(root.parent / f"{root.name}-main", layers=10)
    small = tiny_llm(root.parent / f"{root.name}-small", layers=2)
    draft = tiny_eagle3_draft(root.parent / f"{root.name}-draft", main)
    text = root.parent / f"{root.name}-text.txt"
    text.write_text(EVAL_TEXT)
    scaffold(root, eagle3_params(main, small, draft, text))
    return root, ran(dvc("repro", "-P", cwd=root))


def read(root, path):
    return json.loads((root / path).read_text())


def test_an_eagle3_draft_is_paired_by_its_structure_not_its_tokenizer(built):
    root, ran = built
    assert {"export-draft@eagle/fp16", "pair@eagle3", "validate-speculative@eagle3"} <= ran
    pairing = read(root, "models/pairs/eagle3/pairing.json")
    assert pairing["status"] == "paired" and pairing["kind"] == "eagle3", pairing
    checked = " ".join(pairing["eagle3_check"]["checked"])
    for what in ("eagle3_mode", "d2t", "hidden size", "vocabulary", "decoder layers"):
        assert what in checked, checked
    assert pairing["tokenizer_check"]["checked"] == []  # the draft runs on the main's tokenizer and embedding


def test_an_eagle3_pair_keeps_the_greedy_output_and_sweeps_only_its_settings(built):
    root, _ = built
    rec = read(root, "metrics/validate/pairs/eagle3.json")
    assert rec["status"] == "validated" and rec["draft_kind"] == "eagle3", rec
    assert rec["metrics"]["output_match"] == 1.0, rec["sweep"]
    assert [s["num_assistant_tokens"] for s in rec["sweep"]] == [2, 4]
    assert all("assistant_confidence_threshold" not in s for s in rec["sweep"])
    assert all(s["proposed_tokens"] > 0 for s in rec["sweep"]), rec["sweep"]


def test_an_eagle3_draft_against_a_main_it_cannot_serve_is_refused_with_the_reason(built):
    root, _ = built
    pairing = read(root, "models/pairs/eagle3-small-main/pairing.json")
    assert pairing["status"] == "refused"
    assert any("2 decoder layers" in p and ">= 10" in p for p in pairing["eagle3_check"]["problems"]), pairing
    rec = read(root, "metrics/validate/pairs/eagle3-small-main.json")
    assert rec["status"] == "refused" and rec["problems"] == pairing["eagle3_check"]["problems"]
