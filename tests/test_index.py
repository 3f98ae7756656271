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
from tests.conftest import EXACT, SMALL_INDEX, WHOLE, jobs_in_process, one_line_refusal


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
    run("build_index", artifacts, "--index_dim=0", "--index_dtype=float32", "--index_shard_size=30")
    assert len(list((artifacts / Index("index").relative).glob("shard_*.safetensors"))) == 4  # 100 examples
    run("query", artifacts, "--rerank_top_k=0")
    exact, ours = scores(artifacts, "prompt_scores"), scores(artifacts, "query_scores")
    assert ours.shape == exact.shape
    relative = (ours - exact).abs().amax(dim=1) / exact.abs().amax(dim=1)
    assert float(relative.max()) < 1e-4, relative


def test_with_fusion_the_index_answers_with_the_ranking_compute_scores_publishes(indexed):
    gate, artifacts = ["--score_fusion=bm25_gate", "--gate_fraction=0.3"], indexed(*WHOLE)
    run("compute_scores", artifacts, "--scores_name=gated", *gate)
    run("query", artifacts, "--rerank_top_k=0", "--scores_name=gated_query", *gate)
    exact, ours = (artifacts / Scores("gated").relative, artifacts / Scores("gated_query").relative)
    assert torch.equal(Scores.lexical(ours), Scores.lexical(exact))
    fused, published = Scores.matrix(exact).double(), Scores.matrix(ours).double()
    assert torch.equal(fused != 0, published != 0)  # the same documents gated in
    assert float(((published - fused).abs().amax(dim=1) / fused.abs().amax(dim=1)).max()) < 1e-4
    assert not torch.equal(Scores.influence(ours) != 0, published != 0)  # the gate did shut some out


def test_the_rescored_candidates_get_compute_scores_values_and_the_report_marks_them(indexed):
    artifacts = indexed(*SMALL_INDEX)
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


def test_a_build_spread_over_pods_resumes_with_the_shards_they_staged(artifacts, indexed, monkeypatch):
    import influence_core.index

    built, rows = [], influence_core.index.gradient_rows
    monkeypatch.setattr(influence_core.index, "gradient_rows",
                        lambda model, loss, examples, *rest, **named: built.append(len(examples)) or rows(
                            model, loss, examples, *rest, **named))
    flags = [*EXACT, "--index_partitions=2"]
    run("build_index", artifacts, *flags, "--shard_index=1")  # shards 1 and 3: 30 and 10 examples
    assert built == [30, 10] and not (artifacts / Index("index").relative / "_SUCCESS").exists()
    run("build_index", artifacts, *flags)  # builds only shards 0 and 2, then publishes
    assert built == [30, 10, 30, 30]
    whole = indexed(*EXACT)  # built by one process
    for number in range(4):
        name = Index.shard(number)
        spread = load_file(str(artifacts / "index/index" / name))[Index.ROWS]
        assert spread.equal(load_file(str(whole / "index/index" / name))[Index.ROWS]), name


def test_a_query_must_use_the_factors_and_damping_the_index_was_built_with(indexed):
    artifacts = indexed(*SMALL_INDEX)
    line = one_line_refusal(jobs_in_process("query", f"--artifacts_uri={artifacts}", "--damping_factor=1e-3",
                                            "--log_level=ERROR"))
    assert "DAMPING_FACTOR=0.001" in line and "built with DAMPING_FACTOR=1e-08" in line
    assert not (artifacts / Scores("query_scores").relative).exists()


def test_one_question_at_the_terminal_lists_its_top_documents(indexed, capsys):
    artifacts = indexed(*WHOLE)
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


