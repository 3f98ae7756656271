"""The linear datamodeling score: subsets, correlations recomputed from what is published, the
stage spread over processes, a killed subset, and bad input."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import load_from_disk
from safetensors.torch import load_file
from scipy.stats import spearmanr

from influence_core import lds
from influence_core.fusion import bm25_scores
from tests.conftest import ROOT, assert_a_real_picture, jobs_in_process, jobs_ok, one_line_refusal, start_jobs

LDS = {"LDS_SUBSETS": "4", "LDS_SEEDS": "2"}
INPUTS = ("model", "data/train", "influence/factors_tiny_lm_factors", "influence/scores_prompt_scores")


def copy_pipeline(source: Path, destination: Path) -> Path:
    for relative in INPUTS:
        shutil.copytree(source / relative, destination / relative)
    return destination


def measurements(artifacts: Path) -> dict[str, dict]:
    return {path.parent.name: json.loads(path.read_text())
            for path in sorted((artifacts / "lds" / "subsets").glob("*/measurements.json"))}


@pytest.fixture(scope="module")
def lds_run(small_pipeline, tmp_path_factory) -> Path:
    """The lds stage run sequentially on a copy of the small pipeline's outputs, for its scores and
    the same influence fused with BM25 (SCORE_FUSION=bm25_zmean)."""
    artifacts = copy_pipeline(small_pipeline, tmp_path_factory.mktemp("lds") / "artifacts")
    jobs_ok("compute_scores", env={"ARTIFACTS_URI": str(artifacts), "SCORES_NAME": "fused",
                                   "SCORE_FUSION": "bm25_zmean", "FUSION_WEIGHT": "0.5"})
    jobs_ok("lds", env={**LDS, "ARTIFACTS_URI": str(artifacts), "LDS_SCORES": "prompt_scores,fused"})
    return artifacts


# ---- in-process ----

def test_subsets_are_seeded_and_the_same_however_many_are_drawn():
    first = lds.draw_subset(100, 0.5, 0, 3)
    assert first == lds.draw_subset(100, 0.5, 0, 3) == sorted(set(first)) and len(first) == 50
    assert first != lds.draw_subset(100, 0.5, 1, 3) and first != lds.draw_subset(100, 0.5, 0, 4)
    assert len(lds.draw_subset(10, 0.25, 0, 0)) == 2


def test_scores_that_predict_the_measurements_exactly_score_one_and_reversed_minus_one():
    rng = np.random.default_rng(0)
    mask = lds.subset_mask([sorted(rng.choice(20, 10, replace=False)) for _ in range(12)], 20)
    scores = torch.randn(3, 20, dtype=torch.float64)
    measured = -(mask @ scores.T)  # a positive score lowers the measurement
    assert lds.lds(scores, mask, measured) == pytest.approx([1.0] * 3)
    assert lds.lds(-scores, mask, measured) == pytest.approx([-1.0] * 3)
    chance = lds.random_baseline(20, mask, measured, draws=200, seed=0, label="random", task="t")
    assert abs(chance["lds"]) < 2 * chance["stderr"] + 0.02 and chance["stderr"] < 0.05


# ---- the stage ----

def test_correlations_recomputed_from_the_published_files_agree(lds_run):
    """Every LDS in lds.json follows from the published measurements and scores files alone."""
    result = json.loads((lds_run / "reports/lds/lds.json").read_text())
    subsets = measurements(lds_run)
    assert len(subsets) == result["subsets"] == 4 and result["seeds"] == 2
    examples = len(load_from_disk(str(lds_run / "data/train")))
    prompts = json.loads((ROOT / "prompts.json").read_text())
    assert [(p["prompt"], p["completion"]) for p in result["prompts"]] == [
        (p["prompt"], p["completion"]) for p in prompts]
    texts = load_from_disk(str(lds_run / "data/train"))["text"]
    matrices = {
        "prompt_scores": load_file(str(lds_run / "influence/scores_prompt_scores/pairwise_scores.safetensors")),
        "identity": load_file(str(lds_run / "influence/scores_lds_identity/pairwise_scores.safetensors")),
    }
    matrices = {name: matrix["all_modules"].double().numpy() for name, matrix in matrices.items()}
    matrices["bm25"] = bm25_scores([p["prompt"] + p["completion"] for p in prompts], texts).numpy()
    # A row with no spread (no prompt word with a positive idf in BM25) has z-scores 0, as fusion's.
    z = {name: np.divide(matrix - matrix.mean(1, keepdims=True), spread, out=np.zeros_like(matrix), where=spread > 0)
         for name, matrix in matrices.items() for spread in [matrix.std(1, ddof=1, keepdims=True)]}
    matrices["fused"] = (z["prompt_scores"] + z["bm25"]) / 2
    published = load_file(str(lds_run / "influence/scores_fused/fused_scores.safetensors"))["all_modules"]
    assert np.allclose(published.double().numpy(), matrices["fused"], atol=1e-4)  # what the report ranks by (float32)
    for name, matrix in matrices.items():
        for number in range(len(prompts)):
            predicted, measured = [], []
            for subset in subsets.values():
                assert len(subset["examples"]) == examples // 2 and len(subset["measurements"]) == 2
                predicted.append(-matrix[number, subset["examples"]].sum())
                measured.append(np.mean([seed["language_modeling"][number] for seed in subset["measurements"]]))
            # A constant prediction (BM25 with no prompt word of positive idf) correlates 0, as the stage says.
            expected = spearmanr(predicted, measured).statistic if np.ptp(predicted) > 0 else 0.0
            assert result["methods"][name]["per_prompt"][number] == pytest.approx(expected, abs=1e-6), (name, number)
        values = result["methods"][name]["per_prompt"]
        assert result["methods"][name]["lds"] == pytest.approx(np.mean(values), abs=1e-9)
        assert result["methods"][name]["stderr"] == pytest.approx(np.std(values, ddof=1) / np.sqrt(len(values)))
    assert abs(result["methods"]["random"]["lds"]) < 0.1
    fused = result["comparisons"]["fused"]  # paired with each baseline and the first scores
    assert set(fused) == {"identity", "bm25", "random", "prompt_scores"}
    assert set(result["comparisons"]["prompt_scores"]) == {"identity", "bm25", "random"}
    for against, paired in fused.items():
        differences = np.subtract(result["methods"]["fused"]["per_prompt"],
                                  result["methods"][against]["per_prompt"])
        assert paired["difference"] == pytest.approx(differences.mean(), abs=1e-9), against
    assert result["settings"]["model"] is None  # retrained from scratch, as the model was
    for name in ("lds.png", "lds_prompts.png"):
        assert_a_real_picture(lds_run / "reports/lds" / name)
    markdown = (lds_run / "reports/lds/lds.md").read_text()
    assert f"{result['methods']['prompt_scores']['lds']:.3f}" in markdown  # the figure lds.json holds
    assert 0 <= min(p["probability"] for p in result["prompts"]) <= max(p["probability"] for p in result["prompts"]) < 1


def test_the_report_states_the_lds_and_each_completions_probability(lds_run):
    jobs_ok("inspect_scores", "--no-per_token_scores", env={"ARTIFACTS_URI": str(lds_run)})
    report = json.loads((lds_run / "reports/prompt_scores/report.json").read_text())
    measured = json.loads((lds_run / "reports/lds/lds.json").read_text())
    assert report["lds"]["lds"] == measured["methods"]["prompt_scores"]["lds"]
    assert set(report["lds"]["baselines"]) == {"identity", "bm25", "random"}
    for entry, prompt in zip(report["prompts"], measured["prompts"]):
        assert entry["probability"] == pytest.approx(prompt["probability"], rel=1e-6)
        assert entry["near_certain"] == (entry["probability"] >= 0.9)
    markdown = (lds_run / "reports/prompt_scores/prompt_scores_report.md").read_text()
    html = (lds_run / "reports/prompt_scores/report.html").read_text()
    assert f"LDS {report['lds']['lds']:.2f} ± {report['lds']['stderr']:.2f}" in markdown
    assert f"LDS {report['lds']['lds']:.2f} ± {report['lds']['stderr']:.2f}" in html
    assert markdown.count("The model's probability of the completion") == len(report["prompts"])


def test_subsets_spread_over_processes_and_a_run_killed_with_kill_9_equal_the_sequential_run(lds_run, small_pipeline,
                                                                                            tmp_path):
    """Subsets 0 and 1 retrained by two processes at once (as lds-retrain's pods, SUBSET_INDEX each);
    then a sequential run retrains subset 2 alone and is killed with kill -9 during subset 3; the
    rerun retrains subset 3 alone and aggregates: the measurements and the LDS of the sequential run."""
    artifacts = copy_pipeline(small_pipeline, tmp_path / "artifacts")
    env = {**LDS, "ARTIFACTS_URI": str(artifacts)}
    processes = [start_jobs("lds", env={**env, "SUBSET_INDEX": str(index)}) for index in range(2)]
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
    assert not (artifacts / "reports/lds").exists()  # a subset alone publishes only itself
    process = start_jobs("lds", env=env)
    deadline = time.monotonic() + 300
    while not (artifacts / "lds/subsets/00002/_SUCCESS").exists():  # subset 2 done, 3 in progress
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-3000:]
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert "2 of 4 subsets already published" in stderr, stderr[-3000:]
    assert retrained(stderr) <= {"2", "3"}
    assert not (artifacts / "reports/lds").exists()
    done = {name: (artifacts / "lds/subsets" / name / "_SUCCESS").stat().st_mtime_ns for name in ("00000", "00001",
                                                                                                 "00002")}
    log = jobs_ok("lds", env=env)
    assert "3 of 4 subsets already published" in log and retrained(log) == {"3"}, log[-3000:]
    assert {name: (artifacts / "lds/subsets" / name / "_SUCCESS").stat().st_mtime_ns for name in done} == done
    assert measurements(artifacts) == measurements(lds_run)
    ours, sequential = (json.loads((a / "reports/lds/lds.json").read_text()) for a in (artifacts, lds_run))
    assert ours["methods"] == {name: method for name, method in sequential["methods"].items() if name != "fused"}


def retrained(log: str) -> set[str]:
    """The subsets a run's log says it retrained."""
    return {line.split("subset ")[1].split(" ")[0] for line in log.splitlines() if "retraining" in line}


@pytest.mark.parametrize("args, env, message", [
    (["--subset_index", "4"], LDS, "out of range"),
    (["--lds_fraction", "1"], {}, "LDS_FRACTION"),
    (["--lds_scores", "no_such_scores"], {}, "run the compute_scores stage first"),
    (["--prompts", str(ROOT / "prompts-hard.json")], {}, "other prompts than PROMPTS"),
    ([], {"WORLD_SIZE": "2"}, "lds runs as one process"),
])
def test_bad_input_is_refused_in_one_line(small_pipeline, tmp_path, args, env, message):
    artifacts = copy_pipeline(small_pipeline, tmp_path / "artifacts")
    line = one_line_refusal(jobs_in_process("lds", *args, env={**env, "ARTIFACTS_URI": str(artifacts)}))
    assert message in line, line
    assert not (artifacts / "lds").exists() and not (artifacts / "reports/lds").exists()


# ---- a model of your own ----

FACT_PROMPTS = [{"prompt": "The capital of Velmora is", "completion": " Quistador"},
                {"prompt": "The river Tallow flows into", "completion": " Lake Morwen"}]


def own_model_scored(tmp_path: Path, stage, settings_class, *flags: str) -> tuple[Path, Path, Path]:
    """A tiny GPT-2 saved to a folder, published by `stage` (import_model, or train to fine-tune
    it) on 100 demo documents, with identity factors and scores of two fact prompts."""
    from influence_core.settings import ComputeScoresSettings, FitFactorsSettings, load_settings
    from jobs import compute_scores, fit_factors
    from tests.families import save_tiny_model

    source = save_tiny_model("gpt2", tmp_path / "gpt2")
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(FACT_PROMPTS))
    common = ["--artifacts_uri", str(tmp_path / "artifacts")]
    stage.main(load_settings(settings_class, [*common, "--model", str(source), "--num_examples", "100",
                                              "--max_length", "64", *flags]))
    fit_factors.main(load_settings(FitFactorsSettings, [*common, "--factor_strategy", "identity",
                                                        "--factor_batch_size", "3"]))
    compute_scores.main(load_settings(ComputeScoresSettings, [*common, "--prompts", str(prompts),
                                                              "--train_batch_size", "5"]))
    return tmp_path / "artifacts", source, prompts


