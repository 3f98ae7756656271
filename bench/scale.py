"""The index at scale (issue "A million documents"): the demo generator's corpus at growing sizes
through train, fit_factors, compute_scores, build_index and query, each a fresh `python -m jobs`
process; then the search alone over 1,000,000 rows. One command, resumable: every step's figures
go to bench/scale.json as soon as it ends, and a rerun skips the steps recorded there (the stages
themselves skip what they published). Writes docs/results/scale.md.

Per size (the tiny model, trained NUM_TRAIN_EPOCHS=1: the figures are of the index, not of the
model's fit; the 24 prompts of bench/corpora/demo.json):
- each stage's seconds and peak RSS (wait4 of its process), build_index's documents per second
  and the index's bytes;
- back to back, compute_scores (under another SCORES_NAME, so it runs) and the query of the 24
  prompts, and of the first 12 (the issue's 4,800-document bar is 12 prompts);
- one question (`--prompt`): the median of 5 processes (start-up included), and the median of 5
  answers in one process after one to warm it (start-up excluded);
- the query's rescored top 10 against compute_scores' top 10 (mean overlap over the prompts).
Then the growth exponent of each figure against the documents (log-log slope, least squares).

The 1,000,000 rows: `bench/search_recall.py --million` (977 shards' search structures of
INDEX_SEARCH=auto's kind, one prompt searched over all of them, one thread): seconds and peak RSS.

    python bench/scale.py [--sizes 4800,10000,100000] [--root ./artifacts/scale] [--no-million]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import machine, measure_rss  # noqa: E402

PROMPTS = ROOT / "bench/corpora/demo.json"
RESULTS = ROOT / "bench/scale.json"
EPOCHS = "1"
MIB = 2**20


def jobs(stage: str, env: dict, *flags: str) -> dict:
    """One `python -m jobs` process: its seconds and peak RSS (MiB)."""
    run = measure_rss([sys.executable, "-m", "jobs", stage, *flags], {"LOG_LEVEL": "WARNING", **env})
    return {"seconds": round(run["seconds"], 2), "peak_rss_mib": round(run["peak_rss_mb"] * 1e6 / MIB)}


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def top10_overlap(artifacts: Path, exact: str, ours: str) -> float:
    import torch

    from influence_core.artifacts import Scores

    a, b = (Scores.influence(artifacts / Scores(name).relative) for name in (exact, ours))
    return statistics.mean(len(set(torch.topk(x, 10).indices.tolist()) & set(torch.topk(y, 10).indices.tolist()))
                           for x, y in zip(a, b))


ONE_QUESTION = """
import json, sys, time
from influence_core.settings import QueryIndexSettings, load_settings
from jobs import query
settings = load_settings(QueryIndexSettings, sys.argv[1:])
times = []
for _ in range(6):
    started = time.perf_counter()
    query.main(settings)
    times.append(time.perf_counter() - started)
