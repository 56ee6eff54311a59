"""A byte-level BPE tokenizer trained locally (HF `tokenizers`), saved as a standard HF tokenizer."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

# Bumped when what a trained tokenizer encodes changes (2: adds BOS itself); part of every model cache key.
TOKENIZER_VERSION = 2
SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096, out: str | Path | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIALS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=list(SPECIALS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    # The tokenizer adds BOS itself (as Llama's does), so "the tokenizer's own special tokens" — what
    # every reference implementation encodes with — means [BOS] + text for the tiny models too.
    bos = SPECIALS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B:1",
                                                       special_tokens=[(bos, tok.token_to_id(bos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIALS)
    fast.padding_side = "right"
    if out is not None:
        fast.save_pretrained(str(out))
    return fast
