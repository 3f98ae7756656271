"""GPU check: the original project's workload on one GPU, end to end, and one JSON of what it took.

The workload: GPT-Neo-125M trained from scratch on 10,000 documents at max length 512 (a corpus
generated offline: each document ten consecutive documents of the demo corpus, so most reach the
max length as OpenWebText's do), EK-FAC factors, 16 prompts scored with query rank 64, the report.
Per stage: wall seconds, peak GPU memory (torch's allocator) beside the plan's estimate for the
same settings; training tokens/s and model FLOPs utilisation; end-to-end seconds. AMP_DTYPE=auto
(bfloat16 where the GPU supports it) unless --amp_dtype says otherwise.

    python bench/gpu_check.py --quick        # 2,000 documents, 1 epoch, max length 256: about 3 minutes
    python bench/gpu_check.py                # the whole workload: under 9 minutes on one H100/H200
    python bench/gpu_check.py --preset tiny --num_examples 200 --max_length 128 --epochs 1   # a CPU smoke run
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

# Dense bfloat16 tensor-core peak of common GPUs (vendor data sheets, SXM parts), for the MFU figure.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}
DOCUMENTS_PER_DOCUMENT = 10  # demo documents joined into one: ~600 tokens, cut at max length


def write_corpus(path: Path, documents: int, seed: int = 0) -> Path:
    """`documents` long documents, each DOCUMENTS_PER_DOCUMENT consecutive demo documents, as .jsonl."""
    from influence_core.demo_corpus import build_demo_corpus

    texts = build_demo_corpus(documents * DOCUMENTS_PER_DOCUMENT, seed=seed).texts
    with path.open("w") as out:
        for start in range(0, len(texts), DOCUMENTS_PER_DOCUMENT):
            out.write(json.dumps({"text": " ".join(texts[start:start + DOCUMENTS_PER_DOCUMENT])}) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 documents, 1 epoch, max length 256")
    parser.add_argument("--preset", default="gpt-neo-125m")
    parser.add_argument("--num_examples", type=int, default=10_000)
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--amp_dtype", default="auto")
    parser.add_argument("--output", default="gpu_check.json")
    args = parser.parse_args()
    if args.quick:
        args.num_examples, args.epochs, args.max_length = 2_000, 1.0, 256

    import torch

    from influence_core.artifacts import Model, Report
    from influence_core.plan import make_plan
    from influence_core.runtime import configure_logging
    from influence_core.settings import (
        ComputeScoresSettings,
        FitFactorsSettings,
        InspectScoresSettings,
        PipelineSettings,
        TrainSettings,
    )
    from jobs import compute_scores, fit_factors, inspect_scores, train

    configure_logging("INFO")
    cuda = torch.cuda.is_available()
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    prompts = ROOT / "bench" / "prompts16.json"  # the shipped 12 prompts and 4 more
    corpus = write_corpus(work / "corpus.jsonl", args.num_examples)
    common = {"artifacts_uri": str(work / "artifacts"), "amp_dtype": args.amp_dtype, "dataset": str(corpus),
              "prompts": str(prompts), "force_fit": True}  # the check measures; the plan is reported beside
    values = {**common, "model_preset": args.preset, "num_examples": args.num_examples, "max_length": args.max_length,
              "num_train_epochs": args.epochs, "learning_rate": 6e-4 if args.preset == "gpt-neo-125m" else 2e-3,
              "batch_size": 32, "micro_batches": 1, "vocab_size": 8000, "checkpoints": 1,
              "factor_batch_size": 32, "train_batch_size": 64, "query_gradient_rank": 64}
    stages = [("train", train.main, TrainSettings), ("fit_factors", fit_factors.main, FitFactorsSettings),
              ("compute_scores", compute_scores.main, ComputeScoresSettings),
              ("inspect_scores", inspect_scores.main, InspectScoresSettings)]
    results = {"device": torch.cuda.get_device_name() if cuda else "cpu", "preset": args.preset,
               "documents": args.num_examples, "max_length": args.max_length, "epochs": args.epochs,
               "prompts": len(json.loads(prompts.read_text())), "query_gradient_rank": 64, "strategy": "ekfac",
               "amp_dtype": args.amp_dtype, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
               "stages": {}}
    for name, run, cls in stages:
        plan = make_plan(PipelineSettings(**values), results["prompts"])["stages"][name]
        settings = cls(**{key: value for key, value in values.items() if key in cls.model_fields})
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        run(settings)
        if cuda:
            torch.cuda.synchronize()
        results["stages"][name] = {
            "seconds": round(time.perf_counter() - start, 2),
            "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
            "plan_estimate_gib": round(plan["peak_memory_bytes"] / 2**30, 2),
        }
        print(f"{name}: {results['stages'][name]}", flush=True)
    artifacts = work / "artifacts"
    model_dir, report_dir = artifacts / Model().relative, artifacts / Report("prompt_scores").relative
    metrics = json.loads((model_dir / Model.METRICS).read_text())
    report = json.loads((report_dir / Report.JSON).read_text())
    parameters = sum(tensor.numel() for tensor in _weights(model_dir).values())
    peak = next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in results["device"]), None)
    results |= {
        "parameters": parameters,
        "train_tokens_per_second": round(metrics["tokens_per_second"]),
        # 6 FLOPs per parameter per token (forward and backward), attention's share left out.
        "model_flops_utilisation": round(6 * parameters * metrics["tokens_per_second"] / peak, 3) if peak else None,
        "final_loss": round(metrics["final_loss"], 4),
        "fact_recall_at_10": report.get("fact_recall_at_10"),
        "end_to_end_seconds": round(time.perf_counter() - started, 1),
    }
    Path(args.output).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file
    from transformers.utils import SAFE_WEIGHTS_NAME

    return load_file(str(model_dir / SAFE_WEIGHTS_NAME))


if __name__ == "__main__":
    main()
