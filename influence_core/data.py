"""Corpora, tokenized training examples, prompts and the batches built from them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch
from datasets import Dataset, load_dataset
from transformers import PreTrainedTokenizerBase

from influence_core.demo_corpus import CORPORA, build_demo_corpus
from influence_core.errors import ConfigError
from influence_core.prompts import Prompt
from influence_core.storage import is_transient, unreachable

FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}
DEFAULT_DEMO_DOCUMENTS = 600
DEFAULT_HUB_DOCUMENTS = 10_000  # as in the original project


@dataclass
class Corpus:
    texts: list[str]
    facts: list[dict] | None = None  # planted facts with their document indices (demo only)


def is_file_source(dataset: str) -> bool:
    """A URL or a path of data files, as opposed to a Hugging Face dataset name."""
    return "://" in dataset or Path(dataset).exists() or PurePosixPath(dataset).suffix in FILE_FORMATS


def load_corpus(dataset: str, num_examples: int | None, text_column: str = "text",
                dataset_config: str | None = None, split: str = "train", seed: int = 0) -> Corpus:
    """The first `num_examples` documents of a corpus, in corpus order. Example i of every later
    stage is document i, so an empty or unreadable document is refused, not skipped."""
    if dataset in CORPORA:  # the built-in corpora with planted facts
        demo = build_demo_corpus(num_examples or DEFAULT_DEMO_DOCUMENTS, seed=seed, corpus=dataset)
        return Corpus(texts=demo.texts, facts=demo.facts)
    limit = num_examples or DEFAULT_HUB_DOCUMENTS
    if is_file_source(dataset):
        builder = FILE_FORMATS.get(PurePosixPath(dataset).suffix)
        if builder is None:
            raise ConfigError(f"DATASET={dataset}: unknown file type, expected one of {sorted(FILE_FORMATS)}")
        if not Path(dataset).exists() and "://" not in dataset and not any(c in dataset for c in "*?["):
            raise ConfigError(f"DATASET={dataset}: file not found")
        extra = {"sample_by": "paragraph"} if builder == "text" else {}
        arguments, failure = (builder,), f"cannot read it as {builder}"
        options = {"data_files": dataset, "split": "train", **extra}
    else:  # a Hugging Face dataset name, streamed: only the documents used are read (10,000 of OpenWebText)
        arguments, failure = (dataset, dataset_config), "cannot read it from the Hugging Face Hub"
        options = {"split": split}
    try:
        texts = _read_texts(load_dataset(*arguments, streaming=True, **options), dataset, text_column, limit)
    except ConfigError:
        raise
    except StopIteration:  # what datasets raises for an empty file
        raise ConfigError(f"DATASET={dataset}: no documents") from None
    except Exception as error:  # a failure to read a user's corpus: an outage, or bad input, in one line
        if is_transient(error):
            raise unreachable(f"DATASET={dataset}", error) from None
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise ConfigError(f"DATASET={dataset}: {failure} ({reason})") from None
    if not texts:
        raise ConfigError(f"DATASET={dataset}: no documents")
    return Corpus(texts=texts)


def _read_texts(stream, dataset: str, text_column: str, limit: int) -> list[str]:
    texts = []
    for row in stream:
        if text_column not in row:
            raise ConfigError(f"TEXT_COLUMN={text_column}: not a column of {dataset} (columns: {sorted(row)})")
        text = row[text_column]
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"DATASET={dataset}: document {len(texts)} is empty or not text; every document "
                              "must have text, since example i is document i")
        texts.append(text)
        if len(texts) == limit:
            break
    return texts


def tokenize_corpus(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, max_length: int) -> Dataset:
    """One training example per document: its tokens (after a BOS token where the tokenizer adds
    one) plus end-of-text, cut at max_length."""

    def encode(batch: dict) -> dict:
        ids = [(row + ([] if row[-1:] == [tokenizer.eos_token_id] else [tokenizer.eos_token_id]))[:max_length]
               for row in tokenizer(batch["text"])["input_ids"]]
        return {"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids]}

    return Dataset.from_dict({"text": list(texts)}).map(encode, batched=True)


def tokenize_prompts(prompts: Sequence[Prompt], tokenizer: PreTrainedTokenizerBase, max_length: int) -> Dataset:
    """Query examples: a BOS token where the tokenizer adds one (at the start only), the prompt's
    tokens, then the completion's (no special tokens), labelled -100 but for the completion's, so
    only the completion is measured. The completion must tokenize as it does after the prompt."""
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    bos = _bos(tokenizer)
    for number, item in enumerate(prompts):
        prompt_ids = bos + tokenizer(item.prompt, add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer(item.completion, add_special_tokens=False)["input_ids"]
        together = bos + tokenizer(item.prompt + item.completion, add_special_tokens=False)["input_ids"]
        ids = prompt_ids + completion_ids
        if together != ids:
            where = next((i for i, (a, b) in enumerate(zip(together, ids)) if a != b), min(len(together), len(ids)))
            raise ConfigError(
                f"PROMPTS: entry {number} ({item.prompt!r} + {item.completion!r}) tokenizes differently as one text "
                f"than as prompt and completion apart, from token {where}: "
                f"{tokenizer.convert_ids_to_tokens(together[where:where + 3])} against "
                f"{tokenizer.convert_ids_to_tokens(ids[where:where + 3])}; start the completion with the space that "
                "separates it from the prompt, and end the prompt without one")
        if len(ids) > max_length:
            raise ConfigError(
                f"PROMPTS: entry {number} has {len(ids)} tokens, more than the model's max length {max_length}"
            )
        rows["input_ids"].append(ids)
        rows["attention_mask"].append([1] * len(ids))
        rows["labels"].append([-100] * len(prompt_ids) + completion_ids)
    return Dataset.from_dict(rows)


def _bos(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """[BOS] when the tokenizer puts one before a text, else []."""
    ids = tokenizer("a")["input_ids"]
    return ids[:1] if tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id] and len(ids) > len(
        tokenizer("a", add_special_tokens=False)["input_ids"]) else []


class PadCollator:
    """Pad each batch to its longest example, which wastes far less compute than padding to the
    max length (`pad_to`, kept for benchmarks); padding gets label -100."""

    def __init__(self, pad_token_id: int, pad_to: int | None = None) -> None:
        self.pad_token_id, self.pad_to = pad_token_id, pad_to

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        longest = self.pad_to or max(len(example["input_ids"]) for example in examples)

        def pad(key: str, value: int) -> torch.Tensor:
            return torch.tensor([list(ex[key]) + [value] * (longest - len(ex[key])) for ex in examples])

        batch = {"input_ids": pad("input_ids", self.pad_token_id), "attention_mask": pad("attention_mask", 0)}
        if "labels" in examples[0]:
            batch["labels"] = pad("labels", -100)
        else:
            batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return batch
