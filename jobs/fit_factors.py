"""Stage 2: fit Kronfluence influence factors (ekfac, kfac, diagonal, identity) for the model.

Output: influence/factors_<factors_name>/ (Kronfluence's own factor files). Each finished data
partition is published as it completes; with SHARD_INDEX (or an Indexed Job's completion index)
only that partition of FACTOR_PHASE is computed, and a later run without a shard aggregates.
"""

from __future__ import annotations

import logging
import time

from influence_core.settings import FitFactorsSettings
from influence_core.storage import Output
from jobs.common import already_done, fingerprint, manifest, open_artifacts, parse

log = logging.getLogger("jobs.fit_factors")


def main(settings: FitFactorsSettings) -> None:
    started = time.time()
    artifacts = open_artifacts(settings.artifacts_uri)
    inputs = artifacts.require("model", "data/train")
    output = f"influence/factors_{settings.factors_name}"
    if already_done(artifacts, [output], "fit_factors", settings, inputs):
        return
    finishing = settings.shard is None and settings.factor_phase in ("lambda", "all")

    from influence_core.factors import check_phase_inputs, factors_dir, fit_factors
    from influence_core.runtime import (
        barrier,
        configure_threads,
        is_main_process,
        refuse_cpu_processes,
        shared_work_dir,
    )

    refuse_cpu_processes("fit_factors")
    configure_threads()
    with shared_work_dir("fit_factors") as work:
        out = Output(artifacts, output, factors_dir(work, settings.factors_name),
                     stamp={"stage": "fit_factors", "settings": fingerprint(settings), "inputs": inputs})
        if is_main_process():  # the other torchrun processes read what it fetched
            artifacts.fetch("model", work / "inputs" / "model")
            artifacts.fetch("data/train", work / "inputs" / "train")
            # Partitions published earlier for the same settings and inputs (an interrupted run,
            # other shards) are restored and not recomputed.
            if restored := out.resume():
                log.info("restored %d published files of this output", len(restored))
            check_phase_inputs(out.local_dir, settings)
        barrier()
        what = "all" if settings.shard is None else f"shard {settings.shard} of the {settings.factor_phase} phase of"
        log.info("fitting %s %s factors %r", what, settings.factor_strategy, settings.factors_name)
        fit_factors(work / "inputs" / "model", work / "inputs" / "train", settings, work,
                    after_step=out.sync if is_main_process() else lambda: None)
        if not is_main_process():
            return
        if finishing:
            log.info("published %s", out.complete(manifest("fit_factors", settings, inputs, started)))
        else:
            out.sync()
            log.info("published the %s phase%s to %s; a run without SHARD_INDEX and FACTOR_PHASE=all finishes it",
                     settings.factor_phase, "" if settings.shard is None else f" shard {settings.shard}",
                     artifacts.url(output))


def run(argv: list[str]) -> None:
    main(parse(FitFactorsSettings, argv, "fit_factors"))
