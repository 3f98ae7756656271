"""Fact-tracing evaluation on the demo corpus: for each factor strategy (ekfac, kfac, diagonal,
identity), fit factors and score the prompts under names of its own, then measure how well each
ranking finds the documents that state each planted fact (recall@10, MRR), beside a lexical
baseline (BM25). Needs the train stage's outputs on the demo corpus (planted_facts.json).

Strategies already fitted and scored with the same settings are skipped (the fit_factors and
compute_scores stages' own skip), so a rerun only redoes what changed.

Output: reports/evaluation/ with evaluation.json and evaluation.md.
"""

from __future__ import annotations

import json
import logging
import time

from influence_core import paths
from influence_core.errors import ConfigError
from influence_core.prompts import parse_prompts
from influence_core.settings import ComputeScoresSettings, EvaluateSettings, FitFactorsSettings, stage_settings
from influence_core.storage import read_uri, work_dir
from jobs import compute_scores, fit_factors
from jobs.common import already_done, fingerprint, manifest, open_artifacts

log = logging.getLogger("jobs.evaluate")
PLANTED_FACTS = "data/train/planted_facts.json"
LABELS = {"ekfac": "EK-FAC", "kfac": "K-FAC", "diagonal": "diagonal", "identity": "identity"}
# The train stage's settings that describe the model and corpus, for the report.
TRAIN_KEYS = ("dataset", "num_examples", "seed", "model_preset", "max_length", "vocab_size", "batch_size",
              "num_train_epochs", "learning_rate")


def strategy_settings(settings: EvaluateSettings, strategy: str) -> tuple[FitFactorsSettings, ComputeScoresSettings]:
    """The fit_factors and compute_scores settings of one strategy, under the evaluation's names."""
    name = f"{settings.eval_name}_{strategy}"
    fit = stage_settings(FitFactorsSettings, settings).model_copy(
        update={"factors_name": name, "factor_strategy": strategy})
    score = stage_settings(ComputeScoresSettings, settings).model_copy(
        update={"factors_name": name, "scores_name": name})
    return fit, score


def main(settings: EvaluateSettings) -> None:
    started = time.time()
    prompts = parse_prompts(read_uri(settings.prompts, "PROMPTS"), settings.prompts)
    artifacts = open_artifacts(settings.artifacts_uri)
    artifacts.require(paths.MODEL, paths.TRAIN_DATA)
    if not artifacts.exists(PLANTED_FACTS):
        raise ConfigError(f"evaluate needs a model trained on the demo corpus: {artifacts.url(PLANTED_FACTS)} "
                          "does not exist (run the train stage with DATASET=demo)")
    facts = json.loads(artifacts.read_bytes(PLANTED_FACTS))
    asked = {(prompt.prompt, prompt.completion) for prompt in prompts}
    not_asked = [fact["prompt"] for fact in facts if (fact["prompt"], fact["completion"]) not in asked]
    if len(not_asked) == len(facts):
        raise ConfigError(f"PROMPTS={settings.prompts}: asks for none of the {len(facts)} planted facts "
                          "(a prompt and completion equal to a fact's, as in the shipped prompts.json)")
    if not_asked:
        log.warning("evaluate: %d planted facts are not asked by PROMPTS and are left out: %s", len(not_asked),
                    "; ".join(not_asked))

    runs = {strategy: strategy_settings(settings, strategy) for strategy in settings.strategies}
    for number, (strategy, (fit, score)) in enumerate(runs.items(), start=1):
        log.info("evaluate: strategy %d/%d, %s", number, len(runs), strategy)
        fit_factors.main(fit)
        compute_scores.main(score)
    scores = {strategy: paths.SCORES(score.scores_name) for strategy, (_, score) in runs.items()}
    inputs = artifacts.require(paths.MODEL, paths.TRAIN_DATA, *scores.values())
    if already_done(artifacts, [paths.EVALUATION_REPORT], "evaluate", settings, inputs):
        return

    from datasets import load_from_disk
    from safetensors.torch import load_file

    from influence_core.evaluation import LEXICAL_BASELINES, fact_metrics, lexical_scores, render_markdown
    from influence_core.prompts import Prompt

    with work_dir() as work:
        texts = load_from_disk(str(artifacts.fetch(paths.TRAIN_DATA, work / "train")))["text"]
        methods = {}
        for strategy, relative in scores.items():
            local = artifacts.fetch(relative, work / relative)
            matrix = load_file(str(local / "pairwise_scores.safetensors"))["all_modules"]
            scored = [Prompt(**item) for item in json.loads((local / "prompts.json").read_text())]
            fit, score = runs[strategy]
            seconds = {stage: artifacts.manifest(output)["timings"]["seconds"] for stage, output in
                       (("fit_factors", paths.FACTORS(fit.factors_name)), ("compute_scores", relative))}
            methods[strategy] = {"label": LABELS[strategy], "factors_name": fit.factors_name,
                                 "scores_name": score.scores_name, "seconds": seconds,
                                 **fact_metrics(matrix, scored, texts, facts)}
            log.info("%s: recall@10 %.3f, MRR %.3f", strategy, methods[strategy]["recall_at_10"],
                     methods[strategy]["mrr"])
        for name, matrix in lexical_scores(prompts, texts).items():
            methods[name] = {"label": LEXICAL_BASELINES[name], **fact_metrics(matrix, prompts, texts, facts)}
            log.info("%s: recall@10 %.3f, MRR %.3f", name, methods[name]["recall_at_10"], methods[name]["mrr"])

        trained = artifacts.manifest(paths.MODEL)["settings"]
        fit, score = next(iter(runs.values()))
        used = {
            **{f"train.{key}": trained.get(key) for key in TRAIN_KEYS},
            "documents": len(texts),
            "facts_evaluated": len(facts) - len(not_asked),
            "strategies": ", ".join(settings.strategies),
            "task": settings.task,
            "factor_batch_size": settings.factor_batch_size,
            "train_batch_size": settings.train_batch_size,
            "query_gradient_rank": settings.query_gradient_rank or "full",
            "damping_factor": settings.damping_factor,
            "use_empirical_fisher": fit.use_empirical_fisher,
            "eigendecomposition_dtype": fit.eigendecomposition_dtype,
            "per_sample_gradient_dtype": score.per_sample_gradient_dtype,
            "bm25": "rank_bm25 BM25Okapi, k1=1.5, b=0.75, lower-cased word tokens",
        }
        evaluation = {"settings": used, "facts_not_asked": not_asked, "methods": methods,
                      "stage_settings": {"fit_factors": fingerprint(fit), "compute_scores": fingerprint(score)}}
        out = work / "evaluation"
        out.mkdir()
        (out / "evaluation.json").write_text(json.dumps(evaluation, indent=2, ensure_ascii=False))
        (out / "evaluation.md").write_text(render_markdown(evaluation))
        record = manifest("evaluate", settings, inputs, started)
        log.info("published %s", artifacts.publish(out, paths.EVALUATION_REPORT, record))

