"""Stage 3: pairwise influence of every training example on every prompt in the prompts file.

Output: influence/scores_<scores_name>/ (Kronfluence's pairwise_scores.safetensors and arguments,
plus the prompts.json that was scored; with SCORE_FUSION, BM25's scores and the fused ranking too).
With ENSEMBLE_SEEDS > 1 the influence published is the mean of the model's and its ensemble
members' (the ensemble stage makes them; their lineage is checked first).
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
    require,
)
from influence_core.plan import check_fits
from influence_core.prompts import load_prompts
from influence_core.settings import ComputeScoresSettings
from jobs.common import already_done, manifest, open_store, torchrun_stage

log = logging.getLogger("jobs.compute_scores")


def main(settings: ComputeScoresSettings) -> None:
    started = time.time()
    prompts = load_prompts(settings.prompts)
    store = open_store(settings.artifacts_uri)
    model, data, factors, output = Model(), TrainData(), Factors(settings.factors_name), Scores(settings.scores_name)
    require(store, model, data, factors)
    if settings.ensemble_seeds > 1 and model.family == "imported":
        log.warning("ENSEMBLE_SEEDS=%d: %s is %s imported as it is, with no training to repeat with other seeds: "
                    "scoring it alone", settings.ensemble_seeds, model.url, model.source)
        settings = settings.model_copy(update={"ensemble_seeds": 1})  # and recorded so
    members = [in_member(output, number) for number in range(1, settings.ensemble_seeds)]
    require(store, *members)
    asked = [prompt.model_dump() for prompt in prompts]
    check_members(model, data, factors, members, settings, asked)
    inputs = {**fingerprints(model, data, factors, *members), "PROMPTS": digest_of(asked)}
    if already_done(store, [output], "compute_scores", settings, inputs):
        return
    check_fits("compute_scores", settings, len(prompts))  # the batch sizes fit the device, before the model loads

    from influence_core.runtime import is_main_process
    from influence_core.scores import average_members, compute_scores, fuse_with_bm25

    with torchrun_stage("compute_scores", settings, store, [model, data, factors], output.relative, inputs) as (
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
