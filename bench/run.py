"""`make bench`: every stage timed at the demo size and at 5 times that, side by side with the
original scripts' approach and with bare Kronfluence calls; writes docs/results/results.md and .json.

Each measurement is a fresh process (wall seconds and its own peak RSS, via wait4), and the
median of REPEATS runs where it says so. Ratios are what to read: absolute times depend on the
machine (2 CPU cores here, shared with nothing else while it runs).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ROOT / "bench" / "prompts16.json"
SIZES = {"demo": 600, "5x demo": 3000}
REPEATS = {"demo": 3, "5x demo": 1}  # the larger size once: make bench must finish in 20 minutes
EPOCHS = "3"
TRAIN_MAX_LENGTH = 256  # for the padding comparison: most demo documents are far shorter


def measure_rss(command: list[str], env: dict | None = None) -> dict:
    """Run a command: its wall seconds, its own peak resident memory (MB, from wait4), and the last
    JSON line it printed."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if process.returncode != 0:
        raise SystemExit(f"bench: {' '.join(command)} failed:\n{stderr[-3000:]}")
    printed = [line for line in stdout.splitlines() if line.startswith("{")]
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024,
            "printed": json.loads(printed[-1]) if printed else {}}


def stage(name: str, artifacts: Path, **env: str) -> dict:
    return measure_rss([sys.executable, "-m", "jobs", name],
                       {"ARTIFACTS_URI": str(artifacts), "FORCE": "true", "LOG_LEVEL": "WARNING", **env})


def direct(what: str, artifacts: Path, work: Path, *args: str) -> dict:
    return measure_rss([sys.executable, str(ROOT / "bench" / "direct.py"), what, "--artifacts", str(artifacts),
                        "--work", str(work), *args])


def median(runs: list[dict], key: str = "seconds") -> float:
    return statistics.median(run[key] for run in runs)


def token_count(artifacts: Path) -> int:
    from datasets import load_from_disk

    return sum(len(ids) for ids in load_from_disk(str(artifacts / "data/train"))["input_ids"])


def length_distribution(artifacts: Path, max_length: int) -> dict:
    from datasets import load_from_disk

    lengths = sorted(len(ids) for ids in load_from_disk(str(artifacts / "data/train"))["input_ids"])
    share = sum(length < max_length / 4 for length in lengths) / len(lengths)
    return {"max_length": max_length, "documents": len(lengths),
            "percentiles": {p: lengths[int(p / 100 * (len(lengths) - 1))] for p in (10, 25, 50, 75, 90)},
            "share_under_quarter_of_max": round(share, 3), "mean_tokens": round(sum(lengths) / len(lengths), 1)}


