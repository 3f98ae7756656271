"""Ensembles (ENSEMBLE_SEEDS): members trained as the model was with other training seeds and
fitted as it was, each in its own tree (the ensemble stage); compute_scores scores them as it
scores the model and averages them after checking that they belong with the model, and every
later stage follows the members' lineage too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from influence_core.settings import EnsembleSettings, load_settings
from influence_core.stages import BY_NAME
from tests.conftest import jobs_in_process, one_line_refusal

TINY = ["--num_examples=100", "--num_train_epochs=1", "--max_length=32", "--vocab_size=300", "--batch_size=8",
        "--checkpoints=1", "--factor_strategy=identity", "--log_level=ERROR"]
PROMPTS = [{"prompt": "The capital of Velmora is", "completion": " Quistador"},
           {"prompt": "The river Tallow flows into", "completion": " Lake Morwen"}]


def run(stage: str, artifacts: Path, *flags: str, env: dict | None = None) -> tuple[int, str]:
    """The stage in this process with the TINY flags it has, and the prompts beside the artifacts."""
    fields = BY_NAME[stage].settings.model_fields
    tiny = [flag for flag in [*TINY, f"--prompts={artifacts.parent / 'prompts.json'}"]
            if flag[2:].split("=")[0] in fields]
    return jobs_in_process(stage, f"--artifacts_uri={artifacts}", *tiny, *flags, env=env)


def matrix(artifacts: Path, scores: str = "influence/scores_prompt_scores") -> torch.Tensor:
    return load_file(str(artifacts / scores / "pairwise_scores.safetensors"))["all_modules"]


def copied(ensemble: Path, tmp_path: Path) -> Path:
    """A copy of the ensemble fixture's artifacts (and its prompts file) for a test to change."""
    shutil.copytree(ensemble.parent, tmp_path, dirs_exist_ok=True)
    return tmp_path / "artifacts"


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory) -> Path:
    """A tiny model, its factors, two members (ENSEMBLE_SEEDS=3), the averaged scores, and the
    model's own scores under another name."""
    artifacts = tmp_path_factory.mktemp("ensemble") / "artifacts"
    (artifacts.parent / "prompts.json").write_text(json.dumps(PROMPTS))
    for stage, flags in [("train", []), ("fit_factors", []), ("ensemble", ["--ensemble_seeds=3"]),
                         ("compute_scores", ["--ensemble_seeds=3"]),
                         ("compute_scores", ["--scores_name=alone"])]:
        code, log = run(stage, artifacts, *flags)
        assert code == 0, (stage, log[-3000:])
    return artifacts


@pytest.mark.slow
def test_the_members_are_the_model_trained_with_other_seeds_and_their_mean_is_published(ensemble):
    for number in (1, 2):
        member = ensemble / f"ensemble/member_{number}"
        recorded = json.loads((member / "model/_SUCCESS").read_text())["settings"]
        assert recorded["training_seed"] == number and recorded["learning_rate"] == 2e-3
        assert (member / "data/train/data-00000-of-00001.arrow").read_bytes() == (
            ensemble / "data/train/data-00000-of-00001.arrow").read_bytes()
    members = [matrix(ensemble / f"ensemble/member_{number}") for number in (1, 2)]
    alone = matrix(ensemble, "influence/scores_alone")
    assert not torch.allclose(members[0], alone, rtol=0.05)  # other seeds, other models
    assert torch.allclose(matrix(ensemble), (alone + members[0] + members[1]) / 3, rtol=1e-5, atol=1e-12)
    inputs = json.loads((ensemble / "influence/scores_prompt_scores/_SUCCESS").read_text())["inputs"]
    assert {"ensemble/member_1/influence/scores_prompt_scores",
            "ensemble/member_2/influence/scores_prompt_scores"} <= set(inputs)


@pytest.mark.slow
def test_a_finished_ensemble_is_skipped(ensemble):
    artifacts = ensemble  # in place: PROMPTS, a path, is one of the settings a finished stage is skipped for
    before = {path: path.read_text() for path in artifacts.rglob("_SUCCESS")}
    assert run("ensemble", artifacts, "--ensemble_seeds=3", "--log_level=INFO")[0] == 0
    assert run("compute_scores", artifacts, "--ensemble_seeds=3")[0] == 0
    assert {path: path.read_text() for path in artifacts.rglob("_SUCCESS")} == before


@pytest.mark.slow
def test_a_member_trained_again_otherwise_is_refused_by_the_stages_that_read_it(ensemble, tmp_path):
    artifacts = copied(ensemble, tmp_path)
    member = artifacts / "ensemble/member_1"
    assert run("train", member, "--training_seed=1", "--learning_rate=3e-3")[0] == 0
    # Scores made from the member's old model: the lineage is followed into the member's tree.
    line = one_line_refusal(run("inspect_scores", artifacts, "--no-per_token_scores"))
    assert f"{member}/influence/factors_tiny_lm_factors was made from another {member}/model " in line
    assert "rerun the ensemble stage" in line
    # Made again in the member's tree, the member is still not the model's recipe.
    shutil.copy(tmp_path / "prompts.json", member.parent / "prompts.json")
    for stage in ("fit_factors", "compute_scores"):
        assert run(stage, member)[0] == 0
    line = one_line_refusal(run("compute_scores", artifacts, "--ensemble_seeds=3"))
    assert "ensemble member 1" in line and "was not trained as" in line and "training seed 1" in line
    assert not (artifacts / "reports").exists()


