"""Convert a CTranslate2 Whisper model directory into a transformers Whisper checkpoint.

    python -m stages.ct2_whisper --meta DIR --out DIR model.bin [model.bin.part2 ...]

Inputs: model.bin (possibly split in parts, read in order as one stream) and, in `meta_dir`, config.json
(suppress_ids, suppress_ids_begin, alignment_heads, lang_ids), tokenizer.json (a Hugging Face `tokenizers` file)
and vocabulary.txt (the CT2 vocabulary, one token per line: it must equal the tokenizer's, timestamps included).

CTranslate2 model.bin, little-endian; str = u16 length (counting a trailing NUL) + bytes:
    u32 binary version (6: every CT2 Whisper model; versions 4-5 share the layout)
    str spec name ("WhisperSpec") | u32 spec revision (<= 3)
    u32 n_vars, then per variable: str name | u8 rank | u32 dims[rank] | u8 dtype | u32 nbytes | nbytes raw
        dtype: 0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16 (CTranslate2's DataType enum)
    u32 n_aliases, then per alias: str alias | str target
Rank-0 variables are spec metadata (num_heads, activation, ...: see METADATA). The rest are weights
{encoder,decoder}/..., mapped in `_weights`. CT2 fuses projections: self_attention/linear_0 = [q; k; v] and the
cross-attention's attention/linear_1 = [k; v]; CT2 pads a zero bias for k, which transformers' k_proj does not have
(a bias on k adds a per-query constant to the attention logits, which softmax cancels, so dropping it is exact).
The alias decoder/projection/weight -> decoder/embeddings/weight is the tied output projection.

Weights are saved as fp32 safetensors: CT2 Whisper files are fp16 and fp16 -> fp32 is exact, while an fp16
checkpoint would load as fp16 (transformers 5 defaults to dtype="auto"), which is slow and lossy on CPU and for the
OpenVINO export that follows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stages.core.errors import BuildError, run_stage
from stages.core.io import atomic_dir
from stages.core.runtime import log, setup_logging

SUPPORTED_BINARY_VERSIONS = (4, 5, 6)
MAX_SPEC_REVISION = 3
DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
ITEM_SIZES = {0: 4, 1: 1, 2: 2, 3: 4, 4: 2, 5: 2}
# Rank-0 spec variables besides num_heads: the value this converter requires (None: CT2-internal, recorded only).
METADATA = {
    "decoder/activation": 3,  # common_spec.Activation.GELU
    "decoder/alibi": 0,
    "decoder/pre_norm": 1,
    "decoder/scale_embeddings": 0,
    "decoder/start_from_zero_embedding": 0,
    "decoder/alignment_heads": None,  # CT2's generic return_attention setting; Whisper uses config.json's
    "decoder/alignment_layer": None,
}
TIED_ALIAS = ("decoder/projection/weight", "decoder/embeddings/weight")
NON_LANGUAGE_TOKENS = {
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
}


class CT2FormatError(ValueError):
    """The CT2 files are truncated, corrupt, or not a Whisper model this converter understands."""


@dataclass
class CT2Model:
    version: int
    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]
    label: str  # the file(s), for error messages


class _Stream:
    """The part files as one byte stream; a short read raises CT2FormatError naming the part it ended in."""

    def __init__(self, files: list[Path], stack: contextlib.ExitStack):
        self.files, self.stack, self.index, self.pos = files, stack, -1, 0
        self.handle = None
        self._next()

    def _next(self) -> bool:
        self.index += 1
        if self.index >= len(self.files):
            self.handle = None
            return False
        self.handle = self.stack.enter_context(open(self.files[self.index], "rb"))
        return True

    @property
    def where(self) -> str:
        return str(self.files[min(self.index, len(self.files) - 1)])

    def read(self, n: int, what: str) -> bytes:
        chunks, need = [], n
        while need and self.handle is not None:
            chunk = self.handle.read(need)
            if chunk:
                chunks.append(chunk)
                need -= len(chunk)
            else:
                self._next()
        if need:
            raise CT2FormatError(
                f"{self.where}: truncated at byte {self.pos + n - need} of the model stream: "
                f"{what} needs {n} bytes, only {n - need} left"
            )
        self.pos += n
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack("<" + fmt, self.read(struct.calcsize("<" + fmt), what))

    def string(self, what: str) -> str:
        (n,) = self.unpack("H", f"{what} length")
        raw = self.read(n, what)
        if not raw.endswith(b"\0"):
            raise CT2FormatError(f"{self.where}: corrupt {what} at byte {self.pos - n}: not NUL-terminated")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise CT2FormatError(f"{self.where}: corrupt {what} at byte {self.pos - n}: not UTF-8") from None

    def at_end(self) -> bool:
        while self.handle is not None:
            if self.handle.read(1):
                return False
            self._next()
        return True


def _read_variable(s: _Stream, i: int) -> tuple[str, np.ndarray]:
    name = s.string(f"name of variable #{i}")
    (rank,) = s.unpack("B", f"rank of '{name}'")
    dims = s.unpack(f"{rank}I", f"shape of '{name}'")
    (dtype, nbytes) = s.unpack("BI", f"dtype/size of '{name}'")
    if dtype not in DTYPES:
        raise CT2FormatError(f"{s.where}: variable '{name}' has unknown dtype id {dtype}")
    if nbytes != int(np.prod(dims, dtype=np.int64)) * ITEM_SIZES[dtype]:
        raise CT2FormatError(f"{s.where}: variable '{name}' of shape {dims} has an invalid payload size {nbytes}")
    raw = s.read(nbytes, f"data of '{name}'")
    if DTYPES[dtype] == "bfloat16":  # numpy has no bf16: widen to f32 (exact)
        array = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        array = np.frombuffer(raw, np.dtype(DTYPES[dtype]).newbyteorder("<"))
    return name, array.reshape(dims)


def read_ct2(model_files: list[Path]) -> CT2Model:
    """Parse and fully validate a CT2 model.bin given as one file or its parts, in order."""
    files = [Path(f) for f in model_files]
    if not files:
        raise CT2FormatError("no model.bin file given")
    for f in files:
        if not f.is_file():
            raise CT2FormatError(f"{f}: model file not found")
    with contextlib.ExitStack() as stack:
        s = _Stream(files, stack)
        (version,) = s.unpack("I", "binary version")
        if version not in SUPPORTED_BINARY_VERSIONS:
            raise CT2FormatError(
                f"{s.where}: CT2 binary version {version} is not supported "
                f"(expected one of {SUPPORTED_BINARY_VERSIONS}): not a CTranslate2 model.bin?"
            )
        spec = s.string("spec name")
        (revision,) = s.unpack("I", "spec revision")
        if spec != "WhisperSpec" or revision > MAX_SPEC_REVISION:
            raise CT2FormatError(
                f"{s.where}: spec '{spec}' revision {revision} is not a supported Whisper model "
                f"(WhisperSpec revision <= {MAX_SPEC_REVISION})"
            )
        (n_vars,) = s.unpack("I", "variable count")
        variables: dict[str, np.ndarray] = {}
        for i in range(n_vars):
            name, array = _read_variable(s, i)
            if name in variables:
                raise CT2FormatError(f"{s.where}: variable '{name}' appears twice")
            variables[name] = array
        (n_aliases,) = s.unpack("I", "alias count")
        aliases = {s.string(f"alias #{i}"): s.string(f"target of alias #{i}") for i in range(n_aliases)}
        if not s.at_end():
            raise CT2FormatError(
                f"{s.where}: trailing bytes after the alias table (byte {s.pos}): corrupt file "
                "or parts given in the wrong order?"
            )
    label = str(files[0]) if len(files) == 1 else " + ".join(map(str, files))
    return CT2Model(version, spec, revision, variables, aliases, label)


@dataclass
class _Taker:
    """Hands out CT2 variables and remembers which were used, so that none is left over or used twice."""

    model: CT2Model
    used: list[str] = field(default_factory=list)

    def __call__(self, name: str) -> np.ndarray:
        if name not in self.model.variables:
            raise CT2FormatError(f"{self.model.label}: missing variable '{name}'")
        if name in self.used:
            raise CT2FormatError(f"{self.model.label}: variable '{name}' would be used twice")
        self.used.append(name)
        return self.model.variables[name]

    def scalar(self, name: str) -> int:
        value = self(name)
        if value.ndim != 0:
            raise CT2FormatError(f"{self.model.label}: '{name}' should be a scalar, has shape {value.shape}")
        return value.item()

    def check_all_used(self) -> None:
        unused = sorted(set(self.model.variables) - set(self.used))
        if unused:
            raise CT2FormatError(
                f"{self.model.label}: {len(unused)} variable(s) not understood by the converter, "
                f"first: '{unused[0]}' (up to 10: {unused[:10]})"
            )


def _count_layers(take: _Taker, stack: str) -> int:
    found = {int(m.group(1)) for n in take.model.variables if (m := re.match(rf"{stack}/layer_(\d+)/", n))}
    if not found or found != set(range(len(found))):
        raise CT2FormatError(f"{take.model.label}: {stack} layers are not numbered 0..n-1: {sorted(found)}")
    return len(found)


def _split(take: _Taker, name: str, parts: int) -> list[np.ndarray]:
    array = take(name)
    if array.ndim == 0 or array.shape[0] % parts:
        raise CT2FormatError(f"{take.model.label}: fused '{name}' of shape {array.shape} does not split in {parts}")
    return np.split(array, parts)


def _linear(take: _Taker, src: str, dst: str) -> dict:
    return {f"{dst}.weight": take(f"{src}/weight"), f"{dst}.bias": take(f"{src}/bias")}


def _norm(take: _Taker, src: str, dst: str) -> dict:
    return {f"{dst}.weight": take(f"{src}/gamma"), f"{dst}.bias": take(f"{src}/beta")}


def _fused(take: _Taker, src: str, dst: str, heads: list[str]) -> dict:
    """Unfuse a [q;k;v] or [k;v] projection; k's (zero) bias is dropped, see the module docstring."""
    weights, biases = _split(take, f"{src}/weight", len(heads)), _split(take, f"{src}/bias", len(heads))
    out = {}
    for head, w, b in zip(heads, weights, biases):
        out[f"{dst}.{head}_proj.weight"] = w
        if head != "k":
            out[f"{dst}.{head}_proj.bias"] = b
    return out


