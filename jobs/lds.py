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
import time
from pathlib import Path

from influence_core import paths
from influence_core.errors import ConfigError
from influence_core.prompts import Prompt, parse_prompts
from influence_core.runtime import world_size
from influence_core.settings import (
    ComputeScoresSettings,
    FitFactorsSettings,
    LdsSettings,
    TrainSettings,
    recorded_settings,
    stage_settings,
)
from influence_core.storage import Artifacts, read_uri, work_dir
from jobs import compute_scores, fit_factors
from jobs.common import already_done, fingerprint, manifest, open_artifacts

log = logging.getLogger("jobs.lds")
IDENTITY = "lds_identity"  # the factors and scores names of the identity baseline
BASELINES = {"identity": "identity (gradient dot products)", "bm25": "BM25 on prompt + completion",
             "random": "random scores"}
RANDOM_DRAWS = 100  # the random baseline: per prompt, the mean correlation of this many draws of random scores


def main(settings: LdsSettings) -> None:
    if world_size() > 1:  # each process would retrain the same subsets
        raise ConfigError("lds runs as one process: start it with --nproc-per-node=1 and spread the subsets over "
                          "processes or pods with SUBSET_INDEX (the lds-retrain Indexed Job)")
    started = time.time()
    prompts = parse_prompts(read_uri(settings.prompts, "PROMPTS"), settings.prompts)
    artifacts = open_artifacts(settings.artifacts_uri)
    inputs = artifacts.require(paths.MODEL, paths.TRAIN_DATA)
    trained = recorded_settings(TrainSettings, artifacts.manifest(paths.MODEL)["settings"])
    seeds = [trained.model_seed + k for k in range(settings.lds_seeds)]
    indices = list(range(settings.lds_subsets)) if settings.subset is None else [settings.subset]
    scores = {} if settings.subset is not None else scores_to_correlate(settings, artifacts, prompts)
    stamps = {index: subset_stamp(settings, index, seeds, prompts) for index in indices}
    redo = settings.force and settings.subset is not None  # FORCE redoes a subset only when run alone
    missing = [i for i in indices if redo or not artifacts.is_up_to_date(paths.LDS_SUBSET(i), "lds", stamps[i], inputs)]
    if len(missing) < len(indices):
        log.info("lds: %d of %d subsets already published", len(indices) - len(missing), len(indices))
    with work_dir() as work:
        if missing:
            retrain_subsets(missing, stamps, settings, artifacts, inputs, trained, prompts, work)
        if settings.subset is not None:
            return
        inputs.update(artifacts.require(*scores.values(), *(paths.LDS_SUBSET(index) for index in indices)))
        if already_done(artifacts, [paths.LDS_REPORT], "lds", settings, inputs):
            return
        local = correlate(settings, artifacts, prompts, scores, indices, trained, work)
        log.info("published %s", artifacts.publish(local, paths.LDS_REPORT, manifest("lds", settings, inputs, started)))


def subset_stamp(settings: LdsSettings, index: int, seeds: list[int], prompts: list[Prompt]) -> dict:
    """The settings a subset's measurements depend on (beside the model and data, its inputs). Not
    LDS_SUBSETS: subset i is the same however many are drawn."""
    return {"subset": index, "seed": settings.seed, "lds_fraction": settings.lds_fraction, "training_seeds": seeds,
            "prompts": [prompt.model_dump() for prompt in prompts]}


def scores_to_correlate(settings: LdsSettings, artifacts: Artifacts, prompts: list[Prompt]) -> dict[str, str]:
    """{method: scores artifact}: LDS_SCORES, checked to score PROMPTS, and the identity baseline
    (fitted and scored here with the first scores' task, skipped when already done)."""
    asked = [prompt.model_dump() for prompt in prompts]
    scores = {}
    for name in settings.lds_scores:
        relative = paths.SCORES(name)
        artifacts.require(relative)
        if json.loads(artifacts.read_bytes(f"{relative}/prompts.json")) != asked:
            raise ConfigError(f"LDS_SCORES={name}: these scores are for other prompts than PROMPTS="
                              f"{settings.prompts}; score PROMPTS with compute_scores, or set PROMPTS to its prompts")
        scores[name] = relative
    task = artifacts.manifest(scores[settings.lds_scores[0]])["settings"].get("task", "language_modeling")
    log.info("lds: identity baseline (gradient dot products) for the %s task", task)
    fit_factors.main(stage_settings(FitFactorsSettings, settings).model_copy(
        update={"factors_name": IDENTITY, "factor_strategy": "identity"}))
    compute_scores.main(stage_settings(ComputeScoresSettings, settings).model_copy(
        update={"factors_name": IDENTITY, "scores_name": IDENTITY, "task": task}))
    return {**scores, "identity": paths.SCORES(IDENTITY)}