def test_the_plan_sizes_the_index_and_the_query_scores_within_5_percent(indexed, capsys):
    flags, artifacts = [*EXACT, "--rerank_top_k=3"], indexed(*EXACT)
    run("query", artifacts, flags[-1])
    capsys.readouterr()
    from jobs.__main__ import main

    assert main(["plan", f"--artifacts_uri={artifacts}", "--json", *flags]) == 0
    plan = json.loads(capsys.readouterr().out)
    for stage, relative in (("build_index", "index/index"), ("query", "influence/scores_query_scores")):
        row = plan["stages"][stage]
        published = sum(path.stat().st_size for path in (artifacts / relative).rglob("*") if path.is_file())
        assert row["published_bytes"] == {relative: pytest.approx(published, rel=0.05)}
        assert row["peak_memory_bytes"] > 0 and row["fits"]
    recorded = json.loads((artifacts / "index/index" / Index.PROJECTION).read_text())
    assert plan["stages"]["build_index"]["bytes_per_example"] == recorded["bytes_per_example"] <= 2048 * 2


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
    run("build_index", artifacts, "--index_dim=0", "--index_dtype=float32", "--index_shard_size=16")
    run("query", artifacts, f"--prompts={prompts}", "--rerank_top_k=0")
    exact, ours = scores(artifacts, "prompt_scores"), scores(artifacts, "query_scores")
    assert ours.shape == exact.shape == (2, 40)
    relative = (ours - exact).abs().amax(dim=1) / exact.abs().amax(dim=1)
    assert float(relative.max()) < 1e-4, relative


def test_a_second_query_reads_its_inputs_from_the_cache_without_downloading_or_hashing_them(tmp_path, monkeypatch):
    """CACHE_DIR: the first query fetches and verifies the model, data, factors and index shards; a
    second one of the same artifacts neither downloads nor hashes any of them (the plan's look at
    the data included) and answers the same; nothing writes into the cached copies; and a shard
    changed behind its _SUCCESS is still refused in one line where it is fetched first."""
    from fsspec.implementations.local import LocalFileSystem

    import influence_core.storage
    from influence_core.artifacts import Factors
    from influence_core.demo_corpus import build_demo_corpus
    from influence_core.storage import Store, cache_entry
    from tests.families import save_tiny_model

    source = save_tiny_model("gpt_neo", tmp_path / "source", documents=100)
    documents = tmp_path / "documents.jsonl"
    documents.write_text("".join(json.dumps({"text": text}) + "\n" for text in build_demo_corpus(100).texts[:40]))
    artifacts, cache = tmp_path / "artifacts", tmp_path / "cache"
    run("import_model", artifacts, f"--model={source}", f"--dataset={documents}", "--max_length=32")
    run("fit_factors", artifacts, "--factor_batch_size=8")
    run("build_index", artifacts, "--index_shard_size=16")  # 3 shards
    query = ["--rerank_top_k=2", f"--cache_dir={cache}"]
    run("query", artifacts, *query, "--scores_name=first")

    def forbidden(*args, **kwargs):
        raise AssertionError("an input downloaded again")

    hashed, sha256 = [], influence_core.storage._sha256
    with monkeypatch.context() as patch:
        patch.setattr(influence_core.storage, "_sha256", lambda path: hashed.append(path) or sha256(path))
        for method in ("get", "get_file"):  # every fetch's download (publishing puts, it does not get)
            patch.setattr(LocalFileSystem, method, forbidden)
        import influence_core.plan

        plan, planned = influence_core.plan.make_plan, []

        def watched(*args, **named):  # the memory check gives up silently on any error: it must not fail here
            try:
                planned.append(plan(*args, **named))
            except Exception as error:
                planned.append(error)
                raise
            return planned[-1]

        patch.setattr(influence_core.plan, "make_plan", watched)
        run("query", artifacts, *query, "--scores_name=second")
    assert len(planned) == 1 and isinstance(planned[0], dict), planned  # it read the data, through the cache
    assert hashed and all(Scores("second").relative in path.as_posix() for path in hashed)  # its output's alone
    assert torch.equal(scores(artifacts, "first"), scores(artifacts, "second"))
    store = Store(str(artifacts))
    for artifact in (Model(), TrainData(), Factors("tiny_lm_factors"), Index("index")):
        recorded = artifact.bind(store).manifest.files
        entry = cache_entry(cache, artifact.relative, recorded)
        fetched = artifact.shards() if isinstance(artifact, Index) else recorded  # its projection.json is read
        assert sorted(path.relative_to(entry).as_posix() for path in entry.rglob("*") if path.is_file()) == sorted(
            fetched), artifact  # every file fetched, and nothing written into the copy

    shard = artifacts / Index("index").relative / Index.shard(1)
    shard.write_bytes(shard.read_bytes()[:-4] + b"\0\0\0\0")  # the same size, other bytes
    line = one_line_refusal(jobs_in_process("query", f"--artifacts_uri={artifacts}", "--rerank_top_k=2",
                                            f"--cache_dir={tmp_path / 'fresh'}", "--log_level=ERROR"))
    assert "index/index/shard_00001.safetensors is missing, truncated or changed" in line, line


