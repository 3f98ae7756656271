"""Tokenized examples, query labels and batches."""

from __future__ import annotations

import pytest
import torch

from influence_core.data import PadCollator, load_corpus, tokenize_corpus, tokenize_prompts
from influence_core.errors import ConfigError
from influence_core.prompts import Prompt
from influence_core.tokenizer import train_bpe_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(load_corpus("demo", 200).texts, vocab_size=500)


def test_examples_follow_corpus_order_end_with_eos_and_are_truncated(tokenizer):
    texts = ["short one", "a much longer document " * 40]
    examples = tokenize_corpus(texts, tokenizer, max_length=32)
    assert examples["text"] == texts
    first, second = examples["input_ids"]
    assert first[-1] == tokenizer.eos_token_id and tokenizer.decode(first[:-1]) == "short one"
    assert len(second) == 32 and examples["attention_mask"][1] == [1] * 32


def test_query_labels_cover_the_completion_only(tokenizer):
    queries = tokenize_prompts([Prompt(prompt="The capital of Velmora is", completion=" Quistador")], tokenizer, 64)
    ids, labels = queries["input_ids"][0], queries["labels"][0]
    completion = tokenizer(" Quistador")["input_ids"]
    assert labels == [-100] * (len(ids) - len(completion)) + completion
    assert tokenizer.decode(ids) == "The capital of Velmora is Quistador"


def test_prompt_longer_than_context_is_refused(tokenizer):
    with pytest.raises(ConfigError, match="more than the model's max length 8"):
        tokenize_prompts([Prompt(prompt="word " * 20, completion=" end")], tokenizer, 8)


def test_batches_pad_to_the_longest_example_with_ignored_labels():
    batch = PadCollator(pad_token_id=1)([{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1]},
                                          {"input_ids": [8], "attention_mask": [1]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]
    queries = PadCollator(0)([{"input_ids": [5, 6], "attention_mask": [1, 1], "labels": [-100, 6]},
                              {"input_ids": [7], "attention_mask": [1], "labels": [7]}])
    assert torch.equal(queries["labels"], torch.tensor([[-100, 6], [7, -100]]))


def test_file_corpus(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "first doc"}\n{"text": "second doc"}\n{"text": "third"}\n')
    assert load_corpus(str(path), num_examples=2).texts == ["first doc", "second doc"]
    with pytest.raises(ConfigError, match="TEXT_COLUMN=body"):
        load_corpus(str(path), num_examples=2, text_column="body")


def test_a_tokenizer_that_adds_bos_puts_it_before_the_prompt_only():
    """A Llama-like tokenizer adds BOS before every text: the query is BOS, prompt, completion, as
    the text prompt + completion tokenizes, with no BOS measured inside it."""
    from tests.families import tokenizer_for

    tokenizer = tokenizer_for("llama", load_corpus("demo", 120).texts)
    item = Prompt(prompt="The capital of Velmora is", completion=" Quistador")
    query = tokenize_prompts([item], tokenizer, 64)
    ids, labels = query["input_ids"][0], query["labels"][0]
    assert ids == tokenizer(item.prompt + item.completion)["input_ids"] and ids.count(tokenizer.bos_token_id) == 1
    completion = tokenizer(item.completion, add_special_tokens=False)["input_ids"]
    assert labels == [-100] * (len(ids) - len(completion)) + completion
