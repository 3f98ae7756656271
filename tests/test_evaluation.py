"""The fact-tracing evaluation: its metrics on rankings with known answers, its lexical baseline,
and the evaluate stage on the demo model (EK-FAC finds the planted facts, not worse than identity)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from datasets import load_from_disk
from safetensors.torch import load_file

from influence_core.errors import ConfigError
from influence_core.evaluation import fact_metrics, render_markdown
from influence_core.fusion import bm25_scores, fused_scores
from influence_core.prompts import Prompt
from influence_core.settings import EvaluateSettings, load_settings
from tests.conftest import jobs_in_process, jobs_ok, one_line_refusal

# ---- metrics on hand-made rankings ---------------------------------------------------------------

PROMPTS = [Prompt(prompt="The capital of Velmora is", completion=" Quistador"),
           Prompt(prompt="Cats like to sleep in", completion=" warm places"),
           Prompt(prompt="The river Tallow flows into", completion=" Lake Morwen")]
FACTS = [{"prompt": "The capital of Velmora is", "completion": " Quistador", "documents": [3, 7, 12]},
         {"prompt": "The river Tallow flows into", "completion": " Lake Morwen", "documents": [0, 20]},
         {"prompt": "Not asked by any prompt", "completion": " never", "documents": [1]}]


def ranking(count: int, order: list[int]) -> torch.Tensor:
    """Scores that rank the documents in `order` first (in that order), the rest after them."""
    scores = torch.zeros(count)
    for position, document in enumerate(order):
        scores[document] = count - position
    return scores


def test_recall_at_10_and_reciprocal_rank_on_a_known_ranking():
    count = 25
    first = ranking(count, [7, 1, 2, 4, 3, 5, 6, 8, 9, 10, 12])  # ranks: 7 -> 1, 3 -> 5, 12 -> 11
    third = ranking(count, [1, 2, 3, 20, 4, 5, 6, 8, 9, 10, 11, 13, 14, 15, 0])  # 20 -> 4, 0 -> 15
    scores = torch.stack([first, -ranking(count, [0]), third])
    result = fact_metrics(scores, PROMPTS, [f"doc {i}" for i in range(count)], FACTS)
    velmora, tallow = result["facts"]
    assert velmora["ranks"] == [5, 1, 11] and velmora["recall_at_10"] == pytest.approx(2 / 3)
    assert velmora["reciprocal_rank"] == 1.0
    assert tallow["ranks"] == [15, 4] and tallow["recall_at_10"] == 0.5 and tallow["reciprocal_rank"] == 0.25
    assert result["recall_at_10"] == pytest.approx((2 / 3 + 0.5) / 2)
    assert result["mrr"] == pytest.approx((1.0 + 0.25) / 2)
    with pytest.raises(ValueError, match="shape"):
        fact_metrics(scores[:, :-1], PROMPTS, [f"doc {i}" for i in range(count)], FACTS)


def test_markdown_has_one_row_per_method_and_the_settings():
    count = 25
    scores = torch.stack([ranking(count, [3, 7, 12]), torch.zeros(count), ranking(count, [0, 20])])
    metrics = fact_metrics(scores, PROMPTS, [f"doc {i}" for i in range(count)], FACTS)
    evaluation = {"settings": {"task": "language_modeling"},
                  "methods": {"ekfac": {"label": "EK-FAC", **metrics,
                                        "seconds": {"fit_factors": 1.5, "compute_scores": 2.0}},
                              "bm25": {"label": "BM25 on prompt + completion", **metrics}}}
    markdown = render_markdown(evaluation)
    assert "| method | recall@10 | MRR | Quistador | Lake Morwen |" in markdown
    assert "| EK-FAC | 1.000 | 1.000 | 1.00 | 1.00 |" in markdown
    assert "| BM25 on prompt + completion | 1.000 | 1.000 | 1.00 | 1.00 |" in markdown
    assert "- `task`: language_modeling" in markdown and "- EK-FAC: 1.5 + 2.0" in markdown


def test_strategies_setting_takes_a_comma_separated_list(monkeypatch):
    assert load_settings(EvaluateSettings, []).strategies == ("ekfac", "kfac", "diagonal", "identity")
    assert load_settings(EvaluateSettings, ["--strategies", "ekfac, diagfisher"]).strategies == ("ekfac", "diagonal")
    monkeypatch.setenv("STRATEGIES", "identity,kfac")
    assert load_settings(EvaluateSettings, []).strategies == ("identity", "kfac")
    for bad in ("ekfac,bogus", "", "ekfac,ekfac"):
        with pytest.raises(ConfigError, match="STRATEGIES"):
            load_settings(EvaluateSettings, ["--strategies", bad])


# ---- the stage ---------------------------------------------------------------------------------

def test_evaluate_finds_the_planted_facts_on_the_demo(demo_run):
    env = {"ARTIFACTS_URI": str(demo_run)}
    jobs_ok("evaluate", "--strategies", "ekfac,identity", env=env)
    out = demo_run / "reports" / "evaluation"
    evaluation = json.loads((out / "evaluation.json").read_text())
    methods = evaluation["methods"]
    assert list(methods) == ["ekfac", "identity", "bm25", "bm25_prompt_only", "ekfac+bm25"]
    facts = json.loads((demo_run / "data/train/planted_facts.json").read_text())
    for name in ("ekfac", "identity"):
        # The published numbers are those of the published scores.
        local = demo_run / "influence" / f"scores_eval_{name}"
        matrix = load_file(str(local / "pairwise_scores.safetensors"))["all_modules"]
        prompts = json.loads((local / "prompts.json").read_text())
        assert len(methods[name]["facts"]) == len(facts) == 8
        for fact, measured in zip(facts, methods[name]["facts"]):
            row = matrix[[(p["prompt"], p["completion"]) for p in prompts].index((fact["prompt"],
                                                                                  fact["completion"]))]
            ranks = [int((row > row[d]).sum()) + 1 for d in fact["documents"]]
            assert measured["ranks"] == ranks
            assert measured["recall_at_10"] == sum(r <= 10 for r in ranks) / len(ranks)
            assert measured["reciprocal_rank"] == 1 / min(ranks)
    # The evaluation table on the demo (docs/guides/evaluation.md) has EK-FAC and BM25 at recall@10
    # 1.000 and identity well below. Identity moves with float rounding in training (one thread per
    # process, as `make test` runs, or the default threads), so it has no number of its own here, only
    # its distance below EK-FAC: at least 0.2 (a stating document in or out of a top 10 moves the mean
    # over the 8 facts by 0.018-0.031, so 0.2 is 7-11 documents).
    assert methods["ekfac"]["recall_at_10"] >= 0.9
    assert methods["ekfac"]["recall_at_10"] >= methods["identity"]["recall_at_10"] + 0.2
    assert methods["ekfac"]["mrr"] >= methods["identity"]["mrr"]
    # BM25 depends on the corpus alone (no model, no float rounding), so its numbers are the table's.
    assert methods["bm25"]["recall_at_10"] == 1.0 and methods["bm25"]["mrr"] == 1.0
    assert methods["bm25_prompt_only"]["recall_at_10"] == pytest.approx(0.982, abs=5e-4)
    assert methods["bm25_prompt_only"]["mrr"] == 1.0
    # EK-FAC fused with BM25 is ranked by the mean of the two's per-prompt z-scores
    ekfac = load_file(str(demo_run / "influence/scores_eval_ekfac/pairwise_scores.safetensors"))["all_modules"]
    prompts = [Prompt(**p) for p in json.loads((demo_run / "influence/scores_eval_ekfac/prompts.json").read_text())]
    texts = load_from_disk(str(demo_run / "data/train"))["text"]
    fused = fused_scores(ekfac, bm25_scores([p.prompt + p.completion for p in prompts], texts))
    assert methods["ekfac+bm25"]["recall_at_10"] == fact_metrics(fused, prompts, texts, facts)["recall_at_10"]
    markdown = (out / "evaluation.md").read_text()
    assert f"| EK-FAC | {methods['ekfac']['recall_at_10']:.3f} | {methods['ekfac']['mrr']:.3f} |" in markdown
    assert "| BM25 on prompt + completion |" in markdown and "`strategies`: ekfac, identity" in markdown

    before = (out / "_SUCCESS").read_bytes()
    assert "skipping" in jobs_ok("evaluate", "--strategies", "ekfac,identity", env=env)
    assert (out / "_SUCCESS").read_bytes() == before


def test_evaluate_refuses_a_corpus_without_planted_facts(demo_run, tmp_path):
    artifacts = tmp_path / "artifacts"
    for part in ("model", "data/train"):
        shutil.copytree(demo_run / part, artifacts / part)
    (artifacts / "data/train/planted_facts.json").unlink()
    assert "planted_facts.json" in one_line_refusal(jobs_in_process("evaluate", env={"ARTIFACTS_URI": str(artifacts)}))
    assert not (artifacts / "reports").exists() and not (artifacts / "influence").exists()


def test_evaluate_bad_inputs_fail_in_one_line(demo_run, tmp_path):
    missing = one_line_refusal(jobs_in_process("evaluate", env={"ARTIFACTS_URI": str(tmp_path / "empty")}))
    assert "run the train stage first" in missing
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"prompt": "Cats like to sleep in", "completion": " warm places"}]))
    unasked = one_line_refusal(jobs_in_process("evaluate", "--prompts", str(prompts),
                                               env={"ARTIFACTS_URI": str(demo_run)}))
    assert "none of the 8 planted facts" in unasked
    bad = one_line_refusal(jobs_in_process("evaluate", "--strategies", "ekfac,newton",
                                           env={"ARTIFACTS_URI": str(demo_run)}))
    assert "STRATEGIES" in bad
