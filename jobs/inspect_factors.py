"""Stage 2b: what the fitted factors look like: heatmaps of the lambda and covariance matrices and
sorted eigenvalue spectra of one block's MLP modules, and spectrum statistics of every module.

Output: reports/factors_<factors_name>/ (or OUTPUT_DIR, a folder of yours): PNG files and summary.json.
"""

from __future__ import annotations

import json
import logging
import time

from influence_core.artifacts import Factors, FactorsReport, Model, fingerprints, require
from influence_core.settings import InspectFactorsSettings
from influence_core.storage import owned_files, publish_to_folder, work_dir
from jobs.common import already_done, manifest, open_store

log = logging.getLogger("jobs.inspect_factors")
BLOCK_COUNT_KEYS = ("num_hidden_layers", "num_layers", "n_layer")  # config.json's name for it, by architecture


def main(settings: InspectFactorsSettings) -> None:
    started = time.time()
    store = open_store(settings.artifacts_uri)
    model, factors = Model(), Factors(settings.factors_name)
    require(store, model, factors)
    inputs = fingerprints(model, factors)
    config = model.config()  # the weights are not needed
    num_layers = next(config[key] for key in BLOCK_COUNT_KEYS if key in config)
    layer = num_layers - 1 if settings.layer_num is None else settings.layer_num
    if layer >= num_layers:
        # The original project's README asks for --layer_num 11, the last block of its 12-layer
        # GPT-Neo-125M, meaning "the last layer's MLP modules": its commands run as they are on any
        # model, the last block plotted, and the summary says which (layer_asked, layer_plotted).
        log.warning("inspect_factors: LAYER_NUM=%d, but %s has layers 0..%d: plotting the last, %d", layer, model.url,
                    num_layers - 1, num_layers - 1)
        layer = num_layers - 1
    if settings.output_dir:  # a folder of the user's: refused at once when it holds anything else
        owned_files(settings.output_dir, "OUTPUT_DIR")
        destination, output = open_store(settings.output_dir), ""
    else:
        destination, output = store, FactorsReport(settings.factors_name).relative
    if already_done(destination, [output], "inspect_factors", settings, inputs):
        return

    from influence_core.factors import tracked_modules
    from influence_core.modeling import block_of
    from influence_core.reports import factor_summary, plot_factors

    with work_dir() as work:
        factors_dir = factors.fetch(work / "factors")
        block = [name for name in tracked_modules(factors_dir) if block_of(name) == layer]
        plots = plot_factors(factors_dir, block, work / "plots", factors.strategy)
        if not plots:
            log.warning("the %r factors hold no lambda matrices or eigenvalues (identity strategy?): "
                        "nothing to plot", settings.factors_name)
        summary = {"factors_name": settings.factors_name, "layer_asked": settings.layer_num, "layer_plotted": layer,
                   **factor_summary(factors_dir, factors.strategy, settings.damping_factor)}
        (work / "plots" / FactorsReport.SUMMARY).write_text(json.dumps(summary, indent=2))
        record = manifest("inspect_factors", settings, inputs, started, layer=layer,
                          plots=[plot.name for plot in plots])
        published = (publish_to_folder(work / "plots", settings.output_dir, "OUTPUT_DIR", record)
                     if settings.output_dir else store.publish(work / "plots", output, record))
        log.info("published %d plots and summary.json (%d modules) to %s", len(plots), len(summary["modules"]),
                 published)
