"""Run the analysis stages in order, for local use: train, fit_factors, inspect_factors,
compute_scores, compute_self_scores, inspect_scores. Accepts every stage's settings; finished
stages are skipped."""

from __future__ import annotations

from influence_core.settings import (
    ComputeScoresSettings,
    ComputeSelfScoresSettings,
    FitFactorsSettings,
    InspectFactorsSettings,
    InspectScoresSettings,
    PipelineSettings,
    TrainSettings,
    stage_settings,
)
from jobs import compute_scores, compute_self_scores, fit_factors, inspect_factors, inspect_scores, train
from jobs.common import parse

STAGES = (
    (train, TrainSettings),
    (fit_factors, FitFactorsSettings),
    (inspect_factors, InspectFactorsSettings),
    (compute_scores, ComputeScoresSettings),
    (compute_self_scores, ComputeSelfScoresSettings),
    (inspect_scores, InspectScoresSettings),
)


def run(argv: list[str]) -> None:
    settings = parse(PipelineSettings, argv, "pipeline")
    compute_scores.load_prompts(stage_settings(ComputeScoresSettings, settings))  # bad prompts fail before training
    for stage, settings_cls in STAGES:
        stage.main(stage_settings(settings_cls, settings))
