"""The linear datamodeling score (LDS) of the scores: do they predict what retraining does?

The model is retrained on LDS_SUBSETS random subsets of its training examples (LDS_FRACTION of
them each, drawn from SEED), LDS_SEEDS times per subset, with the train stage's settings and the
model's tokenizer; every prompt's measurement (each task's) is taken on every retrained model. Per
prompt, the Spearman correlation over the subsets of the measured values with minus the sum of the
subset's scores is its LDS. Reported for the scores of LDS_SCORES and for baselines computed here:
identity (gradient dot products), BM25 on prompt + completion, and random scores.

Each subset is published on its own (lds/subsets/<index>/measurements.json) as soon as it is
done. With SUBSET_INDEX (or an Indexed Job's completion index) only that subset is retrained; a
run without one retrains what is missing, then correlates. Output: reports/lds/ (lds.json,
lds.md, lds.png, lds_prompts.png).
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

from influence_core import sources
from influence_core.artifacts import (
    Factors,
    LdsReport,
    LdsSubset,
    Model,
    Scores,
    TrainData,
    fingerprints,
    require,
)
from influence_core.errors import ConfigError
from influence_core.prompts import Prompt, load_prompts
from influence_core.runtime import world_size
from influence_core.settings import FitFactorsSettings, LdsSettings, TrainSettings
from influence_core.storage import Store, work_dir
from jobs.common import already_done, fingerprint, manifest, open_store, run_stage, up_to_date

log = logging.getLogger("jobs.lds")
RANDOM_DRAWS = 100  # the random baseline: per prompt, the mean correlation of this many draws of random scores


def main(settings: LdsSettings) -> None:
    if world_size() > 1:  # each process would retrain the same subsets
        raise ConfigError("lds runs as one process: start it with --nproc-per-node=1 and spread the subsets over "
                          "processes or pods with SUBSET_INDEX (the lds-retrain Indexed Job)")
    started = time.time()
    prompts = load_prompts(settings.prompts)
    store = open_store(settings.artifacts_uri)
    model, data = Model(), TrainData()
    scores = [Scores(name) for name in settings.lds_scores] if settings.subset is None else []
    require(store, model, data, *scores)  # the scores' lineage included: made from this very model
    retrainable(model)
    trained = model.settings
    inputs = fingerprints(model, data)
    seeds = [trained.model_seed + k for k in range(settings.lds_seeds)]
    indices = list(range(settings.lds_subsets)) if settings.subset is None else [settings.subset]
    asked = [prompt.model_dump() for prompt in prompts]
    for name, each in zip(settings.lds_scores, scores):
        if each.prompts() != asked:
            raise ConfigError(f"LDS_SCORES={name}: these scores are for other prompts than PROMPTS={settings.prompts}; "
                              "score PROMPTS with compute_scores, or set PROMPTS to its prompts")
    stamps = {index: subset_stamp(settings, index, seeds, asked) for index in indices}
    redo = settings.force and settings.subset is not None  # FORCE redoes a subset only when run alone
    missing = [i for i in indices if redo or not up_to_date(store, LdsSubset(i).relative, "lds", stamps[i], inputs)]
    if len(missing) < len(indices):
        log.info("lds: %d of %d subsets already published", len(indices) - len(missing), len(indices))
    with work_dir() as work:
        if missing:
            retrain_subsets(missing, stamps, settings, store, model, data, trained, prompts, inputs, work)
        if settings.subset is not None:
            return
        identity = identity_baseline(store, scores[0], settings.prompts)
        subsets = [LdsSubset(index) for index in indices]
        require(store, model, data, *scores, identity, *subsets)
        inputs = fingerprints(model, data, *scores, identity, *subsets)
        if already_done(store, [LdsReport()], "lds", settings, inputs):
            return
        local = correlate(settings, prompts, model, data, scores, identity, subsets, trained, work)
        log.info("published %s", store.publish(local, LdsReport().relative, manifest("lds", settings, inputs,
                                                                                     started)))


def retrainable(model: Model) -> None:
    """A model trained from scratch is retrained from scratch, a fine-tuned one fine-tuned again
    from the same MODEL (which must not have changed since); one imported as it is was not trained
    here, so there is nothing to retrain."""
    if model.family == "imported":
        raise ConfigError(f"lds: {model.url} is {model.source} imported as it is (import_model): it was not trained "
                          "here, so there is no training to repeat on subsets; fine-tune it on the corpus with "
                          "python -m jobs train (MODEL set) to measure the LDS of its scores")
    sources.check_source_unchanged(model, "lds")


def subset_stamp(settings: LdsSettings, index: int, seeds: list[int], asked: list[dict]) -> dict:
    """The settings a subset's measurements depend on (beside the model and data, its inputs). Not
    LDS_SUBSETS: subset i is the same however many are drawn."""
    return {"subset": index, "seed": settings.seed, "lds_fraction": settings.lds_fraction, "training_seeds": seeds,
            "prompts": asked}


def identity_baseline(store: Store, scores: Scores, prompts: str) -> Scores:
    """The identity baseline (gradient dot products): the first scores' fitting and scoring again,
    with the identity strategy (same tracked modules, batch sizes, task, dtypes), under names of
    its own; skipped when already done."""
    factors = Factors(scores.factors_name).bind(store)
    fitted = factors.settings if factors is not None else FitFactorsSettings.model_construct()
    tracked = factors.tracked_modules() if factors is not None else None
    log.info("lds: identity baseline (gradient dot products) for the %s task", scores.task)
    run_stage("fit_factors", fitted.model_copy(update={
        "artifacts_uri": store.uri, "factors_name": LdsReport.IDENTITY, "factor_strategy": "identity", "force": False,
        "tracked_modules": "^(" + "|".join(map(re.escape, tracked)) + ")$" if tracked else fitted.tracked_modules,
        "shard_index": None, "job_completion_index": None, "factor_phase": "all"}))
    run_stage("compute_scores", scores.settings.model_copy(update={
        "artifacts_uri": store.uri, "factors_name": LdsReport.IDENTITY, "scores_name": LdsReport.IDENTITY,
        "prompts": prompts, "force": False, "shard_index": None, "job_completion_index": None,
        "score_fusion": "none", "ensemble_seeds": 1}))
    return Scores(LdsReport.IDENTITY)


def base_model(model: Model, trained: TrainSettings, tokenizer, work: Path):
    """What a subset's training starts from: MODEL again for a fine-tuned model, else a new model of
    the preset (its initial weights follow the seed, as the train stage's do)."""
    from influence_core import modeling

    if model.family == "fine_tuned":
        source = modeling.resolve_model(model.source, trained.tracked_modules, work / "source")
        return lambda seed: modeling.load_pretrained(source, "float32", trained.max_length)
    return lambda seed: modeling.build_model(trained.model_preset, tokenizer, trained.max_length, seed=seed)


def retrain_subsets(indices: list[int], stamps: dict[int, dict], settings: LdsSettings, store: Store, model: Model,
                    data: TrainData, trained: TrainSettings, prompts: list[Prompt], inputs: dict[str, str],
                    work: Path) -> None:
    """Retrain the model on each subset (once per training seed), measure every prompt for every
    task, and publish each subset's measurements as soon as they are done."""
    from transformers import AutoTokenizer

    from influence_core.factors import load_training_examples
    from influence_core.lds import draw_subset, measure, retrain
    from influence_core.runtime import configure_threads
    from influence_core.training import training_plan

    configure_threads()
    tokenizer = AutoTokenizer.from_pretrained(fetch_once(model, work))
    examples = load_training_examples(fetch_once(data, work))
    start_from = base_model(model, trained, tokenizer, work)
    for index in indices:
        started = time.time()
        subset = draw_subset(len(examples), settings.lds_fraction, settings.seed, index)
        measured = []
        for seed in stamps[index]["training_seeds"]:
            log.info("lds: retraining on subset %d of %d (%d examples), training seed %d", index,
                     settings.lds_subsets, len(subset), seed)
            plan = training_plan(trained, seed=seed, checkpoints=0, log_every_fraction=0.25)
            retrained = retrain(start_from(seed), examples.select(subset), tokenizer, plan,
                                work / f"trainer-{index}-{seed}")
            measured.append(measure(retrained, tokenizer, prompts))
        out = work / f"subset-{index}"
        out.mkdir()
        (out / LdsSubset.MEASUREMENTS).write_text(json.dumps(
            {"subset": index, "examples": subset, "training_seeds": stamps[index]["training_seeds"],
             "retrained_from": model.source, "measurements": measured}))
        record = {**manifest("lds", settings, inputs, started), "settings": stamps[index]}
        store.publish(out, LdsSubset(index).relative, record)
        log.info("lds: published subset %d (%.1f s)", index, time.time() - started)


def correlate(settings: LdsSettings, prompts: list[Prompt], model: Model, data: TrainData, scores: list[Scores],
              identity: Scores, subsets: list[LdsSubset], trained: TrainSettings, work: Path) -> Path:
    """reports/lds/ in `work`: each method's correlations with the measured subsets."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from influence_core import lds
    from influence_core.fusion import ALONE, corpus_bm25, describe, prompt_bm25
    from influence_core.modeling import load_model

    texts = load_from_disk(str(fetch_once(data, work)))["text"]
    measurements = [subset.measurements() for subset in subsets]
    mask = lds.subset_mask([measured["examples"] for measured in measurements], len(texts))
    measured = {task: lds.mean_measurements(measurements, task, len(prompts))
                for task in measurements[0]["measurements"][0]}
    baselines = LdsReport.BASELINES
    named = {**dict(zip(settings.lds_scores, scores)), "identity": identity}
    matrices = {name: Scores.matrix(fetch_once(each, work)) for name, each in named.items()}
    tasks = {name: each.task for name, each in named.items()}
    ranking = {name: describe(each.settings, each.models) for name, each in named.items()}
    labels = {name: baselines.get(name, f"{name} ({each.strategy}" + (
        f"; {ranking[name]})" if ranking[name] != ALONE else ")")) for name, each in named.items()}
    first = settings.lds_scores[0]
    task = tasks[first]  # the text baselines predict the first scores' measurement
    matrices["bm25"] = prompt_bm25(prompts, corpus_bm25(fetch_once(data, work)))
    tasks.update(bm25=task, random=task)
    labels.update(bm25=baselines["bm25"], random=f"{baselines['random']} (mean of {RANDOM_DRAWS} draws)")
    methods = lds.summarize(matrices, tasks, labels, set(baselines), mask, measured)
    methods["random"] = lds.random_baseline(len(texts), mask, measured[task], RANDOM_DRAWS, settings.seed,
                                            labels["random"], task)

    model_dir = fetch_once(model, work)
    probabilities = lds.completion_probabilities(load_model(model_dir), AutoTokenizer.from_pretrained(model_dir),
                                                 prompts)
    result = {
        "subsets": len(subsets), "seeds": settings.lds_seeds, "fraction": settings.lds_fraction,
        "subset_size": int(mask[0].sum()), "num_examples": len(texts),
        "training_seeds": measurements[0]["training_seeds"],
        "prompts": [{**prompt.model_dump(), "probability": probability}
                    for prompt, probability in zip(prompts, probabilities)],
        "methods": methods,
        "comparisons": {name: {against: dict(zip(("difference", "stderr"), lds.paired_difference(
            methods[name]["per_prompt"], methods[against]["per_prompt"])))
            for against in [*baselines, *([first] if name != first else [])]}
            for name in settings.lds_scores},
        "settings": {"model": model.source,  # what the subsets were fine-tuned from; None: trained from scratch
                     **{f"lds.{key}": value for key, value in fingerprint(settings).items()},
                     **{f"train.{key}": value for key, value in fingerprint(trained).items()}},
    }
    out = work / "lds"
    out.mkdir()
    (out / LdsReport.JSON).write_text(json.dumps(result, indent=2, ensure_ascii=False))
    (out / LdsReport.MARKDOWN).write_text(lds.render_markdown(result))
    lds.plot_lds(result, out / LdsReport.PLOT)
    lds.plot_predicted_vs_measured(lds.predicted_measurements(matrices[first], mask), measured[tasks[first]],
                                   result, first, out / LdsReport.PROMPTS_PLOT)
    for method in methods.values():
        log.info("lds: %s %.3f ± %.3f", method["label"], method["lds"], method["stderr"])
    return out


def fetch_once(artifact, work: Path) -> Path:
    """An input fetched into `work` (fetched the first time it is asked for)."""
    local = work / "inputs" / artifact.relative
    return local if local.exists() else artifact.fetch(local)