def bench_size(label: str, documents: int, scratch: Path) -> dict:
    repeats = REPEATS[label]
    artifacts = scratch / label.replace(" ", "_") / "artifacts"
    common = {"NUM_EXAMPLES": str(documents), "NUM_TRAIN_EPOCHS": EPOCHS, "PROMPTS": str(PROMPTS)}
    result: dict = {"documents": documents, "repeats": repeats, "stages": {}}
    print(f"[{label}] stages", flush=True)
    for name in ("train", "fit_factors", "inspect_factors", "compute_scores", "compute_self_scores",
                 "inspect_scores"):
        runs = [stage(name, artifacts, **common) for _ in range(repeats)]
        result["stages"][name] = {"seconds": median(runs), "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}
        print(f"  {name}: {result['stages'][name]}", flush=True)
    for name in result["stages"]:  # a rerun of a complete stage only reads manifests and skips
        rerun = measure_rss([sys.executable, "-m", "jobs", name],
                            {"ARTIFACTS_URI": str(artifacts), "LOG_LEVEL": "WARNING", **common})
        result["stages"][name]["rerun_seconds"] = rerun["seconds"]
    tokens = token_count(artifacts)
    metrics = json.loads((artifacts / "model/training_metrics.json").read_text())
    result["stages"]["train"]["tokens_per_second"] = metrics["tokens_per_second"]
    for name in ("fit_factors", "compute_scores", "compute_self_scores"):
        result["stages"][name]["tokens_per_second"] = tokens / result["stages"][name]["seconds"]

    print(f"[{label}] bare Kronfluence with identical arguments", flush=True)
    factors = artifacts / "influence/factors_tiny_lm_factors"
    bare_factors = [direct("factors", artifacts, scratch / f"bare-f-{label}-{i}", "--batch_size", "16")
                    for i in range(repeats)]
    bare_scores = [direct("scores", artifacts, scratch / f"bare-s-{label}-{i}", "--batch_size", "32",
                          "--factors", str(factors), "--prompts", str(PROMPTS)) for i in range(repeats)]
    result["bare_kronfluence"] = {
        "fit_factors": {"seconds": median(bare_factors), "ratio_ours_to_bare":
                        result["stages"]["fit_factors"]["seconds"] / median(bare_factors)},
        "compute_scores": {"seconds": median(bare_scores), "ratio_ours_to_bare":
                           result["stages"]["compute_scores"]["seconds"] / median(bare_scores)},
    }
    print(f"  {result['bare_kronfluence']}", flush=True)
    if label != "demo":
        return result

    print(f"[{label}] the original scripts' approach", flush=True)
    from safetensors.torch import load_file

    ours = load_file(str(artifacts / "influence/scores_prompt_scores/pairwise_scores.safetensors"))["all_modules"]
    original_scores = direct("scores", artifacts, scratch / "original-scores", "--padding", "max", "--batch_size", "8",
                             "--query_batch_size", "1", "--factors", str(factors), "--prompts", str(PROMPTS))
    same_top10 = original_scores["printed"]["top10"] == ours.topk(10).indices.tolist()
    original_factors = direct("factors", artifacts, scratch / "original-factors", "--padding", "max",
                              "--batch_size", "4")
    result["original_approach"] = {
        "compute_scores_one_prompt_per_batch": {
            "seconds": original_scores["seconds"], "speedup_of_ours": original_scores["seconds"] /
            result["stages"]["compute_scores"]["seconds"], "same_top10_per_prompt": same_top10},
        "fit_factors_padded_to_max_batch_4": {
            "seconds": original_factors["seconds"], "speedup_of_ours": original_factors["seconds"] /
            result["stages"]["fit_factors"]["seconds"]},
    }
    print(f"  {result['original_approach']}", flush=True)

    print(f"[{label}] training: padding to the longest in micro-batches vs to the max length", flush=True)
    long_artifacts = scratch / "train-256" / "artifacts"
    stage("train", long_artifacts, NUM_EXAMPLES=str(documents), NUM_TRAIN_EPOCHS="1",
          MAX_LENGTH=str(TRAIN_MAX_LENGTH))
    variants = {}
    for key, padding, micro_batches, runs in (("ours", "longest", "4", repeats), ("longest", "longest", "1", 1),
                                               ("max", "max", "1", repeats)):
        measured = [direct("train", long_artifacts, scratch / f"train-{key}-{i}", "--padding", padding,
                           "--micro_batches", micro_batches, "--max_length", str(TRAIN_MAX_LENGTH), "--epochs", "2")
                    for i in range(runs)]
        variants[key] = {name: statistics.median(r["printed"][name] for r in measured)
                         for name in ("tokens_per_second", "corpus_loss", "final_loss")} | {"runs": runs}
    result["training_padding"] = {
        "corpus": length_distribution(long_artifacts, TRAIN_MAX_LENGTH), **variants,
        "speedup_non_padding_tokens_per_second": variants["ours"]["tokens_per_second"] /
        variants["max"]["tokens_per_second"],
    }
    print(f"  {result['training_padding']}", flush=True)
    return result


def render(results: dict) -> str:
    lines = [f"# Benchmarks ({results['date']}, {results['machine']})", "",
             f"`make bench`: {results['bench_seconds'] / 60:.1f} minutes in all. Stages run as `python -m jobs "
             "<stage>` (a fresh process each, FORCE=true), wall seconds including process start; medians of the "
             "stated repeats. Tokens/s count non-padding tokens of the training set per wall second.", ""]
    for label, size in results["sizes"].items():
        lines += [f"## {label}: {size['documents']} documents, {size['repeats']} run(s) each", "",
                  "| stage | wall s | tokens/s | peak RSS MB | rerun when complete: s (share of first run) |",
                  "|---|---|---|---|---|"]
        for name, row in size["stages"].items():
            rate = f"{row['tokens_per_second']:,.0f}" if "tokens_per_second" in row else ""
            lines.append(f"| {name} | {row['seconds']:.1f} | {rate} | {row['peak_rss_mb']:.0f} | "
                         f"{row['rerun_seconds']:.2f} ({row['rerun_seconds'] / row['seconds']:.1%}) |")
        bare = size["bare_kronfluence"]
        lines += ["", "| ours vs the same Kronfluence calls made directly | ours s | bare s | ratio |",
                  "|---|---|---|---|"]
        for name, row in bare.items():
            lines.append(f"| {name} | {size['stages'][name]['seconds']:.1f} | {row['seconds']:.1f} | "
                         f"{row['ratio_ours_to_bare']:.3f} |")
        lines.append("")
        if "original_approach" in size:
            original = size["original_approach"]
            scores, factors = (original["compute_scores_one_prompt_per_batch"],
                               original["fit_factors_padded_to_max_batch_4"])
            training = size["training_padding"]
            corpus = training["corpus"]
            lines += [
                "| ours vs the original scripts' approach | original s | ours s | ours faster by |",
                "|---|---|---|---|",
                f"| compute_scores, 16 prompts: one per query batch, padded to max, train batch 8 | "
                f"{scores['seconds']:.1f} | {size['stages']['compute_scores']['seconds']:.1f} | "
                f"{scores['speedup_of_ours']:.1f}x (same top-10 for every prompt: {scores['same_top10_per_prompt']}) |",
                f"| fit_factors: padded to max, batch 4 | {factors['seconds']:.1f} | "
                f"{size['stages']['fit_factors']['seconds']:.1f} | {factors['speedup_of_ours']:.1f}x |",
                "",
                f"Training, {corpus['documents']} documents at max length {corpus['max_length']} (token lengths: "
                f"percentiles {corpus['percentiles']}, mean {corpus['mean_tokens']}; "
                f"{corpus['share_under_quarter_of_max']:.0%} of documents under a quarter of the max length), "
                "2 epochs:", "",
                "| each step's 16 random examples | runs | non-padding tokens/s | trained model's loss on the "
                "training set | last logged training loss |", "|---|---|---|---|---|",
                *[f"| {title} | {training[key]['runs']} | {training[key]['tokens_per_second']:,.0f} | "
                  f"{training[key]['corpus_loss']:.4f} | {training[key]['final_loss']:.4f} |" for key, title in (
                      ("ours", "sorted by length into 4 micro-batches, each padded to its longest (ours)"),
                      ("longest", "one batch padded to its longest"),
                      ("max", "one batch padded to the max length (the original scripts)"))],
                "", "The trained model's loss is cross-entropy per predicted token over all training documents "
                "after training. All three train on the same examples in the same steps with the loss averaged "
                "over each step's tokens, so they differ only by float rounding.",
                "", f"Ours processes {training['speedup_non_padding_tokens_per_second']:.2f}x the non-padding tokens "
                "per second.", ""]
    return "\n".join(lines)


def machine() -> str:
    import torch

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"


def write(name: str, results: dict, rendered: str) -> None:
    """bench/<name>.json and bench/<name>.md, and the table printed."""
    (ROOT / "bench" / f"{name}.json").write_text(json.dumps(results, indent=2))
    (ROOT / "docs" / "results" / f"{name}.md").write_text(rendered)
    print(rendered)


def main() -> None:
    started = time.perf_counter()
    results = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        for label, documents in SIZES.items():
            results["sizes"][label] = bench_size(label, documents, Path(scratch))
    results["bench_seconds"] = time.perf_counter() - started
    write("results", results, render(results))


if __name__ == "__main__":
    main()
