"""Tiny random-init checkpoints built in code, for tests and for families with no offline weights.

    python -m stages.tiny llm OUT_DIR
"""
from __future__ import annotations

import sys
from pathlib import Path

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TRAINING_TEXT = (
    "The quick brown fox jumps over the lazy dog. A compiler turns source code into machine code. "
    "Paris is the capital of France; Berlin is the capital of Germany. 0123456789 + - * / = ( ) [ ] { } "
    "def main(): return 42  # code\n\tTabs and    spaces. Ünïcödé, naïve café, 東京, émigré. "
) * 8


def tiny_tokenizer(vocab_size: int = 384):
    """A byte-level BPE trained on a fixed text: deterministic, converts to OpenVINO tokenizer IRs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([TRAINING_TEXT], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>", chat_template=CHAT_TEMPLATE)


def tiny_llm(out: Path, seed: int = 0, layers: int = 2, hidden: int = 64, vocab_size: int = 384) -> Path:
    """A random-init Llama (dims multiples of 32 so int4 group sizes 32/64 divide them) plus its tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(vocab_size)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config).eval()
    out = Path(out)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


BUILDERS = {"llm": tiny_llm}

if __name__ == "__main__":
    BUILDERS[sys.argv[1]](Path(sys.argv[2]))
