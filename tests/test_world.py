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


def test_trained_clip_scores_matched_captions_far_above_mismatched():
    from stages.core.world_models import fit_clip

    _, _, report = fit_clip(seed=0, steps=60)
    assert report["heldout_images"] == 120
    assert report["clip_score_gap"] > 20, report  # held-out images; measured ~50 after 30 steps
    assert report["clip_score_matched"] > report["clip_score_shuffled"]
