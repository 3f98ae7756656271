"""Every factor strategy fits, scores and reports (classic flags, the diagfisher alias), here on
the small pipeline's model with in-process calls of the stages' main(), parsed from CLI flags."""

from __future__ import annotations

import json
import math

import pytest

from influence_core.settings import (
    ComputeScoresSettings,
    FitFactorsSettings,
    InspectScoresSettings,
    load_settings,
)
from jobs import compute_scores, fit_factors, inspect_scores


# identity and ekfac are covered by tests/test_exactness.py and tests/test_evaluation.py.
@pytest.mark.parametrize("strategy, recorded", [("diagfisher", "diagonal"), ("kfac", "kfac")])
def test_strategy_end_to_end(small_pipeline, strategy, recorded):
    common = ["--artifacts_uri", str(small_pipeline)]
    factors, scores = f"factors_{strategy}", f"scores_{strategy}"
    fit_factors.main(load_settings(FitFactorsSettings, [
        *common, "--factors_name", factors, "--factor_strategy", strategy, "--factor_batch_size", "8"]))
    compute_scores.main(load_settings(ComputeScoresSettings, [
        *common, "--factors_name", factors, "--scores_name", scores, "--train_batch_size", "16",
        "--damping_factor", "1e-5", "--per_sample_gradient_dtype", "float32", "--precondition_dtype", "float32"]))
    inspect_scores.main(load_settings(InspectScoresSettings, [
        *common, "--scores_name", scores, "--num_influential", "3", "--no-per_token_scores"]))
    report = json.loads((small_pipeline / "reports" / scores / "report.json").read_text())
    assert report["strategy"] == recorded and report["factors_name"] == factors
    assert all(len(entry["top_positive"]) == 3 for entry in report["prompts"])
    assert all(math.isfinite(item["score"]) for entry in report["prompts"] for item in entry["top_positive"])
    assert 0.0 <= report["fact_recall_at_10"] <= 1.0
