"""The gradient index (build_index, query): exact when nothing is projected, exact again where it
rescores, resumable shard by shard, refused with factors or a damping it was not built with, its
rows computed under the autocast compute_scores uses and refused where they would not be finite."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from influence_core.artifacts import Index, Model, Scores, TrainData
from influence_core.errors import ConfigError
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
                        lambda model, loss, examples, *rest, **named: built.append(len(examples)) or rows(
                            model, loss, examples, *rest, **named))
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


# ---- the rows' arithmetic: autocast as compute_scores, and nothing stored that is not finite ----------

def rows_of(artifacts: Path, count: int, whitened: dict | None = None, **options) -> torch.Tensor:
    """gradient_rows of the first `count` training examples of the pipeline's model, whitened with its
    factors (or `whitened`), projected to 16 per side."""
    from influence_core.factors import factors_dir, load_training_examples, tracked_modules
    from influence_core.index import Projection, gradient_rows, prepared
    from influence_core.settings import BuildIndexSettings
    from influence_core.tasks import TASKS

    settings = BuildIndexSettings(artifacts_uri=str(artifacts), projection_dim=16)
    model, tokenizer, factors_whitening = prepared(artifacts / Model().relative, artifacts, settings)
    names = tracked_modules(factors_dir(artifacts, settings.factors_name))
    examples = load_training_examples(artifacts / TrainData().relative).select(range(count))
    return gradient_rows(model, TASKS["language_modeling"](names).compute_train_loss, examples,
                         Projection.plan(model, names, 16, 0), factors_whitening if whitened is None else whitened,
                         tokenizer.pad_token_id, count, **options)


def magnified(artifacts: Path, factor: float) -> dict:
    """The factors' whitening with every scale multiplied by `factor` (a damping far too small)."""
    from influence_core.index import ModuleWhitening, prepared
    from influence_core.settings import BuildIndexSettings

    _, _, whitened = prepared(artifacts / Model().relative, artifacts, BuildIndexSettings(artifacts_uri=str(artifacts)))
    return {name: ModuleWhitening(white.out_basis, white.in_basis, white.scale * factor)
            for name, white in whitened.items()}


def test_rows_are_the_gradients_of_the_autocast_amp_dtype_names(artifacts):
    """Kronfluence's passes run under AMP_DTYPE's autocast, so the rows must too: with bfloat16 they
    are the gradients of bfloat16 arithmetic (not float32's), close to them; unwhitened, so that the
    1e4 of the damping does not magnify the rounding."""
    plain = rows_of(artifacts, 8, whitened={})
    autocast = rows_of(artifacts, 8, whitened={}, amp_dtype=torch.bfloat16)
    assert plain.dtype == autocast.dtype == torch.float32
    assert not torch.equal(plain, autocast)
    relative = (autocast - plain).norm(dim=1) / plain.norm(dim=1)
    assert 0 < float(relative.max()) < 0.05, relative
    assert torch.equal(rows_of(artifacts, 8, whitened={}, amp_dtype=None), plain)  # float32: no autocast


def test_build_index_and_query_compute_their_rows_under_amp_dtype(artifacts, monkeypatch):
    import influence_core.index

    asked, rows = [], influence_core.index.gradient_rows

    def recording(*positional, amp_dtype=None, **named):
        asked.append(amp_dtype)
        return rows(*positional, **named)  # in float32: only what was asked for is checked here

    monkeypatch.setattr(influence_core.index, "gradient_rows", recording)
    run("build_index", artifacts, "--projection_dim=8", "--amp_dtype=bfloat16")
    assert asked == [torch.bfloat16]  # one shard of 100 examples
    run("query", artifacts, "--rerank_top_k=0", "--amp_dtype=bfloat16")
    assert asked == [torch.bfloat16, torch.bfloat16]
    # A query under another autocast than the index's rows is refused (Index.check_query).
    line = one_line_refusal(jobs_in_process("query", f"--artifacts_uri={artifacts}", "--rerank_top_k=0",
                                            "--amp_dtype=float32", "--scores_name=float32_query", "--log_level=ERROR"))
    assert "AMP_DTYPE=float32: the index" in line and "was built with AMP_DTYPE=bfloat16" in line


