"""Settings: environment variables, the original scripts' flags, validation."""

from __future__ import annotations

import inspect

import pytest

from influence_core import settings as settings_module
from influence_core.errors import ConfigError
from influence_core.settings import (
    CommonSettings,
    ComputeScoresSettings,
    FitFactorsSettings,
    InspectFactorsSettings,
    InspectScoresSettings,
    PipelineSettings,
    TrainSettings,
    load_settings,
    stage_settings,
)
from influence_core.stages import PIPELINE
from tests.conftest import jobs_in_process, one_line_refusal


def test_classic_fit_factors_flags():
    settings = load_settings(FitFactorsSettings, (
        "--factors_name tiny_lm_factors --factor_strategy ekfac --factor_batch_size 4 "
        "--covariance_data_partitions 8 --lambda_data_partitions 8 --eigendecomposition_dtype float64").split())
    assert (settings.factors_name, settings.factor_strategy, settings.factor_batch_size) == ("tiny_lm_factors",
                                                                                             "ekfac", 4)
    assert (settings.covariance_data_partitions, settings.lambda_data_partitions) == (8, 8)
    assert settings.eigendecomposition_dtype == "float64"


def test_classic_compute_scores_flags():
    settings = load_settings(ComputeScoresSettings, (
        "--factors_name tiny_lm_factors --scores_name prompt_scores --query_gradient_rank 64 "
        "--train_batch_size 8 --damping_factor 1e-5 --per_sample_gradient_dtype float32 "
        "--precondition_dtype float32").split())
    assert settings.query_gradient_rank == 64 and settings.train_batch_size == 8
    assert settings.damping_factor == pytest.approx(1e-5)


def test_classic_inspect_flags():
    factors = load_settings(InspectFactorsSettings, "--factors_name x --layer_num 11 --output_dir out/f".split())
    assert (factors.layer_num, factors.output_dir) == (11, "out/f")
    scores = load_settings(InspectScoresSettings, "--scores_name prompt_scores --num_influential 5".split())
    assert scores.num_influential == 5


def test_environment_variables_are_upper_case_field_names(monkeypatch):
    monkeypatch.setenv("FACTOR_STRATEGY", "kfac")
    monkeypatch.setenv("FACTOR_BATCH_SIZE", "3")
    monkeypatch.setenv("ARTIFACTS_URI", "s3://bucket/run")
    settings = load_settings(FitFactorsSettings, [])
    assert (settings.factor_strategy, settings.factor_batch_size, settings.artifacts_uri) == ("kfac", 3,
                                                                                             "s3://bucket/run")
    assert load_settings(FitFactorsSettings, ["--factor_strategy", "identity"]).factor_strategy == "identity"


def test_diagfisher_means_diagonal():
    assert load_settings(FitFactorsSettings, ["--factor_strategy", "diagfisher"]).factor_strategy == "diagonal"


@pytest.mark.parametrize("argv, message", [
    (["--factor_strategy", "sgd"], "FACTOR_STRATEGY"),
    (["--factor_batch_size", "0"], "greater than 0"),
    (["--factors_name", "/abs"], "FACTORS_NAME"),
    (["--eigendecomposition_dtype", "int8"], "EIGENDECOMPOSITION_DTYPE"),
])
def test_bad_values_raise_one_line(argv, message):
    with pytest.raises(ConfigError) as error:
        load_settings(FitFactorsSettings, argv)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_pipeline_settings_split_into_stages():
    settings = load_settings(PipelineSettings, ["--factor_strategy", "kfac", "--num_train_epochs", "2",
                                                "--scores_name", "s"])
    train = stage_settings(TrainSettings, settings)
    scores = stage_settings(ComputeScoresSettings, settings)
    assert train.num_train_epochs == 2 and scores.scores_name == "s"
    assert stage_settings(FitFactorsSettings, settings).factor_strategy == "kfac"


def test_pipeline_settings_combine_every_stage():
    stages = [stage.settings for stage in PIPELINE]
    fields = list(PipelineSettings.model_fields)
    assert set(fields) == set().union(*(stage.model_fields for stage in stages))
    assert fields.index("dataset") < fields.index("factor_strategy") < fields.index("num_influential")  # stage order


