"""Stage 2: fit Kronfluence influence factors (ekfac, kfac, diagonal, identity) for the model.

Output: influence/factors_<factors_name>/ (Kronfluence's own factor files).
"""

from __future__ import annotations

import logging
import time

from influence_core.settings import FitFactorsSettings
from influence_core.storage import Output, work_dir
from jobs.common import already_done, fingerprint, manifest, open_artifacts, parse

log = logging.getLogger("jobs.fit_factors")


def main(settings: FitFactorsSettings) -> None:
    started = time.time()
    artifacts = open_artifacts(settings.artifacts_uri)
    inputs = artifacts.require("model", "data/train")
    output = f"influence/factors_{settings.factors_name}"
    if already_done(artifacts, [output], "fit_factors", settings, inputs):
        return

    from influence_core.factors import factors_dir, fit_factors
    from influence_core.runtime import configure_threads

    configure_threads()
    with work_dir() as work:
        model_dir = artifacts.fetch("model", work / "inputs" / "model")
        train_dir = artifacts.fetch("data/train", work / "inputs" / "train")
        # Partitions published by an interrupted run with the same settings and inputs are kept.
        out = Output(artifacts, output, factors_dir(work, settings.factors_name),
                     stamp={"stage": "fit_factors", "settings": fingerprint(settings), "inputs": inputs})
        if restored := out.resume():
            log.info("resuming: %d files of an interrupted run restored", len(restored))
        log.info("fitting %s factors %r", settings.factor_strategy, settings.factors_name)
        fit_factors(model_dir, train_dir, settings, work, after_step=out.sync)
        log.info("published %s", out.complete(manifest("fit_factors", settings, inputs, started)))


def run(argv: list[str]) -> None:
    main(parse(FitFactorsSettings, argv, "fit_factors"))