def test_rows_past_the_index_dtype_s_range_are_refused_not_stored_as_inf(artifacts):
    huge = magnified(artifacts, 1e6)
    with pytest.raises(ConfigError) as refused:
        rows_of(artifacts, 4, whitened=huge, dtype=torch.float16)
    message = str(refused.value)
    assert message.startswith("INDEX_DTYPE=float16: training example ") and "\n" not in message, message
    assert "past float16's largest 65504" in message and "INDEX_DTYPE=bfloat16 or float32" in message, message
    assert "DAMPING_FACTOR" in message, message
    wide = rows_of(artifacts, 4, whitened=huge, dtype=torch.bfloat16)  # the same rows fit bfloat16's range
    assert bool(torch.isfinite(wide).all()) and float(wide.float().abs().max()) > 65504


def test_rows_that_are_not_finite_even_in_float32_are_refused(artifacts):
    broken = magnified(artifacts, float("inf"))
    with pytest.raises(ConfigError) as refused:
        rows_of(artifacts, 4, whitened=broken)
    assert str(refused.value).startswith("DAMPING_FACTOR: training example "), refused.value
    assert "not finite" in str(refused.value), refused.value
    with pytest.raises(ConfigError) as refused:
        rows_of(artifacts, 2, whitened=broken, amp_dtype=torch.bfloat16)
    assert str(refused.value).startswith("AMP_DTYPE: training example ") and "AMP_DTYPE=float32" in str(
        refused.value), refused.value


def test_build_index_refuses_in_one_line_a_shard_float16_cannot_hold(artifacts, monkeypatch):
    import influence_core.index

    whitening = influence_core.index.whitening
    monkeypatch.setattr(influence_core.index, "whitening", lambda *args: {
        name: influence_core.index.ModuleWhitening(white.out_basis, white.in_basis, white.scale * 1e6)
        for name, white in whitening(*args).items()})
    line = one_line_refusal(jobs_in_process("build_index", f"--artifacts_uri={artifacts}", "--projection_dim=8",
                                            "--index_shard_size=60", "--log_level=ERROR"))
    assert line.startswith("error: INDEX_DTYPE=float16: training example "), line
    assert not (artifacts / Index("index").relative / "_SUCCESS").exists()


# ---- a query's scores: labelled as one model's, its prompts checked, not replaced unasked ----------

def test_a_query_s_report_says_its_ranking_is_one_model_s_influence(artifacts):
    """A query scores with the model alone whatever ENSEMBLE_SEEDS the environment sets: its report
    must not call it an average over the ensemble (compute_scores' recorded default)."""
    run("build_index", artifacts, "--projection_dim=8")
    run("query", artifacts, "--rerank_top_k=0")
    code, err = jobs_in_process("inspect_scores", f"--artifacts_uri={artifacts}", "--scores_name=query_scores",
                                "--no-per_token_scores", env={"ENSEMBLE_SEEDS": "3"})
    assert code == 0, err[-3000:]
    report = json.loads((artifacts / "reports/query_scores/report.json").read_text())
    assert report["ranking"] == "influence alone", report["ranking"]


@pytest.mark.parametrize(("flags", "named"), [(("--prompt", "x", "--completion", ""), "COMPLETION"),
                                               (("--prompt", "", "--completion", " y"), "PROMPT")])
def test_an_empty_prompt_or_completion_is_refused_in_one_line(tmp_path, flags, named):
    line = one_line_refusal(jobs_in_process("query", f"--artifacts_uri={tmp_path}", *flags, "--log_level=ERROR"))
    assert named in line, line


def test_compute_scores_does_not_replace_a_query_s_scores_unless_forced(artifacts):
    run("build_index", artifacts, "--projection_dim=8")
    run("query", artifacts, "--rerank_top_k=0", "--scores_name=asked")
    published = artifacts / Scores("asked").relative
    before = Scores.matrix(published).clone()
    line = one_line_refusal(jobs_in_process("compute_scores", f"--artifacts_uri={artifacts}", "--scores_name=asked",
                                            "--log_level=ERROR"))
    assert "SCORES_NAME=asked" in line and "query stage" in line and "FORCE" in line, line
    assert torch.equal(Scores.matrix(published), before)
    assert json.loads((published / "_SUCCESS").read_text())["stage"] == "query"
    run("compute_scores", artifacts, "--scores_name=asked", "--force")
    assert json.loads((published / "_SUCCESS").read_text())["stage"] == "compute_scores"
    replaced, exact = scores(artifacts, "asked"), scores(artifacts, "prompt_scores")  # compute_scores' own now
    assert float(((replaced - exact).abs().amax(dim=1) / exact.abs().amax(dim=1)).max()) < 1e-4
