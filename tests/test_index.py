"""The gradient index (build_index, query): exact when nothing is projected, exact again where it
rescores, resumable shard by shard, and refused with factors or a damping it was not built with."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from influence_core.artifacts import Index, Scores
from tests.conftest import jobs_in_process, one_line_refusal


@pytest.fixture()
def artifacts(small_pipeline, tmp_path) -> Path:
    """A copy of the small pipeline's artifacts (EK-FAC factors, compute_scores' prompt_scores)."""
    copy = tmp_path / "artifacts"
    shutil.copytree(small_pipeline, copy)
    return copy


def run(stage: str, artifacts: Path, *flags: str) -> str:
    code, err = jobs_in_process(stage, f"--artifacts_uri={artifacts}", *flags)
    assert code == 0, err[-3000:]
    return err


def scores(artifacts: Path, name: str) -> torch.Tensor:
    return Scores.matrix(artifacts / Scores(name).relative).double()


def test_an_index_that_projects_nothing_scores_as_compute_scores(artifacts):
    run("build_index", artifacts, "--projection_dim=0", "--index_dtype=float32", "--index_shard_size=30")
    assert len(list((artifacts / Index("index").relative).glob("shard_*.safetensors"))) == 4  # 100 examples
    run("query", artifacts, "--rerank_top_k=0")
    exact, ours = scores(artifacts, "prompt_scores"), scores(artifacts, "query_scores")
    assert ours.shape == exact.shape
    relative = (ours - exact).abs().amax(dim=1) / exact.abs().amax(dim=1)
    assert float(relative.max()) < 1e-4, relative


def test_with_fusion_the_index_answers_with_the_ranking_compute_scores_publishes(artifacts):
    gate = ["--score_fusion=bm25_gate", "--gate_fraction=0.3"]
    run("compute_scores", artifacts, "--scores_name=gated", *gate)
    run("build_index", artifacts, "--projection_dim=0", "--index_dtype=float32")
    run("query", artifacts, "--rerank_top_k=0", "--scores_name=gated_query", *gate)
    exact, ours = (artifacts / Scores("gated").relative, artifacts / Scores("gated_query").relative)
    assert torch.equal(Scores.lexical(ours), Scores.lexical(exact))
    fused, published = Scores.matrix(exact).double(), Scores.matrix(ours).double()
    assert torch.equal(fused != 0, published != 0)  # the same documents gated in
    assert float(((published - fused).abs().amax(dim=1) / fused.abs().amax(dim=1)).max()) < 1e-4
    assert not torch.equal(Scores.influence(ours) != 0, published != 0)  # the gate did shut some out


def test_the_rescored_candidates_get_compute_scores_values_and_the_report_marks_them(artifacts):
    run("build_index", artifacts, "--projection_dim=8")  # far from exact: 8 x 8 per module
    run("query", artifacts, "--rerank_top_k=5", "--scores_name=reranked")
    exact, ours = scores(artifacts, "prompt_scores"), scores(artifacts, "reranked")
    rescored = json.loads((artifacts / Scores("reranked").relative / Scores.RESCORED).read_text())
    candidates = rescored["examples"]
    assert rescored["rerank_top_k"] == 5 and 5 <= len(candidates) < exact.shape[1]
    scale = exact.abs().amax(dim=1, keepdim=True)
    assert float(((ours[:, candidates] - exact[:, candidates]).abs() / scale).max()) < 1e-4
    others = sorted(set(range(exact.shape[1])) - set(candidates))
    assert float(((ours[:, others] - exact[:, others]).abs() / scale).max()) > 1e-3  # those are the index's
    run("inspect_scores", artifacts, "--scores_name=reranked", "--no-per_token_scores")
    report = json.loads((artifacts / "reports/reranked/report.json").read_text())
    assert report["rescored"] == {"rerank_top_k": 5, "exact_examples": len(candidates)}
    for entry in report["prompts"]:
        for item in entry["top_positive"]:
            assert item["exact"] == (item["index"] in candidates)
    assert "(exact)" in (artifacts / "reports/reranked/reranked_report.md").read_text()


def test_a_build_spread_over_pods_resumes_with_the_shards_they_staged(artifacts, monkeypatch):
    import influence_core.index

    built, rows = [], influence_core.index.gradient_rows
    monkeypatch.setattr(influence_core.index, "gradient_rows",
                        lambda model, loss, examples, *rest: built.append(len(examples)) or rows(model, loss, examples,
                                                                                                 *rest))
    flags = ["--projection_dim=16", "--index_shard_size=30", "--index_partitions=2"]
    run("build_index", artifacts, *flags, "--shard_index=1")  # shards 1 and 3: 30 and 10 examples
    assert built == [30, 10] and not (artifacts / Index("index").relative / "_SUCCESS").exists()
    run("build_index", artifacts, *flags)  # builds only shards 0 and 2, then publishes
    assert built == [30, 10, 30, 30]
    whole = artifacts.parent / "whole"
    shutil.copytree(artifacts, whole, ignore=shutil.ignore_patterns("index"))
    run("build_index", whole, "--projection_dim=16", "--index_shard_size=30")
    for number in range(4):
        name = Index.shard(number)
        spread = load_file(str(artifacts / "index/index" / name))[Index.ROWS]
        assert spread.equal(load_file(str(whole / "index/index" / name))[Index.ROWS]), name


def test_a_query_must_use_the_factors_and_damping_the_index_was_built_with(artifacts):
    run("build_index", artifacts, "--projection_dim=8")
    line = one_line_refusal(jobs_in_process("query", f"--artifacts_uri={artifacts}", "--damping_factor=1e-3",
                                            "--log_level=ERROR"))
    assert "DAMPING_FACTOR=0.001" in line and "built with DAMPING_FACTOR=1e-08" in line
    assert not (artifacts / Scores("query_scores").relative).exists()


def test_one_question_at_the_terminal_lists_its_top_documents(artifacts, capsys):
    run("build_index", artifacts, "--projection_dim=0", "--index_dtype=float32")
    asked = json.loads((artifacts / Scores("prompt_scores").relative / Scores.PROMPTS).read_text())[0]
    from jobs.__main__ import main

    capsys.readouterr()
    assert main(["query", f"--artifacts_uri={artifacts}", "--prompt", asked["prompt"], "--completion",
                 asked["completion"], "--top_k=4", "--rerank_top_k=2"]) == 0
    printed = capsys.readouterr().out
    lines = [line.split() for line in printed.strip().splitlines()[1:]]
    expected = torch.topk(scores(artifacts, "prompt_scores")[0], 4).indices.tolist()
    assert [int(line[3]) for line in lines] == expected
    assert [line[2] for line in lines] == ["exact", "exact", "index", "index"]
    assert not (artifacts / Scores("query_scores").relative).exists()  # one question publishes nothing


def test_the_plan_sizes_the_index_and_the_query_scores_within_5_percent(artifacts, capsys):
    flags = ["--projection_dim=16", "--index_shard_size=30", "--rerank_top_k=3"]
    run("build_index", artifacts, *flags[:2])
    run("query", artifacts, flags[2])
    capsys.readouterr()
    from jobs.__main__ import main

    assert main(["plan", f"--artifacts_uri={artifacts}", "--json", *flags]) == 0
    plan = json.loads(capsys.readouterr().out)
    for stage, relative in (("build_index", "index/index"), ("query", "influence/scores_query_scores")):
        row = plan["stages"][stage]
        published = sum(path.stat().st_size for path in (artifacts / relative).rglob("*") if path.is_file())
        assert row["published_bytes"] == {relative: pytest.approx(published, rel=0.05)}
        assert row["peak_memory_bytes"] > 0 and row["fits"]


def test_a_tiny_untrained_model_s_index_scores_as_compute_scores_with_ekfac(tmp_path):
    """The fast lane's exactness check: a tiny random GPT-Neo imported as it is, EK-FAC fitted on 40
    documents, and the index at full size against compute_scores, in this process."""
    from influence_core.demo_corpus import build_demo_corpus
    from tests.families import save_tiny_model

    source = save_tiny_model("gpt_neo", tmp_path / "source", documents=100)
    documents = tmp_path / "documents.jsonl"
    documents.write_text("".join(json.dumps({"text": text}) + "\n" for text in build_demo_corpus(100).texts[:40]))
    artifacts = tmp_path / "artifacts"
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"prompt": "The capital of Velmora is", "completion": " Quistador"},
                                   {"prompt": "The river Tallow flows into", "completion": " Lake Morwen"}]))
    run("import_model", artifacts, f"--model={source}", f"--dataset={documents}", "--max_length=32")
    run("fit_factors", artifacts, "--factor_batch_size=8")
    run("compute_scores", artifacts, f"--prompts={prompts}")
    run("build_index", artifacts, "--projection_dim=0", "--index_dtype=float32", "--index_shard_size=16")
    run("query", artifacts, f"--prompts={prompts}", "--rerank_top_k=0")
    exact, ours = scores(artifacts, "prompt_scores"), scores(artifacts, "query_scores")
    assert ours.shape == exact.shape == (2, 40)
    relative = (ours - exact).abs().amax(dim=1) / exact.abs().amax(dim=1)
    assert float(relative.max()) < 1e-4, relative
