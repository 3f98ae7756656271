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

# Planted-fact recall@10 of each strategy on the small pipeline's model (100 documents, 2 epochs;
# chance is 10/100 = 0.1), against the EK-FAC report of the same model (the pipeline's prompt_scores).
# K-FAC comes out level with EK-FAC and diagonal well below both, with one thread per process (as
# `make test` runs) or the default threads, as in the evaluation on the demo (docs/guides/evaluation.md).
# Margin 0.1: a fact is stated in 4-7 documents, so one document moving in or out of a top 10 changes
# the mean over the 8 facts by 0.018-0.031; 0.1 allows 3 or more such moves (float rounding on another
# machine), well inside the gap between K-FAC and diagonal.
RECALL_MARGIN = 0.1


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
    recall = report["fact_recall_at_10"]
    ekfac = json.loads((small_pipeline / "reports" / "prompt_scores" / "report.json").read_text())
    assert ekfac["strategy"] == "ekfac" and ekfac["fact_recall_at_10"] >= 0.75, ekfac["fact_recall_at_10"]
    if recorded == "kfac":  # K-FAC: as good as EK-FAC, up to the margin
        assert recall >= ekfac["fact_recall_at_10"] - RECALL_MARGIN, (recall, ekfac["fact_recall_at_10"])
    else:  # diagonal: below EK-FAC by more than the margin, and still far above chance
        assert 0.4 <= recall <= ekfac["fact_recall_at_10"] - RECALL_MARGIN, (recall, ekfac["fact_recall_at_10"])


def test_tracked_modules_choose_what_is_scored(small_pipeline):
    """TRACKED_MODULES: the factors record the modules they cover and scoring tracks those; identity
    scores are sums over modules, so MLP + attention = MLP + attention alone."""
    from safetensors.torch import load_file

    from influence_core.errors import ConfigError

    common = ["--artifacts_uri", str(small_pipeline), "--factor_strategy", "identity"]
    scores = {}
    for name, pattern in (("mlp", None), ("attn", r"attn\.attention"), ("both", "mlp|attn")):
        flags = ["--tracked_modules", pattern] if pattern else []
        fit_factors.main(load_settings(FitFactorsSettings, [*common, "--factors_name", f"tracked_{name}", *flags]))
        compute_scores.main(load_settings(ComputeScoresSettings, [
            "--artifacts_uri", str(small_pipeline), "--factors_name", f"tracked_{name}",
            "--scores_name", f"tracked_{name}"]))
        factors = small_pipeline / "influence" / f"factors_tracked_{name}"
        scores[name] = load_file(str(small_pipeline / "influence" / f"scores_tracked_{name}" /
                                     "pairwise_scores.safetensors"))["all_modules"].double()
        assert len(json.loads((factors / "tracked_modules.json").read_text())) == {"mlp": 8, "attn": 16,
                                                                                    "both": 24}[name]
    combined = scores["mlp"] + scores["attn"]
    assert ((scores["both"] - combined).abs().max() / combined.abs().max()).item() < 1e-4
    assert (scores["both"] - scores["mlp"]).abs().max() > 1e-3 * scores["mlp"].abs().max()
    with pytest.raises(ConfigError, match=r"TRACKED_MODULES=nothing: matches none of the model's Linear modules "
                                          r"\(transformer\.h\.0\.attn\.attention\.k_proj, "):
        fit_factors.main(load_settings(FitFactorsSettings, [*common, "--factors_name", "tracked_none",
                                                            "--tracked_modules", "nothing"]))
