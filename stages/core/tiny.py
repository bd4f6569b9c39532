"""Tiny random-init checkpoints built in code, for tests and for families with no offline weights
(no CLIP, diffusion or VLM weights can be downloaded here). Deterministic for a seed.

    python -m stages.core.tiny {llm,stable-diffusion,stable-diffusion-xl,lcm,clip,llava} OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TRAINING_TEXT = (
    "The quick brown fox jumps over the lazy dog. A compiler turns source code into machine code. "
    "Paris is the capital of France; Berlin is the capital of Germany. 0123456789 + - * / = ( ) [ ] { } "
    "def main(): return 42  # code\n\tTabs and    spaces. Ünïcödé, naïve café, 東京, émigré. "
) * 8


def tiny_tokenizer(vocab_size: int = 384):
    """A byte-level BPE trained on a fixed text: deterministic, converts to OpenVINO tokenizer IRs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TRAINING_TEXT], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
        chat_template=CHAT_TEMPLATE,
    )


def tiny_llm(out: Path, seed: int = 0, layers: int = 2, hidden: int = 64, vocab_size: int = 384) -> Path:
    """A random-init Llama (dims multiples of 32 so int4 group sizes 32/64 divide them) plus its tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    out = Path(out)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


CAPTIONS = (
    "a photo of a cat sitting on a red sofa; an astronaut riding a horse on the moon; a bowl of fruit on "
    "a wooden table; a mountain lake at sunset, oil painting; a cup of coffee; a rocket on the launch pad; "
    "portrait of a woman in a uniform; what is in this image? describe the picture. how many people are "
    "there? what color is the sky? 0123456789"
)


def bpe_merges(words: list[str], count: int, suffix: str = "</w>") -> list[tuple[str, str]]:
    """BPE training, frequency ties broken by the pair itself. Hand-written because tokenizers' BpeTrainer breaks
    ties in hash-map order, so its merges (and ids) differ run to run."""
    from collections import Counter

    frequency = Counter(words)
    pieces = {w: [*w[:-1], w[-1] + suffix] for w in frequency}
    merges: list[tuple[str, str]] = []
    while len(merges) < count:
        pairs: Counter = Counter()
        for word, n in frequency.items():
            for pair in zip(pieces[word], pieces[word][1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        for word, seq in pieces.items():
            merged, i = [], 0
            while i < len(seq):
                if tuple(seq[i : i + 2]) == best:
                    merged.append(seq[i] + seq[i + 1])
                    i += 2
                else:
                    merged.append(seq[i])
                    i += 1
            pieces[word] = merged
    return merges


def tiny_clip_tokenizer(merges: int = 160, extra_text: str = ""):
    """A CLIP-style BPE (lower-cased words, `</w>` word ends, byte-level alphabet) trained on fixed captions
    (and `extra_text`, e.g. a trained world's captions, so that its words are whole tokens)."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    text = f"{CAPTIONS} {extra_text}".lower()
    words = [piece for word in text.split() for piece, _ in byte_level.pre_tokenize_str(word)]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    trained = bpe_merges(words, merges)
    for token in (
        "<|startoftext|>",
        "<|endoftext|>",
        *alphabet,
        *(c + "</w>" for c in alphabet),
        *(a + b for a, b in trained),
    ):
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=trained, model_max_length=77)


def _clip_text_config(vocab_size: int):
    from transformers import CLIPTextConfig

    # widths are multiples of 32 so int4 group sizes divide them
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def tiny_unet(cross_attention_dim: int = 32, latent_size: int = 32, norm_num_groups: int = 32, **config):
    """A 2-block SD 1.x UNet (64x64 images through the VAE below: 32x32x4 latents); `config`: the SDXL / LCM
    extras (added embeddings, a guidance embedding)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=norm_num_groups,
        **config,
    )


def tiny_vae(image_size: int = 64):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        norm_num_groups=32,
        sample_size=image_size,
    )


def tiny_stable_diffusion(out: Path, seed: int = 0) -> Path:
    """A Stable Diffusion 1.x pipeline in miniature: 2-block UNet and VAE (64x64 images), 2-layer CLIP text
    encoder, Euler scheduler, no safety checker."""
    import torch
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    unet, vae = tiny_unet(), tiny_vae()
    text_encoder = CLIPTextModel(_clip_text_config(len(tokenizer))).eval()
    sd_pipeline(vae, text_encoder, tokenizer, unet).save_pretrained(out, safe_serialization=True)
    return Path(out)


def sd_pipeline(vae, text_encoder, tokenizer, unet):
    """The SD 1.x pipeline of these parts: Euler scheduler, no safety checker."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


CONDITIONING_GAINS = {
    "conv_out": 20,
    "attn2.to_k": 4,
    "attn2.to_v": 4,
    "attn2.to_out": 10,
    "add_embedding": 4,
    "cond_proj": 4,
    "time_emb_proj": 4,
}


