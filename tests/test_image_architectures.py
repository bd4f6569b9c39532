"""SDXL and LCM on tiny random-init models of the real architectures (stages/core/tiny.py): exported through the
family's own path, run through openvino_genai.Text2ImagePipeline by validate(), and compared by compare() with
diffusers fp32 (reference()) on the same prompts and seeds. The tiny UNets' conditioning is scaled up so that a
pipeline that mishandled SDXL's second text encoder and size ids or LCM's guidance embedding would not match."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from stages.core.metrics import image_similarity
from stages.core.schema import Variant
from stages.core.tiny import BUILDERS, tiny_clip
from stages.families import get_family
from stages.families.base import RunContext
from stages.families.text2image import Text2ImageSettings, load_image
from stages.runner import save_outputs

PIPELINES = {
    "stable-diffusion-xl": ("StableDiffusionXLPipeline", "EulerDiscreteScheduler"),
    "lcm": ("LatentConsistencyModelPipeline", "LCMScheduler"),
}
FLOOR = 0.98  # SSIM of every image of an artifact against diffusers'
# an input only this architecture reads, changed: the comparison must see it
ARCHITECTURE_INPUT = {"stable-diffusion-xl": {"original_size": (128, 128)}, "lcm": {"guidance_scale": 4.0}}
family = get_family("text2image")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> RunContext:
    root = tmp_path_factory.mktemp("inputs")
    (root / "prompts.txt").write_text("a photo of a cat sitting on a red sofa\na cup of coffee\n")
    settings = Text2ImageSettings(
        prompts=str(root / "prompts.txt"), clip_model="clip", width=64, height=64, num_inference_steps=3
    )
    return RunContext(settings, "f32", scorers={"clip": tiny_clip(root / "clip")})


@pytest.fixture(scope="module", params=list(PIPELINES))
def built(request, ctx, tmp_path_factory) -> tuple[str, Path]:
    """A tiny checkpoint, its fp16 and int8 artifacts, and diffusers' images of it (outputs/source)."""
    root = tmp_path_factory.mktemp(request.param)
    checkpoint = BUILDERS[request.param](root / "source")
    for weight_format in ("fp16", "int8"):
        family.export(checkpoint, Variant(weight_format=weight_format), root / weight_format)
    save_outputs(root / "outputs/source", family.reference(checkpoint, ctx))
    return request.param, root


def against_diffusers(root: Path, artifact: Path, ctx: RunContext) -> dict:
    """validate() on CPU, then compare() with diffusers' run: mean SSIM and the worst image's."""
    save_outputs(root / "outputs" / artifact.name, family.validate(artifact, "CPU", ctx))
    result = family.compare(root / "outputs/source", root / "outputs" / artifact.name, ctx)
    return {"ssim": result.metrics["ssim"], "worst": result.worst[0]["ssim"], "psnr": result.metrics["psnr"]}


def perturbed(artifact: Path, out: Path, component: str = "unet") -> Path:
    """A copy of the artifact whose component's weights carry 30% noise: what a damaged or wrong one looks like."""
    import openvino as ov

    shutil.copytree(artifact, out)
    model = ov.Core().read_model(artifact / component / "openvino_model.xml")
    rng = np.random.default_rng(0)
    for node in model.get_ordered_ops():
        if node.get_type_name() == "Constant" and node.get_element_type() == ov.Type.f16 and node.get_data().ndim:
            w = node.get_data().astype(np.float32)
            noisy = w + 0.3 * w.std() * rng.standard_normal(w.shape)
            node.output(0).replace(ov.op.Constant(noisy.astype(np.float16)).output(0))
    ov.save_model(model, out / component / "openvino_model.xml", compress_to_fp16=False)
    return out


def test_artifact_is_the_architecture(built):
    kind, root = built
    pipeline, scheduler = PIPELINES[kind]
    assert json.loads((root / "fp16/model_index.json").read_text())["_class_name"] == pipeline
    assert json.loads((root / "fp16/scheduler/scheduler_config.json").read_text())["_class_name"] == scheduler
    unet = json.loads((root / "fp16/unet/config.json").read_text())
    if kind == "lcm":
        assert unet["time_cond_proj_dim"] == 32  # genai embeds the guidance scale instead of running CFG
    else:
        assert unet["addition_embed_type"] == "text_time"
        assert (root / "fp16/text_encoder_2/openvino_model.xml").is_file()
        assert (root / "fp16/tokenizer_2/openvino_tokenizer.xml").is_file()


def test_openvino_matches_diffusers(built, ctx):
    kind, root = built
    for variant in ("fp16", "int8"):
        sim = against_diffusers(root, root / variant, ctx)
        print(kind, variant, sim)
        assert sim["worst"] >= FLOOR, (kind, variant, sim)


def test_the_comparison_sees_the_architecture_inputs(built, ctx):
    """Diffusers with an input only this architecture reads changed (SDXL's size ids, LCM's embedded guidance)
    falls below the floor: a pipeline that got it wrong would fail the test above."""
    import torch
    from diffusers import DiffusionPipeline

    kind, root = built
    s = ctx.settings
    pipe = DiffusionPipeline.from_pretrained(root / "source", torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    record = json.loads((root / "outputs/source/outputs.json").read_text())["images"][0]
    with torch.no_grad():
        changed = pipe(
            record["prompt"],
            width=s.width,
            height=s.height,
            num_inference_steps=s.num_inference_steps,
            generator=torch.Generator("cpu").manual_seed(record["seed"]),
            **ARCHITECTURE_INPUT[kind],
        ).images[0]
    sim = image_similarity(load_image(root / "outputs/source" / record["file"]), np.asarray(changed))
    print(kind, "changed input", sim)
    assert sim["ssim"] < 0.9, sim


def test_a_broken_unet_falls_below_the_floor(built, ctx, tmp_path):
    kind, root = built
    sim = against_diffusers(root, perturbed(root / "fp16", tmp_path / "broken"), ctx)
    print(kind, "broken", sim)
    assert sim["worst"] < 0.9, sim


def test_a_broken_prompt_encoder_falls_below_the_floor(built, ctx, tmp_path):
    """The prompt's path is checked too: the LCM reads it only through the UNet's cross-attention. (The test's name
    avoids "text_encoder": pytest puts it in tmp_path, where openvino-genai would trip over it.)"""
    kind, root = built
    sim = against_diffusers(root, perturbed(root / "fp16", tmp_path / "broken", "text_encoder"), ctx)
    print(kind, "broken text encoder", sim)
    assert sim["worst"] < FLOOR, sim


def test_a_path_genai_cannot_load_is_one_clear_error(built, ctx, tmp_path):
    from stages.core.errors import BuildError

    kind, root = built
    shutil.copytree(root / "fp16", tmp_path / "text_encoder_models" / "fp16")
    with pytest.raises(BuildError, match="contains 'text_encoder'"):
        family.validate(tmp_path / "text_encoder_models" / "fp16", "CPU", ctx)
