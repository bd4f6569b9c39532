"""Stage adapter: prepare one LoRA adapter in models/adapters/<name> (fetch or train it, check it fits its model,
record its alpha and the PEFT reference's metrics that validation compares openvino-genai against).

    python -m stages.adapter --adapter NAME
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stages.check_params import family_settings
from stages.core.determinism import deterministic_torch
from stages.core.errors import BuildError, run_stage, user_input
from stages.core.io import atomic_dir, read_json, sha256_file, write_json, write_text
from stages.core.paths import adapter_dir, checkpoint_dir
from stages.core.recipe import checkpoint_weight_shapes
from stages.core.runtime import log, setup_logging
from stages.core.schema import Adapter, AdapterFile, AdapterHub, AdapterTraining
from stages.core.textdata import calibration_text, eval_text
from stages.params import Params, load_stage_params, stage_parser

ADAPTER_FILE = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"


def fetch_file(source: AdapterFile, out: Path, key: str) -> None:
    path = Path(source.path)
    if path.is_dir():
        path = path / ADAPTER_FILE
    if not path.is_file():
        raise BuildError(f"{key}.source.path: adapter file not found: {path}")
    if path.suffix != ".safetensors":
        raise BuildError(f"{key}.source.path: {path.name} is not a .safetensors file (pickle adapters are refused)")
    shutil.copyfile(path, out / ADAPTER_FILE)
    if (path.parent / PEFT_CONFIG).is_file():
        shutil.copyfile(path.parent / PEFT_CONFIG, out / PEFT_CONFIG)


def fetch_hub(source: AdapterHub, out: Path) -> None:
    """hf_hub_download honours HF_TOKEN / HF_HUB_OFFLINE; adapter_config.json comes along when the repo has one."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    from stages.core.hub import hub_error

    try:
        path = hf_hub_download(source.repo_id, source.filename, revision=source.revision)
    except Exception as e:  # the model fetch's one line per hub failure (repo, revision, HF_TOKEN, file)
        raise hub_error(e, source, source.filename) from e
    shutil.copyfile(path, out / ADAPTER_FILE)
    try:
        config = hf_hub_download(
            source.repo_id,
            PEFT_CONFIG,
            revision=source.revision,
            subfolder=str(Path(source.filename).parent).strip(".") or None,
        )
        shutil.copyfile(config, out / PEFT_CONFIG)
    except EntryNotFoundError:
        pass


def train(source: AdapterTraining, checkpoint: Path, out: Path) -> dict:
    """A PEFT LoRA trained on next-token prediction over a local text set (windows of seq_len tokens)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    deterministic_torch(source.seed)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    ids = tokenizer(calibration_text(source.data), add_special_tokens=False, return_tensors="pt").input_ids[0]
    windows = ids[: len(ids) // source.seq_len * source.seq_len].view(-1, source.seq_len)
    if len(windows) == 0:
        raise BuildError(f"source.data: calibration set '{source.data}' is shorter than seq_len tokens")
    base = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    model = get_peft_model(
        base,
        LoraConfig(
            r=source.rank,
            lora_alpha=source.lora_alpha,
            lora_dropout=0.0,
            target_modules=source.target_modules,
            task_type="CAUSAL_LM",
        ),
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=source.learning_rate)
    model.train()
    losses = []
    for _ in (bar := tqdm(range(source.steps), desc="train LoRA", unit="step")):
        batch = windows[torch.randint(len(windows), (source.batch_size,))]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.save_pretrained(out, safe_serialization=True)
    (out / "README.md").unlink(missing_ok=True)
    sort_target_modules(out / "adapter_config.json")
    return {
        "steps": source.steps,
        "first_loss": losses[0],
        "last_loss": float(np.mean(losses[-5:])),
        "windows": len(windows),
    }


def sort_target_modules(config_path: Path) -> None:
    """PEFT writes target_modules from a set, in an order that changes with Python's string hash seed: sorted, the
    same training writes the same bytes in every run."""
    config = read_json(config_path, "adapter config")
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    write_text(config_path, json.dumps(config, indent=2, sort_keys=True))


def lora_pairs(adapter_file: Path) -> dict[str, dict[str, tuple]]:
    """{module: {"A": shape, "B": shape}} for the PEFT-format LoRA tensors of a file."""
    from safetensors import safe_open

    pairs: dict[str, dict[str, tuple]] = {}
    with user_input(f"{adapter_file}"), safe_open(adapter_file, framework="np") as st:
        for key in st.keys():
            m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.default)?\.weight", key)
            if m:
                pairs.setdefault(m.group(1), {})[m.group(2)] = tuple(st.get_slice(key).get_shape())
    return pairs


def check_fits(adapter_file: Path, checkpoint: Path, model: str, key: str) -> int:
    """Every LoRA pair must target a linear layer of the model with matching shapes: A [r, in], B [out, r].
    (PEFT only warns about modules it cannot find, and genai skips them silently.) Returns the number of pairs."""
    pairs = lora_pairs(adapter_file)
    if not pairs:
        raise BuildError(f"{key}: {adapter_file.name} has no PEFT LoRA tensors (*.lora_A.weight / *.lora_B.weight)")
    weights = checkpoint_weight_shapes(checkpoint)
    for module, ab in sorted(pairs.items()):
        base = weights.get(f"{module}.weight")
        if base is None:
            raise BuildError(
                f"{key}: {adapter_file.name} adapts '{module}', which model '{model}' does not have "
                "(an adapter for another architecture?)"
            )
        if "A" not in ab or "B" not in ab:
            raise BuildError(f"{key}: {adapter_file.name} has lora_A or lora_B missing for '{module}'")
        if len(base) != 2 or ab["A"][1] != base[1] or ab["B"][0] != base[0] or ab["A"][0] != ab["B"][1]:
            raise BuildError(
                f"{key}: {adapter_file.name} '{module}' has lora_A {list(ab['A'])}, lora_B "
                f"{list(ab['B'])}, but model '{model}' has weight {list(base)} there "
                "(an adapter for another architecture?)"
            )
    return len(pairs)


def resolve_alpha(adapter: Adapter, out: Path, key: str) -> float:
    """genai applies alpha * B @ A; PEFT applies (lora_alpha / r) * B @ A: the default is PEFT's scale."""
    if adapter.alpha is not None:
        return adapter.alpha
    config = out / PEFT_CONFIG
    if not config.is_file():
        raise BuildError(f"{key}.alpha: not given, and the adapter has no {PEFT_CONFIG} to take lora_alpha / r from")
    with user_input(f"{key}: {config}"):
        peft = json.loads(config.read_text())
        return float(peft["lora_alpha"]) / float(peft["r"])


