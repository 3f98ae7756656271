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

BM25 is Okapi BM25 (k1=1.5, b=0.75) over lower-cased word tokens (`words`), queried with the prompt
plus its completion, computed by `bm25s`: its term-frequency part tf (k1 + 1) / (tf + k1 (1 - b + b
|d| / avgdl)) (bm25s's method="atire", which is Okapi's) times Robertson's idf log((N - df + 0.5) /
(df + 0.5)) (idf_method="robertson", Okapi's). A word in more than half the documents gets idf 0
where rank_bm25's BM25Okapi, used before, gave it a quarter of the mean idf: scores that include such
words (the, of) differ slightly from rank_bm25's; the others are the same. The tokens are our `words`
passed to bm25s as lists (its own tokenizer drops one-letter words and would change the scores).

The index is built once per corpus, when train or import_model publishes data/train, and saved with
bm25s's own files in data/train/bm25/ (TrainData.BM25, part of the data's checksums); `corpus_bm25`
loads it memory-mapped, or builds it from the texts for data published before it was.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from influence_core.prompts import Prompt

if TYPE_CHECKING:
    import bm25s

    from influence_core.settings import FusionSettings

BM25_K1, BM25_B = 1.5, 0.75  # Okapi BM25's usual values, stated so the reports can name them
# bm25s's parameters for Okapi BM25 (the module's docstring), in float64 as the scores always were
BM25_OKAPI = {"method": "atire", "idf_method": "robertson", "k1": BM25_K1, "b": BM25_B, "dtype": "float64"}
BM25_DESCRIPTION = (f"Okapi BM25 (bm25s, method=atire, idf_method=robertson), k1={BM25_K1:g}, b={BM25_B:g}, "
                    "lower-cased word tokens")
FUSIONS = ("none", "bm25_zmean", "bm25_gate")


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, apostrophes inside words)."""
    return re.findall(r"\w+(?:'\w+)*", text.lower())


def _bm25s():
    """bm25s, imported when first used. Its import sets its logger to DEBUG: reset, so that its lines
    follow LOG_LEVEL as every other logger's do."""
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.NOTSET)
    return bm25s


def build_bm25(texts: Sequence[str]) -> bm25s.BM25:
    """The BM25 index of the documents `texts` (document i = text i)."""
    bm25s = _bm25s()
    tokens = [words(text) for text in texts]
    # Our own vocabulary, sorted: bm25s numbers the words of token lists in set order, which changes
    # with each process's hash seed, and the published files must not (the data's checksums).
    vocab = {word: number for number, word in enumerate(sorted({word for text in tokens for word in text}))}
    index = bm25s.BM25(**BM25_OKAPI)
    index.index(bm25s.tokenization.Tokenized(ids=[[vocab[word] for word in text] for text in tokens], vocab=vocab),
                show_progress=False)
    return index


def save_bm25(texts: Sequence[str], data_dir: Path) -> None:
    """The corpus's BM25 index, saved with bm25s's files where the data in `data_dir` is published
    (TrainData.bm25_dir): what train and import_model publish beside the examples."""
    from influence_core.artifacts import TrainData

    build_bm25(texts).save(str(TrainData.bm25_dir(data_dir)), show_progress=False)


def corpus_bm25(data_dir: Path) -> bm25s.BM25:
    """The BM25 index of the published data in `data_dir` (a data/train folder), memory-mapped; built
    here from its texts where the data was published without one (before it was part of it)."""
    from influence_core.artifacts import TrainData

    if (folder := TrainData.bm25_dir(data_dir)).is_dir():
        return _bm25s().BM25.load(str(folder), mmap=True)
    from datasets import load_from_disk

    return build_bm25(load_from_disk(str(data_dir))["text"])


def bm25_scores(queries: Sequence[str], corpus: bm25s.BM25 | Sequence[str]) -> torch.Tensor:
    """BM25 scores of every document for every query: a queries x documents matrix (float64). `corpus`:
    the corpus's index (`corpus_bm25`), or its texts, indexed here."""
    index = corpus if isinstance(corpus, _bm25s().BM25) else build_bm25(corpus)
    return torch.from_numpy(np.stack([np.asarray(index.get_scores_from_ids(index.get_tokens_ids(words(query))),
                                                 dtype=np.float64) for query in queries]))


def prompt_bm25(prompts: Sequence[Prompt], corpus: bm25s.BM25 | Sequence[str]) -> torch.Tensor:
    """BM25 of every document for each prompt, queried with the prompt plus its completion."""
    return bm25_scores([prompt.prompt + prompt.completion for prompt in prompts], corpus)


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
