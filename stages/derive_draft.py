"""Stage derive-draft: derive a speculative-decoding draft from a main checkpoint into models/<draft>/checkpoint.

    python -m stages.derive_draft --draft NAME

Depth pruning keeps the first k decoder layers, the final norm and the head (as OpenVINO's
`Qwen3-pruned-6L-from-0.6B` draft does), so the draft shares the main's tokenizer by construction. An optional
short distillation heals it: KL(main || draft) over next-token distributions on local text, the main acting as
teacher (a small-scale FastDraft recipe). The KL on held-out windows is measured before and after and recorded.
"""

from __future__ import annotations

import copy
import math
import random
import re
import shutil
import time
from pathlib import Path

from stages.core.determinism import deterministic_torch
from stages.core.errors import BuildError, run_stage
from stages.core.io import atomic_dir, file_inventory, read_json, write_json
from stages.core.paths import checkpoint_dir, source_manifest_path
from stages.core.runtime import log, setup_logging
from stages.core.schema import DerivedDraft, Distillation
from stages.core.textdata import calibration_text
from stages.params import load_stage_params, stage_parser

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "tokenizer.model",
    "generation_config.json",
)


def prune(model, keep_layers: int):
    """A copy of a decoder-only model with only its first `keep_layers` layers."""
    layers = model.model.layers
    if keep_layers >= len(layers):
        raise BuildError(
            f"keep_layers: {keep_layers} keeps every layer of a {len(layers)}-layer model; a draft must be smaller"
        )
    draft = copy.deepcopy(model)
    draft.model.layers = draft.model.layers[:keep_layers]
    draft.config.num_hidden_layers = keep_layers
    if getattr(draft.config, "layer_types", None):  # per-layer attention kinds (sliding/full), when present
        draft.config.layer_types = draft.config.layer_types[:keep_layers]
    return draft


def windows(ids, seq_len: int):
    import torch

    n = len(ids) // seq_len
    if n < 2:
        raise BuildError(f"distill.data: {len(ids)} tokens give fewer than two windows of seq_len {seq_len}")
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


