"""Small models of the real architectures, trained on the shapes world (stages/core/shapes.py) in minutes on a CPU:
a CLIP (the scorer) and a Stable Diffusion 1.x (VAE, UNet, and the CLIP's own text tower as its text encoder).
Seeded and deterministic (stages/core/determinism.py); each returns what its manifest records: training time and
held-out numbers measured before anything is exported."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stages.core import metrics as m
from stages.core import shapes
from stages.core.determinism import deterministic_torch

CLIP_SIZE, SD_SIZE = 32, 64


def clip_processor():
    from transformers import CLIPImageProcessor, CLIPProcessor

    from stages.core.tiny import tiny_clip_tokenizer

    images = CLIPImageProcessor(size={"shortest_edge": CLIP_SIZE}, crop_size={"height": CLIP_SIZE, "width": CLIP_SIZE})
    return CLIPProcessor(image_processor=images, tokenizer=tiny_clip_tokenizer(extra_text=" ".join(shapes.CAPTIONS)))


def clip_model(vocab_size: int):
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig

    from stages.core.tiny import _clip_text_config

    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=CLIP_SIZE,
        patch_size=8,
        projection_dim=32,
    )
    config = CLIPConfig(
        text_config=_clip_text_config(vocab_size).to_dict(), vision_config=vision.to_dict(), projection_dim=32
    )
    return CLIPModel(config)


def heldout_clip_report(model, processor, images: list[np.ndarray], captions: list[str]) -> dict[str, float]:
    """CLIP score of the images with their own captions and with mismatched ones (stages.core.metrics)."""
    import torch

    with torch.no_grad():
        batch = processor(text=captions + m.mismatched(captions), images=images, return_tensors="pt", padding=True)
        out = model(**batch)
    image_embeds, text_embeds = out.image_embeds.numpy(), out.text_embeds.numpy()
    matched = m.clip_score(image_embeds, text_embeds[: len(captions)])
    mismatched = m.clip_score(image_embeds, text_embeds[len(captions) :])
    return {
        "heldout_images": float(len(images)),
        "clip_score_matched": matched,
        "clip_score_shuffled": mismatched,
        "clip_score_gap": matched - mismatched,
    }


def fit_clip(seed: int = 0, steps: int = 150, pool: int = 600):
    """Contrastive training, each step one image of every caption (no caption twice in a batch); returns
    (model, processor, report with the held-out matched / mismatched CLIP scores)."""
    import torch

    deterministic_torch(seed)
    processor = clip_processor()
    model = clip_model(len(processor.tokenizer))
    train = shapes.scenes("train", pool)
    pixels = processor(images=[shapes.render(s, CLIP_SIZE) for s in train], return_tensors="pt")["pixel_values"]
    text = processor.tokenizer(shapes.CAPTIONS, return_tensors="pt", padding=True)
    rounds = pool // len(shapes.CAPTIONS)  # the balanced pool holds the captions in turn
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model.train()
    for _ in tqdm(range(steps), desc="train world CLIP", unit="step"):
        first = int(torch.randint(rounds, (1,), generator=generator)) * len(shapes.CAPTIONS)
        loss = model(**text, pixel_values=pixels[first : first + len(shapes.CAPTIONS)], return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    model.eval()
    heldout = shapes.scenes("heldout", 120)
    images, captions = [shapes.render(s, CLIP_SIZE) for s in heldout], [s.caption for s in heldout]
    report = {"train_seconds": round(seconds, 1), "steps": steps, "final_loss": float(loss.detach())}
    return model, processor, report | heldout_clip_report(model, processor, images, captions)


def saved(out: Path, fitted, training, part: str) -> dict:
    """Save a fitted (model, processor, report) as a checkpoint; its manifest entry (training: WorldTraining)."""
    model, processor, report = fitted
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return {"world": "shapes", "training": training.model_dump(), part: report}


def train_clip(out: Path, seed: int, training) -> dict:
    """The world's CLIP scorer."""
    return saved(out, fit_clip(seed, training.clip_steps), training, "clip")


def world_images(split: str, count: int, size: int):
    """(scenes, float tensor [N, 3, size, size] in [-1, 1]) of a split."""
    import torch

    chosen = shapes.scenes(split, count)
    arrays = np.stack([shapes.render(s, size) for s in chosen]).astype(np.float32) / 127.5 - 1
    return chosen, torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()


