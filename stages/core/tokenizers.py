"""Tokenizer checks: an artifact's OpenVINO tokenizer IR against its own HF tokenizer (parity, after export), and
a draft's tokenizers against its main's (strict compatibility, for speculative decoding).

openvino-genai's own check compares the token count of one string and the bos/eos/pad ids, so a draft with a
permuted vocabulary passes it and then never has a token accepted. This check requires identical token->id maps
and merges, identical special tokens and ids, the same chat template, and identical encodings of a probe corpus
through both the Hugging Face tokenizers and the exported OpenVINO tokenizer IRs.

    python -m stages.core.tokenizers MAIN_DIR DRAFT_DIR      (pair compatibility)
    python -m stages.core.tokenizers ARTIFACT_DIR               (IR parity with the HF tokenizer)
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

# openvino-tokenizers 2026.4 fuses HF's Digits(individual_digits=True) + ByteLevel pre-tokenizers (SmolLM2, StarCoder,
# ...) into one regex, where `\s+(?!\S)` looks past the digit split HF makes first: "\n\n   1" became
# ĊĊĠĠ,Ġ,1 instead of HF's ĊĊĠĠĠ,1. A whitespace run before a digit is whole in HF (it ends a piece): say so first.
DIGIT_RUN_FIX = (r"|\s+(?!\S)|", r"|\s+(?=\p{N})|\s+(?!\S)|")


def fix_digit_split_conversion() -> None:
    """Patch openvino-tokenizers' fused Digits+ByteLevel regex (see DIGIT_RUN_FIX) before any conversion; the
    parity check after export proves the result. Idempotent."""
    from openvino_tokenizers.tokenizer_pipeline import RegexSplitStep

    original = RegexSplitStep.byte_level_splitter.__func__
    if getattr(original, "digit_run_fixed", False):
        return

    def byte_level_splitter(cls, individual_digits: bool = False):
        step = original(cls, individual_digits)
        if individual_digits:
            step.split_pattern = step.split_pattern.replace(*DIGIT_RUN_FIX)
        return step

    byte_level_splitter.digit_run_fixed = True
    RegexSplitStep.byte_level_splitter = classmethod(byte_level_splitter)


PROBES = [
    "The quick brown fox jumps over the lazy dog.",
    "Ünïcödé: naïve café, 東京, Москва, emoji 🙂 and math ∑ x² ≤ 10.",
    "Whitespace   runs,\ttabs\t\tand\n\nnewlines \n end.  ",
    "Digits 0 1 2 3 12345 3.14159 1,000,000 2024-11-24",
    "def main(argv):\n    return {'a': [1, 2, 3]}  # code\n",
    "<|im_start|>user\nhi<|im_end|>",
]
# Parity probes: what tokenizer converters get wrong (whitespace runs before digits and letters, indentation,
# numbered lists, code, Unicode, special tokens). Fixed text, so the check is the same on every machine.
PARITY_PROBES = PROBES + [
    "\n\n   1. first\n   2. second\n\n10) tenth",
    "  2 spaces, 3   spaces 4    x\t\t5\n      6 indented\n\t\t7 tabs",
    " leading space",
    "trailing space ",
    "   ",
    "\n",
    "\n\n\n",
    "a\r\nb\rc",
    "x" * 300,
    "class Parser:\n    def __init__(self, items: list[int] = [1, 2, 3]) -> None:\n        self.items = items\n\n"
    "    def total(self):\n        return sum(i ** 2 for i in self.items if i % 2 == 0)  # even squares\n",
    'for (int i = 0; i < 10; ++i) {\n\tprintf("%d\\n", i);\n}',
    '<html><body class="x">&amp; &lt;tag&gt;</body></html>',
    "http://example.com/a?b=1&c=2#frag",
    "He said: \"it's 9:30\", didn't he? I'll've done it—maybe… 50% off! $3.99 (approx.) #1 @user",
    "Zürich, Ελληνικά, עברית, العربية, हिन्दी, 한국어, 日本語のテキスト, 中文字符",
    "emoji 👩‍👩‍👧 🇫🇷 ✓ ∞ ≠ ½",
    "MiXeD CaSe wOrDs and ALLCAPS and snake_case_words and camelCaseWords",
    "1234567890 0.000001 -42 +3 1e10 0x1F 007 3,141,592 12:34:56",
]
CONVERSATION = [
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3 + 3?"},
]
SHOWN = 5  # differing items listed in a diff line


@dataclass
class Compatibility:
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _first(items) -> str:
    items = list(items)
    return ", ".join(map(repr, items[:SHOWN])) + (f" (+{len(items) - SHOWN} more)" if len(items) > SHOWN else "")


def vocab_problems(main, draft) -> list[str]:
    a, b = main.get_vocab(), draft.get_vocab()
    problems = []
    if only := set(a) ^ set(b):
        problems.append(
            f"vocabulary: {len(set(a) - set(b))} token(s) only in main, {len(set(b) - set(a))} only "
            f"in draft, e.g. {_first(sorted(only))}"
        )
    if moved := sorted(t for t in set(a) & set(b) if a[t] != b[t]):
        problems.append(
            f"token ids: {len(moved)} shared token(s) have different ids, e.g. "
            + ", ".join(f"{t!r} {a[t]}->{b[t]}" for t in moved[:SHOWN])
        )
    return problems


def merges(tok) -> list:
    model = json.loads(tok.backend_tokenizer.to_str()).get("model", {})
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]


def merge_problems(main, draft) -> list[str]:
    a, b = merges(main), merges(draft)
    if a == b:
        return []
    differ = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    return [
        f"merges: {len(a)} vs {len(b)} rules, {len(differ)} differ in order, first at rank "
        f"{differ[0] if differ else min(len(a), len(b))}"
    ]


def special_problems(main, draft) -> list[str]:
    problems = []
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token"):
        ma, da = getattr(main, attr), getattr(draft, attr)
        mi, di = getattr(main, attr + "_id"), getattr(draft, attr + "_id")
        if (ma, mi) != (da, di):
            problems.append(f"{attr}: main {ma!r} id {mi}, draft {da!r} id {di}")
    a = dict(zip(main.all_special_tokens, main.all_special_ids))
    b = dict(zip(draft.all_special_tokens, draft.all_special_ids))
    if a != b:
        diff = sorted(set(a.items()) ^ set(b.items()))
        problems.append(f"special tokens: {len(diff)} differ, e.g. {_first(diff)}")
    return problems


def rendered_chat(tok) -> str | None:
    if not tok.chat_template:
        return None
    return tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)


def encoding_problems(name: str, encode_main, encode_draft, probes: list[str]) -> list[str]:
    bad = []
    for probe in probes:
        a, b = encode_main(probe), encode_draft(probe)
        if a != b:
            at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            bad.append(f"{probe[:30]!r}: {len(a)} vs {len(b)} ids, first difference at position {at}")
    return [f"{name} encodings differ on {len(bad)}/{len(probes)} probe(s): " + "; ".join(bad[:3])] if bad else []


def hf_encoder(tok):
    return lambda text: list(tok(text, add_special_tokens=False)["input_ids"])


def ov_encoder(folder: Path):
    import openvino_genai as ov_genai

    tok = ov_genai.Tokenizer(str(folder))
    return lambda text: [int(i) for i in tok.encode(text, add_special_tokens=False).input_ids.data[0]]


@dataclass
class Parity:
    probes: int
    mismatches: list[dict] = field(default_factory=list)  # {probe, hf, ir, first_difference}

    @property
    def share(self) -> float:
        return 1 - len(self.mismatches) / self.probes

    def summary(self) -> dict:
        return {
            "probes": self.probes,
            "matching": self.probes - len(self.mismatches),
            "share": self.share,
            "mismatches": self.mismatches[:SHOWN],
        }


def _first_mismatch(a: list, b: list) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def parity(folder: Path, extra: list[str] = ()) -> Parity:
    """The folder's OpenVINO tokenizer (and detokenizer) IR against its HF tokenizer on the parity probes (plus
    the rendered chat template and `extra` texts): identical ids, and identical decoded text."""
    import openvino_genai as ov_genai
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(folder)
    ov_tok = ov_genai.Tokenizer(str(folder))
    probes = PARITY_PROBES + [c for c in (rendered_chat(hf),) if c] + list(extra)
    result = Parity(len(probes))
    for probe in probes:
        a = list(hf(probe, add_special_tokens=False)["input_ids"])
        b = [int(i) for i in ov_tok.encode(probe, add_special_tokens=False).input_ids.data[0]]
        if a != b:
            at = _first_mismatch(a, b)
            result.mismatches.append(
                {
                    "probe": probe[:60],
                    "what": "encode",
                    "first_difference": at,
                    "hf": hf.convert_ids_to_tokens(a[at : at + 3]),
                    "ir": hf.convert_ids_to_tokens(b[at : at + 3]),
                }
            )
            continue
        if (Path(folder) / "openvino_detokenizer.xml").is_file() and a:
            da, db = hf.decode(a, skip_special_tokens=True), ov_tok.decode(a, skip_special_tokens=True)
            if da != db:
                at = _first_mismatch(list(da), list(db))
                result.mismatches.append(
                    {
                        "probe": probe[:60],
                        "what": "decode",
                        "first_difference": at,
                        "hf": da[at : at + 12],
                        "ir": db[at : at + 12],
                    }
                )
    return result


def describe_mismatch(x: dict) -> str:
    return (
        f"{x['what']} of {x['probe']!r} differs at {'token' if x['what'] == 'encode' else 'char'} "
        f"{x['first_difference']}: HF {x['hf']} vs IR {x['ir']}"
    )


def check(main_dir: Path, draft_dir: Path, probes: list[str] = PROBES) -> Compatibility:
    from transformers import AutoTokenizer

    main, draft = AutoTokenizer.from_pretrained(main_dir), AutoTokenizer.from_pretrained(draft_dir)
    result = Compatibility()
    result.problems += vocab_problems(main, draft) + merge_problems(main, draft) + special_problems(main, draft)
    result.checked += ["vocabulary", "merges", "special tokens"]
    chat_a, chat_b = rendered_chat(main), rendered_chat(draft)
    if chat_a != chat_b:
        result.problems.append("chat template: renders the same conversation differently")
    corpus = probes + [c for c in (chat_a,) if c]
    result.checked += ["chat template", "HF encodings"]
    result.problems += encoding_problems("HF", hf_encoder(main), hf_encoder(draft), corpus)
    if (Path(main_dir) / "openvino_tokenizer.xml").is_file() and (Path(draft_dir) / "openvino_tokenizer.xml").is_file():
        result.checked.append("OpenVINO encodings")
        result.problems += encoding_problems(
            "OpenVINO", ov_encoder(Path(main_dir)), ov_encoder(Path(draft_dir)), corpus
        )
    return result


if __name__ == "__main__":
    if len(sys.argv) == 2:
        found = parity(Path(sys.argv[1]))
        print("\n".join(map(describe_mismatch, found.mismatches)) or f"parity on {found.probes} probes")
        sys.exit(0 if not found.mismatches else 1)
    report = check(Path(sys.argv[1]), Path(sys.argv[2]))
    print("\n".join(report.problems) if report.problems else f"compatible ({', '.join(report.checked)})")
    sys.exit(0 if report.ok else 1)
