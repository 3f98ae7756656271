"""Stage 1 for a model of your own: MODEL published as it is (no training) to model/, with the
corpus tokenized by its tokenizer in data/train/, so every later stage runs unchanged.

Outputs: model/ (weights, tokenizer, training_metrics.json naming the source) and data/train/.
"""

from __future__ import annotations

import logging
import time

from influence_core import sources
from influence_core.artifacts import Model, TrainData
from influence_core.settings import ImportModelSettings
from influence_core.storage import redact, work_dir
from jobs.common import already_done, manifest, open_store

log = logging.getLogger("jobs.import_model")


def main(settings: ImportModelSettings) -> None:
    started = time.time()
    store = open_store(settings.artifacts_uri)
    inputs = sources.train_inputs(settings.dataset, settings.seed, settings.num_examples, settings.model, None)
    if already_done(store, [TrainData(), Model()], "import_model", settings, inputs):
        return

    from influence_core import data, modeling, training

    with work_dir() as work:
        source = modeling.resolve_model(settings.model, settings.tracked_modules, work)
        model = modeling.load_pretrained(source, settings.model_dtype, settings.max_length)
        tokenizer = modeling.pretrained_tokenizer(source)
        corpus = data.load_corpus(settings.dataset, settings.num_examples, settings.text_column,
                                  settings.dataset_config, settings.dataset_split, settings.seed)
        examples = data.tokenize_corpus(corpus.texts, tokenizer, settings.max_length)
        log.info("importing %s (%.1fM parameters) with %d examples", redact(settings.model),
                 model.num_parameters() / 1e6, len(examples))
        training.publish_model(store, work, corpus, examples, model, tokenizer,
                               {"imported_from": redact(settings.model)},
                               manifest("import_model", settings, inputs, started))
