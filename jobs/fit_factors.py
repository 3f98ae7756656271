"""Stage 2: fit Kronfluence influence factors (ekfac, kfac, diagonal, identity) for the model.

Output: influence/factors_<factors_name>/ (Kronfluence's own factor files). Each finished data
partition is published as it completes; with SHARD_INDEX (or an Indexed Job's completion index)
only that partition of FACTOR_PHASE is computed, and a later run without a shard aggregates.
"""

from __future__ import annotations

import logging
import time

from influence_core.artifacts import Factors, Model, TrainData, fingerprints, require
from influence_core.plan import check_fits
from influence_core.settings import FitFactorsSettings
from jobs.common import already_done, manifest, open_store, torchrun_stage

log = logging.getLogger("jobs.fit_factors")


def main(settings: FitFactorsSettings) -> None:
    started = time.time()
    store = open_store(settings.artifacts_uri)
    model, data, output = Model(), TrainData(), Factors(settings.factors_name)
    require(store, model, data)
    inputs = fingerprints(model, data)
    if already_done(store, [output], "fit_factors", settings, inputs):
        return
    check_fits("fit_factors", settings)  # the batch sizes fit the device, before the model loads
    finishing = settings.shard is None and settings.factor_phase in ("lambda", "all")

    from influence_core.factors import check_phase_inputs, fit_factors
    from influence_core.runtime import is_main_process

    with torchrun_stage("fit_factors", settings, store, [model, data], output.relative, inputs) as (work, out):
        check_phase_inputs(out.local_dir, settings)
        what = "all" if settings.shard is None else f"shard {settings.shard} of the {settings.factor_phase} phase of"
        log.info("fitting %s %s factors %r", what, settings.factor_strategy, settings.factors_name)
        fit_factors(work / model.relative, work / data.relative, settings, work,
                    after_step=out.sync if is_main_process() else lambda: None)
        if not is_main_process():
            return
        if finishing:
            log.info("published %s", out.complete(manifest("fit_factors", settings, inputs, started)))
        else:
            out.sync()
            log.info("published the %s phase%s to %s; a run without SHARD_INDEX and FACTOR_PHASE=all finishes it",
                     settings.factor_phase, "" if settings.shard is None else f" shard {settings.shard}",
                     store.url(output.relative))
