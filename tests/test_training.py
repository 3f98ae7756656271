"""Training in length-balanced micro-batches: the same model as one batch per step, less padding."""

from __future__ import annotations

import pytest
import torch

import influence_core.training as training
from influence_core.data import PadCollator, load_corpus, tokenize_corpus
from influence_core.modeling import build_model
from influence_core.tokenizer import train_bpe_tokenizer

pytestmark = pytest.mark.slow  # trains


class CountingCollator(PadCollator):
    computed_tokens = 0  # token positions the model is run on, padding included

    def __call__(self, examples):
        batch = super().__call__(examples)
        CountingCollator.computed_tokens += batch["input_ids"].numel()
        return batch


@pytest.fixture(scope="module")
def corpus():
    texts = [text[: len(text) // (1 + i % 4)] for i, text in enumerate(load_corpus("demo", 100).texts[:48])]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=400)
    return tokenizer, tokenize_corpus(texts, tokenizer, max_length=192)


def train_with(corpus, tmp_path, micro_batches: int, pad_to: int | None = None):
    tokenizer, examples = corpus
    torch.manual_seed(0)
    model = build_model("tiny", tokenizer, 192)
    plan = training.TrainingPlan(batch_size=16, num_train_epochs=2, learning_rate=2e-3, warmup_ratio=0.0,
                                 weight_decay=0.0, seed=3, micro_batches=micro_batches, pad_to=pad_to,
                                 checkpoints=1)
    CountingCollator.computed_tokens = 0
    metrics = training.train(model, examples, tokenizer, plan, tmp_path / f"run-{micro_batches}-{pad_to}")
    return model.state_dict(), metrics, CountingCollator.computed_tokens


def test_micro_batches_train_the_same_model_on_fewer_padded_tokens(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(training, "PadCollator", CountingCollator)
    one_batch, one_metrics, one_computed = train_with(corpus, tmp_path, micro_batches=1)
    micro, micro_metrics, micro_computed = train_with(corpus, tmp_path, micro_batches=4)
    padded_to_max, _, max_computed = train_with(corpus, tmp_path, micro_batches=1, pad_to=192)

    assert micro_metrics["steps"] == one_metrics["steps"] == 6
    assert micro_metrics["non_padding_tokens"] == one_metrics["non_padding_tokens"]
    assert micro_computed < 0.8 * one_computed <= 0.8 * max_computed
    for name, weights in one_batch.items():
        assert torch.allclose(micro[name], weights, atol=1e-4), name
        assert torch.allclose(padded_to_max[name], weights, atol=1e-4), name
    assert micro_metrics["final_loss"] == pytest.approx(one_metrics["final_loss"], rel=1e-4)
