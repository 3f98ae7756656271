"""compute_self_scores: Kronfluence self-influence of every training example, listed by inspect_scores
when present and not required when absent."""

from __future__ import annotations

import json
import shutil

import torch
from datasets import load_from_disk
from safetensors.torch import load_file

from tests.conftest import jobs_ok

SELF_SCORES = "influence/self_scores_tiny_lm_factors"


def test_every_training_example_has_a_self_score(demo_run):
    manifest = json.loads((demo_run / SELF_SCORES / "_SUCCESS").read_text())
    assert manifest["stage"] == "compute_self_scores" and manifest["factor_strategy"] == "ekfac"
    scores = load_file(str(demo_run / SELF_SCORES / "self_scores.safetensors"))["all_modules"]
    assert scores.shape == (len(load_from_disk(str(demo_run / "data/train"))),)
    # g^T (F + damping)^-1 g with a positive definite preconditioner: never negative.
    assert torch.isfinite(scores).all() and (scores > 0).all()


def test_report_lists_the_most_self_influential_examples(demo_run, demo_report):
    scores = load_file(str(demo_run / SELF_SCORES / "self_scores.safetensors"))["all_modules"]
    texts = load_from_disk(str(demo_run / "data/train"))["text"]
    listed = demo_report["self_influence"]
    assert listed["num_examples"] == len(texts) and listed["factors_name"] == "tiny_lm_factors"
    assert [item["index"] for item in listed["top"]] == scores.argsort(descending=True)[:10].tolist()
    for item in listed["top"]:
        assert item["text"] == texts[item["index"]] and item["score"] == float(scores[item["index"]])


def test_inspect_scores_without_self_scores(demo_run, tmp_path):
    """Self-scores are optional; the report (per-token scores included) works without them, and
    Kronfluence's progress comes out as log lines, not bars, when stderr is not a terminal."""
    artifacts = tmp_path / "artifacts"
    for part in ("model", "data", "influence/factors_tiny_lm_factors", "influence/scores_prompt_scores"):
        shutil.copytree(demo_run / part, artifacts / part)
    log = jobs_ok("inspect_scores", "--num_influential", "2", env={"ARTIFACTS_URI": str(artifacts)})
    report = json.loads((artifacts / "reports/prompt_scores/report.json").read_text())
    assert "self_influence" not in report
    assert all("token_scores" in item for entry in report["prompts"] for item in entry["top_positive"])
    html = (artifacts / "reports/prompt_scores/report.html").read_text()
    assert "self-influence" not in html and 'class="tok pos"' in html
    assert "\r" not in log and "progress: Computing pairwise scores" in log