def main_replies(teacher, tokenizer, text: str, cfg: Distillation, batch: int = 16) -> list[int]:
    """The main's greedy chat replies to sentences of the text as user turns, chat-formatted, as one token stream:
    distilling on the main's own outputs (FastDraft) matches what the draft has to predict at serving time."""
    import torch
    from tqdm import tqdm

    sentences = [s for s in re.split(r"(?<=[.?!])\s+", text) if 30 <= len(s) <= 300]
    prompts = random.Random(cfg.seed).sample(sentences, min(cfg.chat_samples, len(sentences)))
    tokenizer.padding_side = "left"
    stream: list[int] = []
    for i in tqdm(range(0, len(prompts), batch), desc="main replies", unit="batch"):
        enc = tokenizer.apply_chat_template(
            [[{"role": "user", "content": p}] for p in prompts[i : i + batch]],
            add_generation_prompt=True,
            padding=True,
            return_tensors="pt",
            return_dict=True,
        )
        with torch.no_grad():
            out = teacher.generate(
                **enc, max_new_tokens=cfg.reply_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        mask = torch.cat([enc["attention_mask"], torch.ones_like(out[:, enc["input_ids"].shape[1] :])], dim=1)
        for row, keep in zip(out, mask):
            stream += row[keep.bool()].tolist()
    return stream


def mean_kl(teacher, student, batch, temperature: float):
    """Token-averaged KL(teacher || student) at `temperature`, scaled by T^2 (Hinton et al.)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        target = F.log_softmax(teacher(input_ids=batch).logits / temperature, dim=-1)
    logp = F.log_softmax(student(input_ids=batch).logits / temperature, dim=-1)
    kl = F.kl_div(logp.flatten(0, 1), target.flatten(0, 1), log_target=True, reduction="batchmean")
    return kl * temperature**2


def held_out(teacher, student, data, cfg: Distillation) -> tuple[float, float]:
    """Mean KL and top-1 agreement (draft argmax == main argmax: what greedy speculative decoding accepts)."""
    import torch

    kl, agree = 0.0, 0.0
    with torch.no_grad():
        for i in range(0, len(data), cfg.batch_size):
            batch = data[i : i + cfg.batch_size]
            kl += mean_kl(teacher, student, batch, cfg.temperature).item() * len(batch)
            agree += (
                teacher(input_ids=batch).logits.argmax(-1) == student(input_ids=batch).logits.argmax(-1)
            ).float().mean().item() * len(batch)
    return kl / len(data), agree / len(data)


def distill(teacher, student, text: str, tokenizer, cfg: Distillation) -> dict:
    import torch
    from tqdm import tqdm

    deterministic_torch(cfg.seed)
    data = windows(tokenizer(text, add_special_tokens=False)["input_ids"], cfg.seq_len)
    if cfg.chat_samples:
        data = torch.cat([data, windows(main_replies(teacher, tokenizer, text, cfg), cfg.seq_len)])
    data = data[torch.randperm(len(data))]
    n_held = max(1, math.ceil(len(data) * cfg.held_out))
    held, train = data[:n_held], data[n_held:]
    teacher.eval()
    student.get_input_embeddings().weight.requires_grad_(False)  # tied with the head: keep the main's
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 10) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
    )
    student.eval()
    before = held_out(teacher, student, held, cfg)
    start = time.perf_counter()
    student.train()
    losses = []
    for _ in tqdm(range(cfg.steps), desc="distill", unit="step"):
        idx = torch.randint(len(train), (cfg.batch_size,))
        loss = mean_kl(teacher, student, train[idx], cfg.temperature)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    student.eval()
    after = held_out(teacher, student, held, cfg)
    log.info(
        "distilled %d steps in %.0f s: held-out KL %.3f -> %.3f, top-1 agreement %.3f -> %.3f",
        cfg.steps,
        time.perf_counter() - start,
        before[0],
        after[0],
        before[1],
        after[1],
    )
    return {
        "held_out_kl_before": before[0],
        "held_out_kl_after": after[0],
        "held_out_top1_agreement_before": before[1],
        "held_out_top1_agreement_after": after[1],
        "train_windows": len(train),
        "held_out_windows": n_held,
        "train_tokens_seen": cfg.steps * cfg.batch_size * cfg.seq_len,
        "final_train_kl": float(sum(losses[-10:]) / len(losses[-10:])),
    }


def copy_tokenizer(src: Path, out: Path) -> list[str]:
    """Byte-identical tokenizer files: the pair stage then compares the same tokenizer, not a re-serialisation."""
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
            copied.append(name)
    return copied


def derive(name: str, spec: DerivedDraft, out: Path, distill_text: str | None = None) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, teacher_dir = checkpoint_dir(spec.base), checkpoint_dir(spec.teacher or spec.base)
    for key, folder in (("base", base), ("teacher", teacher_dir)):
        if not (folder / "manifest.json").is_file():
            raise BuildError(
                f"derived_drafts.{name}.{key}: {folder} not fetched; run `dvc repro fetch@{folder.parent.name}`"
            )
    deterministic_torch(spec.distill.seed if spec.distill else 0)
    pruned_from = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    student = prune(pruned_from, spec.keep_layers)
    teacher = (
        pruned_from if teacher_dir == base else AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    )
    stats = None
    if spec.distill:
        stats = distill(teacher, student, distill_text, AutoTokenizer.from_pretrained(teacher_dir), spec.distill)
    base_manifest = read_json(base / "manifest.json")
    with atomic_dir(out) as tmp:
        student.save_pretrained(tmp, safe_serialization=True)
        tokenizer_files = copy_tokenizer(base, tmp)
        manifest = {
            "model": name,
            "family": "llm",
            "source": {"type": "derived", **spec.model_dump(exclude_none=True)},
            "base": {
                "model": spec.base,
                "resolved_revision": base_manifest.get("resolved_revision"),
                "layers": pruned_from.config.num_hidden_layers,
            },
            "teacher": spec.teacher or spec.base,
            "requested_revision": None,
            "resolved_revision": None,
            "license": base_manifest.get("license"),
            "parameters": sum(p.numel() for p in student.parameters()),
            "base_parameters": sum(p.numel() for p in pruned_from.parameters()),
            "tokenizer_files": tokenizer_files,
            "distillation": stats,
            "files": file_inventory(tmp),
        }
        write_json(tmp / "manifest.json", manifest)
    write_json(source_manifest_path(name), manifest)
    log.info(
        "derived %s: %d of %d layers, %.1fM parameters",
        name,
        spec.keep_layers,
        pruned_from.config.num_hidden_layers,
        manifest["parameters"] / 1e6,
    )
    return manifest


def main(argv=None) -> None:
    args = stage_parser(__doc__, draft=True).parse_args(argv)
    setup_logging()
    params = load_stage_params(args)
    spec = params.derived_drafts[args.draft]
    text = calibration_text(spec.distill.data) if spec.distill else None
    derive(args.draft, spec, checkpoint_dir(args.draft), text)


if __name__ == "__main__":
    run_stage(main)
