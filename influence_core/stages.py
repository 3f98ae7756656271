"""The stages, in one list: `python -m jobs <name>`, the pipeline, the messages for a missing
input, the tests and the Kubernetes manifest checks all read it.

Adding a stage: a `Stage` line here (its settings class in settings.py, its outputs from paths.py),
its module jobs/<name>.py with `main(settings)`, its Job manifest k8s/base/job-<name>.yaml (listed in
k8s/base/kustomization.yaml), and its section in the README.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from influence_core import paths, settings
from influence_core.settings import CommonSettings


@dataclass(frozen=True)
class Stage:
    name: str
    settings: type[CommonSettings]
    outputs: tuple[str, ...] = ()
    """What it publishes: templates of paths.py, formatted with its settings."""
    pipeline: bool = False
    """One of the analysis stages that `python -m jobs pipeline` (`make demo`) runs, in this order."""
    job: bool = True
    """Runs as a Kubernetes Job of its own, k8s/base/job-<name with dashes>.yaml."""
    main_process_only: bool = False
    """Under torchrun only the main process runs it (a report: the others would only repeat it)."""

    @property
    def module(self) -> str:
        return f"jobs.{self.name}"

    def output_paths(self, stage_settings: CommonSettings) -> list[str]:
        values = stage_settings.model_dump()
        return [template.format(**values) for template in self.outputs]


STAGES: tuple[Stage, ...] = (
    Stage("train", settings.TrainSettings, (paths.TRAIN_DATA, paths.MODEL), pipeline=True),
    Stage("fit_factors", settings.FitFactorsSettings, (paths.FACTORS,), pipeline=True),
    Stage("inspect_factors", settings.InspectFactorsSettings, (paths.FACTORS_REPORT,), pipeline=True,
          main_process_only=True),
    Stage("compute_scores", settings.ComputeScoresSettings, (paths.SCORES,), pipeline=True),
    Stage("compute_self_scores", settings.ComputeSelfScoresSettings, (paths.SELF_SCORES,), pipeline=True),
    Stage("inspect_scores", settings.InspectScoresSettings, (paths.REPORT,), pipeline=True, main_process_only=True),
    Stage("import_model", settings.ImportModelSettings, (paths.TRAIN_DATA, paths.MODEL)),  # instead of train
    Stage("preview_data", settings.PreviewDataSettings),
    Stage("lds", settings.LdsSettings, (paths.LDS_REPORT, paths.LDS_SUBSET)),
    Stage("evaluate", settings.EvaluateSettings, (paths.EVALUATION_REPORT,), job=False),
    Stage("pipeline", settings.PipelineSettings, job=False),
    Stage("plan", settings.PlanSettings, job=False),
    Stage("fetch_report", settings.FetchReportSettings, job=False),
)
BY_NAME = {stage.name: stage for stage in STAGES}
PIPELINE = tuple(stage for stage in STAGES if stage.pipeline)


FIELD = re.compile(r"\{[^}]*\}")


def _pattern(template: str) -> re.Pattern:
    """A template's paths, and anything below them: each {field} is one path segment."""
    return re.compile("[^/]+".join(map(re.escape, FIELD.split(template))) + "(/.*)?")


# The most literal template first (reports/lds is the lds stage's, not a report named "lds"); among
# equals, the stage listed first (model: train, not import_model).
_PRODUCERS = [(_pattern(template), name) for template, name in sorted(
    ((template, stage.name) for stage in STAGES for template in stage.outputs),
    key=lambda item: -len(FIELD.sub("", item[0])))]


def producer_of(relative: str) -> str:
    """The stage that publishes an artifact path (the first one listed, when several can)."""
    return next((name for pattern, name in _PRODUCERS if pattern.fullmatch(relative)), "an earlier")
