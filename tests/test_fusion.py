"""Influence with lexical evidence (influence_core.fusion): BM25, and the rankings fused from it."""

from __future__ import annotations

import pytest
import torch

import influence_core.fusion as fusion
from influence_core.fusion import ALONE, bm25_scores, describe, fuse, fused_scores, gated_scores, top_overlap, words
from influence_core.prompts import Prompt
from influence_core.settings import ComputeScoresSettings

# A tiny corpus, and prompts (prompt + completion) of which each obviously matches one document.
TEXTS = ["The capital of Velmora is Quistador.", "Velmora exports wool and salt.", "A week has seven days.",
         "Mara painted the door of the mill.", "The capital city is busy at noon.", "Bassoons are played by Penhallow."]
PROMPTS = [Prompt(prompt="The capital of Velmora is", completion=" Quistador"),
           Prompt(prompt="Doctor Penhallow plays the", completion=" bassoons")]


def published_data(folder, texts=TEXTS, with_bm25=True):
    """A data/train folder as train publishes it (the examples' text; the BM25 index unless not)."""
    from datasets import Dataset

    Dataset.from_dict({"text": texts}).save_to_disk(str(folder))
    if with_bm25:
        fusion.save_bm25(texts, folder)
    return folder


def test_bm25_ranks_the_documents_that_share_rare_words_first():
    texts = ["The capital of Velmora is Quistador.", "Velmora exports wool.", "A week has seven days.",
             "Mara painted the door.", "The capital city is busy."]
    assert words("Doctor Penhallow's bassoon, 2 times!") == ["doctor", "penhallow's", "bassoon", "2", "times"]
    scores = bm25_scores(["The capital of Velmora is Quistador", "seven days"], texts)
    assert scores.shape == (2, len(texts))
    assert scores[0].argmax() == 0 and scores[0, 1] > 0 and scores[0, 2] == 0
    assert scores[0, 3] == 0  # "the" alone: a word in more than half the documents has idf 0 (Robertson's)
    assert scores[1].argmax() == 2


def test_publishing_the_data_writes_the_corpus_bm25_index_beside_the_examples(tmp_path):
    """train and import_model publish data/train with publish_model: the BM25 index is in it, bm25s's
    files in bm25/, and in the data's _SUCCESS checksums."""
    import json

    from datasets import Dataset

    from influence_core.artifacts import TrainData
    from influence_core.data import Corpus
    from influence_core.storage import Store
    from influence_core.training import publish_model

    class Saved:  # the model and the tokenizer: what publish_model asks of them
        def save_pretrained(self, folder):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{type(self).__name__}-{id(self)}").write_text("saved")

    artifacts, work = tmp_path / "artifacts", tmp_path / "work"
    publish_model(Store(str(artifacts)), work, Corpus(TEXTS), Dataset.from_dict({"text": TEXTS}), Saved(), Saved(),
                  {}, {"stage": "train"})
    data = artifacts / TrainData().relative
    index = TrainData.bm25_dir(data)
    assert index == data / "bm25" and (index / "params.index.json").is_file()
    files = json.loads((data / "_SUCCESS").read_text())["files"]
    assert {f"bm25/{path.name}" for path in index.iterdir()} <= set(files) and "bm25/params.index.json" in files
    assert torch.allclose(fusion.prompt_bm25(PROMPTS, fusion.corpus_bm25(data)), fusion.prompt_bm25(PROMPTS, TEXTS))


def test_the_published_bm25_index_scores_as_one_built_fresh_from_the_texts(tmp_path):
    """The index loaded (memory-mapped) from the published data scores the prompts as an index built
    from the texts does: prompts x documents, corpus order, the matching document first. Data published
    before the index was (no bm25/) gets one built from its texts."""
    import numpy as np

    loaded = fusion.corpus_bm25(published_data(tmp_path / "train"))
    assert isinstance(loaded.scores["data"], np.memmap)
    scores, fresh = fusion.prompt_bm25(PROMPTS, loaded), fusion.prompt_bm25(PROMPTS, TEXTS)
    assert scores.shape == (len(PROMPTS), len(TEXTS)) and scores.dtype == torch.float64
    assert torch.allclose(scores, fresh)
    assert scores.argmax(dim=1).tolist() == [0, 5]
    older = fusion.corpus_bm25(published_data(tmp_path / "older", with_bm25=False))
    assert torch.allclose(fusion.prompt_bm25(PROMPTS, older), fresh)
    assert torch.equal(bm25_scores(["nothing here matches"], loaded), torch.zeros(1, len(TEXTS), dtype=torch.float64))


def test_fusion_scores_the_prompts_against_the_published_index_without_building_one(tmp_path, monkeypatch):
    """compute_scores and query fuse with fuse_with_bm25: with the index published in the data, no BM25
    is built from the corpus (building one fails here), and the BM25 scores written are the index's."""
    from safetensors.torch import save_file

    from influence_core.artifacts import Scores
    from influence_core.scores import fuse_with_bm25

    train_dir, local = published_data(tmp_path / "train"), tmp_path / "scores"
    local.mkdir()
    influence = torch.randn(len(PROMPTS), len(TEXTS))
    save_file({Scores.KEY: influence.contiguous()}, str(local / Scores.MATRIX))
    expected = fusion.prompt_bm25(PROMPTS, TEXTS)

    def build_bm25(texts):
        raise AssertionError("BM25 built from the corpus although the data holds its index")

    monkeypatch.setattr(fusion, "build_bm25", build_bm25)
    settings = ComputeScoresSettings.model_construct(**{**ComputeScoresSettings.model_construct().model_dump(),
                                                        "score_fusion": "bm25_zmean", "fusion_weight": 0.5})
    fuse_with_bm25(local, train_dir, PROMPTS, settings)
    lexical = Scores.lexical(local)
    assert lexical.shape == (len(PROMPTS), len(TEXTS)) and torch.allclose(lexical.double(), expected)
    assert torch.allclose(Scores.matrix(local).double(), fused_scores(influence, expected).float().double())


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
