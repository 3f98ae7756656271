"""The members of an ensemble (ENSEMBLE_SEEDS): models of the same corpus that differ only in
training, whose influence compute_scores averages (one model's influence is noisy where its
training happened to go one way; docs/results/lds_corpora.md measures what averaging gains).

Member k (1 to ENSEMBLE_SEEDS - 1) is trained as the model at ARTIFACTS_URI was (the train stage's
settings as its _SUCCESS records them) with training seed the model's + k, and fitted as the factors
FACTORS_NAME were, each by its own stage in a tree of its own: ARTIFACTS_URI/ensemble/member_<k>/.
compute_scores scores them with the model, for whatever prompts it is given, so this stage runs once
per ensemble, not once per question. With MEMBER_INDEX (or an Indexed Job's completion index) only
that member; a finished member is skipped.
"""

from __future__ import annotations

import logging

from influence_core import sources
from influence_core.artifacts import Factors, Model, TrainData, member_uri, require
from influence_core.settings import ENSEMBLE_SUGGESTED, EnsembleSettings
from jobs.common import open_store, run_stage

log = logging.getLogger("jobs.ensemble")


def main(settings: EnsembleSettings) -> None:
    store = open_store(settings.artifacts_uri)
    model, data, factors = Model(), TrainData(), Factors(settings.factors_name)
    require(store, model, data, factors)
    if settings.members and model.family == "imported":  # compute_scores scores it alone
        log.warning("ensemble: %s is %s imported as it is (import_model), with no training to repeat with other "
                    "seeds: nothing to do (fine-tune it with python -m jobs train, MODEL set, for an ensemble)",
                    model.url, model.source)
        return
    if not settings.members:  # ENSEMBLE_SEEDS=1, or the pod of member 0: the model itself
        log.info("ensemble: nothing to train (ENSEMBLE_SEEDS=%d; member 0 is %s itself)%s", settings.ensemble_seeds,
                 model.url, f"; ENSEMBLE_SEEDS={ENSEMBLE_SUGGESTED} makes an ensemble"
                 if settings.ensemble_seeds == 1 else "")
        return
    sources.check_source_unchanged(model, "ensemble")
    trained, fitted = model.settings, factors.settings
    # What this run says of the device (not recorded in the outputs), beside the recorded recipe.
    device = {"force": settings.force, "force_fit": settings.force_fit,
              "device_memory_gib": settings.device_memory_gib, "disk_gib": settings.disk_gib}
    for number in settings.members:
        uri, seed = member_uri(settings.artifacts_uri, number), trained.model_seed + number
        log.info("ensemble: member %d of %d (training seed %d) in %s", number, settings.ensemble_seeds - 1, seed,
                 store.url(f"ensemble/member_{number}"))
        run_stage("train", trained.model_copy(update={**device, "artifacts_uri": uri, "training_seed": seed}))
        run_stage("fit_factors", fitted.model_copy(update={**device, "artifacts_uri": uri, "factor_phase": "all",
                                                           "shard_index": None, "job_completion_index": None}))
