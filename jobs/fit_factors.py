"""Stage 2: fit Kronfluence influence factors (ekfac, kfac, diagonal, identity) for the model.

Output: influence/factors_<factors_name>/ (Kronfluence's own factor files).
"""

from __future__ import annotations

import logging
import time

from influence_core.settings import FitFactorsSettings
from influence_core.storage import Artifacts, work_dir
from jobs.common import already_done, manifest, parse

log = logging.getLogger("jobs.fit_factors")


def main(settings: FitFactorsSettings) -> None:
    started = time.time()
    artifacts = Artifacts(settings.artifacts_uri)
    inputs = artifacts.require("model", "data/train")
    output = f"influence/factors_{settings.factors_name}"
    if already_done(artifacts, [output], "fit_factors", settings, inputs):
        return

    from influence_core.factors import fit_factors
    from influence_core.runtime import configure_threads

    configure_threads()
    with work_dir() as work:
        model_dir = artifacts.fetch("model", work / "inputs" / "model")
        train_dir = artifacts.fetch("data/train", work / "inputs" / "train")
        log.info("fitting %s factors %r", settings.factor_strategy, settings.factors_name)
        factors_dir = fit_factors(model_dir, train_dir, settings, work)
        log.info("published %s", artifacts.publish(factors_dir, output, manifest("fit_factors", settings, inputs,
                                                                                  started)))


def run(argv: list[str]) -> None:
    main(parse(FitFactorsSettings, argv, "fit_factors"))
