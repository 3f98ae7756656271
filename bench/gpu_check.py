"""GPU check: the gpt-neo-125m preset on a small slice of the demo corpus, end to end, in under
10 minutes on one GPU. Prints tokens/s, stage times and peak GPU memory, and writes them as JSON.

    python bench/gpu_check.py                       # on a GPU machine
    python bench/gpu_check.py --preset tiny --num_examples 200 --epochs 1   # a smoke run on CPU
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt-neo-125m")
    parser.add_argument("--num_examples", type=int, default=2000)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--output", default="gpu_check.json")
    args = parser.parse_args()

    import torch

    from influence_core.runtime import configure_logging
    from influence_core.settings import (
        ComputeScoresSettings,
        FitFactorsSettings,
        InspectScoresSettings,
        TrainSettings,
    )
    from jobs import compute_scores, fit_factors, inspect_scores, train

    configure_logging("INFO")
    cuda = torch.cuda.is_available()
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    prompts = json.loads((ROOT / "bench" / "prompts16.json").read_text())  # the shipped 12 and 4 more
    common = {"artifacts_uri": str(work / "artifacts")}
    stages = [
        ("train", train.main, TrainSettings(**common, model_preset=args.preset, num_examples=args.num_examples,
                                            max_length=args.max_length, num_train_epochs=args.epochs,
                                            learning_rate=5e-4 if args.preset == "gpt-neo-125m" else 2e-3,
                                            batch_size=32, vocab_size=8000)),
        ("fit_factors", fit_factors.main, FitFactorsSettings(**common, factor_batch_size=32)),
        ("compute_scores", compute_scores.main, ComputeScoresSettings(
            **common, prompts=str(ROOT / "bench" / "prompts16.json"), train_batch_size=64, query_gradient_rank=64)),
        ("inspect_scores", inspect_scores.main, InspectScoresSettings(**common)),
    ]
    results = {"device": torch.cuda.get_device_name() if cuda else "cpu", "preset": args.preset,
               "num_examples": args.num_examples, "max_length": args.max_length, "prompts": len(prompts),
               "date": time.strftime("%Y-%m-%d"), "stages": {}}
    for name, run, settings in stages:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        run(settings)
        if cuda:
            torch.cuda.synchronize()
        results["stages"][name] = {
            "seconds": round(time.perf_counter() - start, 2),
            "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        }
        print(f"{name}: {results['stages'][name]}", flush=True)
    metrics = json.loads((work / "artifacts/model/training_metrics.json").read_text())
    report = json.loads((work / "artifacts/reports/prompt_scores/report.json").read_text())
    results["train_tokens_per_second"] = round(metrics["tokens_per_second"])
    results["final_loss"] = round(metrics["final_loss"], 4)
    results["fact_recall_at_10"] = report.get("fact_recall_at_10")
    Path(args.output).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
