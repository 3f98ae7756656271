"""Stage 3: pairwise influence of every training example on every prompt in the prompts file.

Output: influence/scores_<scores_name>/ (Kronfluence's pairwise_scores.safetensors and arguments,
plus the prompts.json that was scored; with SCORE_FUSION, BM25's scores and the fused ranking too).
"""

from __future__ import annotations

import json
import logging
import time

from influence_core.artifacts import Factors, Model, Scores, TrainData, digest_of, fingerprints, require
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
    asked = [prompt.model_dump() for prompt in prompts]
    inputs = {**fingerprints(model, data, factors), "PROMPTS": digest_of(asked)}
    if already_done(store, [output], "compute_scores", settings, inputs):
        return
    check_fits("compute_scores", settings, len(prompts))  # the batch sizes fit the device, before the model loads

    from influence_core.runtime import is_main_process
    from influence_core.scores import compute_scores, fuse_with_bm25

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
        if settings.score_fusion != "none":
            fuse_with_bm25(local, work / data.relative, prompts, settings)
        (local / Scores.PROMPTS).write_text(json.dumps(asked, indent=2, ensure_ascii=False))
        record = manifest("compute_scores", settings, inputs, started, factor_strategy=factors.strategy)
        log.info("published %s", out.complete(record))
