"""Strict draft/main tokenizer check: identical passes; each kind of mismatch fails with a readable diff."""

import json

import pytest

from stages.core.tiny import tiny_tokenizer
from stages.core.tokenizers import check

pytestmark = pytest.mark.fast  # the edit-loop tier (make test-fast): no real weights, no dvc repro, no export


def save(tok, folder, with_ir=False):
    tok.save_pretrained(folder)
    if with_ir:
        import openvino as ov
        from openvino_tokenizers import convert_tokenizer

        ov_tok, ov_detok = convert_tokenizer(tok, with_detokenizer=True)
        ov.save_model(ov_tok, str(folder / "openvino_tokenizer.xml"))
        ov.save_model(ov_detok, str(folder / "openvino_detokenizer.xml"))
    return folder


def merged_tokens(tok) -> list[str]:
    """Tokens learned by BPE merges (longer than one byte symbol), in id order."""
    return sorted(
        (t for t in tok.get_vocab() if len(t) > 2 and t not in tok.all_special_tokens), key=tok.get_vocab().get
    )


def permuted(tok):
    """The same tokenizer with the ids of the last two learned tokens swapped."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    a, b = merged_tokens(tok)[-2:]
    spec = json.loads(tok.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        bos_token=tok.bos_token,
        eos_token=tok.eos_token,
        unk_token=tok.unk_token,
        pad_token=tok.pad_token,
        chat_template=tok.chat_template,
    )


@pytest.fixture(scope="module")
def main_dir(tmp_path_factory):
    return save(tiny_tokenizer(), tmp_path_factory.mktemp("main"), with_ir=True)


def test_identical_pair_passes_hf_and_openvino_checks(main_dir, tmp_path):
    result = check(main_dir, save(tiny_tokenizer(), tmp_path, with_ir=True))
    assert result.ok, result.problems
    assert "OpenVINO encodings" in result.checked


def test_permuted_ids_fail_with_the_moved_tokens(main_dir, tmp_path):
    result = check(main_dir, save(permuted(tiny_tokenizer()), tmp_path, with_ir=True))
    assert not result.ok
    (ids,) = [p for p in result.problems if p.startswith("token ids:")]
    assert ids.startswith("token ids: 2 shared token(s) have different ids")
    assert all(repr(t) in ids for t in merged_tokens(tiny_tokenizer())[-2:])
    assert any(p.startswith("OpenVINO encodings differ") for p in result.problems)
    assert any(p.startswith("HF encodings differ") for p in result.problems)


def test_different_vocabulary_fails(main_dir, tmp_path):
    result = check(main_dir, save(tiny_tokenizer(vocab_size=320), tmp_path))
    assert any(p.startswith("vocabulary: ") and "only in main" in p for p in result.problems)


def test_different_special_token_ids_fail(main_dir, tmp_path):
    tok = tiny_tokenizer()
    tok.eos_token = "<|endoftext|>"
    result = check(main_dir, save(tok, tmp_path))
    assert any(p.startswith("eos_token: main '<|im_end|>' id 2, draft '<|endoftext|>' id 0") for p in result.problems)


def test_different_chat_template_fails(main_dir, tmp_path):
    tok = tiny_tokenizer()
    tok.chat_template = tok.chat_template.replace("<|im_start|>assistant", "<|im_start|>bot")
    result = check(main_dir, save(tok, tmp_path))
    assert "chat template: renders the same conversation differently" in result.problems


def digits_bytelevel_tokenizer():
    """A small byte-level BPE with SmolLM2's pre-tokenizer: individual digits split first, then ByteLevel."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    corpus = ["\n\n   1. first\n   2. second", "  spaces   and\ttabs 3 4 5", "def f(x):\n    return x + 12"] * 20
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def test_whitespace_before_digits_converts_like_hf_with_the_fix(tmp_path):
    from stages.core.tokenizers import fix_digit_split_conversion, parity

    fix_digit_split_conversion()
    folder = save(digits_bytelevel_tokenizer(), tmp_path / "tok", with_ir=True)
    found = parity(folder, extra=["x 12  3\n\n  4. a1b 1.5 ,  7", "\t1\t 2", "a  \n1"])
    assert found.share == 1.0, found.mismatches
