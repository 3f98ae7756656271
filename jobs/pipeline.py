"""Run the analysis stages in order, for local use: the pipeline stages of influence_core.stages
(train, fit_factors, inspect_factors, ensemble, compute_scores, compute_self_scores, inspect_scores). Accepts
every stage's settings; finished stages are skipped."""

from __future__ import annotations

from influence_core.prompts import load_prompts
from influence_core.settings import PipelineSettings, stage_settings
from influence_core.stages import PIPELINE
from jobs.common import run_stage


def main(settings: PipelineSettings) -> None:
    load_prompts(settings.prompts)  # bad prompts fail before training
    for stage in PIPELINE:
        run_stage(stage.name, stage_settings(stage.settings, settings))
