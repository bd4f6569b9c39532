"""Builders that sample or train give identical bytes for the same seed on the same software, in any folder: the
random-init tiny models, draft distillation and LoRA training (each run twice, in two folders)."""

import hashlib
import shutil
from pathlib import Path

import pytest

from stages.core import tiny
from tests.conftest import EVAL_TEXT, distilled_draft, run_stage, scaffold, tiny_params, trained_lora


def file_hashes(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file below folder."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_same_files(a: Path, b: Path) -> None:
    first, second = file_hashes(a), file_hashes(b)
    assert first, f"{a}: nothing built"
    assert first.keys() == second.keys(), sorted(first.keys() ^ second.keys())
    assert not [k for k in first if first[k] != second[k]], [k for k in first if first[k] != second[k]]


@pytest.mark.parametrize("builder", ["tiny_llm", "tiny_clip", "tiny_stable_diffusion", "tiny_llava"])
def test_random_init_models_are_byte_identical(builder, tmp_path):
    build = getattr(tiny, builder)
    assert_same_files(build(tmp_path / "one" / "model"), build(tmp_path / "two" / "elsewhere" / "model"))


def two_projects(tmp_path, tiny_checkpoint, extend) -> list[Path]:
    """Two scaffolded projects (different folders) with the tiny params changed by `extend`."""
    roots = []
    for where in ("first", "second/nested"):
        root = tmp_path / where
        root.mkdir(parents=True)
        text = root / "text.txt"
        text.write_text(EVAL_TEXT * 3)
        params = tiny_params(tiny_checkpoint, text)
        extend(params, text)
        scaffold(root, params)
        for stage in (["stages.check_params", "--check"], ["stages.evalsets"], ["stages.fetch", "--model", "tiny"]):
            run_stage(*stage, cwd=root)
        roots.append(root)
    return roots


def test_draft_distillation_is_byte_identical(tmp_path, tiny_checkpoint):
    def extend(p, text):
        p["calibration"] = {"distill": {"path": str(text), "max_chars": 4000}}
        p["derived_drafts"] = {"tiny-d1": distilled_draft("distill", steps=8, chat_samples=4)}

    roots = two_projects(tmp_path, tiny_checkpoint, extend)
    for root in roots:
        run_stage("stages.derive_draft", "--draft", "tiny-d1", cwd=root)
    assert_same_files(*(root / "models/tiny-d1/checkpoint" for root in roots))


def test_lora_training_is_byte_identical(tmp_path, tiny_checkpoint):
    def extend(p, text):
        p["calibration"] = {"train": {"path": str(text)}}
        p["adapters"] = {"tiny-lora": trained_lora()}
        p["validate"]["llm"]["max_tokens"] = 128

    roots = two_projects(tmp_path, tiny_checkpoint, extend)
    for root in roots:
        run_stage("stages.adapter", "--adapter", "tiny-lora", cwd=root)
    assert_same_files(*(root / "models/adapters/tiny-lora" for root in roots))


EXPORT_ENCODER_DECODER = """
import sys
from pathlib import Path
from optimum.exporters.openvino.__main__ import main_export
from optimum.intel.openvino.configuration import OVConfig
from stages.families.base import order_cross_attention_states
order_cross_attention_states()
main_export(sys.argv[1], output=Path(sys.argv[2]), task="automatic-speech-recognition-with-past",
            ov_config=OVConfig(dtype="fp16"), stateful=True, convert_tokenizer=False, library_name="transformers")
"""


def test_encoder_decoder_export_is_byte_identical(tmp_path):
    """optimum-intel's cross-attention states came out in set-of-nodes order (a different decoder IR per export);
    two exports in two processes of a random-init 4-layer Whisper must now give the same bytes."""
    import subprocess
    import sys

    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=128, d_model=64, encoder_layers=2, decoder_layers=4, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=80,
        max_source_positions=1500, max_target_positions=64, decoder_start_token_id=1, pad_token_id=0,
        eos_token_id=2, bos_token_id=1,
    )  # fmt: skip
    WhisperForConditionalGeneration(config).save_pretrained(tmp_path / "checkpoint")
    for out in ("one", "two/nested"):
        subprocess.run(
            [sys.executable, "-c", EXPORT_ENCODER_DECODER, str(tmp_path / "checkpoint"), str(tmp_path / out)],
            check=True,
            cwd=Path(__file__).parent.parent,
        )
    assert_same_files(tmp_path / "one", tmp_path / "two/nested")


EXPORT_HYBRID = """
import sys
from pathlib import Path
from stages.core.schema import Variant
from stages.families import get_family
checkpoint = Path("checkpoint")  # relative, as models/<m>/checkpoint is in a build
variant = Variant(weight_format="int8", dataset="prompts", num_samples=2)
prompts = ["a red circle above a blue square", "a green triangle"]
get_family("text2image").export(checkpoint, variant, Path("int8-hybrid"), prompts)
"""


def test_data_aware_hybrid_export_is_byte_identical(tmp_path):
    """NNCF's hybrid mode calibrates on images generated from random latents: seeded, two exports in two processes
    give the same UNet (it differed on every build before)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    checkpoint = tiny.tiny_stable_diffusion(tmp_path / "checkpoint")  # here: its seeding must not reach the exports
    for out in ("one", "two/nested"):
        shutil.copytree(checkpoint, tmp_path / out / "checkpoint")
        subprocess.run([sys.executable, "-c", EXPORT_HYBRID], check=True, cwd=tmp_path / out, env=env)
    assert_same_files(tmp_path / "one" / "int8-hybrid", tmp_path / "two/nested" / "int8-hybrid")