def peft_perplexity(
    checkpoint: Path, adapter_folder: Path, alpha: float, text: str, context_length: int, max_tokens: int
) -> dict:
    """The PyTorch (fp32) reference: perplexity of the base model with the adapter at `alpha`, and without it,
    over the same windows validation uses."""
    import torch
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = AutoTokenizer.from_pretrained(checkpoint)(text, add_special_tokens=False).input_ids[:max_tokens]
    base = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_folder).eval()
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.scaling = {name: alpha for name in module.scaling}
    windows = [ids[i : i + context_length] for i in range(0, len(ids), context_length)]
    windows = [torch.tensor(w)[None] for w in windows if len(w) > 1]

    def ppl() -> float:
        total, count = 0.0, 0
        with torch.no_grad():
            for w in tqdm(windows, desc="PEFT reference", unit="window"):
                logp = torch.log_softmax(model(input_ids=w).logits[0, :-1].double(), -1)
                total -= float(logp[torch.arange(w.shape[1] - 1), w[0, 1:]].sum())
                count += w.shape[1] - 1
        return float(np.exp(total / count))

    with_adapter = ppl()
    with model.disable_adapter():
        without = ppl()
    return {"perplexity": with_adapter, "perplexity_base": without, "eval_tokens": len(ids)}


def prepare(params: Params, name: str) -> dict:
    adapter, key = params.adapters[name], f"adapters.{name}"
    spec = params.spec(adapter.model)
    checkpoint = checkpoint_dir(adapter.model)
    if not (checkpoint / "manifest.json").is_file():
        raise BuildError(f"{checkpoint}: no checkpoint for '{adapter.model}'; run `dvc repro fetch@{adapter.model}`")
    with atomic_dir(adapter_dir(name)) as out:
        info = {}
        if isinstance(adapter.source, AdapterFile):
            fetch_file(adapter.source, out, key)
        elif isinstance(adapter.source, AdapterHub):
            fetch_hub(adapter.source, out)
        else:
            log.info("training LoRA %s on %s (%d steps)", name, adapter.source.data, adapter.source.steps)
            info["training"] = train(adapter.source, checkpoint, out)
        alpha = resolve_alpha(adapter, out, key)
        manifest = {
            "adapter": name,
            "model": adapter.model,
            "family": spec.family,
            "file": ADAPTER_FILE,
            "alpha": alpha,
            "source": adapter.source.model_dump(),
            "sha256": sha256_file(out / ADAPTER_FILE),
            **info,
        }
        if spec.family == "llm":
            manifest["lora_modules"] = check_fits(out / ADAPTER_FILE, checkpoint, adapter.model, key)
            if (out / PEFT_CONFIG).is_file() and family_settings(params, "llm") is not None:
                s = family_settings(params, "llm")
                manifest["reference"] = peft_perplexity(
                    checkpoint, out, alpha, eval_text(s.eval_set), s.context_length, s.max_tokens
                )
                manifest["reference"]["how"] = "PEFT PeftModel, fp32 PyTorch, same eval windows as validation"
        write_json(out / "manifest.json", manifest)
    log.info("adapter %s for %s: alpha %g %s", name, adapter.model, alpha, manifest.get("reference", ""))
    return manifest


def main(argv=None) -> None:
    args = stage_parser(__doc__, adapter=True).parse_args(argv)
    setup_logging()
    prepare(load_stage_params(args), args.adapter)


if __name__ == "__main__":
    run_stage(main)
