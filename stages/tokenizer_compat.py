"""Strict draft/main tokenizer compatibility, for speculative decoding.

openvino-genai's own check compares the token count of one string and the bos/eos/pad ids, so a draft with a
permuted vocabulary passes it and then never has a token accepted. This check requires identical token->id maps
and merges, identical special tokens and ids, the same chat template, and identical encodings of a probe corpus
through both the Hugging Face tokenizers and the exported OpenVINO tokenizer IRs.

    python -m stages.tokenizer_compat MAIN_DIR DRAFT_DIR
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

PROBES = [
    "The quick brown fox jumps over the lazy dog.",
    "Ünïcödé: naïve café, 東京, Москва, emoji 🙂 and math ∑ x² ≤ 10.",
    "Whitespace   runs,\ttabs\t\tand\n\nnewlines \n end.  ",
    "Digits 0 1 2 3 12345 3.14159 1,000,000 2024-11-24",
    "def main(argv):\n    return {'a': [1, 2, 3]}  # code\n",
    "<|im_start|>user\nhi<|im_end|>",
]
CONVERSATION = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4."},
                {"role": "user", "content": "And 3 + 3?"}]
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
        problems.append(f"vocabulary: {len(set(a) - set(b))} token(s) only in main, {len(set(b) - set(a))} only "
                        f"in draft, e.g. {_first(sorted(only))}")
    if moved := sorted(t for t in set(a) & set(b) if a[t] != b[t]):
        problems.append(f"token ids: {len(moved)} shared token(s) have different ids, e.g. "
                        + ", ".join(f"{t!r} {a[t]}->{b[t]}" for t in moved[:SHOWN]))
    return problems


def merges(tok) -> list:
    model = json.loads(tok.backend_tokenizer.to_str()).get("model", {})
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]


def merge_problems(main, draft) -> list[str]:
    a, b = merges(main), merges(draft)
    if a == b:
        return []
    differ = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    return [f"merges: {len(a)} vs {len(b)} rules, {len(differ)} differ in order, first at rank "
            f"{differ[0] if differ else min(len(a), len(b))}"]


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
        result.problems += encoding_problems("OpenVINO", ov_encoder(Path(main_dir)), ov_encoder(Path(draft_dir)),
                                             corpus)
    return result


if __name__ == "__main__":
    report = check(Path(sys.argv[1]), Path(sys.argv[2]))
    print("\n".join(report.problems) if report.problems else f"compatible ({', '.join(report.checked)})")
    sys.exit(0 if report.ok else 1)