def conditioned_unet(**config):
    """A tiny UNet whose conditioning moves its images. At random init the initial noise dominates them (another
    prompt, other SDXL size ids or another LCM guidance scale leave SSIM > 0.99), so a pipeline that mishandled
    those inputs would still match diffusers. Scaled up, the noise prediction and the conditioning paths count: SSIM
    0.44 (SDXL size ids), 0.72 (SDXL prompt), 0.78 (LCM guidance scale) against the unchanged image; the LCM's prompt,
    which reaches its UNet only through cross-attention, moved it to 0.990 until attn2.to_out was scaled too (0.918,
    another prompt; diffusers, 3 steps, 64x64). 8 norm groups:
    with one channel per group the time embedding, a per-channel shift, is normalized away."""
    import torch

    unet = tiny_unet(norm_num_groups=8, **config)
    with torch.no_grad():
        for name, weight in unet.named_parameters():
            gain = next((g for part, g in CONDITIONING_GAINS.items() if part in name), 1)
            if name.endswith("weight") and gain != 1:
                weight.mul_(gain)
    return unet


def tiny_sdxl(out: Path, seed: int = 0) -> Path:
    """An SDXL pipeline in miniature: two CLIP text encoders (the second with a projection, whose pooled output
    and the six size/crop numbers feed the UNet's added "text_time" embedding), their hidden states concatenated
    as the UNet's cross-attention input, the tiny VAE, Euler scheduler."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    config = _clip_text_config(len(tokenizer))
    time_dim = 16  # 6 * 16 + projection_dim (32) = 128: int4 group sizes 32/64 divide the added embedding's input
    unet = conditioned_unet(
        cross_attention_dim=2 * config.hidden_size,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + config.projection_dim,
    )
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=CLIPTextModel(config).eval(),
        text_encoder_2=CLIPTextModelWithProjection(config).eval(),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
        ),
        force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    return Path(out)


def tiny_lcm(out: Path, seed: int = 0) -> Path:
    """An SD 1.x distilled to a latent consistency model, as LCM Dreamshaper v7 is: the UNet embeds the guidance
    scale (`time_cond_proj_dim`) instead of running classifier-free guidance, LCMScheduler."""
    import torch
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    unet = conditioned_unet(time_cond_proj_dim=32)
    pipe = LatentConsistencyModelPipeline(
        vae=tiny_vae(),
        text_encoder=CLIPTextModel(_clip_text_config(len(tokenizer))).eval(),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    return Path(out)


def tiny_clip(out: Path, seed: int = 0) -> Path:
    """A CLIPModel for scoring (32x32 images, 32-d joint space) with its processor."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPVisionConfig

    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=32,
    )
    config = CLIPConfig(
        text_config=_clip_text_config(len(tokenizer)).to_dict(), vision_config=vision.to_dict(), projection_dim=32
    )
    CLIPModel(config).eval().save_pretrained(out, safe_serialization=True)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(out)
    return Path(out)


# An image renders as "<image>\n" before the text: the LLaVA-1.5 layout, the one openvino-genai's VLMPipeline builds from
# a plain question (a model trained on "<image>" + question answered differently through it than in transformers).
LLAVA_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }}: {% if m['content'] is string %}"
    "{{ m['content'] }}{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def tiny_llava(out: Path, seed: int = 0) -> Path:
    """A LLaVA-1.5 in miniature: CLIP vision tower (32x32 images, 16 patches), 2-layer Llama, `<image>` token."""
    import torch

    torch.manual_seed(seed)
    processor = llava_processor(tiny_tokenizer())
    llava_model(processor.tokenizer).eval().save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return Path(out)


def llava_processor(tokenizer, image_size: int = 32):
    """The LLaVA processor of a tiny tokenizer: adds the `<image>` token and the chat template."""
    from tokenizers import AddedToken
    from transformers import CLIPImageProcessor, LlavaProcessor

    tokenizer.add_tokens([AddedToken("<image>", special=True, normalized=False)])
    tokenizer.chat_template = LLAVA_TEMPLATE
    size = {"shortest_edge": image_size}
    images = CLIPImageProcessor(size=size, crop_size={"height": image_size, "width": image_size})
    return LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    )


def llava_model(tokenizer, vision=None, feature_layer: int = -2):
    """A random-init LlavaForConditionalGeneration sized for a tiny tokenizer (with `<image>`); `vision`: the
    vision tower's CLIPVisionConfig (default: 32x32 images, 16 patches)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = vision or CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=64,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(vision.image_size // vision.patch_size) ** 2,
        vision_feature_layer=feature_layer,
        vision_feature_select_strategy="default",
    )
    return LlavaForConditionalGeneration(config)


BUILDERS = {
    "llm": tiny_llm,
    "stable-diffusion": tiny_stable_diffusion,
    "stable-diffusion-xl": tiny_sdxl,
    "lcm": tiny_lcm,
    "clip": tiny_clip,
    "llava": tiny_llava,
}

if __name__ == "__main__":
    BUILDERS[sys.argv[1]](Path(sys.argv[2]))
