"""Stage 1: train a GPT-Neo causal LM from scratch (tokenizer included) on the corpus.

Outputs: model/ (weights, tokenizer, training_metrics.json) and data/train/ (the tokenized
training examples in corpus order, plus planted_facts.json for the demo corpus).
"""

from __future__ import annotations

import json
import logging
import time

from influence_core import paths
from influence_core.errors import ConfigError
from influence_core.plan import check_fits
from influence_core.settings import TrainSettings
from influence_core.storage import Checkpoints, work_dir
from jobs.common import already_done, fingerprint, manifest, open_artifacts

log = logging.getLogger("jobs.train")
OUTPUTS = [paths.TRAIN_DATA, paths.MODEL]


def main(settings: TrainSettings) -> None:
    started = time.time()
    artifacts = open_artifacts(settings.artifacts_uri)
    if already_done(artifacts, OUTPUTS, "train", settings, inputs={}):
        return
    check_fits("train", settings)  # the batch sizes fit the device, before the model loads

    from influence_core import data, modeling, tokenizer, training
    from influence_core.runtime import Terminated, configure_threads, handle_sigterm, is_main_process, stop_requested

    handle_sigterm(graceful=True)  # on SIGTERM: save and publish a checkpoint, then exit
    configure_threads()
    checkpoints = Checkpoints(artifacts, paths.TRAIN_CHECKPOINTS, {"stage": "train", "settings": fingerprint(settings)})
    with work_dir() as work:
        source = modeling.resolve_model(settings.model, settings.tracked_modules, work) if settings.model else None
        corpus = load_corpus(settings)
        resume = checkpoints.latest()
        if resume:  # an interrupted run with the same settings: continue from its last checkpoint
            resume_dir = artifacts.fetch(resume, work / "trainer" / resume.rsplit("/", 1)[1])
            log.info("resuming from %s", artifacts.url(resume))
            tok = (modeling.pretrained_tokenizer(resume_dir) if settings.model or settings.tokenizer_name
                   else tokenizer.load_bpe_tokenizer(resume_dir))
        else:
            resume_dir = None
            tok = (modeling.pretrained_tokenizer(source) if source else
                   tokenizer.load_pretrained_tokenizer(settings.tokenizer_name) if settings.tokenizer_name
                   else tokenizer.train_bpe_tokenizer(corpus.texts, settings.vocab_size))
        if source:  # fine-tune MODEL
            model = checked_length(modeling.load_pretrained(source, settings.model_dtype), settings)
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
        publish(artifacts, work, corpus, examples, model, tok, metrics, manifest("train", settings, {}, started))
        checkpoints.clear()


def load_corpus(settings: TrainSettings):
    """The configured corpus, refused in one line when it holds no text."""
    from influence_core import data

    corpus = data.load_corpus(settings.dataset, settings.num_examples, settings.text_column,
                              settings.dataset_config, settings.dataset_split, settings.seed)
    if not any(text.strip() for text in corpus.texts):
        raise ConfigError(f"DATASET={settings.dataset}: the corpus has no text")
    log.info("corpus: %d documents from %s", len(corpus.texts), settings.dataset)
    return corpus


def checked_length(model, settings: TrainSettings):
    """MODEL, refused in one line when MAX_LENGTH exceeds the positions it has."""
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None and settings.max_length > positions:
        raise ConfigError(f"invalid setting MAX_LENGTH (--max_length): MODEL={settings.model} has "
                          f"{positions} positions, got {settings.max_length}")
    return model


def publish(artifacts, work, corpus, examples, model, tok, metrics: dict, record: dict) -> None:
    """data/train/ (the tokenized examples, the planted facts of a demo corpus) and model/ (weights,
    tokenizer, training_metrics.json), model/ last."""
    examples.save_to_disk(str(work / "data"))
    if corpus.facts:
        (work / "data" / "planted_facts.json").write_text(json.dumps(corpus.facts, indent=2))
    model.save_pretrained(work / "model")
    tok.save_pretrained(work / "model")
    (work / "model" / "training_metrics.json").write_text(json.dumps(metrics, indent=2))
    artifacts.publish(work / "data", paths.TRAIN_DATA, record)
    log.info("published %s", artifacts.publish(work / "model", paths.MODEL, record))

