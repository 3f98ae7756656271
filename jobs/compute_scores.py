"""Stage 3: pairwise influence of every training example on every prompt in the prompts file.

Output: influence/scores_<scores_name>/ (Kronfluence's pairwise_scores.safetensors and arguments,
plus the prompts.json that was scored; with SCORE_FUSION, BM25's scores and the fused ranking too).
With ENSEMBLE_SEEDS > 1 the influence published is the mean of the model's and its ensemble
members': the ensemble stage trains and fits the members (their lineage and recipe are checked
first), this stage scores each of them as it scores the model, in the member's tree
(ensemble/member_<k>/influence/scores_<scores_name>/, skipped when done), so new prompts need this
stage alone.
"""

from __future__ import annotations

import json
import logging
import time

from influence_core.artifacts import (
    Factors,
    Model,
    Scores,
    TrainData,
    check_members,
    digest_of,
    fingerprints,
    in_member,
    member_uri,
    refuse_replacing,
    require,
)
from influence_core.plan import check_fits
from influence_core.prompts import load_prompts
from influence_core.settings import CommonSettings, ComputeScoresSettings, FusionSettings
from jobs.common import already_done, manifest, open_store, torchrun_stage

log = logging.getLogger("jobs.compute_scores")


def main(settings: ComputeScoresSettings) -> None:
    started = time.time()
    prompts = load_prompts(settings.prompts)
    store = open_store(settings.artifacts_uri)
    model, data, factors, output = Model(), TrainData(), Factors(settings.factors_name), Scores(settings.scores_name)
    require(store, model, data, factors)
    refuse_replacing(store, output, "compute_scores", settings.force, f"SCORES_NAME={settings.scores_name}")
    if settings.ensemble_seeds > 1 and model.family == "imported":
        log.warning("ENSEMBLE_SEEDS=%d: %s is %s imported as it is, with no training to repeat with other seeds: "
                    "scoring it alone", settings.ensemble_seeds, model.url, model.source)
        settings = settings.model_copy(update={"ensemble_seeds": 1})  # and recorded so
    numbers = list(range(1, settings.ensemble_seeds))
    check_members(model, data, factors, numbers)
    for number in numbers:  # each member scored as the model is (skipped when done; a shard: its part)
        main(member_scoring(settings, number))
    members = [in_member(output, number) for number in numbers]
    if settings.shard is None or all(member.bind(store) for member in members):
        require(store, *members)
    else:
        members = []  # a shard's part of the model's own scores: the members are averaged once all are in
    asked = [prompt.model_dump() for prompt in prompts]
    own = {**fingerprints(model, data, factors), "PROMPTS": digest_of(asked)}  # what the model's scoring is of
    inputs = {**own, **fingerprints(*members)}
    if already_done(store, [output], "compute_scores", settings, inputs):
        return
    check_fits("compute_scores", settings, len(prompts))  # the batch sizes fit the device, before the model loads

    from influence_core.runtime import is_main_process
    from influence_core.scores import average_members, compute_scores, fuse_with_bm25

    with torchrun_stage("compute_scores", settings, store, [model, data, factors], output.relative, own) as (
            work, out):
        local = compute_scores(work / model.relative, work / data.relative, prompts, settings, work,
                               after_step=out.sync if is_main_process() else lambda: None)
        if not is_main_process():
            return
        if settings.shard is not None:
            log.info("published shard %d to %s; a run without SHARD_INDEX aggregates", settings.shard,
                     store.url(output.relative))
            return
        if members:
            average_members(local, members, work)
        if settings.score_fusion != "none":
            fuse_with_bm25(local, work / data.relative, prompts, settings)
        (local / Scores.PROMPTS).write_text(json.dumps(asked, indent=2, ensure_ascii=False))
        record = manifest("compute_scores", settings, inputs, started, factor_strategy=factors.strategy)
        log.info("published %s", out.complete(record))


def member_scoring(settings: ComputeScoresSettings, number: int) -> ComputeScoresSettings:
    """Member `number`'s scoring: these settings in its tree, one model, the influence alone (the
    average is fused, not the members)."""
    alone = {name: FusionSettings.model_fields[name].default for name in FusionSettings.model_fields
             if name not in CommonSettings.model_fields}
    return settings.model_copy(update={**alone, "artifacts_uri": member_uri(settings.artifacts_uri, number),
                                       "ensemble_seeds": 1})
