"""Stage 3: pairwise influence of every training example on every prompt in the prompts file.

Output: influence/scores_<scores_name>/ (Kronfluence's pairwise_scores.safetensors and arguments,
plus the prompts.json that was scored).
"""

from __future__ import annotations

import json
import logging
import time

from influence_core import paths
from influence_core.plan import check_fits
from influence_core.prompts import Prompt, parse_prompts
from influence_core.settings import ComputeScoresSettings
from influence_core.storage import read_uri
from jobs.common import already_done, manifest, open_artifacts, torchrun_stage

log = logging.getLogger("jobs.compute_scores")


def load_prompts(settings: ComputeScoresSettings) -> list[Prompt]:
    return parse_prompts(read_uri(settings.prompts, "PROMPTS"), settings.prompts)


def main(settings: ComputeScoresSettings) -> None:
    started = time.time()
    prompts = load_prompts(settings)
    artifacts = open_artifacts(settings.artifacts_uri)
    factors = paths.FACTORS(settings.factors_name)
    inputs = artifacts.require(paths.MODEL, paths.TRAIN_DATA, factors)
    fetch = list(inputs)
    inputs["prompts"] = json.dumps([prompt.model_dump() for prompt in prompts])
    output = paths.SCORES(settings.scores_name)
    if already_done(artifacts, [output], "compute_scores", settings, inputs):
        return
    check_fits("compute_scores", settings, len(prompts))  # the batch sizes fit the device, before the model loads

    from influence_core.runtime import is_main_process
    from influence_core.scores import compute_scores

    with torchrun_stage("compute_scores", settings, artifacts, fetch, output, inputs) as (work, out):
        local = compute_scores(work / paths.MODEL, work / paths.TRAIN_DATA, prompts, settings, work,
                               after_step=out.sync if is_main_process() else lambda: None)
        if not is_main_process():
            return
        if settings.shard is not None:
            log.info("published shard %d to %s; a run without SHARD_INDEX aggregates", settings.shard,
                     artifacts.url(output))
            return
        (local / "prompts.json").write_text(json.dumps([p.model_dump() for p in prompts], indent=2,
                                                       ensure_ascii=False))
        strategy = artifacts.manifest(factors)["settings"]["factor_strategy"]
        record = manifest("compute_scores", settings, inputs, started, factor_strategy=strategy)
        log.info("published %s", out.complete(record))
