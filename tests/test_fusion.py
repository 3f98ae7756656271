"""Influence with lexical evidence (influence_core.fusion): BM25, and the rankings fused from it."""

from __future__ import annotations

import pytest
import torch

from influence_core.fusion import ALONE, bm25_scores, describe, fuse, fused_scores, gated_scores, top_overlap, words
from influence_core.settings import ComputeScoresSettings


def test_bm25_ranks_the_documents_that_share_rare_words_first():
    texts = ["The capital of Velmora is Quistador.", "Velmora exports wool.", "A week has seven days.",
             "Mara painted the door.", "The capital city is busy."]
    assert words("Doctor Penhallow's bassoon, 2 times!") == ["doctor", "penhallow's", "bassoon", "2", "times"]
    scores = bm25_scores(["The capital of Velmora is Quistador", "seven days"], texts)
    assert scores.shape == (2, len(texts))
    assert scores[0].argmax() == 0 and scores[0, 1] > scores[0, 3] > 0 and scores[0, 2] == 0
    assert scores[1].argmax() == 2


def test_fusion_weighs_the_z_scores_of_each_prompt_and_ignores_a_flat_row():
    influence = torch.tensor([[1e-6, 3e-6, 2e-6, 0.0], [5.0, 1.0, 2.0, 3.0]])  # scales far apart
    lexical = torch.tensor([[0.0, 0.0, 9.0, 0.0], [0.0, 0.0, 0.0, 0.0]])  # the second: no word matched
    fused = fused_scores(influence, lexical, weight=0.5)
    assert fused.shape == influence.shape
    assert fused[0].argmax() == 2  # the lexical match outweighs a small influence lead
    assert torch.equal(fused[1].argsort(), influence[1].argsort())  # a flat row adds nothing
    assert torch.allclose(fused_scores(influence, lexical, weight=0.0).std(dim=1), torch.ones(2, dtype=torch.float64))
    lexical_only = fused_scores(influence, lexical, weight=1.0)[0]
    assert torch.equal(lexical_only.argsort(stable=True), lexical[0].argsort(stable=True))


def test_the_gate_keeps_the_influence_of_the_lexical_top_fraction_alone():
    influence = torch.tensor([[4.0, -3.0, 2.0, 1.0, -5.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    lexical = torch.tensor([[0.0, 9.0, 8.0, 0.0, 1.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    gated = gated_scores(influence, lexical, fraction=0.4)  # 2 of the 5 documents per prompt
    assert gated.tolist() == [[0.0, -3.0, 2.0, 0.0, 0.0], [1.0, 2.0, 0.0, 0.0, 0.0]]
    assert gated_scores(influence, lexical, fraction=0.01).count_nonzero(dim=1).tolist() == [1, 1]  # at least one
    assert torch.equal(gated_scores(influence, lexical, fraction=1.0), influence.double())


def test_fuse_publishes_what_each_setting_names():
    influence, lexical = torch.randn(3, 8), torch.rand(3, 8)
    assert torch.equal(fuse(influence, lexical, "none", 0.5, 0.2), influence.double())
    assert torch.equal(fuse(influence, lexical, "bm25_zmean", 0.3, 0.2), fused_scores(influence, lexical, 0.3))
    assert torch.equal(fuse(influence, lexical, "bm25_gate", 0.5, 0.25), gated_scores(influence, lexical, 0.25))
    with pytest.raises(ValueError, match="unknown score fusion"):
        fuse(influence, lexical, "rrf", 0.5, 0.2)
    def scoring(**settings) -> ComputeScoresSettings:
        return ComputeScoresSettings.model_construct(**{**ComputeScoresSettings.model_construct().model_dump(),
                                                        **settings})

    assert describe(scoring(), 1) == ALONE
    assert "0.3 on BM25" in describe(scoring(score_fusion="bm25_zmean", fusion_weight=0.3), 1)
    assert "top 25%" in describe(scoring(score_fusion="bm25_gate", gate_fraction=0.25), 1)
    assert describe(scoring(), 3) == "influence averaged over 3 models (training seeds +0..+2)"


def test_top_overlap_counts_the_shared_documents_of_the_two_top_k():
    first = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    second = torch.tensor([[5.0, 0.0, 3.0, 4.0, 1.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    assert top_overlap(first, second, k=3) == [2, 1]
    assert top_overlap(first, second, k=10) == [5, 5]  # k beyond the documents: all of them
    assert top_overlap(first, torch.zeros(2, 5), k=3) == [None, None]  # no word matched: no lexical top k


@pytest.mark.slow
def test_a_fused_report_lists_as_helpful_only_documents_of_positive_influence(small_pipeline, tmp_path):
    """With SCORE_FUSION=bm25_zmean a document BM25 ranks high can top the ranking with negative
    influence: it is not listed as helpful (nor a positive one as harmful), and the report says what
    its numbers are (the score beside the influence, the axes' label)."""
    import json
    import shutil

    from tests.conftest import jobs_ok

    artifacts = tmp_path / "artifacts"
    for relative in ("model", "data/train", "influence/factors_tiny_lm_factors"):
        shutil.copytree(small_pipeline / relative, artifacts / relative)
    env = {"ARTIFACTS_URI": str(artifacts), "SCORES_NAME": "fused"}
    jobs_ok("compute_scores", env={**env, "SCORE_FUSION": "bm25_zmean", "FUSION_WEIGHT": "0.9"})
    jobs_ok("inspect_scores", "--no-per_token_scores", "--num_influential=5", env=env)
    report = json.loads((artifacts / "reports/fused/report.json").read_text())
    positive = [item for entry in report["prompts"] for item in entry["top_positive"]]
    negative = [item for entry in report["prompts"] for item in entry["top_negative"]]
    assert positive and negative
    assert all(item["influence"] > 0 and item["score"] > 0 for item in positive)
    assert all(item["influence"] < 0 and item["score"] < 0 for item in negative)
    assert report["fused"] and report["score_label"].startswith("fused score")
    assert "(influence " in (artifacts / "reports/fused/fused_report.md").read_text()
