"""Stage 1 for a model of your own: MODEL published as it is (no training) to model/, with the
corpus tokenized by its tokenizer in data/train/, so every later stage runs unchanged.

Outputs: model/ (weights, tokenizer, training_metrics.json naming the source) and data/train/.
"""

from __future__ import annotations

import logging
import time

from influence_core.settings import ImportModelSettings
from influence_core.storage import redact, work_dir
from jobs.common import already_done, manifest, open_artifacts
from jobs.train import OUTPUTS, checked_length, load_corpus, publish

log = logging.getLogger("jobs.import_model")


def main(settings: ImportModelSettings) -> None:
    started = time.time()
    artifacts = open_artifacts(settings.artifacts_uri)
    if already_done(artifacts, OUTPUTS, "import_model", settings, inputs={}):
        return

    from influence_core import data, modeling

    with work_dir() as work:
        source = modeling.resolve_model(settings.model, settings.tracked_modules, work)
        model = checked_length(modeling.load_pretrained(source, settings.model_dtype), settings)
        tokenizer = modeling.pretrained_tokenizer(source)
        corpus = load_corpus(settings)
        examples = data.tokenize_corpus(corpus.texts, tokenizer, settings.max_length)
        log.info("importing %s (%.1fM parameters) with %d examples", redact(settings.model),
                 model.num_parameters() / 1e6, len(examples))
        publish(artifacts, work, corpus, examples, model, tokenizer, {"imported_from": redact(settings.model)},
                manifest("import_model", settings, {}, started))