def test_one_question_s_answer_reads_the_text_of_the_documents_it_lists_alone(tmp_path, capsys, monkeypatch):
    """print_answer reads the listed rows of the (memory-mapped) data, not the corpus's text column."""
    from datasets import Dataset

    from influence_core.index import print_answer

    texts = [f"document {number} says something" for number in range(50)]
    Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "train"))
    read, getitem = [], Dataset.__getitem__
    monkeypatch.setattr(Dataset, "__getitem__", lambda self, key: read.append((key, len(self))) or getitem(self, key))
    scores = torch.zeros(50)
    scores[[7, 31, 2]] = torch.tensor([3.0, 2.0, 1.0])
    print_answer(scores, [31], tmp_path / "train", 3)
    lines = [line.split() for line in capsys.readouterr().out.strip().splitlines()[1:]]
    assert [(line[2], int(line[3]), line[5]) for line in lines] == [("index", 7, "7"), ("exact", 31, "31"),
                                                                    ("index", 2, "2")]
    assert read and all(rows <= 3 for key, rows in read if key == "text"), read


# ---- the rows' arithmetic: autocast as compute_scores, and nothing stored that is not finite ----------

def rows_of(artifacts: Path, count: int, whitened: dict | None = None, **options) -> torch.Tensor:
    """gradient_rows of the first `count` training examples of the pipeline's model, whitened with its
    factors (or `whitened`), projected within 2048 numbers (16 x 16 a module)."""
    from influence_core.factors import factors_dir, load_training_examples, tracked_modules
    from influence_core.index import Projection, gradient_rows, prepared
    from influence_core.settings import BuildIndexSettings
    from influence_core.tasks import TASKS

    settings = BuildIndexSettings(artifacts_uri=str(artifacts), index_dim=2048)
    model, tokenizer, factors_whitening = prepared(artifacts / Model().relative, artifacts, settings)
    names = tracked_modules(factors_dir(artifacts, settings.factors_name))
    examples = load_training_examples(artifacts / TrainData().relative).select(range(count))
    return gradient_rows(model, TASKS["language_modeling"](names).compute_train_loss, examples,
                         Projection.plan(model, names, 2048, 0), factors_whitening if whitened is None else whitened,
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
    run("build_index", artifacts, "--index_dim=512", "--amp_dtype=bfloat16")
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
    line = one_line_refusal(jobs_in_process("build_index", f"--artifacts_uri={artifacts}", "--index_dim=512",
                                            "--index_shard_size=60", "--log_level=ERROR"))
    assert line.startswith("error: INDEX_DTYPE=float16: training example "), line
    assert not (artifacts / Index("index").relative / "_SUCCESS").exists()


# ---- a query's scores: labelled as one model's, its prompts checked, not replaced unasked ----------

def test_a_query_s_report_says_its_ranking_is_one_model_s_influence(indexed):
    """A query scores with the model alone whatever ENSEMBLE_SEEDS the environment sets: its report
    must not call it an average over the ensemble (compute_scores' recorded default)."""
    artifacts = indexed(*SMALL_INDEX)
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


def test_compute_scores_does_not_replace_a_query_s_scores_unless_forced(indexed):
    artifacts = indexed(*SMALL_INDEX)
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


# ---- an approximate index (INDEX_SEARCH): searched, not read row by row -------------------------------

SEARCHED = [*EXACT[:2], "--index_search=sq4"]
RABITQ = [*EXACT[:2], "--index_search=rabitq2"]  # INDEX_SEARCH=auto's structure on a large index


def one_prompt(artifacts: Path, tmp_path: Path) -> Path:
    """A prompts file of the pipeline's first prompt: the query's candidates are that prompt's alone."""
    asked = json.loads((artifacts / Scores("prompt_scores").relative / Scores.PROMPTS).read_text())[:1]
    path = tmp_path / "one_prompt.json"
    path.write_text(json.dumps(asked))
    return path


def test_an_approximate_index_s_candidates_hold_the_exact_scan_s_top_and_bottom_10(indexed, tmp_path):
    """Its candidates (15 of each tail, of 100 examples in 4 shards) hold the exact scan's 10 highest
    and 10 lowest; they get the exact scan's scores, the rescored ones compute_scores', and every
    other example the search's estimate."""
    artifacts = indexed(*EXACT)
    prompts = one_prompt(artifacts, tmp_path)
    run("build_index", artifacts, *SEARCHED, "--index_name=searched")
    assert sorted(path.name for path in (artifacts / "index/index").glob("search_*")) == []
    assert sorted(path.name for path in (artifacts / "index/searched").glob("search_*")) == [
        Index.search(number) for number in range(4)]
    run("query", artifacts, f"--prompts={prompts}", "--rerank_top_k=0", "--scores_name=scan")
    run("query", artifacts, "--index_name=searched", f"--prompts={prompts}", "--rerank_top_k=5",
        "--search_candidates=15", "--scores_name=searched")
    scan, ours, exact = scores(artifacts, "scan")[0], scores(artifacts, "searched")[0], scores(
        artifacts, "prompt_scores")[0]
    rescored = json.loads((artifacts / Scores("searched").relative / Scores.RESCORED).read_text())
    refined, examples = rescored["refined"], rescored["examples"]
    assert rescored["search"] == "sq4" and len(refined) <= 30 and len(examples) == 5
    for sign in (1, -1):
        assert set(torch.topk(sign * scan, 10).indices.tolist()) <= set(refined)
    scale = float(exact.abs().max())
    assert float((ours[examples] - exact[examples]).abs().max()) / scale < 1e-4
    index_exact = sorted(set(refined) - set(examples))
    assert float((ours[index_exact] - scan[index_exact]).abs().max()) / scale < 1e-4
    others = sorted(set(range(100)) - set(refined))
    assert float((ours[others] - scan[others]).abs().max()) / scale > 1e-3  # the search's estimates
    assert float(torch.corrcoef(torch.stack([ours[others], scan[others]]))[0, 1]) > 0.5


def test_rabitq2_s_candidates_hold_most_of_the_exact_scan_s_top_10_of_every_prompt(indexed, tmp_path):
    """INDEX_SEARCH=auto's structure on a large index, in process on the pipeline's 12 prompts: 15
    candidates a tail of 100 examples hold 90% of the top and bottom 10 (as many random ones would
    hold 30%)."""
    from influence_core.index import prompt_rows, score_shards
    from influence_core.prompts import load_prompts
    from influence_core.search import STRUCTURES, candidates, search_scores, write_search
    from influence_core.settings import QueryIndexSettings

    artifacts = indexed(*EXACT)
    folder = artifacts / Index("index").relative
    shards = [folder / Index.shard(number) for number in range(4)]
    prompts = load_prompts(str(artifacts / Scores("prompt_scores").relative / Scores.PROMPTS))
    _, rows = prompt_rows(artifacts / Model().relative, artifacts, json.loads((folder / Index.PROJECTION).read_text()),
                          prompts, QueryIndexSettings(artifacts_uri=str(artifacts)))
    scan = score_shards(rows, shards)
    search = {"structure": "rabitq2", "faiss": STRUCTURES["rabitq2"]}
    for number, shard in enumerate(shards):
        write_search(tmp_path / Index.search(number), load_file(str(shard))[Index.ROWS], search)
    estimated, starts = search_scores(rows, [tmp_path / Index.search(number) for number in range(4)])
    assert starts == [0, 30, 60, 90] and estimated.shape == scan.shape == (12, 100)
    found = sum(len(set(torch.topk(sign * scan[prompt], 10).indices.tolist()) & set(
        candidates(estimated[prompt:prompt + 1], 15))) for prompt in range(12) for sign in (1, -1))
    assert found / 240 >= 0.85, found / 240


def test_a_query_of_an_approximate_index_reads_the_full_rows_of_its_candidates_alone(artifacts, tmp_path,
                                                                                    monkeypatch):
    """Every full row the query reads (safetensors' slices of the shards, as the exact scan reads
    them all) is a candidate's, once."""
    import safetensors

    prompts = one_prompt(artifacts, tmp_path)
    run("build_index", artifacts, *RABITQ)
    reads, real = [], safetensors.safe_open

    class Recording:
        def __init__(self, path, *args, **named):
            self.name, self.opened = Path(path).name, real(path, *args, **named)

        def __enter__(self):
            self.opened.__enter__()
            return self

        def __exit__(self, *exception):
            return self.opened.__exit__(*exception)

        def get_tensor(self, key):
            reads.append((self.name, slice(None)))
            return self.opened.get_tensor(key)

        def get_slice(self, key):
            rows, name = self.opened.get_slice(key), self.name

            class Rows:
                def get_shape(self):
                    return rows.get_shape()

                def __getitem__(self, item):
                    reads.append((name, item))
                    return rows[item]

            return Rows()

    monkeypatch.setattr(safetensors, "safe_open", Recording)
    run("query", artifacts, f"--prompts={prompts}", "--rerank_top_k=3", "--search_candidates=10")
    refined = json.loads((artifacts / Scores("query_scores").relative / Scores.RESCORED).read_text())["refined"]
    read = [int(name[6:11]) * 30 + row for name, item in reads if name.startswith("shard_")
            for row in range(item.start, item.stop)]
    assert all(name.startswith("shard_") and item.stop is not None for name, item in reads), reads
    assert sorted(read) == refined and 10 <= len(refined) <= 20, (read, refined)


def test_a_build_killed_before_a_shard_s_search_structure_completes_it_when_run_again(artifacts, monkeypatch):
    import influence_core.index
    import influence_core.search

    built, rows = [], influence_core.index.gradient_rows
    monkeypatch.setattr(influence_core.index, "gradient_rows",
                        lambda model, loss, examples, *rest, **named: built.append(len(examples)) or rows(
                            model, loss, examples, *rest, **named))
    searched, write = [], influence_core.search.write_search

    def killed_at_the_second(path, shard_rows, search):
        searched.append(path.name)
        if len(searched) == 2:
            raise KeyboardInterrupt("killed")  # shard 1 is written and staged, its structure is not
        write(path, shard_rows, search)

    monkeypatch.setattr(influence_core.search, "write_search", killed_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        jobs_in_process("build_index", f"--artifacts_uri={artifacts}", *RABITQ)
    assert built == [30, 30] and not (artifacts / Index("index").relative / "_SUCCESS").exists()
    monkeypatch.setattr(influence_core.search, "write_search", lambda *args: searched.append(args[0].name) or write(
        *args))
    run("build_index", artifacts, *RABITQ)
    assert built == [30, 30, 30, 10]  # shards 0 and 1 were restored, 1 without its structure
    assert searched == [Index.search(0), Index.search(1), Index.search(1), Index.search(2), Index.search(3)]
    folder = artifacts / Index("index").relative
    files = json.loads((folder / "_SUCCESS").read_text())["files"]
    from influence_core.search import search_rows

    for number, count in enumerate((30, 30, 30, 10)):
        assert Index.search(number) in files and search_rows(folder / Index.search(number)) == count
    from influence_core.plan import search_bytes
    from influence_core.settings import PlanSettings

    planned = search_bytes(PlanSettings(index_search="rabitq2", index_shard_size=30), 2048, 2, 100)
    assert planned == pytest.approx(sum(files[Index.search(number)][0] for number in range(4)), rel=0.05)


def test_an_unknown_index_search_is_refused_in_one_line(tmp_path):
    line = one_line_refusal(jobs_in_process("build_index", f"--artifacts_uri={tmp_path}", "--index_search=ivf",
                                            "--log_level=ERROR"))
    assert "INDEX_SEARCH" in line and "'exact'" in line and "'sq8'" in line and "'ivf'" in line, line


def test_index_search_auto_searches_exactly_below_its_threshold_and_approximately_from_it():
    from influence_core.search import STRUCTURES, resolve
    from influence_core.settings import SEARCH_AUTO, SEARCH_AUTO_BYTES

    row = 32 * 1024
    assert resolve("auto", SEARCH_AUTO_BYTES // row - 1, row) is None and resolve("exact", 10 ** 9, row) is None
    assert resolve("auto", SEARCH_AUTO_BYTES // row, row) == {"structure": SEARCH_AUTO,
                                                              "faiss": STRUCTURES[SEARCH_AUTO]}
    assert resolve("rabitq", 1, row) == {"structure": "rabitq", "faiss": "RaBitQ"}
