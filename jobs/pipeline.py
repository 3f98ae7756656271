"""Run the analysis stages in order, for local use: the pipeline stages of influence_core.stages
(train, fit_factors, inspect_factors, compute_scores, compute_self_scores, inspect_scores). Accepts
every stage's settings; finished stages are skipped."""

from __future__ import annotations

import importlib

from influence_core.settings import ComputeScoresSettings, PipelineSettings, stage_settings
from influence_core.stages import PIPELINE
from jobs.compute_scores import load_prompts


def main(settings: PipelineSettings) -> None:
    load_prompts(stage_settings(ComputeScoresSettings, settings))  # bad prompts fail before training
    for stage in PIPELINE:
        importlib.import_module(stage.module).main(stage_settings(stage.settings, settings))
