"""The gradient index against compute_scores, on the demo and demo-hard at the defaults (issue "Ask
a new question in seconds"). Writes docs/results/index_study.md and bench/index_study.json.

Per corpus, through the stages as a user runs them (ARTIFACTS_URI ./artifacts and
./artifacts/demo-hard, as `make demo` and `make eval` leave them): train, fit_factors and
compute_scores (skipped when complete), build_index, then query without rescoring (the index's own
scores) and with RERANK_TOP_K (the default); per prompt the Pearson correlation with compute_scores'
scores over the training examples and the overlap of the top 10; the times of compute_scores (run
again under another name), build_index, both queries and one question at the terminal, back to
back; and, unless --no-lds, the LDS of the three scores from one `python -m jobs lds` run
(LDS_SCORES naming all three; the retrained subsets are shared).

    python bench/index_study.py [--no-lds] [--index_dims 4096,8192]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from influence_core.settings import INDEX_DIM_DEFAULT  # noqa: E402

CORPORA = {"demo": {}, "demo-hard": {"DATASET": "demo-hard", "PROMPTS": str(ROOT / "prompts-hard.json")}}


def jobs(env: dict, *args: str) -> float:
    """`python -m jobs ...` with `env`; its wall time in seconds."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "jobs", *args, "--log_level", "WARNING"], cwd=ROOT,
                            env={**os.environ, **env}, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"python -m jobs {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def compare(artifacts: Path, name: str) -> dict:
    from influence_core.artifacts import Scores

    exact = Scores.matrix(artifacts / Scores("prompt_scores").relative).double()
    ours = Scores.matrix(artifacts / Scores(name).relative).double()
    pearson = [float(np.corrcoef(ours[p].numpy(), exact[p].numpy())[0, 1]) for p in range(len(exact))]
    overlap = [len(set(torch.topk(ours[p], 10).indices.tolist()) & set(torch.topk(exact[p], 10).indices.tolist()))
               for p in range(len(exact))]
    return {"pearson_mean": round(float(np.mean(pearson)), 4), "pearson_min": round(float(np.min(pearson)), 4),
            "top10_overlap_mean": round(float(np.mean(overlap)), 2), "top10_overlap_min": int(np.min(overlap))}


def study(corpus: str, env: dict, dims: list[int], lds: bool) -> dict:
    artifacts = Path(env["ARTIFACTS_URI"])
    for stage in ("train", "fit_factors", "compute_scores"):
        jobs(env, stage)
    row: dict = {"corpus": corpus, "seconds": {}}
    seconds = row["seconds"]
    seconds["compute_scores"] = jobs(env, "compute_scores", "--scores_name", "index_study_exact", "--force")
    for dim in dims:  # the index's own scores at other sizes, without rescoring
        jobs(env, "build_index", "--index_name", f"study_{dim}", "--index_dim", str(dim))
        jobs(env, "query", "--index_name", f"study_{dim}", "--rerank_top_k", "0", "--scores_name", f"study_{dim}",
             "--force")
        row[f"index_dim_{dim}"] = compare(artifacts, f"study_{dim}")
    seconds["build_index"] = jobs(env, "build_index", "--force")
    seconds["query_index_only"] = jobs(env, "query", "--rerank_top_k", "0", "--scores_name", "query_index",
                                       "--force")
    seconds["query_reranked"] = jobs(env, "query", "--scores_name", "query_scores", "--force")
    prompts = json.loads(Path(env.get("PROMPTS", ROOT / "prompts.json")).read_text())
    seconds["one_question"] = jobs(env, "query", "--prompt", prompts[0]["prompt"], "--completion",
                                   prompts[0]["completion"])
    row["index"] = compare(artifacts, "query_index")
    row["reranked"] = compare(artifacts, "query_scores")
    row["index_bytes"] = sum(path.stat().st_size for path in (artifacts / "index/index").iterdir())
    if lds:
        jobs(env, "lds", "--lds_scores", "prompt_scores,query_index,query_scores")
        methods = json.loads((artifacts / "reports/lds/lds.json").read_text())["methods"]
        row["lds"] = {name: {"lds": round(methods[name]["lds"], 4), "stderr": round(methods[name]["stderr"], 4)}
                      for name in ("prompt_scores", "query_index", "query_scores")}
    return row


