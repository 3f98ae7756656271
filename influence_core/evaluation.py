"""Fact tracing: do the documents that state a planted demo fact rank at the top for its prompt?

Every ranking (an influence strategy's scores, or a lexical baseline's) is a matrix of prompts x
training documents, higher = more relevant. For each planted fact asked by a prompt:

- recall@10: the share of the documents stating the fact that rank among the 10 highest scores
  (computed by `influence_core.reports.build_report`, the same number the demo report shows);
- reciprocal rank: 1 / the rank of the best-ranked document stating the fact (MRR is its mean
  over the facts: 1.0 when a stating document ranks first for every fact).

The lexical baseline is BM25 (influence_core.fusion), queried with the prompt plus its
completion. On the demo corpus the completion's words ("Quistador") occur only in the documents
that state the fact, so this baseline is close to an oracle there; it is reported to show what
plain text matching achieves, not as a bar influence must clear. A prompt-only BM25 (the
completion withheld) is reported beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from influence_core.fusion import bm25_scores, prompt_bm25
from influence_core.prompts import Prompt
from influence_core.reports import RECALL_AT, build_report

if TYPE_CHECKING:
    import bm25s

LEXICAL_BASELINES = {
    "bm25": "BM25 on prompt + completion",
    "bm25_prompt_only": "BM25 on the prompt alone",
}


def lexical_scores(prompts: Sequence[Prompt], corpus: bm25s.BM25 | Sequence[str]) -> dict[str, torch.Tensor]:
    """The lexical baselines' rankings, by baseline name, from the corpus's BM25 index (or its texts)."""
    return {"bm25": prompt_bm25(prompts, corpus), "bm25_prompt_only": bm25_scores([p.prompt for p in prompts], corpus)}


def fact_metrics(scores: torch.Tensor, prompts: Sequence[Prompt], texts: Sequence[str],
                 facts: Sequence[dict]) -> dict:
    """recall@10 and reciprocal rank per planted fact, and their means, for one ranking."""
    if scores.shape != (len(prompts), len(texts)):
        raise ValueError(f"scores have shape {tuple(scores.shape)}, expected {len(prompts)} prompts x "
                         f"{len(texts)} documents")
    report = build_report(scores, list(prompts), list(texts), list(facts), num_influential=1, names={})
    per_fact = []
    for entry in report["prompts"]:
        if "planted_documents" not in entry:
            continue
        ranks = entry["planted_ranks"]
        per_fact.append({
            "prompt": entry["prompt"],
            "completion": entry["completion"],
            "documents": entry["planted_documents"],
            "ranks": ranks,
            f"recall_at_{RECALL_AT}": entry[f"recall_at_{RECALL_AT}"],
            "reciprocal_rank": 1.0 / min(ranks),
        })
    if not per_fact:
        raise ValueError("no prompt asks for a planted fact")
    return {
        f"recall_at_{RECALL_AT}": sum(f[f"recall_at_{RECALL_AT}"] for f in per_fact) / len(per_fact),
        "mrr": sum(f["reciprocal_rank"] for f in per_fact) / len(per_fact),
        "facts": per_fact,
    }


def render_markdown(evaluation: dict) -> str:
    """evaluation.md: one row per ranking method, then the settings that produced it."""
    methods = evaluation["methods"]
    facts = next(iter(methods.values()))["facts"]
    headers = [f"{fact['completion'].strip()}" for fact in facts]
    lines = [
        "# Fact-tracing evaluation",
        "",
        f"For each of the {len(facts)} planted facts of the {evaluation['settings'].get('train.dataset', 'demo')} "
        "corpus, the documents that state it "
        f"should rank at the top for the prompt that asks for it. recall@{RECALL_AT}: share of those "
        f"documents among the top {RECALL_AT}, averaged over the facts. MRR: mean over the facts of "
        "1 / the rank of the best-ranked stating document. Per-fact columns: recall@"
        f"{RECALL_AT} of each fact, named by its completion.",
        "",
        "| method | recall@10 | MRR | " + " | ".join(headers) + " |",
        "|---|---|---|" + "---|" * len(headers),
    ]
    for result in methods.values():
        per_fact = " | ".join(f"{fact[f'recall_at_{RECALL_AT}']:.2f}" for fact in result["facts"])
        lines.append(f"| {result['label']} | {result[f'recall_at_{RECALL_AT}']:.3f} | {result['mrr']:.3f} | "
                     f"{per_fact} |")
    lines += ["", "## Settings", ""]
    lines += [f"- `{key}`: {value}" for key, value in evaluation["settings"].items()]
    timed = {name: result["seconds"] for name, result in methods.items() if "seconds" in result}
    if timed:
        lines += ["", "## Time per strategy (fit factors + compute scores, seconds)", ""]
        lines += [f"- {methods[name]['label']}: {seconds['fit_factors']:.1f} + {seconds['compute_scores']:.1f}"
                  for name, seconds in timed.items()]
    return "\n".join(lines) + "\n"
