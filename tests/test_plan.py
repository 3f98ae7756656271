"""The pre-flight plan: its published sizes match what the stages publish, its batch limits are
consistent with its own estimate, and a stage whose batch cannot fit is refused before it runs.
(Its memory estimate against measured peak RSS at four corpus sizes and two models is
docs/results/cost_curve.md: a measurement, not a test.)"""

from __future__ import annotations

import json
import shutil

import pytest

from influence_core.plan import FRAGMENTATION, GIB, PROCESS_BASELINE, estimates, make_plan, measure_shape
from influence_core.settings import PlanSettings, load_settings
from jobs import plan as plan_stage
from tests.conftest import jobs_in_process, one_line_refusal


def published_bytes(artifacts, relative: str) -> int:
    return sum(path.stat().st_size for path in (artifacts / relative).rglob("*") if path.is_file())


def test_published_sizes_are_within_5_percent_of_the_demo_s(demo_run, capsys):
    settings = load_settings(PlanSettings, ["--artifacts_uri", str(demo_run), "--json"])  # the demo's ENSEMBLE_SEEDS
    plan_stage.main(settings)
    plan = json.loads(capsys.readouterr().out)
    assert set(plan["stages"]) >= {"train", "fit_factors", "compute_scores", "compute_self_scores", "inspect_scores"}
    assert plan["shape"]["examples"] == 600 and plan["shape"]["prompts"] == 12
    checked = []
    for stage, row in plan["stages"].items():
        assert row["peak_memory_bytes"] > 0
        if stage in ("build_index", "query"):  # not in the demo pipeline: tests/test_index.py checks them
            continue
        for relative, estimated in row["published_bytes"].items():
            assert estimated == pytest.approx(published_bytes(demo_run, relative), rel=0.05), relative
            checked.append(relative)
    members = [f"ensemble/member_{number}/{path}" for number in range(1, settings.ensemble_seeds)
               for path in ("influence/factors_tiny_lm_factors", "influence/scores_prompt_scores", "model")]
    assert sorted(checked) == sorted(["influence/factors_tiny_lm_factors", "influence/scores_prompt_scores",
                                      "influence/self_scores_tiny_lm_factors", "model", *members])


def test_before_training_the_plan_reads_the_settings(tmp_path):
    settings = PlanSettings(artifacts_uri=str(tmp_path / "nothing"), num_examples=800, max_length=64)
    shape = measure_shape(settings, prompts=3)
    assert (shape.examples, shape.longest, shape.tokens, shape.from_published) == (800, 64, 800 * 64, False)
    assert shape.tracked == ((129, 512), (513, 128)) * 4  # the tiny preset's MLP, a bias column each


