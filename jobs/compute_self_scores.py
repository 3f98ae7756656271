"""Stage 3b: self-influence of every training example (its influence on its own loss), to find
outliers and memorised text.

Output: influence/self_scores_<factors_name>/ (Kronfluence's self_scores.safetensors, one score per
training example in corpus order); inspect_scores lists the top ones when it exists.
"""

from __future__ import annotations

import logging
import time

from influence_core.artifacts import Factors, Model, SelfScores, TrainData, fingerprints, require
from influence_core.errors import ConfigError
from influence_core.plan import check_fits
from influence_core.runtime import world_size
from influence_core.settings import ComputeSelfScoresSettings
from influence_core.storage import work_dir
from jobs.common import already_done, manifest, open_store

log = logging.getLogger("jobs.compute_self_scores")


def main(settings: ComputeSelfScoresSettings) -> None:
    if world_size() > 1:
        raise ConfigError("compute_self_scores runs as one process: start it with --nproc-per-node=1")
    started = time.time()
    store = open_store(settings.artifacts_uri)
    model, data, factors = Model(), TrainData(), Factors(settings.factors_name)
    output = SelfScores(settings.factors_name)
    require(store, model, data, factors)
    inputs = fingerprints(model, data, factors)
    if already_done(store, [output], "compute_self_scores", settings, inputs):
        return
    check_fits("compute_self_scores", settings)  # the batch sizes fit the device, before the model loads

    from influence_core.factors import factors_dir
    from influence_core.runtime import configure_threads
    from influence_core.self_influence import compute_self_scores

    configure_threads()
    with work_dir() as work:
        model_dir = model.fetch(work / "inputs" / "model")
        train_dir = data.fetch(work / "inputs" / "train")
        factors.fetch(factors_dir(work, settings.factors_name))
        log.info("self-influence of every training example with factors %r", settings.factors_name)
        local = compute_self_scores(model_dir, train_dir, settings, work)
        record = manifest("compute_self_scores", settings, inputs, started, factor_strategy=factors.strategy)
        log.info("published %s", store.publish(local, output.relative, record))
