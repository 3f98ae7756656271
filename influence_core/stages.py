"""The stages, in one list: `python -m jobs <name>`, the pipeline, the tests (the lineage test runs
every stage against changed inputs) and the Kubernetes manifest checks all read it.

Adding a stage: a `Stage` line here (its settings class in settings.py; the kinds of artifact it
reads and the artifacts it writes, from artifacts.py), its module jobs/<name>.py with
`main(settings)`, its Job manifest k8s/base/job-<name>.yaml (listed in k8s/base/kustomization.yaml),
and its page docs/stages/<name>.md (in mkdocs.yml's nav).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from influence_core import settings
from influence_core.artifacts import (
    Artifact,
    Evaluation,
    Factors,
    FactorsReport,
    Index,
    LdsReport,
    LdsSubset,
    Model,
    Report,
    Scores,
    SelfScores,
    TrainData,
    in_member,
)
from influence_core.settings import CommonSettings


def _nothing(stage_settings: CommonSettings) -> list[Artifact]:
    return []


@dataclass(frozen=True)
class Stage:
    name: str
    settings: type[CommonSettings]
    inputs: tuple[type[Artifact], ...] = ()
    """The kinds of artifact it reads (some only when they exist: self-scores, the LDS report)."""
    outputs: Callable[[CommonSettings], list[Artifact]] = _nothing
    """What it publishes below ARTIFACTS_URI, for its settings."""
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
        return [artifact.relative for artifact in self.outputs(stage_settings)]


def _evaluated(evaluate: settings.EvaluateSettings) -> list[Artifact]:
    names = [f"{evaluate.eval_name}_{strategy}" for strategy in evaluate.strategies]
    return [Evaluation(), *map(Factors, names), *map(Scores, names)]


def _members(ensemble: settings.EnsembleSettings) -> list[Artifact]:
    return [in_member(artifact, number) for number in ensemble.members
            for artifact in (Model(), TrainData(), Factors(ensemble.factors_name))]


def _scored(scoring: settings.ComputeScoresSettings) -> list[Artifact]:
    """The scores, and with ENSEMBLE_SEEDS each member's, which compute_scores scores first."""
    scores = Scores(scoring.scores_name)
    return [scores, *(in_member(scores, number) for number in range(1, scoring.ensemble_seeds))]


STAGES: tuple[Stage, ...] = (
    Stage("train", settings.TrainSettings, (), lambda s: [TrainData(), Model()], pipeline=True),
    Stage("fit_factors", settings.FitFactorsSettings, (Model, TrainData), lambda s: [Factors(s.factors_name)],
          pipeline=True),
    Stage("inspect_factors", settings.InspectFactorsSettings, (Model, Factors),
          lambda s: [] if s.output_dir else [FactorsReport(s.factors_name)], pipeline=True, main_process_only=True),
    Stage("ensemble", settings.EnsembleSettings, (Model, TrainData, Factors), _members, pipeline=True),
    Stage("compute_scores", settings.ComputeScoresSettings, (Model, TrainData, Factors), _scored, pipeline=True),
    Stage("compute_self_scores", settings.ComputeSelfScoresSettings, (Model, TrainData, Factors),
          lambda s: [SelfScores(s.factors_name)], pipeline=True),
    Stage("inspect_scores", settings.InspectScoresSettings, (Scores, Model, TrainData, Factors, SelfScores, LdsReport),
          lambda s: [Report(s.scores_name)], pipeline=True, main_process_only=True),
    Stage("import_model", settings.ImportModelSettings, (), lambda s: [TrainData(), Model()]),  # instead of train
    Stage("preview_data", settings.PreviewDataSettings),
    Stage("lds", settings.LdsSettings, (Model, TrainData, Scores, Factors),
          lambda s: [LdsReport(), *map(LdsSubset, range(s.lds_subsets)), Factors(LdsReport.IDENTITY),
                     Scores(LdsReport.IDENTITY)]),
    Stage("build_index", settings.BuildIndexSettings, (Model, TrainData, Factors), lambda s: [Index(s.index_name)]),
    Stage("query", settings.QueryIndexSettings, (Model, TrainData, Factors, Index),
          lambda s: [] if s.prompt is not None else [Scores(s.scores_name)]),
    Stage("evaluate", settings.EvaluateSettings, (Model, TrainData), _evaluated, job=False),
    Stage("pipeline", settings.PipelineSettings, job=False),
    Stage("plan", settings.PlanSettings, (Model, TrainData, Factors), job=False),
    Stage("fetch_report", settings.FetchReportSettings, (Report,), job=False),
)
BY_NAME = {stage.name: stage for stage in STAGES}
PIPELINE = tuple(stage for stage in STAGES if stage.pipeline)
