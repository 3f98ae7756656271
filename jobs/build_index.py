"""Build the gradient index: each training example's gradient of the tracked modules, whitened
with the factors FACTORS_NAME and projected to INDEX_DIM numbers in all, once, so that new prompts
are scored without another pass over the corpus (python -m jobs query).

Output: index/<index_name>/ (shard_<n>.safetensors of INDEX_SHARD_SIZE examples each, in corpus
order, and projection.json). Each finished shard is staged at once: a killed build resumes, and an
Indexed Job's pods (SHARD_INDEX or JOB_COMPLETION_INDEX of INDEX_PARTITIONS) build theirs apart;
a run without SHARD_INDEX builds what is missing and publishes. A pod restores its own staged
shards alone (its disk holds them, not the whole index); the run without SHARD_INDEX gathers them all.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

from influence_core.artifacts import Factors, Index, Model, TrainData, fingerprints, require
from influence_core.plan import check_fits
from influence_core.settings import BuildIndexSettings
from jobs.common import already_done, manifest, open_store, torchrun_stage

log = logging.getLogger("jobs.build_index")


def main(settings: BuildIndexSettings) -> None:
    started = time.time()
    store = open_store(settings.artifacts_uri)
    model, data, factors, output = Model(), TrainData(), Factors(settings.factors_name), Index(settings.index_name)
    require(store, model, data, factors)
    inputs = fingerprints(model, data, factors)
    if already_done(store, [output], "build_index", settings, inputs):
        return

    check_fits("build_index", settings)  # the batch fits the device, before the model loads

    from influence_core.index import build_shards
    from influence_core.runtime import barrier, is_main_process

    with torchrun_stage("build_index", settings, store, [model, data, factors], output.relative, inputs,
                        restore=own_files(settings)) as (work, out):
        projection, examples = build_shards(work / model.relative, work / data.relative, work, settings,
                                            work / output.relative,
                                            after_shard=out.sync if is_main_process() else lambda: None)
        barrier()  # the other processes' shards are in the shared work folder
        if not is_main_process():
            return
        if settings.shard is not None:
            log.info("built shard %d's part of the index; a run without SHARD_INDEX publishes it", settings.shard)
            return
        record = manifest("build_index", settings, inputs, started, factor_strategy=factors.strategy,
                          examples=examples, floats_per_example=projection.size)
        log.info("published %s", out.complete(record))


def own_files(settings: BuildIndexSettings) -> Callable[[str], bool] | None:
    """The staged files a build_index pod restores: with SHARD_INDEX its own shards' (SHARD_INDEX,
    + INDEX_PARTITIONS, ...: their rows and search structures) and every file that is no shard's,
    none of the other pods'; None (every file) without, for the run that publishes them all."""
    if settings.shard is None:
        return None

    def own(name: str) -> bool:
        found = re.fullmatch(r"(?:shard|search)_(\d+)\.\w+", name)
        number = int(found.group(1)) if found else None
        if number is None or name not in (Index.shard(number), Index.search(number)):
            return True
        return number % settings.index_partitions == settings.shard

    return own