def test_the_largest_batch_that_fits_is_where_the_estimate_crosses_the_device(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the CPU's form, on any machine
    settings = PlanSettings(artifacts_uri=str(tmp_path / "nothing"), device_memory_gib=0.6)
    plan = make_plan(settings, prompts=4)
    shape = measure_shape(settings, prompts=4)
    for stage, estimate in estimates(settings, shape).items():
        largest = plan["stages"][stage]["largest_batch_size_that_fits"]
        if largest is None:
            continue
        room = (0.6 * GIB - PROCESS_BASELINE) / FRAGMENTATION  # on CPU: what the tensors may take
        # Where nothing fits (the index's rows of one shard alone exceed the room), largest is 0.
        assert (largest == 0 or estimate.peak(largest) <= room) and room < estimate.peak(largest + 1), stage
        assert plan["stages"][stage]["fits"] == (estimate.batch <= largest), stage
    bigger = PlanSettings(artifacts_uri=str(tmp_path / "nothing"), factor_batch_size=64)
    assert (make_plan(bigger, 4)["stages"]["fit_factors"]["peak_memory_bytes"]
            > make_plan(settings, 4)["stages"]["fit_factors"]["peak_memory_bytes"])


def test_a_batch_that_cannot_fit_is_refused_before_the_stage_runs(small_trained, tmp_path):
    artifacts = tmp_path / "artifacts"
    for output in ("model", "data/train"):
        shutil.copytree(small_trained / output, artifacts / output)
    flags = ["fit_factors", "--artifacts_uri", str(artifacts), "--device_memory_gib", "0.3", "--factor_strategy",
             "identity", "--log_level", "ERROR"]
    line = one_line_refusal(jobs_in_process(*flags))
    assert line.startswith("error: fit_factors: FACTOR_BATCH_SIZE=16 needs about") and "FORCE_FIT=true" in line
    assert not (artifacts / "influence").exists()
    code, stderr = jobs_in_process(*flags, "--force_fit")
    assert code == 0, stderr[-2000:]
    assert (artifacts / "influence/factors_tiny_lm_factors/_SUCCESS").exists()


def test_train_is_judged_on_the_settings_it_will_use_not_the_published_model(small_trained):
    """With a tiny model published, a forced retrain of GPT-Neo-125M at 2,048 tokens, 64 a step,
    cannot fit 8 GiB, as it cannot with nothing published."""
    from influence_core.errors import ConfigError
    from influence_core.plan import check_fits
    from influence_core.settings import TrainSettings

    flags = ["--force", "--model_preset", "gpt-neo-125m", "--max_length", "2048", "--batch_size", "64",
             "--device_memory_gib", "8"]
    for artifacts in (small_trained, small_trained / "nothing-published-here"):
        settings = load_settings(TrainSettings, ["--artifacts_uri", str(artifacts), *flags])
        with pytest.raises(ConfigError, match="train: BATCH_SIZE=64 needs about"):
            check_fits("train", settings)


def test_scoring_is_charged_for_one_query_batch(tmp_path):
    """Kronfluence preconditions one query batch at a time: 500 prompts in batches of 8 hold the
    gradients of 8, not of 500."""
    common = {"artifacts_uri": str(tmp_path / "nothing"), "model_preset": "gpt-neo-125m", "max_length": 512}
    at_once = make_plan(PlanSettings(**common), prompts=500)["stages"]["compute_scores"]
    batched = make_plan(PlanSettings(**common, query_batch_size=8), prompts=500)["stages"]["compute_scores"]
    shape = measure_shape(PlanSettings(**common), prompts=500)
    one_gradient = sum(inputs * outputs for inputs, outputs in shape.tracked) * 4
    assert at_once["peak_memory_bytes"] - batched["peak_memory_bytes"] >= 400 * one_gradient


def test_scoring_is_charged_for_the_factors_own_strategy_and_modules(small_trained, tmp_path):
    from influence_core.settings import FitFactorsSettings
    from jobs import fit_factors

    bare, fitted = tmp_path / "bare", tmp_path / "fitted"
    for artifacts in (bare, fitted):
        for output in ("model", "data/train"):
            shutil.copytree(small_trained / output, artifacts / output)
    fit_factors.main(load_settings(FitFactorsSettings, ["--artifacts_uri", str(fitted), "--factor_strategy",
                                                        "identity", "--tracked_modules", "mlp|attn"]))

    def scoring(artifacts, **settings) -> dict:  # its memory (its disk counts the factors' files as published)
        row = make_plan(PlanSettings(artifacts_uri=str(artifacts), **settings), 12)["stages"]["compute_scores"]
        return {key: value for key, value in row.items() if key not in ("disk_bytes", "fits_disk")}

    # A scoring run's settings name the factors only; its defaults would say EK-FAC over the MLP.
    assert scoring(fitted) == scoring(bare, factor_strategy="identity", tracked_modules="mlp|attn")
    assert scoring(fitted) != scoring(bare)


def test_the_ensemble_is_planned_as_its_members_training_fitting_and_scoring(tmp_path):
    """ENSEMBLE_SEEDS=3: the ensemble stage trains and fits two members, each as the model (its peak
    the larger of train's and fit_factors', its outputs theirs in ensemble/member_<k>/), and
    compute_scores scores three models; with 1 there is no ensemble to plan, and no row."""
    from influence_core.errors import ConfigError
    from influence_core.plan import check_fits, render
    from influence_core.settings import EnsembleSettings

    nothing = str(tmp_path / "nothing")
    single = make_plan(PlanSettings(artifacts_uri=nothing, ensemble_seeds=1), prompts=4)["stages"]
    plan = make_plan(PlanSettings(artifacts_uri=nothing, ensemble_seeds=3), prompts=4)
    three = plan["stages"]
    ensemble, train, fit_factors = three["ensemble"], three["train"], three["fit_factors"]
    larger = max(train, fit_factors, key=lambda row: row["peak_memory_bytes"])
    memory = ("peak_memory_bytes", "fits", "batch_setting", "batch_size", "largest_batch_size_that_fits")
    assert [ensemble[key] for key in memory] == [larger[key] for key in memory]
    assert ensemble["published_bytes"] == {
        f"ensemble/member_{number}/{path}": size for number in (1, 2)
        for path, size in (*train["published_bytes"].items(), *fit_factors["published_bytes"].items())}
    assert sorted(ensemble["published_bytes"]) == [
        "ensemble/member_1/influence/factors_tiny_lm_factors", "ensemble/member_1/model",
        "ensemble/member_2/influence/factors_tiny_lm_factors", "ensemble/member_2/model"]
    assert ensemble["runs"] == 2
    assert "ensemble" not in single and all(row["runs"] == 1 for row in single.values())

    own = single["compute_scores"]["published_bytes"]
    assert three["compute_scores"]["published_bytes"] == {
        **own, **{f"ensemble/member_{number}/influence/scores_prompt_scores": own["influence/scores_prompt_scores"]
                  for number in (1, 2)}}
    assert three["compute_scores"]["runs"] == 3
    # The members' scores are the influence alone; BM25's and the fused matrices are the model's.
    fused = make_plan(PlanSettings(artifacts_uri=nothing, ensemble_seeds=3, score_fusion="bm25_zmean"),
                      prompts=4)["stages"]["compute_scores"]["published_bytes"]
    member = fused.pop("ensemble/member_1/influence/scores_prompt_scores")
    assert member == own["influence/scores_prompt_scores"] < fused["influence/scores_prompt_scores"]
    # Nothing else changes: the other stages run once, on the model (but inspect_scores' disk holds
    # each member's model and factors besides, for the per-token scores).
    def once(rows: dict) -> dict:
        return {stage: {key: value for key, value in row.items()
                        if stage != "inspect_scores" or key not in ("disk_bytes", "fits_disk")}
                for stage, row in rows.items() if stage not in ("ensemble", "compute_scores")}

    assert once(three) == once(single)
    assert three["inspect_scores"]["disk_bytes"] > single["inspect_scores"]["disk_bytes"]
    shown = next(line for line in render(plan).splitlines() if line.startswith("ensemble "))
    assert shown.split()[1] == "2" and "ensemble/member_2/model" in shown

    # The stage's own check: nothing to refuse without members; with them, what cannot fit is refused.
    tiny = ["--artifacts_uri", nothing, "--device_memory_gib", "0.01"]
    check_fits("ensemble", load_settings(EnsembleSettings, [*tiny, "--ensemble_seeds", "1"]))
    with pytest.raises(ConfigError, match=f"ensemble: {larger['batch_setting']}="):
        check_fits("ensemble", load_settings(EnsembleSettings, [*tiny, "--ensemble_seeds", "3"]))


def test_the_query_is_planned_for_the_published_index_not_the_query_s_defaults(small_trained, tmp_path):
    """A query reads the index as build_index made it: an index of INDEX_DIM=2048 in float32 is
    planned as such, though the query's settings (which have neither) would say the default INDEX_DIM and float16."""
    from influence_core.plan import index_row_floats
    from influence_core.storage import SUCCESS, fingerprint_of

    bare, indexed = tmp_path / "bare", tmp_path / "indexed"
    for artifacts in (bare, indexed):
        for output in ("model", "data/train"):
            shutil.copytree(small_trained / output, artifacts / output)
    built = {"index_dim": 2048, "index_dtype": "float32"}
    floats = index_row_floats(measure_shape(PlanSettings(artifacts_uri=str(bare)), 12, "query").scored, 2048)
    model = fingerprint_of(json.loads((indexed / "model" / SUCCESS).read_text()))
    (indexed / "index/index").mkdir(parents=True)

    def publish_index(made_from: str) -> None:
        """A published index as build_index records it (the plan reads no shard), made from `made_from`."""
        (indexed / "index/index" / SUCCESS).write_text(json.dumps({
            "stage": "build_index", "settings": {**built, "factors_name": "tiny_lm_factors"},
            "inputs": {"model": made_from}, "files": {}, "floats_per_example": floats}))

    def query(artifacts, **settings) -> dict:  # its memory and published sizes (its disk: tests/test_disk.py)
        row = make_plan(PlanSettings(artifacts_uri=str(artifacts), **settings), 12, "query")["stages"]["query"]
        return {key: value for key, value in row.items() if key not in ("disk_bytes", "fits_disk")}

    publish_index(model)
    assert query(indexed) == query(bare, **built)
    assert query(indexed)["peak_memory_bytes"] < query(bare)["peak_memory_bytes"]
    assert measure_shape(PlanSettings(artifacts_uri=str(indexed)), 12, "query").index == (floats, "float32")
    publish_index("another model's fingerprint")  # stale: the query would refuse it; the plan falls back
    assert query(indexed) == query(bare)


def test_an_imported_model_is_planned_without_an_ensemble(tmp_path):
    """A model imported as it is has no training to repeat: the ensemble stage does nothing and
    compute_scores scores it alone, whatever ENSEMBLE_SEEDS says, and so does the plan."""
    from tests.conftest import jobs_ok
    from tests.families import save_tiny_model

    artifacts = tmp_path / "artifacts"
    jobs_ok("import_model", f"--model={save_tiny_model('gpt2', tmp_path / 'gpt2')}", "--num_examples=100",
            env={"ARTIFACTS_URI": str(artifacts)})
    stages = make_plan(PlanSettings(artifacts_uri=str(artifacts), ensemble_seeds=3), prompts=4)["stages"]
    assert "ensemble" not in stages and stages["compute_scores"]["runs"] == 1
    assert list(stages["compute_scores"]["published_bytes"]) == ["influence/scores_prompt_scores"]


@pytest.mark.parametrize("preset, limit", [("tiny", 32 * 1024), ("gpt-neo-125m", 64 * 1024)])
def test_an_index_row_stays_within_its_budget_whatever_the_model_s_size(preset, limit, tmp_path):
    """INDEX_DIM caps the numbers an example's row holds: the default fits 32 KiB for the tiny model and
    64 KiB for GPT-Neo-125M (whose modules are 36 times the tiny model's), and it is what a row holds."""
    from influence_core.index import shares

    plan = make_plan(PlanSettings(artifacts_uri=str(tmp_path), model_preset=preset), 12)
    row = plan["stages"]["build_index"]
    assert 0 < row["bytes_per_example"] <= limit
    settings = PlanSettings(artifacts_uri=str(tmp_path), model_preset=preset)
    sides = shares([(outputs, inputs) for inputs, outputs in measure_shape(settings, 12, "build_index").scored],
                   settings.index_dim)
    assert row["bytes_per_example"] == 2 * sum(out_dim * in_dim for out_dim, in_dim in sides)
    assert sum(out_dim * in_dim for out_dim, in_dim in sides) > 0.95 * settings.index_dim  # the budget is used


def test_the_budget_is_shared_and_a_module_smaller_than_its_share_is_kept_whole():
    from influence_core.index import shares

    sides = shares([(4, 5), (100, 100), (100, 100)], 1000)
    assert sides[0] == (4, 5)  # 20 numbers: whole, the 313 of its share left to the others
    assert sides[1] == sides[2] == (22, 22) and sum(a * b for a, b in sides) <= 1000
    assert shares([(4, 5), (100, 100)], 0) == [(4, 5), (100, 100)]  # 0: nothing projected
    assert shares([(3, 1000)], 300) == [(3, 100)]  # a narrow module's sides: its whole outputs, the rest inputs