@pytest.mark.slow
def test_scores_of_an_ensemble_whose_members_are_missing_are_refused(ensemble, tmp_path):
    artifacts = copied(ensemble, tmp_path)
    line = one_line_refusal(run("compute_scores", artifacts, "--ensemble_seeds=4", "--scores_name=four"))
    assert "ensemble/member_3/model" in line and "run the ensemble stage first" in line
    assert not (artifacts / "ensemble/member_1/influence/scores_four").exists()  # refused before any scoring


@pytest.mark.slow
def test_new_prompts_need_compute_scores_alone_which_scores_the_members(ensemble, tmp_path):
    artifacts = copied(ensemble, tmp_path)
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"prompt": "The bassoon player was", "completion": " Edrik Solvane"}]))
    before = {path: path.read_text() for path in (artifacts / "ensemble").rglob("_SUCCESS")}
    assert run("compute_scores", artifacts, "--ensemble_seeds=3", "--scores_name=other", f"--prompts={other}")[0] == 0
    members = [matrix(artifacts / f"ensemble/member_{number}", "influence/scores_other") for number in (1, 2)]
    assert run("compute_scores", artifacts, "--scores_name=other_alone", f"--prompts={other}")[0] == 0
    alone = matrix(artifacts, "influence/scores_other_alone")
    assert members[0].shape == alone.shape == (1, 100)
    assert torch.allclose(matrix(artifacts, "influence/scores_other"), (alone + members[0] + members[1]) / 3,
                          rtol=1e-5, atol=1e-12)
    for path, text in before.items():  # the members' models and factors, and their first scores, as they were
        assert path.read_text() == text
    code, log = run("inspect_scores", artifacts, "--scores_name=other", "--log_level=INFO")
    assert code == 0, log[-3000:]
    report = json.loads((artifacts / "reports/other/report.json").read_text())
    assert report["ranking"] == "influence averaged over 3 models (training seeds +0..+2)"
    assert "suggestion" not in report
    listed = report["prompts"][0]["top_positive"] + report["prompts"][0]["top_negative"]
    assert listed and all(abs(sum(item["token_scores"]) - item["score"]) <= 1e-3 * abs(item["score"]) + 1e-9
                          for item in listed)  # the token scores split the averaged influence, not model 0's


@pytest.mark.slow
def test_members_are_scored_with_the_factors_the_model_is_scored_with(ensemble, tmp_path):
    """Members with factors of two names: compute_scores averages the members' scores made with the
    factors it is asked for, never scores a member made with others (here: K-FAC with identity)."""
    artifacts = copied(ensemble, tmp_path)
    assert run("fit_factors", artifacts, "--factors_name=kf", "--factor_strategy=kfac")[0] == 0
    # The member's kf factors (and, where the ensemble stage scores, scores of another name); its scores
    # prompt_scores stay those made with the fixture's identity factors.
    assert run("ensemble", artifacts, "--ensemble_seeds=2", "--factors_name=kf", env={"SCORES_NAME": "other"})[0] == 0
    assert run("compute_scores", artifacts, "--ensemble_seeds=2", "--factors_name=kf")[0] == 0
    assert run("compute_scores", artifacts, "--factors_name=kf", "--scores_name=kf_alone")[0] == 0
    member = artifacts / "ensemble/member_1"
    shutil.copy(tmp_path / "prompts.json", member.parent / "prompts.json")
    assert run("compute_scores", member, "--factors_name=kf", "--scores_name=kf_member")[0] == 0
    expected = (matrix(artifacts, "influence/scores_kf_alone") + matrix(member, "influence/scores_kf_member")) / 2
    assert torch.allclose(matrix(artifacts), expected, rtol=1e-5, atol=1e-12)
    inputs = json.loads((member / "influence/scores_prompt_scores/_SUCCESS").read_text())["inputs"]
    assert "influence/factors_kf" in inputs and "influence/factors_tiny_lm_factors" not in inputs


