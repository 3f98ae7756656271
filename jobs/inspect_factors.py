"""Stage 2b: what the fitted factors look like: heatmaps of the lambda and covariance matrices and
sorted eigenvalue spectra of one block's MLP modules, and spectrum statistics of every module.

Output: reports/factors_<factors_name>/ (or OUTPUT_DIR): PNG files and summary.json.
"""

from __future__ import annotations

import json
import logging
import time

from influence_core import paths
from influence_core.errors import ConfigError
from influence_core.settings import InspectFactorsSettings
from influence_core.storage import work_dir
from jobs.common import already_done, manifest, open_artifacts

log = logging.getLogger("jobs.inspect_factors")
BLOCK_COUNT_KEYS = ("num_hidden_layers", "num_layers", "n_layer")  # config.json's name for it, by architecture


def main(settings: InspectFactorsSettings) -> None:
    started = time.time()
    artifacts = open_artifacts(settings.artifacts_uri)
    factors = paths.FACTORS(settings.factors_name)
    inputs = artifacts.require(paths.MODEL, factors)
    config = json.loads(artifacts.read_bytes(f"{paths.MODEL}/config.json"))  # the weights are not needed
    num_layers = next(config[key] for key in BLOCK_COUNT_KEYS if key in config)
    layer = num_layers - 1 if settings.layer_num is None else settings.layer_num
    if layer >= num_layers:
        raise ConfigError(f"invalid setting LAYER_NUM (--layer_num): the model has layers 0..{num_layers - 1}, "
                          f"got {layer}")
    destination = open_artifacts(settings.output_dir) if settings.output_dir else artifacts
    output = "" if settings.output_dir else paths.FACTORS_REPORT(settings.factors_name)
    if already_done(destination, [output], "inspect_factors", settings, inputs):
        return

    from influence_core.factors import tracked_modules
    from influence_core.modeling import block_of
    from influence_core.reports import factor_summary, plot_factors

    strategy = artifacts.manifest(factors)["settings"].get("factor_strategy")
    with work_dir() as work:
        factors_dir = artifacts.fetch(factors, work / "factors")
        block = [name for name in tracked_modules(factors_dir, num_layers) if block_of(name) == layer]
        plots = plot_factors(factors_dir, block, work / "plots", strategy)
        if not plots:
            log.warning("the %r factors hold no lambda matrices or eigenvalues (identity strategy?): "
                        "nothing to plot", settings.factors_name)
        summary = {"factors_name": settings.factors_name, "layer_plotted": layer,
                   **factor_summary(factors_dir, strategy)}
        (work / "plots" / "summary.json").write_text(json.dumps(summary, indent=2))
        record = manifest("inspect_factors", settings, inputs, started, layer=layer,
                          plots=[plot.name for plot in plots])
        log.info("published %d plots and summary.json (%d modules) to %s", len(plots), len(summary["modules"]),
                 destination.publish(work / "plots", output, record))
