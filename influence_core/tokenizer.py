"""Tokenizers: byte-level BPE trained from scratch on the corpus, or a pretrained one by name."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.tokenization_utils_tokenizers import TOKENIZER_FILE

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a GPT-2 style byte-level BPE tokenizer on `texts`.

    A separate pad token keeps padding out of the loss without masking real end-of-text tokens.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return _with_special_tokens(tokenizer)


def load_bpe_tokenizer(directory: Path) -> PreTrainedTokenizerFast:
    """A tokenizer trained by `train_bpe_tokenizer` and saved (e.g. in a training checkpoint),
    exactly as it was: saving it again writes the same files."""
    return _with_special_tokens(Tokenizer.from_file(str(directory / TOKENIZER_FILE)))


def _with_special_tokens(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
    )


def load_pretrained_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """A tokenizer from a local directory or the hub (cloud only), with a pad token set."""
    tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return tokenizer