@pytest.mark.slow
def test_members_of_a_model_fine_tuned_from_a_model_that_changed_since_are_refused(tmp_path):
    from tests.families import save_tiny_model

    artifacts, source = tmp_path / "artifacts", tmp_path / "neo"
    (tmp_path / "prompts.json").write_text(json.dumps(PROMPTS))
    save_tiny_model("gpt_neo", source)
    assert run("train", artifacts, f"--model={source}")[0] == 0
    assert run("fit_factors", artifacts)[0] == 0
    save_tiny_model("gpt_neo", source, seed=1)  # MODEL saved again: other weights
    line = one_line_refusal(run("ensemble", artifacts, "--ensemble_seeds=2"))
    assert f"MODEL={source} has changed since" in line and not (artifacts / "ensemble").exists()
    # A member fine-tuned from the new MODEL (made in its tree as the ensemble stage would) is refused too.
    member = artifacts / "ensemble/member_1"
    assert run("train", member, f"--model={source}", "--training_seed=1")[0] == 0
    assert run("fit_factors", member)[0] == 0
    line = one_line_refusal(run("compute_scores", artifacts, "--ensemble_seeds=2"))
    assert "ensemble member 1" in line and "fine-tuned from another MODEL" in line


@pytest.mark.slow
def test_the_members_stages_check_the_device_memory_this_run_gives(ensemble, tmp_path):
    artifacts = copied(ensemble, tmp_path)
    line = one_line_refusal(run("ensemble", artifacts, "--ensemble_seeds=4", "--device_memory_gib=0.01"))
    assert "train: BATCH_SIZE=8 needs about" in line and "FORCE_FIT=true" in line
    assert not (artifacts / "ensemble/member_3").exists()
    code, log = run("ensemble", artifacts, "--ensemble_seeds=4", "--member_index=3", "--device_memory_gib=0.01",
                    "--force_fit")
    assert code == 0, log[-3000:]
    assert (artifacts / "ensemble/member_3/influence/factors_tiny_lm_factors/_SUCCESS").is_file()


def test_a_member_index_names_one_member_and_zero_is_the_model_itself():
    assert load_settings(EnsembleSettings, ["--ensemble_seeds=3"]).members == [1, 2]
    assert load_settings(EnsembleSettings, ["--ensemble_seeds=3", "--job_completion_index=2"]).members == [2]
    assert load_settings(EnsembleSettings, ["--ensemble_seeds=3", "--member_index=0"]).members == []
    line = one_line_refusal(jobs_in_process("ensemble", "--ensemble_seeds=3", "--member_index=3"))
    assert "member 3 is out of range: ENSEMBLE_SEEDS is 3" in line


@pytest.mark.slow
def test_a_model_imported_as_it_is_is_scored_alone_at_the_default_ensemble(tmp_path):
    from tests.families import save_tiny_model

    artifacts = tmp_path / "artifacts"
    (tmp_path / "prompts.json").write_text(json.dumps(PROMPTS))
    source = save_tiny_model("gpt2", tmp_path / "gpt2")
    assert run("import_model", artifacts, f"--model={source}")[0] == 0
    assert run("fit_factors", artifacts)[0] == 0
    code, log = run("ensemble", artifacts, "--ensemble_seeds=3", "--log_level=WARNING")
    assert code == 0 and "imported as it is" in log and not (artifacts / "ensemble").exists()
    code, log = run("compute_scores", artifacts, "--ensemble_seeds=3", "--log_level=WARNING")
    assert code == 0 and "scoring it alone" in log, log[-3000:]
    recorded = json.loads((artifacts / "influence/scores_prompt_scores/_SUCCESS").read_text())["settings"]
    assert recorded["ensemble_seeds"] == 1
    assert run("compute_scores", artifacts, "--ensemble_seeds=3", "--log_level=INFO")[1].count("skipping") == 1


@pytest.mark.slow
def test_the_report_of_an_ensemble_splits_its_averaged_influence_into_tokens(ensemble, tmp_path):
    """Per-token scores of the averaged influence are the mean of each model's, with its own
    factors: they sum to the listed (averaged) score, not to the model's own."""
    artifacts = copied(ensemble, tmp_path)
    code, log = run("inspect_scores", artifacts, "--num_influential=2")
    assert code == 0, log[-3000:]
    report = json.loads((artifacts / "reports/prompt_scores/report.json").read_text())
    alone = matrix(artifacts, "influence/scores_alone")
    listed = [(number, item) for number, entry in enumerate(report["prompts"])
              for item in entry["top_positive"] + entry["top_negative"]]
    assert listed
    for number, item in listed:
        assert abs(sum(item["token_scores"]) - item["score"]) <= 1e-3 * abs(item["score"]) + 1e-9, item["index"]
        assert abs(item["score"] - float(alone[number, item["index"]])) > 1e-3 * abs(item["score"])
    assert report["score_label"] == "influence score (mean of 3 models)"


@pytest.mark.slow
def test_members_are_scored_under_the_autocast_the_model_is(ensemble, tmp_path):
    """AMP_DTYPE is part of how the members are scored: members scored in float32 are scored again
    under bfloat16 autocast when the model's scores are, never averaged with them."""
    artifacts = copied(ensemble, tmp_path)
    assert run("compute_scores", artifacts, "--ensemble_seeds=3", "--amp_dtype=bfloat16")[0] == 0
    for number in (1, 2):
        recorded = json.loads((artifacts / f"ensemble/member_{number}/influence/scores_prompt_scores/_SUCCESS")
                              .read_text())["settings"]
        assert recorded["amp_dtype"] == "bfloat16", number
