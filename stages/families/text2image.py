"""Text-to-image (Stable Diffusion 1.x/2.x, SDXL, LCM): openvino_genai.Text2ImagePipeline with fixed seeds over a
prompt file, CLIP score with transformers' CLIPModel; the source pipeline in diffusers fp32 with the same seeds;
SSIM / PSNR of each image against the compared run's image for the same prompt and seed. From the same artifacts,
optionally, Image2ImagePipeline and InpaintingPipeline over init images (a box mask), against diffusers'
image-to-image and inpainting pipelines on the same inputs."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
from pydantic import Field, field_validator
from tqdm import tqdm

from stages.core import metrics as m
from stages.core.errors import BuildError, user_input
from stages.core.images import load_image as load_image_ref
from stages.core.paths import source_manifest_path
from stages.core.schema import Strict, device_kind
from stages.core.textdata import check_prompt_ref, prompts_path, read_prompts
from stages.families import register
from stages.families.base import Comparison, Family, RunContext, Validation, check_scorer, register_adapters, worst


class ImageEditSettings(Strict):
    """Image-to-image or inpainting: every prompt x seed over each init image, resized to width x height."""

    images: list[str] = Field(min_length=1)  # skimage:<name>, matplotlib:<sample file> or a file path
    strength: float = Field(default=0.6, gt=0, le=1)  # 1.0: the init image (the masked box) fully noised
    mask_box: tuple[float, float, float, float] = (0.25, 0.25, 0.75, 0.75)  # inpainting: x0, y0, x1, y1 fractions

    @field_validator("mask_box")
    @classmethod
    def a_box(cls, box):
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
            raise ValueError(f"mask_box {list(box)}: need 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
        return box


EDIT_MODES = ("image2image", "inpainting")


class Text2ImageSettings(Strict):
    """Fixed seeds over a prompt set; CLIP score with a `scorer` model (e.g. openai/clip-vit-base-patch16)."""

    reference: str = "fp16"
    prompts: str  # a `prompt_sets` name (a file or a `datasets` column) or a prompt file kept in the repo
    clip_model: str  # a `models` entry of family scorer
    seeds: list[int] = Field(default=[0], min_length=1)
    width: int = Field(default=512, gt=0)
    height: int = Field(default=512, gt=0)
    num_inference_steps: int = Field(default=20, gt=0)
    guidance_scale: float | None = Field(default=None, ge=0)  # None: the pipeline's own default
    image2image: ImageEditSettings | None = None  # Image2ImagePipeline from the same artifact
    inpainting: ImageEditSettings | None = None  # InpaintingPipeline from the same artifact

    def edits(self) -> dict[str, ImageEditSettings]:
        return {mode: getattr(self, mode) for mode in EDIT_MODES if getattr(self, mode) is not None}


def projected(features) -> np.ndarray:
    """transformers 5 returns model outputs from get_*_features: the projected embedding is their pooler_output."""
    return getattr(features, "pooler_output", features).float().numpy()


class ClipScorer:
    """transformers' CLIPModel (torchmetrics' CLIPScore does not work with transformers 5)."""

    def __init__(self, path: Path):
        from transformers import CLIPModel, CLIPProcessor

        self.model = CLIPModel.from_pretrained(path).eval()
        self.processor = CLIPProcessor.from_pretrained(path)

    def embeddings(self, images: list, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.image_embeddings(images), self.text_embeddings(texts)

    def image_embeddings(self, images: list) -> np.ndarray:
        import torch

        with torch.no_grad():
            img = self.model.get_image_features(
                pixel_values=self.processor(images=images, return_tensors="pt")["pixel_values"]
            )
        return projected(img)

    def text_embeddings(self, texts: list[str]) -> np.ndarray:
        import torch

        inputs = self.processor(text=texts, return_tensors="pt", padding=True, truncation=True)
        with torch.no_grad():
            txt = self.model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        return projected(txt)

    def score(self, images: list, texts: list[str]) -> dict[str, float]:
        """The CLIP score, and the mean unclamped cosine (informative where the score clamps to 0, e.g. for a
        random-init scorer)."""
        embeds = self.embeddings(images, texts)
        scores = {"clip_score": m.clip_score(*embeds), "clip_cosine": m.mean(m.cosines(*embeds))}
        others = m.mismatched(texts)
        if others is not None:  # the same images with other prompts: a scorer that sees the content scores lower
            shuffled = m.clip_score(embeds[0], self.text_embeddings(others))
            scores |= {"clip_score_shuffled": shuffled, "clip_score_gap": scores["clip_score"] - shuffled}
        return scores


def contact_sheet(images: list, labels: list[str], columns: int = 4):
    """A grid of the images with their labels (PIL only: torchvision's make_grid is not installable here)."""
    from PIL import Image, ImageDraw

    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * w, rows * (h + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (img, label) in enumerate(zip(images, labels)):
        x, y = (i % columns) * w, (i // columns) * (h + 14)
        sheet.paste(img, (x, y + 14))
        draw.text((x + 2, y + 1), label[: max(4, w // 6)], fill="black")
    return sheet


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def genai_loadable(artifact: Path) -> Path:
    """The artifact, or one clear error where openvino-genai would fail later: its image pipelines find the tokenizer
    by replacing "text_encoder" in the text encoder's whole path, so a folder of that name above the artifact sends
    them to a tokenizer that does not exist ("Tokenizer::encode is not available" at the first prompt)."""
    if "text_encoder" in artifact.resolve().parent.as_posix():
        raise BuildError(
            f"{artifact}: openvino-genai cannot load an image pipeline whose path contains 'text_encoder' above the "
            "artifact (it looks for the tokenizer at that path with 'text_encoder' replaced); rename the folder"
        )
    return artifact


def image_pipeline(artifact: Path, device: str, ctx: RunContext, adapters=()):
    """On a static-shape device (NPU) the pipeline is reshaped to the validation size before it compiles."""
    import openvino_genai as ov_genai

    artifact = genai_loadable(artifact)

    if device_kind(device) != "NPU":
        return ov_genai.Text2ImagePipeline(
            str(artifact), device, **ctx.pipeline_config(), **register_adapters(adapters)
        )
    s: Text2ImageSettings = ctx.settings
    pipe = ov_genai.Text2ImagePipeline(str(artifact))
    guidance = s.guidance_scale if s.guidance_scale is not None else pipe.get_generation_config().guidance_scale
    pipe.reshape(1, s.height, s.width, guidance)
    pipe.compile(device, **ctx.pipeline_config(), **register_adapters(adapters))
    return pipe


def generate_image(pipe, prompt: str, seed: int, s: Text2ImageSettings, adapter_config=None):
    import openvino_genai as ov_genai
    from PIL import Image

    kwargs = {"guidance_scale": s.guidance_scale} if s.guidance_scale is not None else {}
    if adapter_config is not None:
        kwargs["adapters"] = adapter_config
    tensor = pipe.generate(
        prompt,
        width=s.width,
        height=s.height,
        num_inference_steps=s.num_inference_steps,
        generator=ov_genai.TorchGenerator(seed),
        **kwargs,
    )
    return Image.fromarray(np.array(tensor.data[0]))  # a copy: the tensor views a buffer the next call reuses


def init_image(spec: str, s: Text2ImageSettings, key: str):
    from PIL import Image

    return Image.fromarray(load_image_ref(spec, key)).resize((s.width, s.height), Image.Resampling.BICUBIC)


def box_mask(box: tuple[float, float, float, float], width: int, height: int):
    """White inside the box (repainted), black elsewhere."""
    from PIL import Image, ImageDraw

    x0, y0, x1, y1 = box
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).rectangle(
        (round(x0 * width), round(y0 * height), round(x1 * width) - 1, round(y1 * height) - 1), fill=255
    )
    return mask


def image_tensor(image):
    import openvino as ov

    return ov.Tensor(np.ascontiguousarray(np.asarray(image.convert("RGB"))[None]))


def edit_pipelines(artifact: Path, device: str, ctx: RunContext, modes) -> dict:
    """InpaintingPipeline and the Image2ImagePipeline built from it (one set of compiled models)."""
    import openvino_genai as ov_genai

    if not modes:
        return {}
    artifact = genai_loadable(artifact)
    inpainting = ov_genai.InpaintingPipeline(str(artifact), device, **ctx.pipeline_config())
    pipes = {"inpainting": inpainting, "image2image": ov_genai.Image2ImagePipeline(inpainting)}
    return {mode: pipes[mode] for mode in modes}


def edit_image(pipe, mode: str, prompt: str, seed: int, s: Text2ImageSettings, init, mask):
    import openvino_genai as ov_genai
    from PIL import Image

    kwargs = {"guidance_scale": s.guidance_scale} if s.guidance_scale is not None else {}
    images = (image_tensor(init), image_tensor(mask)) if mode == "inpainting" else (image_tensor(init),)
    tensor = pipe.generate(
        prompt,
        *images,
        strength=getattr(s, mode).strength,
        num_inference_steps=s.num_inference_steps,
        generator=ov_genai.TorchGenerator(seed),
        **kwargs,
    )
    return Image.fromarray(np.array(tensor.data[0]))


def diffusers_edit(pipe, mode: str, prompt: str, seed: int, s: Text2ImageSettings, init, mask):
    """The same edit through diffusers' image-to-image / inpainting pipeline made from the source pipeline."""
    import torch

    kwargs = {"guidance_scale": s.guidance_scale} if s.guidance_scale is not None else {}
    if mode == "inpainting":
        kwargs |= {"mask_image": mask, "width": s.width, "height": s.height}
    with torch.no_grad():
        return pipe(
            prompt,
            image=init,
            strength=getattr(s, mode).strength,
            num_inference_steps=s.num_inference_steps,
            generator=torch.Generator("cpu").manual_seed(seed),
            **kwargs,
        ).images[0]


def diffusers_edit_pipelines(pipe, modes) -> dict:
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

    makers = {"image2image": AutoPipelineForImage2Image, "inpainting": AutoPipelineForInpainting}
    return {mode: makers[mode].from_pipe(pipe) for mode in modes}


def diffusers_image(pipe, prompt: str, seed: int, s: Text2ImageSettings):
    """The same prompt and seed through diffusers (torch.Generator(seed) draws the latents genai's TorchGenerator
    reproduces)."""
    import torch

    kwargs = {"guidance_scale": s.guidance_scale} if s.guidance_scale is not None else {}
    with torch.no_grad():
        return pipe(
            prompt,
            width=s.width,
            height=s.height,
            num_inference_steps=s.num_inference_steps,
            generator=torch.Generator("cpu").manual_seed(seed),
            **kwargs,
        ).images[0]


def load_image(path: Path) -> np.ndarray:
    from PIL import Image

    with user_input(f"image {path}"):
        return np.asarray(Image.open(path).convert("RGB"))


@register
class Text2ImageFamily(Family):
    name = "text2image"
    Settings = Text2ImageSettings
    task = "text-to-image"
    library = "diffusers"
    latency_metric = "image_s"
    pipeline_tag = "text-to-image"
    adapter_families = True
    calibration_chars = 160  # hybrid quantization calibrates on prompts: short samples
    accuracy_metrics = ("clip_score", "ssim", "psnr")
    comparison_metrics = ("ssim", "psnr") + tuple(f"{k}_{mode}" for mode in EDIT_MODES for k in ("ssim", "psnr"))
    default_rules = ({"metric": "ssim", "against": "source", "min": 0.9},)
    usage = """import openvino_genai as ov_genai
from PIL import Image

pipe = ov_genai.Text2ImagePipeline("{path}", "{device}")
image = pipe.generate("a photo of a cat", width=512, height=512, num_inference_steps=20,
                      generator=ov_genai.TorchGenerator(42))
Image.fromarray(image.data[0]).save("cat.png")

# or with optimum-intel
from optimum.intel import OVDiffusionPipeline
pipe = OVDiffusionPipeline.from_pretrained("{path}")"""

    def check_params(self, settings: Text2ImageSettings, params, key: str) -> None:
        check_scorer(params, settings.clip_model, f"{key}.clip_model")
        check_prompt_ref(settings.prompts, params.prompt_sets, f"{key}.prompts")
        self.check_edit_images(settings, key)

    def validation_metrics(self, settings, params, model: str) -> list[str]:
        scores = ("clip_score", "clip_cosine", "clip_score_shuffled", "clip_score_gap")
        names = [*scores, "images"]
        names += [f"{k}_{mode}" for mode in settings.edits() for k in (*scores, "images")]
        for a in params.adapters_for(model):
            names += [f"clip_score@{a}", f"clip_cosine@{a}", f"changed_images@{a}"]
        return names

    def plan_inputs(self, settings: Text2ImageSettings, params, model: str) -> dict[str, Path]:
        files = {
            "prompts": prompts_path(settings.prompts),
            f"scorer:{settings.clip_model}": source_manifest_path(settings.clip_model),
        }
        for mode, edit in settings.edits().items():
            files |= {f"{mode}:{spec}": Path(spec) for spec in edit.images if ":" not in spec}  # files, not samples
        return files

    def check_edit_images(self, settings: Text2ImageSettings, key: str) -> None:
        for mode, edit in settings.edits().items():
            for i, spec in enumerate(edit.images):
                load_image_ref(spec, f"{key}.{mode}.images.{i}")

    def report_metrics(self, settings) -> list[str]:
        return ["clip_score", "clip_score_gap", "ssim", "psnr"] + [
            f"{k}_{mode}" for mode in settings.edits() for k in ("clip_score", "clip_score_gap", "ssim")
        ]

    def calibration_config(self, checkpoint: Path, samples: list[str]) -> dict:
        return {"dataset": samples}  # the pipeline tokenizes prompts itself

    def compressed_irs(self, artifact: Path) -> list[Path]:
        return sorted(artifact.glob("*/openvino_model.xml"))

    def tokenizer_folders(self, artifact: Path) -> list[Path]:
        return [d for d in sorted(artifact.glob("tokenizer*")) if (d / "openvino_tokenizer.xml").is_file()]

    def prompts(self, s: Text2ImageSettings) -> list[str]:
        return read_prompts(s.prompts, "validate.text2image.prompts", "prompt")

    def _render(self, make_image, ctx: RunContext, label: str, adapters=(), make_edit=None) -> Validation:
        s: Text2ImageSettings = ctx.settings
        prompts = self.prompts(s)
        jobs = [(i, p, seed) for i, p in enumerate(prompts) for seed in s.seeds]
        images, files, records = [], {}, []
        for i, prompt, seed in tqdm(jobs, desc=f"text2image ({label})", unit="image"):
            images.append(make_image(prompt, seed, None))
            name = f"images/p{i}_s{seed}.png"
            files[name] = png_bytes(images[-1])
            records.append({"mode": "text2image", "prompt": prompt, "seed": seed, "file": name})
        scorer = ClipScorer(ctx.scorers[s.clip_model])
        texts = [p for _, p, _ in jobs]
        metrics = {**scorer.score(images, texts), "images": float(len(images))}
        sheet_images, sheet_labels = list(images), [f"s{seed} {p}" for _, p, seed in jobs]
        for mode, edit in s.edits().items() if make_edit else ():
            mask = box_mask(edit.mask_box, s.width, s.height) if mode == "inpainting" else None
            edited = []
            for k, spec in enumerate(edit.images):
                init = init_image(spec, s, f"validate.text2image.{mode}.images.{k}")
                for i, prompt, seed in tqdm(jobs, desc=f"{mode} ({label}, {spec})", unit="image"):
                    edited.append(make_edit(mode, prompt, seed, init, mask))
                    name = f"images/{mode}_i{k}_p{i}_s{seed}.png"
                    files[name] = png_bytes(edited[-1])
                    records.append({"mode": mode, "image": spec, "prompt": prompt, "seed": seed, "file": name})
                    sheet_labels.append(f"{mode[:5]} s{seed} {prompt}")
            metrics |= {f"{k}_{mode}": v for k, v in scorer.score(edited, texts * len(edit.images)).items()}
            metrics[f"images_{mode}"] = float(len(edited))
            sheet_images += edited
        for a in adapters:
            adapted = [make_image(p, seed, a.config()) for _, p, seed in jobs]
            changed = m.share(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(images, adapted))
            metrics |= {f"{k}@{a.name}": v for k, v in scorer.score(adapted, texts).items()}
            metrics[f"changed_images@{a.name}"] = changed
        sheet = contact_sheet(sheet_images, sheet_labels)
        return Validation(
            metrics=metrics,
            outputs={"images": records},
            files=files,
            plot_image=png_bytes(sheet),
            info={
                "prompts": len(prompts),
                "seeds": s.seeds,
                "size": f"{s.width}x{s.height}",
                "steps": s.num_inference_steps,
                "clip_model": s.clip_model,
                "adapters": [a.name for a in adapters],
                **{mode: edit.model_dump() for mode, edit in s.edits().items()},
            },
        )

    def validate(self, artifact: Path, device: str, ctx: RunContext) -> Validation:
        import openvino_genai as ov_genai

        pipe = image_pipeline(artifact, device, ctx, ctx.adapters)
        none = ov_genai.AdapterConfig() if ctx.adapters else None
        npu = device_kind(device) == "NPU"  # static shapes: the edit pipelines are not reshaped for it here
        editors = {} if npu else edit_pipelines(artifact, device, ctx, list(ctx.settings.edits()))
        run = self._render(
            lambda p, seed, adapter: generate_image(pipe, p, seed, ctx.settings, adapter or none),
            ctx,
            artifact.name,
            ctx.adapters,
            None
            if npu
            else lambda mode, p, seed, init, mask: edit_image(editors[mode], mode, p, seed, ctx.settings, init, mask),
        )
        if npu and ctx.settings.edits():
            run.info["not_run"] = {
                mode: f"not validated on {device} (static-shape edit pipelines)" for mode in ctx.settings.edits()
            }
        return run

    def reference(self, checkpoint: Path, ctx: RunContext) -> Validation:
        import torch
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(checkpoint, torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        editors = diffusers_edit_pipelines(pipe, list(ctx.settings.edits()))
        run = self._render(
            lambda p, seed, _: diffusers_image(pipe, p, seed, ctx.settings),
            ctx,
            "diffusers fp32",
            make_edit=lambda mode, p, seed, init, mask: diffusers_edit(
                editors[mode], mode, p, seed, ctx.settings, init, mask
            ),
        )
        run.info["how"] = f"diffusers {type(pipe).__name__}, fp32 PyTorch on CPU, torch.Generator(seed)"
        return run

    def compare(self, reference: Path, current: Path, ctx: RunContext) -> Comparison:
        """Per mode (text-to-image, image-to-image, inpainting): SSIM / PSNR of each image against the compared
        run's image for the same prompt, seed (and init image); a mode whose runs differ in inputs is left out."""
        ref, cur = self.outputs(reference).get("images", []), self.outputs(current).get("images", [])
        metrics, sims = {}, []
        for mode in ("text2image", *EDIT_MODES):
            r, c = ([x for x in rows if x.get("mode", "text2image") == mode] for rows in (ref, cur))
            inputs = [[(x["prompt"], x["seed"], x.get("image")) for x in rows] for rows in (r, c)]
            if not r or inputs[0] != inputs[1]:
                continue
            mine = [
                {
                    "kind": "image",
                    "mode": mode,
                    "prompt": y["prompt"],
                    "seed": y["seed"],
                    "file": y["file"],
                    **m.image_similarity(load_image(reference / x["file"]), load_image(current / y["file"])),
                }
                for x, y in zip(r, c)
            ]
            suffix = "" if mode == "text2image" else f"_{mode}"
            metrics |= {
                f"ssim{suffix}": m.mean(x["ssim"] for x in mine),
                f"psnr{suffix}": m.mean(x["psnr"] for x in mine),
            }
            sims += mine
        return Comparison(metrics, worst(sims, "ssim") if sims else [])

    def performance(self, artifact: Path, device: str, ctx: RunContext) -> dict[str, float]:
        """Load + compile time, then seconds per image over the first prompt's seeds after one warm-up."""
        s: Text2ImageSettings = ctx.settings
        prompt = self.prompts(s)[0]
        start = time.perf_counter()
        pipe = image_pipeline(artifact, device, ctx)
        load_s = time.perf_counter() - start
        generate_image(pipe, prompt, s.seeds[0], s)
        start = time.perf_counter()
        for seed in s.seeds:
            generate_image(pipe, prompt, seed, s)
        return {"load_s": load_s, "image_s": (time.perf_counter() - start) / len(s.seeds)}