SETTINGS_CLASSES = sorted((cls for name, cls in inspect.getmembers(settings_module, inspect.isclass)
                           if issubclass(cls, CommonSettings) and not name.startswith("_")),
                          key=lambda cls: cls.__name__)


@pytest.mark.parametrize("cls", SETTINGS_CLASSES, ids=lambda cls: cls.__name__)
def test_every_setting_has_a_help_text(cls):
    undocumented = [name for name, field in cls.model_fields.items() if not (field.description or "").strip()]
    assert not undocumented, f"{cls.__name__}: no description for {', '.join(undocumented)}"


@pytest.mark.parametrize("cls", SETTINGS_CLASSES, ids=lambda cls: cls.__name__)
def test_help_prints_every_settings_help_text(cls, capsys):
    with pytest.raises(SystemExit) as exit_:
        load_settings(cls, ["--help"])
    assert exit_.value.code == 0
    printed = "".join(capsys.readouterr().out.split())  # argparse wraps lines (at spaces and hyphens)
    for name, field in cls.model_fields.items():
        assert f"--{field.alias or name}" in printed
        assert "".join((field.description or "").split()) in printed, name


def test_amp_dtype_reaches_training_factors_and_scores(monkeypatch):
    """AMP_DTYPE=auto is float32 on a CPU and bfloat16 on a GPU with bfloat16 tensor cores; the
    resolved dtype is the Trainer's bf16 flag and Kronfluence's amp_dtype for factors and scores."""
    import torch

    from influence_core import runtime
    from influence_core.factors import factor_arguments
    from influence_core.scores import score_arguments
    from influence_core.training import training_plan

    def resolved(amp_dtype: str) -> tuple:
        return (training_plan(load_settings(TrainSettings, ["--amp_dtype", amp_dtype])).bf16,
                factor_arguments(load_settings(FitFactorsSettings, ["--amp_dtype", amp_dtype])).amp_dtype,
                score_arguments(load_settings(ComputeScoresSettings, ["--amp_dtype", amp_dtype])).amp_dtype)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolved("auto") == resolved("float32") == (False, None, None)
    assert resolved("bfloat16") == (True, torch.bfloat16, torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert runtime.autocast_dtype("auto") is None  # emulated bfloat16 (pre-Ampere) is slower: float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert runtime.autocast_dtype("auto") == torch.bfloat16
    assert runtime.autocast_dtype("float32") is None
    with pytest.raises(ConfigError, match="AMP_DTYPE"):
        load_settings(TrainSettings, ["--amp_dtype", "float16"])


@pytest.mark.parametrize("cls, flags, setting", [
    (InspectScoresSettings, ["--scores_name", "lds"], "SCORES_NAME"),
    (InspectScoresSettings, ["--scores_name", "evaluation"], "SCORES_NAME"),
    (ComputeScoresSettings, ["--scores_name", "factors_x"], "SCORES_NAME"),
    (ComputeScoresSettings, ["--scores_name", "lds_identity"], "SCORES_NAME"),
    (FitFactorsSettings, ["--factors_name", "lds_identity"], "FACTORS_NAME"),
    (settings_module.LdsSettings, ["--lds_scores", "prompt_scores,bm25"], "LDS_SCORES"),
    (settings_module.LdsSettings, ["--lds_scores", "identity"], "LDS_SCORES"),
    (settings_module.LdsSettings, ["--lds_scores", "random"], "LDS_SCORES"),
])
def test_names_another_artifact_or_a_baseline_holds_are_refused(cls, flags, setting):
    """reports/<SCORES_NAME> must not be another stage's report (reports/lds, reports/evaluation,
    reports/factors_<name>), nor LDS_SCORES a baseline's name, nor a name the lds stage uses."""
    from influence_core.artifacts import check_names

    with pytest.raises(ConfigError, match=setting):
        check_names(load_settings(cls, flags))


def test_a_manifest_may_record_the_names_the_lds_stage_gives_its_baseline():
    from influence_core.artifacts import LdsReport
    from influence_core.settings import recorded_settings

    name = LdsReport.IDENTITY
    assert recorded_settings(ComputeScoresSettings, {"scores_name": name, "factors_name": name}).scores_name == name
    line = one_line_refusal(jobs_in_process("compute_scores", f"--scores_name={name}"))
    assert "invalid setting SCORES_NAME" in line and "taken by the lds stage's identity baseline" in line
