"""bfloat16 autocast against float32: the same trained model's factors and scores computed both
ways (AMP_DTYPE), compared per prompt (Pearson correlation over all training documents, overlap
of the ten most helpful). On a CPU, autocast runs bfloat16 in software (slower; the point here is
agreement); on a GPU with bfloat16 tensor cores AMP_DTYPE=auto picks it. Writes
docs/results/precision.md and bench/precision.json.

    python bench/precision.py [--num_examples 600]
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

from bench.run import PROMPTS, machine, stage, write  # noqa: E402  (after the path is set)

DTYPES = ("float32", "bfloat16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_examples", type=int, default=600)
    args = parser.parse_args()

    import torch
    from safetensors.torch import load_file

    results = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "documents": args.num_examples,
               "stages": {}, "prompts": []}
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as scratch:
        artifacts = Path(scratch) / "artifacts"
        common = {"NUM_EXAMPLES": str(args.num_examples), "PROMPTS": str(PROMPTS)}
        stage("train", artifacts, **common, AMP_DTYPE="float32")
        scores = {}
        for dtype in DTYPES:
            names = {"FACTORS_NAME": f"f_{dtype}", "SCORES_NAME": f"s_{dtype}", "AMP_DTYPE": dtype}
            results["stages"][dtype] = {name: round(stage(name, artifacts, **common, **names)["seconds"], 1)
                                        for name in ("fit_factors", "compute_scores")}
            scores[dtype] = load_file(str(artifacts / f"influence/scores_s_{dtype}/pairwise_scores.safetensors"))[
                "all_modules"].double()
    prompts = json.loads(PROMPTS.read_text())
    for index, (full, half) in enumerate(zip(scores["float32"], scores["bfloat16"])):
        pearson = torch.corrcoef(torch.stack([full, half]))[0, 1].item()
        overlap = len(set(full.topk(10).indices.tolist()) & set(half.topk(10).indices.tolist()))
        results["prompts"].append({"prompt": prompts[index]["prompt"], "pearson": round(pearson, 4),
                                   "top10_overlap": overlap})
    write("precision", results, render(results))


def render(results: dict) -> str:
    rows = results["prompts"]
    lines = [f"# bfloat16 autocast against float32 ({results['date']}, {results['machine']})", "",
             f"The demo model ({results['documents']} documents) trained once in float32; fit_factors and "
             "compute_scores run on it with AMP_DTYPE=float32 and AMP_DTYPE=bfloat16 (covariances float32, "
             "eigendecomposition float64, scores float32 in both). `python bench/precision.py`.", "",
             "| stage | float32 s | bfloat16 s |", "|---|---|---|",
             *[f"| {name} | {results['stages']['float32'][name]} | {results['stages']['bfloat16'][name]} |"
               for name in results["stages"]["float32"]],
             "", f"Lowest Pearson {min(r['pearson'] for r in rows):.4f}, lowest top-10 overlap "
             f"{min(r['top10_overlap'] for r in rows)} of 10.", "",
             "| prompt | Pearson | top-10 overlap |", "|---|---|---|",
             *[f"| {r['prompt']} | {r['pearson']:.4f} | {r['top10_overlap']} |" for r in rows], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