def _layer(take: _Taker, stack: str, i: int) -> dict:
    src, dst = f"{stack}/layer_{i}", f"model.{stack}.layers.{i}"
    sd = {
        **_fused(take, f"{src}/self_attention/linear_0", f"{dst}.self_attn", ["q", "k", "v"]),
        **_linear(take, f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj"),
        **_norm(take, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm"),
        **_linear(take, f"{src}/ffn/linear_0", f"{dst}.fc1"),
        **_linear(take, f"{src}/ffn/linear_1", f"{dst}.fc2"),
        **_norm(take, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm"),
    }
    if stack == "decoder":
        sd |= {
            **_linear(take, f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj"),
            **_fused(take, f"{src}/attention/linear_1", f"{dst}.encoder_attn", ["k", "v"]),
            **_linear(take, f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj"),
            **_norm(take, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm"),
        }
    return sd


def _metadata(take: _Taker) -> dict:
    """Check the rank-0 spec variables; returns their values (num_heads included)."""
    values = {name: take.scalar(name) for name in ("encoder/num_heads", "decoder/num_heads")}
    for name, expected in METADATA.items():
        if name in take.model.variables or expected is not None:
            values[name] = take.scalar(name)
            if expected is not None and values[name] != expected:
                raise CT2FormatError(
                    f"{take.model.label}: '{name}' = {values[name]}, this converter only handles "
                    f"{expected} (the Whisper architecture)"
                )
    return values


def _weights(take: _Taker) -> tuple[dict, dict]:
    """CT2 variables -> (transformers state dict as numpy arrays, dims/metadata)."""
    model, names = take.model, take.model.variables
    if any(n.endswith("_scale") for n in names) or any(v.dtype.kind in "iu" for v in names.values() if v.ndim > 1):
        raise CT2FormatError(
            f"{model.label}: quantized (int8/int16) CT2 models are not supported: convert the "
            "Whisper model with --quantization float16 or float32"
        )
    meta = _metadata(take)
    sd = {
        **_linear(take, "encoder/conv1", "model.encoder.conv1"),
        **_linear(take, "encoder/conv2", "model.encoder.conv2"),
    }
    for stack in ("encoder", "decoder"):
        sd[f"model.{stack}.embed_positions.weight"] = take(f"{stack}/position_encodings/encodings")
        sd |= _norm(take, f"{stack}/layer_norm", f"model.{stack}.layer_norm")
        meta[f"{stack}_layers"] = _count_layers(take, stack)
        for i in range(meta[f"{stack}_layers"]):
            sd |= _layer(take, stack, i)
    sd["model.decoder.embed_tokens.weight"] = take("decoder/embeddings/weight")
    meta["tied"] = _output_projection(take, sd)
    take.check_all_used()
    return sd, meta


def _output_projection(take: _Taker, sd: dict) -> bool:
    """Tied (the one alias CT2 writes for Whisper) or a separate decoder/projection/weight; other aliases: error."""
    aliases = take.model.aliases
    if aliases and aliases != dict([TIED_ALIAS]):
        raise CT2FormatError(f"{take.model.label}: unsupported alias(es) {aliases}")
    tied = bool(aliases)
    sd["proj_out.weight"] = sd["model.decoder.embed_tokens.weight"] if tied else take(TIED_ALIAS[0])
    return tied


def _read_meta_config(meta_dir: Path) -> dict:
    """CT2's config.json: the decoding settings CT2 copied from the original generation config."""
    path = meta_dir / "config.json"
    try:
        ct2 = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CT2FormatError(f"{path}: unreadable: {e}") from None
    missing = [k for k in ("suppress_ids", "suppress_ids_begin", "alignment_heads", "lang_ids") if k not in ct2]
    if missing:
        raise CT2FormatError(f"{path}: missing key(s) {missing}")
    return ct2


def _config(sd: dict, meta: dict, ids: dict, ct2: dict):
    from transformers import WhisperConfig

    d_model, n_mels, _ = sd["model.encoder.conv1.weight"].shape
    return WhisperConfig(
        vocab_size=sd["model.decoder.embed_tokens.weight"].shape[0],
        num_mel_bins=n_mels,
        d_model=d_model,
        encoder_layers=meta["encoder_layers"],
        decoder_layers=meta["decoder_layers"],
        encoder_attention_heads=meta["encoder/num_heads"],
        decoder_attention_heads=meta["decoder/num_heads"],
        encoder_ffn_dim=sd["model.encoder.layers.0.fc1.weight"].shape[0],
        decoder_ffn_dim=sd["model.decoder.layers.0.fc1.weight"].shape[0],
        max_source_positions=sd["model.encoder.embed_positions.weight"].shape[0],
        max_target_positions=sd["model.decoder.embed_positions.weight"].shape[0],
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=meta["tied"],
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"],
        decoder_start_token_id=ids["<|startoftranscript|>"],
        suppress_tokens=list(ct2["suppress_ids"]),
        begin_suppress_tokens=list(ct2["suppress_ids_begin"]),
    )


def _model(sd: dict, config):
    """A WhisperForConditionalGeneration holding exactly these weights, in fp32. Built on the meta device and
    given the converted tensors (assign=True), so the weights exist once in memory, not twice."""
    import torch
    from transformers import WhisperForConditionalGeneration

    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    tensors = {k: torch.from_numpy(v.astype(np.float32)) for k, v in sd.items() if k != "proj_out.weight"}
    tensors["proj_out.weight"] = (
        tensors["model.decoder.embed_tokens.weight"]
        if config.tie_word_embeddings
        else torch.from_numpy(sd["proj_out.weight"].astype(np.float32))
    )
    try:
        model.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as e:
        raise CT2FormatError(f"CT2 weights do not fit a Whisper model of the inferred size: {e}") from None
    model.tie_weights()
    return model.eval()


def _tokenizer(meta_dir: Path, vocab_size: int):
    """WhisperTokenizerFast from the shipped tokenizer.json, with the Whisper special tokens declared and the
    timestamp tokens <|0.00|>..<|30.00|> added so that it covers the model's vocabulary; checked against
    vocabulary.txt token by token."""
    from tokenizers import AddedToken
    from transformers import WhisperTokenizerFast

    path = meta_dir / "tokenizer.json"
    added = sorted(json.loads(path.read_text(encoding="utf-8"))["added_tokens"], key=lambda t: t["id"])
    specials = [t["content"] for t in added if t["special"]]
    tok = WhisperTokenizerFast(
        tokenizer_file=str(path),
        extra_special_tokens=specials,
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
    )
    missing = sorted(NON_LANGUAGE_TOKENS - set(specials))
    if missing:
        raise CT2FormatError(f"{path}: Whisper special token(s) missing: {missing}")
    tok.add_tokens(
        [
            AddedToken(f"<|{i * 0.02:.2f}|>", lstrip=False, rstrip=False, normalized=False, special=False)
            for i in range(vocab_size - len(tok))
        ]
    )
    expected = (meta_dir / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    expected = expected[:-1] if expected[-1] == "" else expected
    got = tok.convert_ids_to_tokens(list(range(vocab_size)))
    if len(expected) != vocab_size or got != expected:
        bad = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        raise CT2FormatError(
            f"{meta_dir}: tokenizer.json + timestamps does not match vocabulary.txt "
            f"({len(expected)} lines, model has {vocab_size} rows; first difference at id {bad})"
        )
    return tok


def _generation_config(tok, ct2: dict, model_config) -> tuple:
    """GenerationConfig as transformers' Whisper generate expects; English-only models get no lang_to_id /
    task_to_id, or transformers would run language detection and insert a language token."""
    from transformers import GenerationConfig

    ids = {t: tok.convert_tokens_to_ids(t) for t in NON_LANGUAGE_TOKENS}
    multilingual = model_config.vocab_size >= 51865  # openai/whisper's own rule
    extra, note = {}, "ignored (English-only model)"
    if multilingual:
        langs = {
            t: i
            for t, i in tok.get_added_vocab().items()
            if t in tok.extra_special_tokens and t not in NON_LANGUAGE_TOKENS
        }
        if sorted(langs.values()) != sorted(ct2["lang_ids"]):
            raise CT2FormatError("config.json: lang_ids do not match the tokenizer's language tokens")
        # task: the default openai/whisper uses; without it a call with no task/language would detect the language
        # but put no task token in the prompt, which makes multilingual Whisper babble
        extra = {
            "lang_to_id": langs,
            "task": "transcribe",
            "task_to_id": {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        }
        note = "match the tokenizer"
    gen = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"],
        max_length=model_config.max_target_positions,
        suppress_tokens=list(ct2["suppress_ids"]),
        begin_suppress_tokens=list(ct2["suppress_ids_begin"]),
        alignment_heads=[list(h) for h in ct2["alignment_heads"]],
        is_multilingual=multilingual,
        no_timestamps_token_id=ids["<|notimestamps|>"],
        prev_sot_token_id=ids["<|startofprev|>"],
        max_initial_timestamp_index=50,
        return_timestamps=False,
        **extra,
    )
    return gen, note


def convert_ct2_whisper(model_files: list[Path], meta_dir: Path, out: Path, label: str = "") -> dict:
    """Convert CT2 Whisper `model_files` (model.bin or its parts, in order) + `meta_dir` into a transformers
    checkpoint in `out`: model (fp32 safetensors), config, generation_config, processor (feature extractor +
    tokenizer). Everything is read and checked before anything is written; `out` is then replaced as a whole
    (built in a sibling temp dir, renamed at the end). Returns a small report."""
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    meta_dir = Path(meta_dir)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        if not (meta_dir / name).is_file():
            raise CT2FormatError(f"{meta_dir / name}: not found (the CT2 model directory ships it)")
    ct2 = read_ct2(model_files)
    take = _Taker(ct2)
    sd, meta = _weights(take)
    ct2_config = _read_meta_config(meta_dir)
    tokenizer = _tokenizer(meta_dir, sd["model.decoder.embed_tokens.weight"].shape[0])
    config = _config(sd, meta, {t: tokenizer.convert_tokens_to_ids(t) for t in NON_LANGUAGE_TOKENS}, ct2_config)
    generation, lang_ids_note = _generation_config(tokenizer, ct2_config, config)
    model = _model(sd, config)
    del sd
    model.generation_config = generation
    processor = WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=config.num_mel_bins), tokenizer=tokenizer
    )
    with atomic_dir(Path(out)) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    report = {
        "source": label or ct2.label,
        "binary_version": ct2.version,
        "spec_revision": ct2.revision,
        "n_params": sum(p.numel() for p in model.parameters()),
        "dtype": "float32",
        "multilingual": generation.is_multilingual,
        "config_lang_ids": lang_ids_note,
        "dims": {
            k: getattr(config, k)
            for k in (
                "d_model",
                "encoder_layers",
                "decoder_layers",
                "encoder_attention_heads",
                "decoder_attention_heads",
                "encoder_ffn_dim",
                "vocab_size",
                "num_mel_bins",
            )
        },
        "metadata": {k: v for k, v in meta.items() if "/" in k},
        "aliases": ct2.aliases,
        "variables_used": take.used,
        "n_variables": len(ct2.variables),
    }
    log.info("converted %s -> %s (%d params)", ct2.label, out, report["n_params"])
    return report


def main(argv: list[str] | None = None) -> None:  # python -m stages.core.ct2_whisper
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_files", nargs="+", type=Path, help="model.bin, or its parts in order")
    parser.add_argument("--meta", type=Path, required=True, help="dir with config.json, tokenizer.json, vocabulary.txt")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    setup_logging()
    try:
        report = convert_ct2_whisper(args.model_files, args.meta, args.out)
    except CT2FormatError as e:
        raise BuildError(str(e)) from e
    print(json.dumps({k: v for k, v in report.items() if k != "variables_used"}, indent=1))


if __name__ == "__main__":
    run_stage(main)
