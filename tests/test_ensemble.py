"""Ensembles (ENSEMBLE_SEEDS): members trained as the model was with other training seeds, fitted
and scored as it was, each in its own tree; compute_scores averages them after checking that they
belong with the model, and every later stage follows the members' lineage too."""

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


def run(stage: str, artifacts: Path, *flags: str) -> tuple[int, str]:
    """The stage in this process with the TINY flags it has, and the prompts beside the artifacts."""
    fields = BY_NAME[stage].settings.model_fields
    tiny = [flag for flag in [*TINY, f"--prompts={artifacts.parent / 'prompts.json'}"]
            if flag[2:].split("=")[0] in fields]
    return jobs_in_process(stage, f"--artifacts_uri={artifacts}", *tiny, *flags)


def matrix(artifacts: Path, scores: str = "influence/scores_prompt_scores") -> torch.Tensor:
    return load_file(str(artifacts / scores / "pairwise_scores.safetensors"))["all_modules"]


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
    artifacts = tmp_path / "artifacts"
    shutil.copytree(ensemble.parent, tmp_path, dirs_exist_ok=True)
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
    artifacts = tmp_path / "artifacts"
    shutil.copytree(ensemble.parent, tmp_path, dirs_exist_ok=True)
    line = one_line_refusal(run("compute_scores", artifacts, "--ensemble_seeds=4", "--scores_name=four"))
    assert "ensemble/member_1/influence/scores_four" in line and "run the ensemble stage first" in line


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
