"""Kronfluence tasks: how to compute the training loss and the query measurement of GPT-Neo.

Batches hold input_ids, attention_mask and labels; labels are -100 where no loss is taken
(padding, and the prompt tokens of a query), so measurements cover completion tokens only.
Every measurement here is loss-like (lower means the model produces the completion more readily),
so a positive influence score means the training example helps the model produce the completion.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from kronfluence.task import Task
from torch import nn

BatchType = dict[str, torch.Tensor]


def _shifted_logits_and_labels(batch: BatchType, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at each position and the next token they predict, flattened over the batch."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[..., :-1, :].float()
    labels = batch["labels"][..., 1:]
    return logits.reshape(-1, logits.size(-1)), labels.reshape(-1)


def _sample_labels(logits: torch.Tensor, batch: BatchType, seed: int) -> torch.Tensor:
    """Labels drawn from the model's predictions at each example's own labelled positions (-100
    elsewhere), with one random stream per example, seeded by its tokens: the draws, and so the
    fitted factors, do not depend on batch size, padding, data partitioning or a resumed run."""
    labels = batch["labels"][..., 1:]
    keep = labels != -100  # padded positions never reach the random streams
    # Inverse-CDF sampling, one uniform draw per position (torch.multinomial draws one per
    # vocabulary entry, a fifth of fit_factors' time on CPU); the cumulative sums of all rows at once.
    cumulative = F.softmax(logits.detach().view(*labels.shape, logits.size(-1))[keep], dim=-1).cumsum(dim=-1)
    uniforms = []
    for ids, mask, row_keep in zip(batch["input_ids"], batch["attention_mask"], keep):
        key = hashlib.blake2b(ids[mask.bool()].cpu().numpy().tobytes(), digest_size=7).digest()
        generator = torch.Generator(device=logits.device).manual_seed(int.from_bytes(key, "big") + seed)
        uniforms.append(torch.rand(int(row_keep.sum()), generator=generator, device=logits.device))
    drawn = torch.searchsorted(cumulative, (torch.cat(uniforms) * cumulative[:, -1])[:, None], right=True)
    sampled = torch.full_like(labels, -100)
    sampled[keep] = drawn.flatten().clamp(max=cumulative.size(-1) - 1).to(labels.dtype)
    return sampled.reshape(-1)


class LanguageModelingTask(Task):
    """Summed next-token cross-entropy, for training examples and queries alike."""

    def __init__(self, tracked_modules: list[str], seed: int = 0) -> None:
        super().__init__()
        self.tracked_modules = tracked_modules
        self.seed = seed

    def compute_train_loss(self, batch: BatchType, model: nn.Module, sample: bool = False) -> torch.Tensor:
        logits, labels = _shifted_logits_and_labels(batch, model)
        if sample:  # the true Fisher (Kronfluence's default) uses labels sampled from the model
            with torch.no_grad():
                labels = _sample_labels(logits, batch, self.seed)
        return F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")

    def compute_measurement(self, batch: BatchType, model: nn.Module) -> torch.Tensor:
        logits, labels = _shifted_logits_and_labels(batch, model)
        return F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")

    def get_influence_tracked_modules(self) -> list[str]:
        return self.tracked_modules

    def get_attention_mask(self, batch: BatchType) -> torch.Tensor:
        return batch["attention_mask"]


class LanguageModelingWithMarginMeasurementTask(LanguageModelingTask):
    """Measurement: the negated margin of each completion token (its logit minus the log-sum-exp
    of all other logits), summed. Unlike cross-entropy it does not reward lowering other tokens'
    probability mass uniformly, which tends to give sharper rankings for factual completions."""

    def compute_measurement(self, batch: BatchType, model: nn.Module) -> torch.Tensor:
        logits, labels = _shifted_logits_and_labels(batch, model)
        keep = labels != -100
        logits, labels = logits[keep], labels[keep]
        rows = torch.arange(labels.numel(), device=labels.device)
        correct = logits[rows, labels]
        others = logits.index_put((rows, labels), torch.tensor(-torch.inf, device=logits.device))
        return -(correct - others.logsumexp(dim=-1)).sum()


class LanguageModelingWithCustomMeasurementTask(LanguageModelingTask):
    """Template for your own measurement. Override `compute_measurement`; keep it loss-like
    (lower = more of the behaviour you study) so score signs read as in the other tasks.

    As shipped it measures the mean (not summed) cross-entropy per completion token, which
    makes scores comparable between prompts whose completions differ in length.
    """

    def compute_measurement(self, batch: BatchType, model: nn.Module) -> torch.Tensor:
        logits, labels = _shifted_logits_and_labels(batch, model)
        per_token = F.cross_entropy(logits, labels, ignore_index=-100, reduction="none")
        per_token = per_token.view(batch["labels"].shape[0], -1)
        counts = (batch["labels"][..., 1:] != -100).sum(dim=-1).clamp(min=1)
        return (per_token.sum(dim=-1) / counts).sum()


TASKS: dict[str, type[LanguageModelingTask]] = {
    "language_modeling": LanguageModelingTask,
    "margin": LanguageModelingWithMarginMeasurementTask,
    "custom": LanguageModelingWithCustomMeasurementTask,
}
