"""The language's tokenizer: one token per word, as a real Hugging Face tokenizer.

It is a `tokenizers` WordLevel model behind `PreTrainedTokenizerFast`, so the bundled model's
text goes through exactly the tokenization code that real models use (`tokenizer(text,
add_special_tokens=False)`, `bos_token_id`, `decode`). Words are split on whitespace and
decoded joined by single spaces, so `decode(encode(text)) == text` for the language's text.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from sae.corpus.grammar import BOS, EOS, PAD, UNK, vocabulary


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {word: index for index, word in enumerate(vocabulary())}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # WordPiece's decoder with an unused prefix joins tokens with single spaces.
    core.decoder = decoders.WordPiece(prefix="\0", cleanup=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        model_max_length=1_000_000,
    )
