"""A tiny GPT-2 saved as a local Hugging Face checkpoint, for offline tests of hub-model code.

The files the pinned transformers writes for a GPT-2 (config.json without the legacy n_ctx,
safetensors weights, a byte-level BPE tokenizer whose BOS = EOS = <|endoftext|>), just 2
layers of width 32.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from sae.corpus.grammar import generate_document

END = "<|endoftext|>"


def english_lines(n: int, seed: int = 0) -> list[str]:
    return [generate_document(seed, "train", i).text for i in range(n)]


def save_tiny_gpt2(directory: Path) -> Path:
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=[END], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(english_lines(200), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=END, eos_token=END)
    end = tokenizer.convert_tokens_to_ids(END)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=end,
        eos_token_id=end,
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