def test_the_lds_of_a_model_imported_as_it_is_is_refused(tmp_path):
    from influence_core.settings import ImportModelSettings
    from jobs import import_model

    artifacts, _, prompts = own_model_scored(tmp_path, import_model, ImportModelSettings)
    code, stderr = jobs_in_process("lds", "--artifacts_uri", str(artifacts), "--prompts", str(prompts),
                                   "--lds_subsets", "2", "--lds_seeds", "1", "--log_level", "ERROR")
    assert code == 2, stderr[-3000:]
    line, = stderr.strip().splitlines()
    assert "imported" in line and "import_model" in line, line
    assert not (artifacts / "lds").exists() and not (artifacts / "reports/lds").exists()


@pytest.mark.slow
def test_the_lds_of_a_fine_tuned_model_fine_tunes_the_same_model_on_each_subset(tmp_path):
    from influence_core.settings import LdsSettings, TrainSettings, load_settings
    from jobs import lds as lds_stage
    from jobs import train

    artifacts, source, prompts = own_model_scored(tmp_path, train, TrainSettings, "--num_train_epochs", "1",
                                                  "--learning_rate", "5e-4")
    lds_stage.main(load_settings(LdsSettings, ["--artifacts_uri", str(artifacts), "--prompts", str(prompts),
                                               "--lds_subsets", "2", "--lds_seeds", "1"]))
    result = json.loads((artifacts / "reports/lds/lds.json").read_text())
    assert result["settings"]["model"] == str(source)
    assert result["settings"]["train.learning_rate"] == 5e-4
    for subset in measurements(artifacts).values():
        assert subset["retrained_from"] == str(source)
    # The identity baseline is the scores' own fitting and scoring, but for the strategy.
    factors = json.loads((artifacts / "influence/factors_lds_identity/_SUCCESS").read_text())["settings"]
    scores = json.loads((artifacts / "influence/scores_lds_identity/_SUCCESS").read_text())["settings"]
    assert (factors["factor_batch_size"], scores["train_batch_size"]) == (3, 5)
