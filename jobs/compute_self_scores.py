"""Stage 3b: self-influence of every training example (its influence on its own loss), to find
outliers and memorised text.

Output: influence/self_scores_<factors_name>/ (Kronfluence's self_scores.safetensors, one score per
training example in corpus order); inspect_scores lists the top ones when it exists.
"""

from __future__ import annotations

import logging
import os
import time

from influence_core import paths
from influence_core.errors import ConfigError
from influence_core.plan import check_fits
from influence_core.settings import ComputeSelfScoresSettings
from influence_core.storage import work_dir
from jobs.common import already_done, manifest, open_artifacts

log = logging.getLogger("jobs.compute_self_scores")


def main(settings: ComputeSelfScoresSettings) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("compute_self_scores runs as one process: start it with --nproc-per-node=1")
    started = time.time()
    artifacts = open_artifacts(settings.artifacts_uri)
    factors = paths.FACTORS(settings.factors_name)
    inputs = artifacts.require(paths.MODEL, paths.TRAIN_DATA, factors)
    output = paths.SELF_SCORES(settings.factors_name)
    if already_done(artifacts, [output], "compute_self_scores", settings, inputs):
        return
    check_fits("compute_self_scores", settings)  # the batch sizes fit the device, before the model loads

    from influence_core.factors import factors_dir
    from influence_core.runtime import configure_threads
    from influence_core.self_influence import compute_self_scores

    configure_threads()
    with work_dir() as work:
        model_dir = artifacts.fetch(paths.MODEL, work / "inputs" / "model")
        train_dir = artifacts.fetch(paths.TRAIN_DATA, work / "inputs" / "train")
        artifacts.fetch(factors, factors_dir(work, settings.factors_name))
        log.info("self-influence of every training example with factors %r", settings.factors_name)
        local = compute_self_scores(model_dir, train_dir, settings, work)
        strategy = artifacts.manifest(factors)["settings"]["factor_strategy"]
        record = manifest("compute_self_scores", settings, inputs, started, factor_strategy=strategy)
        log.info("published %s", artifacts.publish(local, output, record))