def retrain_subsets(indices: list[int], stamps: dict[int, dict], settings: LdsSettings, artifacts: Artifacts,
                    inputs: dict[str, str], trained: TrainSettings, prompts: list[Prompt], work: Path) -> None:
    """Retrain the model on each subset (once per training seed), measure every prompt for every
    task, and publish each subset's measurements as soon as they are done."""
    from transformers import AutoTokenizer

    from influence_core.factors import load_training_examples
    from influence_core.lds import draw_subset, measure, retrain
    from influence_core.runtime import configure_threads
    from influence_core.training import training_plan

    configure_threads()
    tokenizer = AutoTokenizer.from_pretrained(fetch_once(artifacts, paths.MODEL, work))
    examples = load_training_examples(fetch_once(artifacts, paths.TRAIN_DATA, work))
    for index in indices:
        started = time.time()
        subset = draw_subset(len(examples), settings.lds_fraction, settings.seed, index)
        measured = []
        for seed in stamps[index]["training_seeds"]:
            log.info("lds: retraining on subset %d of %d (%d examples), training seed %d", index,
                     settings.lds_subsets, len(subset), seed)
            plan = training_plan(trained, seed=seed, checkpoints=0, log_every_fraction=0.25)
            model = retrain(examples.select(subset), tokenizer, trained.model_preset, trained.max_length, plan,
                            work / f"trainer-{index}-{seed}")
            measured.append(measure(model, tokenizer, prompts))
        out = work / f"subset-{index}"
        out.mkdir()
        (out / "measurements.json").write_text(json.dumps(
            {"subset": index, "examples": subset, "training_seeds": stamps[index]["training_seeds"],
             "measurements": measured}))
        record = {**manifest("lds", settings, inputs, started), "settings": stamps[index]}
        artifacts.publish(out, paths.LDS_SUBSET(index), record)
        log.info("lds: published subset %d (%.1f s)", index, time.time() - started)


def correlate(settings: LdsSettings, artifacts: Artifacts, prompts: list[Prompt], scores: dict[str, str],
              indices: list[int], trained: TrainSettings, work: Path) -> Path:
    """reports/lds/ in `work`: each method's correlations with the measured subsets."""
    import torch
    from datasets import load_from_disk
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from influence_core import lds
    from influence_core.evaluation import bm25_scores
    from influence_core.modeling import load_model

    texts = load_from_disk(str(fetch_once(artifacts, paths.TRAIN_DATA, work)))["text"]
    subsets = [json.loads(artifacts.read_bytes(f"{paths.LDS_SUBSET(index)}/measurements.json")) for index in indices]
    mask = lds.subset_mask([subset["examples"] for subset in subsets], len(texts))
    # subsets x prompts per task, averaged over the training seeds
    measured = {task: torch.tensor([[sum(values[task][p] for values in subset["measurements"]) /
                                     len(subset["measurements"]) for p in range(len(prompts))] for subset in subsets],
                                   dtype=torch.float64) for task in subsets[0]["measurements"][0]}
    matrices, tasks, labels = {}, {}, {}
    for name, relative in scores.items():
        matrices[name] = load_file(str(fetch_once(artifacts, relative, work) / "pairwise_scores.safetensors"))[
            "all_modules"]
        record = artifacts.manifest(relative)
        tasks[name] = record["settings"].get("task", "language_modeling")
        labels[name] = BASELINES.get(name, f"{name} ({record.get('factor_strategy')})")
    task = tasks[settings.lds_scores[0]]  # the text baselines predict the first scores' measurement
    matrices["bm25"] = bm25_scores([prompt.prompt + prompt.completion for prompt in prompts], texts)
    tasks.update(bm25=task, random=task)
    labels.update(bm25=BASELINES["bm25"], random=f"{BASELINES['random']} (mean of {RANDOM_DRAWS} draws)")
    methods = lds.summarize(matrices, tasks, labels, set(BASELINES), mask, measured)
    methods["random"] = lds.random_baseline(len(texts), mask, measured[task], RANDOM_DRAWS, settings.seed,
                                            labels["random"], task)

    model_dir = fetch_once(artifacts, paths.MODEL, work)
    probabilities = lds.completion_probabilities(load_model(model_dir), AutoTokenizer.from_pretrained(model_dir),
                                                 prompts)
    result = {
        "subsets": len(indices), "seeds": settings.lds_seeds, "fraction": settings.lds_fraction,
        "subset_size": int(mask[0].sum()), "num_examples": len(texts),
        "training_seeds": subsets[0]["training_seeds"],
        "prompts": [{**prompt.model_dump(), "probability": probability}
                    for prompt, probability in zip(prompts, probabilities)],
        "methods": methods,
        "comparisons": {name: {baseline: dict(zip(("difference", "stderr"), lds.paired_difference(
            methods[name]["per_prompt"], methods[baseline]["per_prompt"]))) for baseline in BASELINES}
            for name in settings.lds_scores},
        "settings": {**{f"lds.{key}": value for key, value in fingerprint(settings).items()},
                     **{f"train.{key}": value for key, value in fingerprint(trained).items()}},
    }
    out = work / "lds"
    out.mkdir()
    (out / "lds.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    (out / "lds.md").write_text(lds.render_markdown(result))
    lds.plot_lds(result, out / "lds.png")
    first = settings.lds_scores[0]
    lds.plot_predicted_vs_measured(lds.predicted_measurements(matrices[first], mask), measured[tasks[first]],
                                   result, first, out / "lds_prompts.png")
    for method in methods.values():
        log.info("lds: %s %.3f ± %.3f", method["label"], method["lds"], method["stderr"])
    return out


def fetch_once(artifacts: Artifacts, relative: str, work: Path) -> Path:
    """An input fetched into `work` (fetched the first time it is asked for)."""
    local = work / "inputs" / relative
    return local if local.exists() else artifacts.fetch(relative, local)

