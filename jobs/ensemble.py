"""The members of an ensemble (ENSEMBLE_SEEDS): models of the same corpus that differ only in
training, whose influence compute_scores averages (one model's influence is noisy where its
training happened to go one way; docs/results/lds_corpora.md measures what averaging gains).

Member k (1 to ENSEMBLE_SEEDS - 1) is trained as the model at ARTIFACTS_URI was (the train stage's
settings as its _SUCCESS records them) with training seed the model's + k, fitted as the factors
FACTORS_NAME were, and scored with these compute_scores settings (without fusion: compute_scores
fuses the average), each by its own stage in a tree of its own: ARTIFACTS_URI/ensemble/member_<k>/.
With MEMBER_INDEX (or an Indexed Job's completion index) only that member; a finished member is skipped.
"""

from __future__ import annotations

import logging

from influence_core.artifacts import Factors, Model, TrainData, member_uri, require
from influence_core.prompts import load_prompts
from influence_core.settings import ComputeScoresSettings, EnsembleSettings, stage_settings
from jobs.common import open_store, run_stage

log = logging.getLogger("jobs.ensemble")


def main(settings: EnsembleSettings) -> None:
    load_prompts(settings.prompts)  # bad prompts fail before training
    store = open_store(settings.artifacts_uri)
    model, data, factors = Model(), TrainData(), Factors(settings.factors_name)
    require(store, model, data, factors)
    if settings.members and model.family == "imported":  # compute_scores scores it alone
        log.warning("ensemble: %s is %s imported as it is (import_model), with no training to repeat with other "
                    "seeds: nothing to do (fine-tune it with python -m jobs train, MODEL set, for an ensemble)",
                    model.url, model.source)
        return
    if not settings.members:  # ENSEMBLE_SEEDS=1, or the pod of member 0: the model itself
        log.log(logging.INFO if settings.ensemble_seeds > 1 else logging.DEBUG,
                "ensemble: nothing to train (ENSEMBLE_SEEDS=%d; member 0 is %s itself)", settings.ensemble_seeds,
                model.url)
    trained, fitted = model.settings, factors.settings
    scoring = stage_settings(ComputeScoresSettings, settings.model_copy(update={"job_completion_index": None}))
    for number in settings.members:
        uri, seed = member_uri(settings.artifacts_uri, number), trained.model_seed + number
        log.info("ensemble: member %d of %d (training seed %d) in %s", number, settings.ensemble_seeds - 1, seed,
                 store.url(f"ensemble/member_{number}"))
        own = {"artifacts_uri": uri, "force": settings.force}
        run_stage("train", trained.model_copy(update={**own, "training_seed": seed}))
        run_stage("fit_factors", fitted.model_copy(update={**own, "factor_phase": "all", "shard_index": None,
                                                           "job_completion_index": None}))
        run_stage("compute_scores", scoring.model_copy(update={**own, "ensemble_seeds": 1, "score_fusion": "none"}))
