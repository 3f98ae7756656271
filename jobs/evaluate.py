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

from influence_core.artifacts import Evaluation, Factors, Model, Scores, TrainData, fingerprints, require
from influence_core.errors import ConfigError
from influence_core.prompts import load_prompts
from influence_core.settings import ComputeScoresSettings, EvaluateSettings, FitFactorsSettings, stage_settings
from influence_core.storage import work_dir
from jobs.common import already_done, fingerprint, manifest, open_store, run_stage

log = logging.getLogger("jobs.evaluate")
LABELS = {"ekfac": "EK-FAC", "kfac": "K-FAC", "diagonal": "diagonal", "identity": "identity"}
# The train stage's settings that describe the model and corpus, for the report.
TRAIN_KEYS = ("dataset", "num_examples", "seed", "model_preset", "max_length", "vocab_size", "batch_size",
              "num_train_epochs", "learning_rate")


def strategy_settings(settings: EvaluateSettings, strategy: str) -> tuple[FitFactorsSettings, ComputeScoresSettings]:
    """The fit_factors and compute_scores settings of one strategy, under the evaluation's names."""
    name = f"{settings.eval_name}_{strategy}"
    fit = stage_settings(FitFactorsSettings, settings).model_copy(
        update={"factors_name": name, "factor_strategy": strategy})
    # One model: the evaluation compares curvature strategies (an ensemble's members would be made for each).
    score = stage_settings(ComputeScoresSettings, settings).model_copy(
        update={"factors_name": name, "scores_name": name, "ensemble_seeds": 1})
    return fit, score


def main(settings: EvaluateSettings) -> None:
    started = time.time()
    prompts = load_prompts(settings.prompts)
    store = open_store(settings.artifacts_uri)
    model, data = Model(), TrainData()
    require(store, model, data)
    facts = data.facts()
    if facts is None:
        raise ConfigError(f"evaluate needs a model trained on a demo corpus: {data.url} holds no "
                          f"{TrainData.PLANTED_FACTS} (run the train stage with DATASET=demo or demo-hard)")
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
        run_stage("fit_factors", fit)
        run_stage("compute_scores", score)
    scores = {strategy: Scores(score.scores_name) for strategy, (_, score) in runs.items()}
    factors = {strategy: Factors(fit.factors_name) for strategy, (fit, _) in runs.items()}
    require(store, model, data, *scores.values(), *factors.values())
    inputs = fingerprints(model, data, *scores.values())
    if already_done(store, [Evaluation()], "evaluate", settings, inputs):
        return

    from datasets import load_from_disk

    from influence_core.evaluation import LEXICAL_BASELINES, fact_metrics, lexical_scores, render_markdown
    from influence_core.fusion import ALONE, BM25_DESCRIPTION, corpus_bm25, describe, fused_scores
    from influence_core.prompts import Prompt

    with work_dir() as work:
        train_dir = data.fetch(work / "train")
        texts = load_from_disk(str(train_dir))["text"]
        methods, matrices = {}, {}
        for strategy, each in scores.items():
            local = each.fetch(work / each.relative)
            matrices[strategy] = Scores.matrix(local)
            scored = [Prompt(**item) for item in json.loads((local / Scores.PROMPTS).read_text())]
            seconds = {"fit_factors": factors[strategy].manifest.seconds, "compute_scores": each.manifest.seconds}
            ranking = describe(each.settings, each.models)
            label = LABELS[strategy] if ranking == ALONE else f"{LABELS[strategy]}, {ranking}"
            methods[strategy] = {"label": label, "factors_name": factors[strategy].settings.factors_name,
                                 "scores_name": each.settings.scores_name, "seconds": seconds,
                                 **fact_metrics(matrices[strategy], scored, texts, facts)}
            log.info("%s: recall@10 %.3f, MRR %.3f", strategy, methods[strategy]["recall_at_10"],
                     methods[strategy]["mrr"])
        lexical = lexical_scores(prompts, corpus_bm25(train_dir))
        for name, matrix in lexical.items():
            methods[name] = {"label": LEXICAL_BASELINES[name], **fact_metrics(matrix, prompts, texts, facts)}
            log.info("%s: recall@10 %.3f, MRR %.3f", name, methods[name]["recall_at_10"], methods[name]["mrr"])
        first = settings.strategies[0]
        if scores[first].fusion == "none":  # its influence fused with BM25 too, as SCORE_FUSION=bm25_zmean does
            fused = f"{first}+bm25"
            methods[fused] = {"label": f"{LABELS[first]} with BM25 (mean of per-prompt z-scores)",
                              **fact_metrics(fused_scores(matrices[first], lexical["bm25"]), prompts, texts, facts)}
            log.info("%s: recall@10 %.3f, MRR %.3f", fused, methods[fused]["recall_at_10"], methods[fused]["mrr"])

        trained = model.settings
        fit, score = next(iter(runs.values()))
        used = {
            **{f"train.{key}": getattr(trained, key) for key in TRAIN_KEYS},
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
            "bm25": BM25_DESCRIPTION,
        }
        evaluation = {"settings": used, "facts_not_asked": not_asked, "methods": methods,
                      "stage_settings": {"fit_factors": fingerprint(fit), "compute_scores": fingerprint(score)}}
        out = work / "evaluation"
        out.mkdir()
        (out / Evaluation.JSON).write_text(json.dumps(evaluation, indent=2, ensure_ascii=False))
        (out / Evaluation.MARKDOWN).write_text(render_markdown(evaluation))
        record = manifest("evaluate", settings, inputs, started)
        log.info("published %s", store.publish(out, Evaluation().relative, record))
