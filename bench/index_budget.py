"""The index's size per example against its answers, on the three corpora of bench/corpora.py: the
measurement INDEX_DIM's default is chosen by (issue "A million documents"). Writes
docs/results/index_budget.md and bench/index_budget.json.

Per corpus, in ARTIFACTS_URI/<corpus> (default ./artifacts/corpora/<corpus>, shared with
bench/lds_corpora.py): train, fit_factors and compute_scores under the name `ekfac` (each skipped
when done); per budget, build_index (INDEX_NAME budget_<n>) and two queries of the corpus's 24
prompts: the index alone (RERANK_TOP_K=0) and the default (its top RERANK_TOP_K scored again
exactly). Per prompt: the overlap of the query's top 10 with compute_scores' top 10, the share of
compute_scores' top 10 among the index's top K (the candidates RERANK_TOP_K=K would rescore), and
the index alone's Pearson with compute_scores over every document. With --lds, one `python -m jobs
lds` run correlates compute_scores' and every budget's rescored scores with the same retrained
subsets (LDS_SUBSETS x LDS_SEEDS from the flags), paired differences with standard errors.

    python bench/index_budget.py [--budgets 2048,4096,8192,16384] [--corpora demo,demo-hard,jargon]
                                 [--lds] [--subsets 8] [--seeds 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.corpora import CORPORA  # noqa: E402
from bench.lds_corpora import corpus_env, jobs  # noqa: E402

EXACT = "ekfac"  # compute_scores' name, as bench/lds_corpora.py names it (its scores are shared)
CANDIDATES = (10, 20, 50, 100)


def influence(artifacts: Path, name: str) -> torch.Tensor:
    from influence_core.artifacts import Scores

    return Scores.influence(artifacts / Scores(name).relative).double()


def compare(artifacts: Path, budget: int) -> dict:
    exact = influence(artifacts, EXACT)
    alone, rescored = influence(artifacts, f"budget_{budget}_alone"), influence(artifacts, f"budget_{budget}")
    truth = [set(torch.topk(row, 10).indices.tolist()) for row in exact]
    overlap = [len(set(torch.topk(row, 10).indices.tolist()) & top) for row, top in zip(rescored, truth)]
    recall = {k: [len(set(torch.topk(row, k).indices.tolist()) & top) / 10 for row, top in zip(alone, truth)]
              for k in CANDIDATES}
    pearson = [float(np.corrcoef(mine.numpy(), theirs.numpy())[0, 1]) for mine, theirs in zip(alone, exact)]
    projection = json.loads((artifacts / f"index/budget_{budget}/projection.json").read_text())
    built = json.loads((artifacts / f"index/budget_{budget}/_SUCCESS").read_text())
    return {"bytes_per_example": projection["bytes_per_example"], "build_seconds": built["timings"]["seconds"],
            "top10_overlap_mean": float(np.mean(overlap)), "top10_overlap_min": int(np.min(overlap)),
            **{f"recall_at_{k}": float(np.mean(values)) for k, values in recall.items()},
            "pearson_alone_mean": float(np.mean(pearson)), "pearson_alone_min": float(np.min(pearson))}


def study(corpus: str, root: Path, budgets: list[int], lds: bool, subsets: int, seeds: int) -> dict:
    env = corpus_env(corpus, root)
    artifacts = Path(env["ARTIFACTS_URI"])
    for stage, *flags in (("train",), ("fit_factors",), ("compute_scores", "--scores_name", EXACT)):
        jobs(stage, *flags, env=env)
    rows = {}
    for budget in budgets:
        name = f"budget_{budget}"
        jobs("build_index", "--index_name", name, "--index_dim", str(budget), env=env)
        jobs("query", "--index_name", name, "--scores_name", f"{name}_alone", "--rerank_top_k", "0", env=env)
        jobs("query", "--index_name", name, "--scores_name", name, env=env)
        rows[budget] = compare(artifacts, budget)
        print(corpus, budget, rows[budget], flush=True)
    result = {"budgets": rows}
    if lds:
        names = [EXACT, *(f"budget_{budget}" for budget in budgets)]
        jobs("lds", "--lds_scores", ",".join(names), "--lds_subsets", str(subsets), "--lds_seeds", str(seeds),
             env=env)
        measured = json.loads((artifacts / "reports/lds/lds.json").read_text())["methods"]
        reference = np.array(measured[EXACT]["per_prompt"], dtype=float)
        result["lds"] = {EXACT: {"lds": measured[EXACT]["lds"], "stderr": measured[EXACT]["stderr"]}}
        for budget in budgets:
            ours = np.array(measured[f"budget_{budget}"]["per_prompt"], dtype=float)
            keep = ~(np.isnan(ours) | np.isnan(reference))
            difference = ours[keep] - reference[keep]
            result["lds"][budget] = {"lds": measured[f"budget_{budget}"]["lds"],
                                     "difference": float(difference.mean()),
                                     "difference_stderr": float(difference.std(ddof=1) / np.sqrt(keep.sum()))}
        result["lds_subsets"], result["lds_seeds"] = subsets, seeds
    return result


def write_page(results: dict, path: Path) -> None:
    lines = ["# The index's budget per example", "",
             f"`python bench/index_budget.py` ({results['date']}, {results['machine']}): the `tiny` model on each "
             "corpus of bench/corpora.py (24 prompts), EK-FAC at the defaults, INDEX_DTYPE float16, RERANK_TOP_K "
             "100. Per budget (INDEX_DIM: numbers per example, shared equally among the 8 tracked modules): "
             "the overlap of the query's rescored top 10 with compute_scores' (mean / worst prompt), the share of "
             "compute_scores' top 10 among the index's own top K (what RERANK_TOP_K=K would rescore), the index "
             "alone's Pearson with compute_scores over every document, and build_index's seconds (one process, "
             "start-up included; other jobs shared the 2 cores during this run: not a speed figure).", "",
             "| corpus | INDEX_DIM | bytes / example | rescored top-10 overlap (mean / min) | "
             + " | ".join(f"top 10 in index top {k}" for k in CANDIDATES) + " | Pearson, index alone (mean / min) | "
             "build_index s |",
             "|---|---|---|---|" + "---|" * len(CANDIDATES) + "---|---|"]
    for corpus, result in results["corpora"].items():
        for budget, row in result["budgets"].items():
            lines.append(f"| {corpus} | {budget} | {row['bytes_per_example']:,} | {row['top10_overlap_mean']:.2f} / "
                         f"{row['top10_overlap_min']} | "
                         + " | ".join(f"{row[f'recall_at_{k}']:.3f}" for k in CANDIDATES)
                         + f" | {row['pearson_alone_mean']:.3f} / {row['pearson_alone_min']:.3f} | "
                           f"{row['build_seconds']:.0f} |")
    budgets = sorted({int(b) for result in results["corpora"].values() for b in result["budgets"]})
    meeting = [b for b in budgets if all(result["budgets"].get(str(b), {}).get("top10_overlap_mean", 0) >= 9.5
                                         for result in results["corpora"].values())]
    lines += ["", "Budgets whose rescored top 10 held at least 9.5 of compute_scores' on every corpus: "
              + (", ".join(map(str, meeting)) if meeting else "none of those measured") + ". On the smaller "
              "corpora the prompts' candidates together (24 x RERANK_TOP_K) cover most documents, so the "
              "rescored overlap says more about the union than about the index; the index's own top-K columns "
              "are what carries over to a corpus much larger than the candidates."]
    with_lds = {corpus: result for corpus, result in results["corpora"].items() if "lds" in result}
    if with_lds:
        first = next(iter(with_lds.values()))
        lines += ["", f"LDS (`--lds`: one lds run per corpus, {first['lds_subsets']} random halves x "
                      f"{first['lds_seeds']} training seed, the same subsets for every scores): compute_scores' LDS "
                      "and each budget's rescored query's, with the paired difference from compute_scores' (mean "
                      "over prompts ± its standard error).", "",
                  "| corpus | compute_scores | " + " | ".join(f"INDEX_DIM {b}" for b in first["budgets"]) + " |",
                  "|---|---|" + "---|" * len(first["budgets"])]
        for corpus, result in with_lds.items():
            cells = [f"{result['lds'][str(b)]['lds']:.3f} ({result['lds'][str(b)]['difference']:+.3f} ± "
                     f"{result['lds'][str(b)]['difference_stderr']:.3f})" if str(b) in result["lds"] else "-"
                 for b in first["budgets"]]
            lines.append(f"| {corpus} | {result['lds'][EXACT]['lds']:.3f} ± {result['lds'][EXACT]['stderr']:.3f} | "
                         + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", default="2048,4096,8192,16384")
    parser.add_argument("--corpora", default=",".join(CORPORA))
    parser.add_argument("--root", default=str(ROOT / "artifacts/corpora"))
    parser.add_argument("--lds", action="store_true")
    parser.add_argument("--subsets", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--page", action="store_true", help="only write the page from bench/index_budget.json")
    args = parser.parse_args()
    budgets = [int(budget) for budget in args.budgets.split(",")]
    output = ROOT / "bench/index_budget.json"
    results = json.loads(output.read_text()) if output.exists() else {"corpora": {}}
    if args.page:
        return write_page(results, ROOT / "docs/results/index_budget.md")
    started = time.time()
    for corpus in args.corpora.split(","):
        measured = json.loads(json.dumps(  # keys as JSON has them
            study(corpus, Path(args.root), budgets, args.lds, args.subsets, args.seeds)))
        kept = results["corpora"].setdefault(corpus, {})  # other budgets' figures, from earlier runs, stay
        kept["budgets"] = {**kept.get("budgets", {}), **measured.pop("budgets")}
        kept |= measured
        results |= {"date": str(date.today()), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
                                                          f"torch {torch.__version__}"}
        output.write_text(json.dumps(results, indent=2))
        write_page(results, ROOT / "docs/results/index_budget.md")
    print(f"done in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
