"""Every factor strategy fits, scores and reports on the demo model (classic flags, diagfisher alias)."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import run_jobs


# identity and ekfac are covered by tests/test_exactness.py and tests/test_evaluation.py.
@pytest.mark.parametrize("strategy, recorded", [("diagfisher", "diagonal"), ("kfac", "kfac")])
def test_strategy_end_to_end(demo_run, strategy, recorded):
    env = {"ARTIFACTS_URI": str(demo_run)}
    factors, scores = f"factors_{strategy}", f"scores_{strategy}"
    steps = [
        ["fit_factors", "--factors_name", factors, "--factor_strategy", strategy, "--factor_batch_size", "8"],
        ["compute_scores", "--factors_name", factors, "--scores_name", scores, "--train_batch_size", "16",
         "--damping_factor", "1e-5", "--per_sample_gradient_dtype", "float32", "--precondition_dtype", "float32"],
        ["inspect_scores", "--scores_name", scores, "--num_influential", "3", "--no-per_token_scores"],
    ]
    for step in steps:
        result = run_jobs(*step, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((demo_run / "reports" / scores / "report.json").read_text())
    assert report["strategy"] == recorded and report["factors_name"] == factors
    assert all(len(entry["top_positive"]) == 3 for entry in report["prompts"])
    assert all(math.isfinite(item["score"]) for entry in report["prompts"] for item in entry["top_positive"])
    assert 0.0 <= report["fact_recall_at_10"] <= 1.0
