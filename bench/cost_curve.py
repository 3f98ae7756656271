"""The cost curve and the plan's check: every stage at four corpus sizes (600 to 4,800 documents of
the demo corpus, the tiny model) and once with the small model, each a fresh process; per stage
the wall time with the fitted exponent of time against corpus size, and the measured peak RSS and
published sizes beside what `python -m jobs plan` estimated for the same settings beforehand.
Writes docs/results/cost_curve.md and bench/cost_curve.json.

    python bench/cost_curve.py
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import PROMPTS, machine, stage, write  # noqa: E402  (after the path is set)

STAGES = ("train", "fit_factors", "inspect_factors", "compute_scores", "compute_self_scores", "inspect_scores")
SIZES = (600, 1200, 2400, 4800)
RUNS = {f"tiny, {size} documents": {"NUM_EXAMPLES": str(size)} for size in SIZES} | {
    "small, 1200 documents, max length 256": {"NUM_EXAMPLES": "1200", "MODEL_PRESET": "small", "MAX_LENGTH": "256",
                                              "VOCAB_SIZE": "8000"}}
EPOCHS = "3"
MIB = 2**20


def plan(artifacts: Path, env: dict) -> dict:
    full_env = {**os.environ, **env, "ARTIFACTS_URI": str(artifacts), "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "jobs", "plan", "--json"], env=full_env, cwd=ROOT,
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout)["stages"]


def published_bytes(artifacts: Path, relative: str) -> int:
    return sum(path.stat().st_size for path in (artifacts / relative).rglob("*") if path.is_file())


def measure(label: str, env: dict, scratch: Path) -> dict:
    artifacts = scratch / label.replace(" ", "_").replace(",", "") / "artifacts"
    env = {**env, "NUM_TRAIN_EPOCHS": EPOCHS, "PROMPTS": str(PROMPTS)}
    estimates = {"train": plan(artifacts, env)["train"]}  # before training: from the settings
    rows = {}
    for name in STAGES:
        if name == "fit_factors":  # the model and data are published: the plan reads their shapes
            after_training = plan(artifacts, env)
            estimates |= {key: value for key, value in after_training.items() if key != "train"}
            # The trained tokenizer may hold fewer tokens than VOCAB_SIZE: the model's size is compared
            # with the plan that reads the published model.
            rows["train"]["published"] = {path: {"bytes": published_bytes(artifacts, path), "estimated_bytes": size}
                                          for path, size in after_training["train"]["published_bytes"].items()}
        run = stage(name, artifacts, **env)
        rows[name] = {"seconds": round(run["seconds"], 2), "peak_rss_mib": round(run["peak_rss_mb"]),
                      "estimated_peak_mib": round(estimates[name]["peak_memory_bytes"] / MIB),
                      "published": {path: {"bytes": published_bytes(artifacts, path), "estimated_bytes": size}
                                    for path, size in estimates[name]["published_bytes"].items()}}
        print(f"  [{label}] {name}: {rows[name]}", flush=True)
    return rows


def exponent(sizes: list[int], seconds: list[float]) -> float:
    """Least-squares slope of log(seconds) against log(size)."""
    xs, ys = [math.log(size) for size in sizes], [math.log(value) for value in seconds]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def render(results: dict) -> str:
    runs = results["runs"]
    curve = [f"tiny, {size} documents" for size in SIZES]
    lines = [f"# Cost curve and plan check ({results['date']}, {results['machine']})", "",
             f"`python bench/cost_curve.py` ({results['seconds'] / 60:.1f} minutes): each stage a fresh `python -m "
             f"jobs <stage>` process (FORCE=true), {EPOCHS} epochs, 16 prompts. Wall seconds include process start "
             "(about 3-4 s a stage), which flattens the exponent at small sizes.", "",
             "## Wall seconds against corpus size (tiny model)", "",
             "| stage | " + " | ".join(f"{size:,} docs" for size in SIZES) + " | fitted exponent |",
             "|---|" + "---|" * (len(SIZES) + 1)]
    for name in STAGES:
        seconds = [runs[label][name]["seconds"] for label in curve]
        lines.append(f"| {name} | " + " | ".join(f"{value:.1f}" for value in seconds) +
                     f" | {exponent(list(SIZES), seconds):.2f} |")
    lines += ["", "## The plan against what was measured", "",
              "Estimated by `python -m jobs plan --json` with the same settings before the stage ran (for train's "
              "memory, before anything existed: lengths taken as MAX_LENGTH and the vocabulary as VOCAB_SIZE; its "
              "published model against the plan made once the model was published).", "",
              "| run | stage | peak RSS MiB | plan MiB | plan / measured | published MiB | plan MiB | plan / measured "
              "|",
              "|---|---|---|---|---|---|---|---|"]
    worst_memory, worst_size = 0.0, 0.0
    for label, rows in runs.items():
        for name, row in rows.items():
            ratio = row["estimated_peak_mib"] / row["peak_rss_mib"]
            worst_memory = max(worst_memory, abs(ratio - 1))
            sizes = ["", "", ""]
            for published in row["published"].values():
                size_ratio = published["estimated_bytes"] / published["bytes"]
                worst_size = max(worst_size, abs(size_ratio - 1))
                sizes = [f"{published['bytes'] / MIB:.2f}", f"{published['estimated_bytes'] / MIB:.2f}",
                         f"{size_ratio:.3f}"]
            lines.append(f"| {label} | {name} | {row['peak_rss_mib']} | {row['estimated_peak_mib']} | {ratio:.2f} | "
                         + " | ".join(sizes) + " |")
    lines += ["", f"Largest deviation: memory {worst_memory:.0%}, published sizes {worst_size:.1%}.", ""]
    return "\n".join(lines)


def main() -> None:
    started = time.perf_counter()
    results = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-cost-") as scratch:
        for label, env in RUNS.items():
            results["runs"][label] = measure(label, env, Path(scratch))
    results["seconds"] = time.perf_counter() - started
    write("cost_curve", results, render(results))


if __name__ == "__main__":
    main()