def train_vae(vae, images, steps: int, batch: int, generator) -> float:
    """Reconstruction + a light KL; returns the latent std (the pipeline's scaling_factor is its inverse)."""
    import torch

    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    for _ in tqdm(range(steps), desc="train world VAE", unit="step"):
        x = images[torch.randint(len(images), (batch,), generator=generator)]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=generator)).sample
        loss = torch.nn.functional.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return float(vae.encode(images[:256]).latent_dist.mean.std())


def train_unet(unet, latents, context, uncond, steps: int, batch: int, generator) -> float:
    """Epsilon prediction on DDPM noise (SD's training objective); 10 % of captions dropped to the empty prompt
    so classifier-free guidance works."""
    import torch
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    for _ in tqdm(range(steps), desc="train world UNet", unit="step"):
        pick = torch.randint(len(latents), (batch,), generator=generator)
        x0, ctx = latents[pick], context[pick].clone()
        ctx[torch.rand(batch, generator=generator) < 0.1] = uncond
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(noise_scheduler.config.num_train_timesteps, (batch,), generator=generator)
        pred = unet(noise_scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=ctx).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float(loss)


def train_stable_diffusion(out: Path, seed: int, training) -> dict:
    """A tiny SD 1.x trained on the world: VAE first, then the UNet on its latents, conditioned on the text tower
    of the world's CLIP (the same seed gives the same CLIP as the scorer's; kept frozen: it is the pipeline's
    text encoder). Its report: the CLIP score of its own drawings of every caption, matched and mismatched."""
    import torch
    from transformers import CLIPTextModel

    from stages.core.tiny import sd_pipeline, tiny_unet, tiny_vae

    clip, processor, clip_report = fit_clip(seed, training.clip_steps)
    tokenizer = processor.tokenizer
    deterministic_torch(seed)
    generator = torch.Generator().manual_seed(seed)
    text_encoder = CLIPTextModel(clip.config.text_config)
    text_encoder.text_model.load_state_dict(clip.text_model.state_dict())
    text_encoder.eval().requires_grad_(False)
    vae, unet = tiny_vae(SD_SIZE), tiny_unet(text_encoder.config.hidden_size, SD_SIZE // 2)
    train, images = world_images("train", 600, SD_SIZE)
    start = time.perf_counter()
    latent_std = train_vae(vae, images, training.vae_steps, 16, generator)
    vae_seconds = time.perf_counter() - start
    vae.register_to_config(scaling_factor=1 / latent_std)
    vae.eval().requires_grad_(False)

    def encode(texts):
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
        return text_encoder(ids.input_ids)[0]

    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mean / latent_std
        by_caption = dict(zip(shapes.CAPTIONS, encode(shapes.CAPTIONS)))
        context = torch.stack([by_caption[s.caption] for s in train])
        uncond = encode([""])[0]
    loss = train_unet(unet, latents, context, uncond, training.unet_steps, 16, generator)
    seconds = time.perf_counter() - start
    pipe = sd_pipeline(vae, text_encoder, tokenizer, unet.eval())
    pipe.save_pretrained(out, safe_serialization=True)
    drawn = drawings_clip_report(pipe, clip, processor)
    sd = {"train_seconds": round(seconds, 1), "vae_seconds": round(vae_seconds, 1), "final_loss": loss, **drawn}
    return {"world": "shapes", "training": training.model_dump(), "clip": clip_report, "stable_diffusion": sd}


def drawings_clip_report(pipe, clip, processor, steps: int = 8, seeds=(0, 1)) -> dict[str, float]:
    """Every caption drawn once per seed by the (diffusers) pipeline, scored by the world's CLIP."""
    import torch

    pipe.set_progress_bar_config(disable=True)
    images, captions = [], []
    for seed in seeds:
        for caption in shapes.CAPTIONS:
            out = pipe(
                caption,
                num_inference_steps=steps,
                height=SD_SIZE,
                width=SD_SIZE,
                generator=torch.Generator().manual_seed(seed),
                output_type="np",
            )
            images.append((out.images[0] * 255).round().astype(np.uint8))
            captions.append(caption)
    return {f"drawn_{k}": v for k, v in heldout_clip_report(clip, processor, images, captions).items()}


def llava_example_texts(processor, scene, question: str) -> tuple[str, str]:
    """(prompt, answer) as VLMPipeline and TorchVLM prompt: the chat template over a user turn of the image then
    the question; the answer ends with the tokenizer's EOS so that generation stops."""
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    return prompt, f" {scene.answer(question)}{processor.tokenizer.eos_token}"


def llava_token_rows(processor, scenes) -> dict[tuple[str, str], tuple[list[int], int]]:
    """Per (question, answer): the token ids of prompt + answer with the image tokens expanded, and where the
    answer starts (the processor expands `<image>` only when it is given an image: any image does)."""
    from PIL import Image

    blank = Image.new("RGB", (CLIP_SIZE, CLIP_SIZE))
    rows = {}
    for scene in scenes:
        for question in shapes.QUESTIONS:
            key = (question, scene.answer(question))
            if key not in rows:
                prompt, answer = llava_example_texts(processor, scene, question)
                ids = processor(images=blank, text=prompt + answer)["input_ids"][0]
                rows[key] = (list(ids), len(processor(images=blank, text=prompt)["input_ids"][0]))
    return rows


def fit_llava(seed: int = 0, steps: int = 8000, pool: int = 12000, batch: int = 24):
    """A tiny LLaVA (stages.core.tiny) trained from scratch to answer shapes.QUESTIONS about world images, loss on
    the answer tokens only, one-cycle learning rate; returns (model, processor, report with held-out exact-match
    accuracy). Colour is learned in a few hundred steps, shape needs thousands and a pool it cannot memorise
    (600 images: shape 0.5 held-out; 8000 images, 4000 steps: 0.71; 12000 images, 8000 steps: 0.85)."""
    import torch

    from stages.core.tiny import llava_model, llava_processor, tiny_tokenizer

    deterministic_torch(seed)
    processor = llava_processor(tiny_tokenizer(), CLIP_SIZE)
    model = llava_model(processor.tokenizer, feature_layer=-1)
    train = shapes.scenes("train", pool)
    pixels = processor.image_processor(images=[shapes.render(s, 256) for s in train], return_tensors="pt")[
        "pixel_values"
    ]
    rows = llava_token_rows(processor, train)
    questions = list(shapes.QUESTIONS)
    pad = processor.tokenizer.pad_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model.train()
    for _ in tqdm(range(steps), desc="train world LLaVA", unit="step", mininterval=10):
        picks = torch.randint(pool, (batch,), generator=generator).tolist()
        asked = torch.randint(len(questions), (batch,), generator=generator).tolist()
        examples = [rows[(questions[q], train[i].answer(questions[q]))] for i, q in zip(picks, asked)]
        width = max(len(ids) for ids, _ in examples)
        ids = torch.full((batch, width), pad)
        labels = torch.full((batch, width), -100)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for row, (tokens, answer_from) in enumerate(examples):
            ids[row, : len(tokens)] = torch.tensor(tokens)
            labels[row, answer_from : len(tokens)] = torch.tensor(tokens[answer_from:])
            mask[row, : len(tokens)] = 1
        loss = model(input_ids=ids, attention_mask=mask, pixel_values=pixels[picks], labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    seconds = time.perf_counter() - start
    model.eval()
    heldout = shapes.scenes("heldout", 48)
    report = {"train_seconds": round(seconds, 1), "steps": steps, "pool": pool, "final_loss": float(loss.detach())}
    images = [shapes.render(s, 256) for s in heldout]
    return model, processor, report | heldout_vlm_report(model, processor, heldout, images)


def train_llava(out: Path, seed: int, training) -> dict:
    """The world's LLaVA."""
    return saved(out, fit_llava(seed, training.llava_steps), training, "llava")


def heldout_vlm_report(model, processor, scenes, images) -> dict[str, float]:
    """Greedy answers to every world question about held-out images, exact match with the truth."""
    import torch
    from PIL import Image

    right = []
    for scene, image in zip(scenes, images):
        for question in shapes.QUESTIONS:
            prompt, _ = llava_example_texts(processor, scene, question)
            inputs = processor(images=Image.fromarray(image), text=prompt, return_tensors="pt")
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
            answer = processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
            right.append((question, answer == scene.answer(question)))
    by_question = {f"accuracy[{q}]": m.share(ok for asked, ok in right if asked == q) for q in shapes.QUESTIONS}
    return {"heldout_questions": float(len(right)), "answer_accuracy": m.share(ok for _, ok in right), **by_question}


WORLD_BUILDERS = {"clip": train_clip, "stable-diffusion": train_stable_diffusion, "llava": train_llava}
