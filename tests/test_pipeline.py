"""The whole pipeline on the demo corpus: the report's content, not just its files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from datasets import load_from_disk
from safetensors.torch import load_file

from influence_core.demo_corpus import FACTS
from influence_core.fusion import bm25_scores
from influence_core.reports import evidence_line
from tests.conftest import ROOT, assert_a_real_picture, jobs_ok


def test_every_stage_output_is_complete(demo_run):
    made_by = {"model": "train", "data/train": "train", "influence/factors_tiny_lm_factors": "fit_factors",
               "influence/scores_prompt_scores": "compute_scores",
               "influence/self_scores_tiny_lm_factors": "compute_self_scores",
               "reports/factors_tiny_lm_factors": "inspect_factors", "reports/prompt_scores": "inspect_scores"}
    for output, stage in made_by.items():
        manifest = json.loads((demo_run / output / "_SUCCESS").read_text())
        assert manifest["stage"] == stage and manifest["versions"]["kronfluence"] == "1.0.1"
        # Every file the output holds is listed with its size: nothing unlisted, nothing missing.
        on_disk = {path.relative_to(demo_run / output).as_posix(): path.stat().st_size
                   for path in (demo_run / output).rglob("*") if path.is_file() and path.name != "_SUCCESS"}
        assert {name: size for name, (size, _) in manifest["files"].items()} == on_disk, output
    metrics = json.loads((demo_run / "model" / "training_metrics.json").read_text())
    assert metrics["final_loss"] < metrics["loss_curve"][0]["loss"] / 2
    assert metrics["examples"] == 600 and metrics["steps"] == 380  # 10 epochs of 600 at 16 a step
    # The rate is the tokens trained on over the time it took, not a figure of its own.
    assert metrics["tokens_per_second"] == pytest.approx(metrics["non_padding_tokens"] / metrics["train_seconds"])


def test_report_lists_every_prompt_with_ranked_examples(demo_run, demo_report):
    prompts = json.loads((ROOT / "prompts.json").read_text())
    assert [(e["prompt"], e["completion"]) for e in demo_report["prompts"]] == [
        (p["prompt"], p["completion"]) for p in prompts
    ]
    assert demo_report["strategy"] == "ekfac" and demo_report["factors_name"] == "tiny_lm_factors"
    scores = load_file(str(demo_run / "influence/scores_prompt_scores/pairwise_scores.safetensors"))["all_modules"]
    texts = load_from_disk(str(demo_run / "data/train"))["text"]
    assert scores.shape == (len(prompts), len(texts))
    for row, entry in zip(scores, demo_report["prompts"]):
        positive, negative = entry["top_positive"], entry["top_negative"]
        assert len(positive) == 5 and len(negative) == 5
        assert [item["index"] for item in positive] == row.argsort(descending=True)[:5].tolist()
        assert [item["index"] for item in negative] == row.argsort()[:5].tolist()
        for item in positive + negative:
            assert item["text"] == texts[item["index"]]
            assert abs(item["score"] - float(row[item["index"]])) <= 1e-6 * max(1.0, abs(item["score"]))
        assert all(a["score"] >= b["score"] > 0 for a, b in zip(positive, positive[1:]))
        assert all(a["score"] <= b["score"] < 0 for a, b in zip(negative, negative[1:]))


def test_report_names_its_ranking_and_where_influence_and_bm25_disagree(demo_run, demo_report):
    """SCORE_FUSION at none: the ranking is the influence alone; per prompt, the overlap of its top 10
    with BM25's, recomputed here from the published scores and the corpus."""
    assert demo_report["ranking"] == "influence alone"
    scores = load_file(str(demo_run / "influence/scores_prompt_scores/pairwise_scores.safetensors"))["all_modules"]
    texts = load_from_disk(str(demo_run / "data/train"))["text"]
    markdown = (demo_run / "reports/prompt_scores/prompt_scores_report.md").read_text()
    assert "Ranking: influence alone." in markdown
    overlaps = []
    fresh = bm25_scores([entry["prompt"] + entry["completion"] for entry in demo_report["prompts"]], texts)
    for row, entry, bm25 in zip(scores, demo_report["prompts"], fresh.numpy()):
        top_bm25 = set(sorted(range(len(texts)), key=lambda i: -bm25[i])[:10])
        overlaps.append(len(set(row.argsort(descending=True)[:10].tolist()) & top_bm25) if np.ptp(bm25) > 0 else None)
        for item in entry["top_positive"] + entry["top_negative"]:
            assert item["bm25"] == pytest.approx(bm25[item["index"]]) and item["influence"] == pytest.approx(
                item["score"], rel=1e-6)
        assert evidence_line(entry) in markdown
    # ties in BM25 (documents with the same words) may order the tenth place either way
    for shown, recomputed in zip([entry["evidence_overlap"] for entry in demo_report["prompts"]], overlaps):
        assert shown == recomputed if recomputed is None else abs(shown - recomputed) <= 1
    assert max(overlaps[:8]) >= 5  # a planted fact: both find the documents that state it


def test_planted_facts_rank_at_the_top(demo_report):
    """The demo's promise: documents stating a fact are found for its prompt (recall@10 >= 0.9)."""
    fact_entries = [entry for entry in demo_report["prompts"] if "planted_documents" in entry]
    assert len(fact_entries) == len(FACTS)
    for entry in fact_entries:
        assert 4 <= len(entry["planted_documents"]) <= 10
        in_top = sum(rank <= 10 for rank in entry["planted_ranks"])
        assert entry["recall_at_10"] == in_top / len(entry["planted_documents"])
    mean = sum(entry["recall_at_10"] for entry in fact_entries) / len(fact_entries)
    assert abs(demo_report["fact_recall_at_10"] - mean) < 1e-12
    assert demo_report["fact_recall_at_10"] >= 0.9


def test_markdown_report_agrees_with_json(demo_run, demo_report):
    markdown = (demo_run / "reports/prompt_scores/prompt_scores_report.md").read_text()
    assert f"recall@10: {demo_report['fact_recall_at_10']:.3f}" in markdown
    for entry in demo_report["prompts"]:
        assert entry["prompt"] in markdown
        for item in entry["top_positive"] + entry["top_negative"]:
            assert f"**#{item['index']}** score {item['score']:.4g}" in markdown


def test_plots_are_real_pngs(demo_run):
    factor_plots = sorted((demo_run / "reports/factors_tiny_lm_factors").glob("*.png"))
    assert [p.name for p in factor_plots] == [
        "covariance_h.3.mlp.c_fc.png", "covariance_h.3.mlp.c_proj.png",
        "eigenvalues_h.3.mlp.c_fc.png", "eigenvalues_h.3.mlp.c_proj.png",
        "lambda_matrix_h.3.mlp.c_fc.png", "lambda_matrix_h.3.mlp.c_proj.png",
    ]
    score_plots = sorted((demo_run / "reports/prompt_scores").glob("score_distribution*.png"))
    assert len(score_plots) == 1 + len(json.loads((ROOT / "prompts.json").read_text()))  # the grid, one per prompt
    for plot in [*factor_plots, *score_plots]:
        assert_a_real_picture(plot)


def test_rerun_of_a_complete_stage_is_skipped(demo_run):
    before = (demo_run / "influence/factors_tiny_lm_factors/_SUCCESS").read_bytes()
    assert "skipping" in jobs_ok("fit_factors", env={"ARTIFACTS_URI": str(demo_run)})
    assert (demo_run / "influence/factors_tiny_lm_factors/_SUCCESS").read_bytes() == before
