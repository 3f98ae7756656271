"""Influence with lexical evidence: BM25 beside the influence scores, and the two fused into one ranking.

Influence explains what the model learned from a document; word overlap finds the documents that
say the completion's words. Each fails where the other holds: influence is noisy for completions
the model is already sure of, word overlap misses paraphrases and finds echoes. SCORE_FUSION
(compute_scores) chooses how the published ranking combines them:

- none: the influence scores alone;
- bm25_zmean: per prompt, the weighted mean of the two's z-scores over the documents (FUSION_WEIGHT
  on BM25): z-scores, because the two are on scales that differ by orders of magnitude and from
  prompt to prompt;
- bm25_gate: per prompt, the influence of the GATE_FRACTION of the documents BM25 ranks highest;
  every other document scores 0 (a cheap recall stage, then influence).

BM25 is Okapi BM25 (`rank_bm25`, its default k1=1.5, b=0.75) over lower-cased word tokens,
queried with the prompt plus its completion.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from rank_bm25 import BM25Okapi

from influence_core.prompts import Prompt

if TYPE_CHECKING:
    from influence_core.settings import FusionSettings

BM25_K1, BM25_B = 1.5, 0.75  # rank_bm25's BM25Okapi defaults, stated so the reports can name them
FUSIONS = ("none", "bm25_zmean", "bm25_gate")


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, apostrophes inside words)."""
    return re.findall(r"\w+(?:'\w+)*", text.lower())


def bm25_scores(queries: Sequence[str], texts: Sequence[str]) -> torch.Tensor:
    """BM25 scores of every document for every query: a queries x documents matrix."""
    index = BM25Okapi([words(text) for text in texts], k1=BM25_K1, b=BM25_B)
    return torch.from_numpy(np.stack([index.get_scores(words(query)) for query in queries]))


def prompt_bm25(prompts: Sequence[Prompt], texts: Sequence[str]) -> torch.Tensor:
    """BM25 of every document for each prompt, queried with the prompt plus its completion."""
    return bm25_scores([prompt.prompt + prompt.completion for prompt in prompts], texts)


def zscores(matrix: torch.Tensor) -> torch.Tensor:
    """Each row's z-scores (float64); a row with no spread (BM25 when no query word occurs) is all 0."""
    matrix = matrix.double()
    spread = matrix.std(dim=1, keepdim=True)
    return torch.where(spread > 0, (matrix - matrix.mean(dim=1, keepdim=True)) / spread, 0.0)


def fused_scores(influence: torch.Tensor, lexical: torch.Tensor, weight: float = 0.5) -> torch.Tensor:
    """Per prompt (row), the weighted mean of the influence's and the lexical scores' z-scores,
    `weight` on the lexical side."""
    return (1 - weight) * zscores(influence) + weight * zscores(lexical)


def gated_scores(influence: torch.Tensor, lexical: torch.Tensor, fraction: float) -> torch.Tensor:
    """Per prompt (row), the influence of the documents among the top `fraction` by the lexical
    scores (at least one), 0 for the others."""
    keep = max(1, round(fraction * influence.shape[1]))
    top = lexical.double().topk(keep, dim=1).indices
    gated = torch.zeros_like(influence, dtype=torch.float64)
    return gated.scatter(1, top, influence.double().gather(1, top))


def fuse(influence: torch.Tensor, lexical: torch.Tensor, fusion: str, weight: float, fraction: float) -> torch.Tensor:
    """The ranking SCORE_FUSION=`fusion` publishes (float64, prompts x documents)."""
    if fusion == "bm25_zmean":
        return fused_scores(influence, lexical, weight)
    if fusion == "bm25_gate":
        return gated_scores(influence, lexical, fraction)
    if fusion == "none":
        return influence.double()
    raise ValueError(f"unknown score fusion {fusion!r}, expected one of {FUSIONS}")


ALONE = "influence alone"  # what made a ranking of one model's influence, unfused


def describe(scoring: FusionSettings, models: int) -> str:
    """What made a ranking, in words (for the reports): the fusion of its scores' settings over the
    influence of `models` models (a Scores artifact's `models`: what it averages, not a setting)."""
    influence = "influence" if models == 1 else (f"influence averaged over {models} models (training seeds "
                                                 f"+0..+{models - 1})")
    return {
        "none": ALONE if models == 1 else influence,
        "bm25_zmean": f"{influence} fused with BM25: per prompt, the mean of their z-scores, "
                      f"{scoring.fusion_weight:g} on BM25",
        "bm25_gate": f"{influence} within BM25's top {scoring.gate_fraction:.0%} of the documents per prompt "
                     "(the rest 0)",
    }[scoring.score_fusion]


def score_label(scoring: FusionSettings, models: int) -> str:
    """What a ranking's numbers are, short enough for a plot's axis."""
    influence = "influence" if models == 1 else f"mean influence of {models} models"
    return {"none": "influence score" if models == 1 else f"influence score (mean of {models} models)",
            "bm25_zmean": f"fused score (z-scores of {influence} and BM25)",
            "bm25_gate": f"{influence} within BM25's gate"}[scoring.score_fusion]


def top_overlap(first: torch.Tensor, second: torch.Tensor, k: int) -> list[int | None]:
    """Per row, how many of the k highest of `first` are among the k highest of `second`; None where
    `second`'s row is flat (BM25 when no word of the query occurs: it has no top k)."""
    k = min(k, first.shape[1])
    a, b = first.double().topk(k, dim=1).indices, second.double().topk(k, dim=1).indices
    return [len(set(x.tolist()) & set(y.tolist())) if row.max() > row.min() else None
            for x, y, row in zip(a, b, second)]
