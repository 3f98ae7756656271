"""Stage 1: train a GPT-Neo causal LM from scratch (tokenizer included) on the corpus, or fine-tune MODEL.

Outputs: model/ (weights, tokenizer, training_metrics.json) and data/train/ (the tokenized
training examples in corpus order, plus planted_facts.json for the demo corpus).
"""

from __future__ import annotations

import logging
import time

from influence_core import sources
from influence_core.artifacts import Model, TrainCheckpoints, TrainData, find
from influence_core.errors import ConfigError
from influence_core.plan import check_fits
from influence_core.settings import TrainSettings
from influence_core.storage import Checkpoints, Store, work_dir
from jobs.common import already_done, fingerprint, manifest, open_store

log = logging.getLogger("jobs.train")


def main(settings: TrainSettings) -> None:
    started = time.time()
    store = open_store(settings.artifacts_uri)
    inputs = sources.train_inputs(settings.dataset, settings.seed, settings.num_examples, settings.model,
                                  settings.tokenizer_name)
    if already_done(store, [TrainData(), Model()], "train", settings, inputs):
        return
    refuse_replacing_an_import(store, settings)
    check_fits("train", settings)  # the batch sizes fit the device, before the model loads

    from influence_core import data, modeling, tokenizer, training
    from influence_core.runtime import Terminated, configure_threads, handle_sigterm, is_main_process, stop_requested

    handle_sigterm(graceful=True)  # on SIGTERM: save and publish a checkpoint, then exit
    configure_threads()
    checkpoints = Checkpoints(store, TrainCheckpoints().relative,
                              {"stage": "train", "settings": fingerprint(settings), "inputs": inputs})
    with work_dir() as work:
        source = modeling.resolve_model(settings.model, settings.tracked_modules, work) if settings.model else None
        corpus = data.load_corpus(settings.dataset, settings.num_examples, settings.text_column,
                                  settings.dataset_config, settings.dataset_split, settings.seed)
        resume = checkpoints.latest()
        if resume:  # an interrupted run with the same settings and inputs: continue from its last checkpoint
            resume_dir = store.fetch(resume, work / "trainer" / resume.rsplit("/", 1)[1],
                                     remedy="rerun train with FORCE=true")
            log.info("resuming from %s", store.url(resume))
            tok = (modeling.pretrained_tokenizer(resume_dir) if settings.model or settings.tokenizer_name
                   else tokenizer.load_bpe_tokenizer(resume_dir))
        else:
            resume_dir = None
            tok = (modeling.pretrained_tokenizer(source) if source else
                   tokenizer.load_pretrained_tokenizer(settings.tokenizer_name) if settings.tokenizer_name
                   else tokenizer.train_bpe_tokenizer(corpus.texts, settings.vocab_size))
        if source:  # fine-tune MODEL, in float32: MODEL_DTYPE=bfloat16 is the passes' autocast (training_plan)
            model = modeling.load_pretrained(source, "float32", settings.max_length)
        else:
            model = modeling.build_model(settings.model_preset, tok, settings.max_length, seed=settings.model_seed)
        examples = data.tokenize_corpus(corpus.texts, tok, settings.max_length)
        log.info("training %s (%.1fM parameters) on %d examples", settings.model or settings.model_preset,
                 model.num_parameters() / 1e6, len(examples))
        metrics = training.train(model, examples, tok, training.training_plan(settings), work / "trainer",
                                 checkpoints.publish, resume_from=resume_dir, stop_requested=stop_requested)
        if stop_requested():
            raise Terminated()
        if not is_main_process():  # under torchrun DDP every process trains; one publishes
            return
        log.info("trained: final loss %.3f, %.0f tokens/s, %.1f s", metrics["final_loss"],
                 metrics["tokens_per_second"], metrics["train_seconds"])
        training.publish_model(store, work, corpus, examples, model, tok, metrics,
                               manifest("train", settings, inputs, started))
        checkpoints.clear()


def refuse_replacing_an_import(store: Store, settings: TrainSettings) -> None:
    """model/ holding a model imported as it is (import_model) is the user's: train replaces it
    only when told to (FORCE=true), never because a `make` target starts with train."""
    published = find(store, Model())
    if published is not None and published.family == "imported" and not settings.force:
        raise ConfigError(f"train: {published.url} holds {published.source or 'a model'} imported with import_model; "
                          "training would replace it: set FORCE=true to do so, or use another ARTIFACTS_URI")
