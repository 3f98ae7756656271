"""Groundwork for a gradient index (issue "Ask a new question in seconds"): how well dot products
of projected per-example gradients reproduce compute_scores' EK-FAC scores, on published artifacts
(`make demo` leaves them in ./artifacts). Writes bench/index_study.md.

Three ways, each at several projection sizes k per side of each tracked module:
- exact: the index's machinery unprojected (influence_core.index: LoGra-style hooks for the training
  gradients, Kronfluence's own preconditioning for the queries); must equal compute_scores;
- raw: raw training gradients projected with Gaussian matrices, queries preconditioned in full and
  projected the same way (an index that serves every factors and damping choice);
- whitened: both sides rotated into the factors' eigenbases and scaled by (eigenvalue + sqrt(damping))
  ^-1/2 per side before the projection (K-FAC with the damping split between the sides; the index
  then belongs to one set of factors).

    python bench/index_study.py [--artifacts ./artifacts]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--artifacts", default=str(ROOT / "artifacts"))
    parser.add_argument("--factors_name", default="tiny_lm_factors")
    parser.add_argument("--scores_name", default="prompt_scores")
    args = parser.parse_args()

    import numpy as np
    import torch
    from kronfluence.factor.eigen import eigendecomposition_save_path
    from kronfluence.utils.constants import (
        ACTIVATION_EIGENVALUES_NAME,
        ACTIVATION_EIGENVECTORS_NAME,
        GRADIENT_EIGENVALUES_NAME,
        GRADIENT_EIGENVECTORS_NAME,
    )
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from influence_core.artifacts import Factors, Model, Scores, TrainData
    from influence_core.data import tokenize_prompts
    from influence_core.factors import build_analyzer, factors_dir, load_training_examples, tracked_modules
    from influence_core.index import Projection, index_rows, preconditioned_query_gradients
    from influence_core.modeling import load_model
    from influence_core.prompts import Prompt
    from influence_core.scores import score_arguments
    from influence_core.settings import DEFAULT_DAMPING, ComputeScoresSettings
    from influence_core.tasks import TASKS

    artifacts = Path(args.artifacts)
    model_dir, local_factors = artifacts / Model().relative, artifacts / Factors(args.factors_name).relative
    scores_dir = artifacts / Scores(args.scores_name).relative
    reference = Scores.matrix(scores_dir).double()
    prompts = [Prompt(**item) for item in json.loads((scores_dir / Scores.PROMPTS).read_text())]
    names = tracked_modules(local_factors)
    model, tokenizer = load_model(model_dir), AutoTokenizer.from_pretrained(model_dir)
    task = TASKS["language_modeling"](names)
    examples = load_training_examples(artifacts / TrainData().relative)
    queries = tokenize_prompts(prompts, tokenizer, model.config.max_position_embeddings)
    eigen = {name: load_file(str(eigendecomposition_save_path(local_factors, name))) for name in (
        ACTIVATION_EIGENVECTORS_NAME, ACTIVATION_EIGENVALUES_NAME, GRADIENT_EIGENVECTORS_NAME,
        GRADIENT_EIGENVALUES_NAME)}

    class Whitened(Projection):
        def matrix(self, module, side, device):
            vectors, values = ((GRADIENT_EIGENVECTORS_NAME, GRADIENT_EIGENVALUES_NAME) if side == "out" else
                               (ACTIVATION_EIGENVECTORS_NAME, ACTIVATION_EIGENVALUES_NAME))
            basis, spectrum = eigen[vectors][module.name].float(), eigen[values][module.name].float().clamp(min=0)
            whiten = (basis / (spectrum + math.sqrt(DEFAULT_DAMPING)).sqrt()).T
            projection = super().matrix(module, side, device)
            return whiten.to(device) if projection is None else projection @ whiten.to(device)

    class Measurement:  # a query's gradient is its measurement's
        def compute_train_loss(self, batch, model):
            return task.compute_measurement(batch, model)

    work = Path(__import__("tempfile").mkdtemp(prefix="index-study-"))
    __import__("shutil").copytree(local_factors, factors_dir(work, args.factors_name))
    analyzer = build_analyzer(model_dir, work, args.factors_name)
    preconditioned = preconditioned_query_gradients(analyzer, args.factors_name, queries,
                                                    score_arguments(ComputeScoresSettings()), tokenizer.pad_token_id,
                                                    len(queries))

    def compare(scores: torch.Tensor) -> dict:
        pearson = [float(np.corrcoef(scores[p].numpy(), reference[p].numpy())[0, 1]) for p in range(len(prompts))]
        top = [(set(torch.topk(scores[p], 10).indices.tolist()), set(torch.topk(reference[p], 10).indices.tolist()))
               for p in range(len(prompts))]
        overlap = [len(ours & theirs) for ours, theirs in top]
        # Candidates for exact rescoring (RERANK_TOP_K): how much of the exact top 10 the index's top 100 holds.
        recall = [len(set(torch.topk(scores[p], 100).indices.tolist()) & theirs) / 10
                  for p, (_, theirs) in enumerate(top)]
        relative = float(((scores - reference).abs().amax(1) / reference.abs().amax(1)).max())
        return {"pearson_mean": float(np.mean(pearson)), "pearson_min": float(np.min(pearson)),
                "top10_overlap_mean": float(np.mean(overlap)), "top10_in_top100_mean": float(np.mean(recall)),
                "top10_in_top100_min": float(np.min(recall)), "max_relative_error": relative}

    rows = []
    for method, dims in (("exact", [0]), ("raw", [16, 32, 64, 128]), ("whitened", [0, 16, 32, 64, 128])):
        for dim in dims:
            kind = Whitened if method == "whitened" else Projection
            projection = kind(Projection.plan(model, names, dim, seed=0).modules, 0)
            started = time.perf_counter()
            train = index_rows(model, task, examples, projection, tokenizer.pad_token_id, 32, torch.float32).double()
            seconds = time.perf_counter() - started
            if method == "whitened":
                query = index_rows(model, Measurement(), queries, projection, tokenizer.pad_token_id, 32,
                                   torch.float32).double()
            else:
                query = projection.project(preconditioned).double()
            rows.append({"method": method, "k": dim, "floats_per_example": projection.size,
                         "index_seconds": round(seconds, 2), **compare(query @ train.T)})
            print(rows[-1], flush=True)
    out = ROOT / "bench" / "index_study.json"
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "examples": len(examples), "prompts": len(prompts),
                               "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