print(json.dumps({"seconds": times[1:]}))
"""


def size_steps(size: int, root: Path) -> dict:
    """The steps of one size, in order: name -> a function giving its figures."""
    artifacts = root / f"demo_{size}"
    prompts12 = root / "prompts12.json"
    prompts12.write_text(json.dumps(json.loads(PROMPTS.read_text())[:12]))
    env = {"ARTIFACTS_URI": str(artifacts), "DATASET": "demo", "NUM_EXAMPLES": str(size),
           "NUM_TRAIN_EPOCHS": EPOCHS, "PROMPTS": str(PROMPTS)}
    question = ["--prompt", "The capital of Velmora is", "--completion", " Quistador"]

    def build() -> dict:
        run = jobs("build_index", env)
        index = artifacts / "index/index"
        return {**run, "documents_per_second": round(size / run["seconds"], 1), "bytes": folder_bytes(index),
                "bytes_per_example": json.loads((index / "projection.json").read_text())["bytes_per_example"]}

    def back_to_back(prompts: Path) -> dict:
        twelve = {**env, "PROMPTS": str(prompts), "FORCE": "true"}
        exact = jobs("compute_scores", twelve, "--scores_name", f"timed_{prompts.stem}")
        query = jobs("query", twelve, "--scores_name", f"query_{prompts.stem}")
        return {"compute_scores": exact, "query": query,
                "query_over_compute_scores": round(query["seconds"] / exact["seconds"], 3)}

    def one_question() -> dict:
        processes = [jobs("query", env, *question)["seconds"] for _ in range(5)]
        inside = measure_rss([sys.executable, "-c", ONE_QUESTION, *question], {**env, "LOG_LEVEL": "WARNING"})
        return {"process_seconds_median": round(statistics.median(processes), 2),
                "in_process_seconds_median": round(statistics.median(inside["printed"]["seconds"]), 2)}

    return {
        "train": lambda: jobs("train", env),
        "fit_factors": lambda: jobs("fit_factors", env),
        "compute_scores": lambda: jobs("compute_scores", env),
        "build_index": build,
        "query": lambda: {**jobs("query", env),
                          "top10_overlap": top10_overlap(artifacts, "prompt_scores", "query_scores")},
        "back_to_back_24": lambda: back_to_back(PROMPTS),
        "back_to_back_12": lambda: back_to_back(prompts12),
        "one_question": one_question,
    }


def exponent(sizes: list[int], values: list[float]) -> float | None:
    """The least-squares slope of log(value) against log(size)."""
    points = [(math.log(s), math.log(v)) for s, v in zip(sizes, values) if v and v > 0]
    if len(points) < 2:
        return None
    mx, my = statistics.mean(x for x, _ in points), statistics.mean(y for _, y in points)
    return round(sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points), 2)


def write_page(results: dict) -> None:
    sizes = sorted(results["sizes"], key=int)
    rows = [("train s", "train", "seconds"), ("fit_factors s", "fit_factors", "seconds"),
            ("compute_scores s (24 prompts)", "compute_scores", "seconds"), ("build_index s", "build_index", "seconds"),
            ("build_index documents / s", "build_index", "documents_per_second"),
            ("index bytes", "build_index", "bytes"), ("bytes per example", "build_index", "bytes_per_example"),
            ("query s (24 prompts, rescoring included)", "query", "seconds"),
            ("query's rescored top 10 in compute_scores' (mean of 10)", "query", "top10_overlap"),
            ("one question, s, process start included (median of 5)", "one_question", "process_seconds_median"),
            ("one question, s, start-up excluded (median of 5)", "one_question", "in_process_seconds_median"),
            *[(f"peak RSS MiB, {name}", name, "peak_rss_mib") for name in
              ("train", "fit_factors", "compute_scores", "build_index", "query")]]
    lines = ["# The index at scale", "",
             f"`python bench/scale.py` ({results.get('date')}, {results.get('machine')}): the demo generator's "
             "corpus, the tiny model trained one epoch, the 24 prompts of bench/corpora/demo.json, the defaults "
             "otherwise; each stage a fresh process. Exponent: the slope of log(figure) against log(documents).", "",
             "| figure | " + " | ".join(f"{int(s):,} documents" for s in sizes) + " | exponent |",
             "|---|" + "---|" * (len(sizes) + 1)]
    for label, step, key in rows:
        values = [results["sizes"][s].get(step, {}).get(key) for s in sizes]
        known = [(int(s), v) for s, v in zip(sizes, values) if isinstance(v, (int, float))]
        slope = exponent([s for s, _ in known], [v for _, v in known])
        cells = ["-" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:,.2f}" for v in values]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {'-' if slope is None else slope} |")
    lines += ["", "Back to back (one process each, the same corpus and prompts):", "",
              "| documents | prompts | compute_scores s | query s | query / compute_scores |", "|---|---|---|---|---|"]
    for s in sizes:
        for prompts in ("12", "24"):
            pair = results["sizes"][s].get(f"back_to_back_{prompts}")
            if pair:
                lines.append(f"| {int(s):,} | {prompts} | {pair['compute_scores']['seconds']:.1f} | "
                             f"{pair['query']['seconds']:.1f} | {pair['query_over_compute_scores']:.3f} |")
    for s in sizes:  # how much of a query process is its start-up: the interpreter and its imports
        one, pair = results["sizes"][s].get("one_question"), results["sizes"][s].get("back_to_back_12")
        if one and pair:
            start = one["process_seconds_median"] - one["in_process_seconds_median"]
            work = (pair["query"]["seconds"] - start) / (pair["compute_scores"]["seconds"] - start)
            lines += ["", f"At {int(s):,} documents a query process spends about {start:.1f} s starting up "
                          "(the interpreter and its imports: one question's process median less its in-process "
                          "median); without that start-up in either process (compute_scores' taken as long), "
                          f"query / compute_scores for 12 prompts is {work:.3f}."]
    search = results.get("search")
    if search:
        lines += ["", f"The search alone over {search['rows']:,} rows (`bench/search_recall.py --million`: "
                      f"INDEX_SEARCH={search['structure']}'s structures of 977 shards, one thread): "
                      f"{search['search_s']:.2f} s for one prompt, {search['candidates']:,} candidates, peak RSS "
                      f"{search['peak_rss_mib']:,} MiB, {search['structures_bytes']:,} bytes of structures."]
    (ROOT / "docs/results/scale.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="4800,10000,100000")
    parser.add_argument("--root", default=str(ROOT / "artifacts/scale"))
    parser.add_argument("--no-million", dest="million", action="store_false",
                        help="leave out the search over 1,000,000 rows (its structures take about an hour to build)")
    args = parser.parse_args()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"sizes": {}}
    results |= {"date": time.strftime("%Y-%m-%d"), "machine": machine()}
    for size in (int(size) for size in args.sizes.split(",")):
        done = results["sizes"].setdefault(str(size), {})
        for step, measure in size_steps(size, root).items():
            if step in done:
                continue
            done[step] = measure()
            print(size, step, done[step], flush=True)
            RESULTS.write_text(json.dumps(results, indent=2))
            write_page(results)
    if args.million and "search" not in results:  # the search alone over 1,000,000 rows
        run = measure_rss([sys.executable, str(ROOT / "bench/search_recall.py"), "--million"],
                          {"OMP_NUM_THREADS": "1"})
        results["search"] = run["printed"]
        RESULTS.write_text(json.dumps(results, indent=2))
    write_page(results)


if __name__ == "__main__":
    main()