def render(result: dict) -> str:
    lines = [f"# Gradient index study ({result['date']})", "",
             "`python bench/index_study.py`: the demo and demo-hard at the defaults (600 documents, the tiny "
             f"model, EK-FAC, damping 1e-8, INDEX_DIM {INDEX_DIM_DEFAULT}, INDEX_DTYPE float16, RERANK_TOP_K 100), "
             f"{result['machine']}. Per prompt, Pearson with compute_scores' scores over the training "
             "examples and the overlap of the top 10 (mean / worst prompt).", "",
             "| corpus | scores | Pearson (mean / min) | top-10 overlap (mean / min) | LDS ± s.e. |",
             "|---|---|---|---|---|"]
    for row in result["rows"]:
        lds = row.get("lds", {})

        def cell(name: str, lds: dict = lds) -> str:
            return f"{lds[name]['lds']:.3f} ± {lds[name]['stderr']:.3f}" if name in lds else "-"

        lines.append(f"| {row['corpus']} | compute_scores | 1 | 10 | {cell('prompt_scores')} |")
        for key, label, name in (("index", "query, the index alone (RERANK_TOP_K=0)", "query_index"),
                                 ("reranked", "query, top 100 rescored (the default)", "query_scores")):
            item = row[key]
            lines.append(f"| {row['corpus']} | {label} | {item['pearson_mean']:.3f} / {item['pearson_min']:.3f} | "
                         f"{item['top10_overlap_mean']:.2f} / {item['top10_overlap_min']} | {cell(name)} |")
    lines += ["", "The index alone at other sizes (INDEX_DIM numbers per example; 0 keeps it whole):", "",
              "| corpus | INDEX_DIM | Pearson (mean / min) | top-10 overlap (mean / min) |", "|---|---|---|---|"]
    for row in result["rows"]:
        for key, item in row.items():
            if key.startswith("index_dim_"):
                lines.append(f"| {row['corpus']} | {key.removeprefix('index_dim_')} | {item['pearson_mean']:.3f} "
                             f"/ {item['pearson_min']:.3f} | {item['top10_overlap_mean']:.2f} / "
                             f"{item['top10_overlap_min']} |")
    lines += ["", "Seconds, each a `python -m jobs` process (start-up and model loading included), run back to back:",
              "", "| corpus | compute_scores | build_index | query, index alone | query, rescored | one question "
              "(--prompt) | index size |", "|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        s = row["seconds"]
        lines.append(f"| {row['corpus']} | {s['compute_scores']:.1f} | {s['build_index']:.1f} | "
                     f"{s['query_index_only']:.1f} | {s['query_reranked']:.1f} | {s['one_question']:.1f} | "
                     f"{row['index_bytes'] / 2**20:.0f} MiB |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-lds", dest="lds", action="store_false")
    parser.add_argument("--index_dims", default="4096,8192")
    args = parser.parse_args()
    dims = [int(dim) for dim in args.index_dims.split(",") if dim]
    base = os.environ.get("ARTIFACTS_URI", str(ROOT / "artifacts"))
    rows = []
    for corpus, extra in CORPORA.items():
        env = {"ARTIFACTS_URI": base if corpus == "demo" else f"{base}/demo-hard", **extra}
        rows.append(study(corpus, env, dims, args.lds))
        print(json.dumps(rows[-1]), flush=True)
    import platform

    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
                                                           f"torch {torch.__version__}", "rows": rows}
    (ROOT / "bench" / "index_study.json").write_text(json.dumps(result, indent=2))
    (ROOT / "docs" / "results" / "index_study.md").write_text(render(result))
    print(render(result))


if __name__ == "__main__":
    main()
