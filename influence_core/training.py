"""Training a causal LM with the Hugging Face Trainer."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from influence_core.artifacts import Model, TrainData
from influence_core.data import Corpus, PadCollator
from influence_core.runtime import autocast_dtype, progress_bars
from influence_core.settings import TrainSettings
from influence_core.storage import Store

log = logging.getLogger(__name__)


class PublishCheckpoints(TrainerCallback):
    """Hands every checkpoint the Trainer saves to `publish` (which copies it to the artifacts),
    and on a stop request (SIGTERM) saves one more and stops."""

    def __init__(self, publish: Callable[[Path], None], stop_requested: Callable[[], bool]) -> None:
        self.publish, self.stop_requested = publish, stop_requested

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop_requested():
            control.should_save = control.should_training_stop = True

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        (checkpoint / "training_args.bin").unlink(missing_ok=True)  # a pickle; never loaded on resume
        if state.is_world_process_zero:
            self.publish(checkpoint)


class LogLines(TrainerCallback):
    """Training progress as plain log lines (readable in pod logs), not printed dicts."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            log.info("step %d/%d epoch %.2f loss %.4f lr %.2e", state.global_step, state.max_steps,
                     logs.get("epoch", 0.0), float(logs["loss"]), float(logs.get("learning_rate", 0.0)))


class SeededTrainer(Trainer):
    """The Trainer, with the batch order following the seed: transformers builds its
    BatchRebalanceSampler with a fixed seed of its own."""

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        sampler.seed = self.args.seed
        return sampler


@dataclass
class TrainingPlan:
    batch_size: int
    num_train_epochs: float
    learning_rate: float
    warmup_ratio: float
    weight_decay: float
    seed: int
    micro_batches: int = 4  # each step's examples run as this many length-balanced forward passes
    bf16: bool = False
    log_every_fraction: float = 0.05
    checkpoints: int = 4  # saved and published evenly over the run; 0 saves none
    pad_to: int | None = None  # pad every batch to this length instead of its longest (benchmarks)


def training_plan(settings: TrainSettings, **changes) -> TrainingPlan:
    """The train stage's plan for these settings (the seed: the model's), with `changes` applied."""
    plan = TrainingPlan(batch_size=settings.batch_size, num_train_epochs=settings.num_train_epochs,
                        learning_rate=settings.learning_rate, warmup_ratio=settings.warmup_ratio,
                        weight_decay=settings.weight_decay, seed=settings.model_seed,
                        micro_batches=settings.micro_batches, checkpoints=settings.checkpoints,
                        # MODEL_DTYPE=bfloat16: bfloat16 passes over float32 weights, so that updates under
                        # bfloat16's precision still add up (in pure bfloat16 each one would round away).
                        bf16=autocast_dtype(settings.amp_dtype) == torch.bfloat16 or (
                            settings.model is not None and settings.model_dtype == "bfloat16"))
    return dataclasses.replace(plan, **changes)


def train(model: PreTrainedModel, dataset: Dataset, tokenizer: PreTrainedTokenizerBase, plan: TrainingPlan,
          work_dir: Path, publish_checkpoint: Callable[[Path], None] = lambda path: None,
          resume_from: Path | None = None, stop_requested: Callable[[], bool] = lambda: False) -> dict:
    """Train in place (resuming from a checkpoint directory if given) and return the metrics
    recorded in training_metrics.json. Checkpoints (weights as safetensors, optimizer state, the
    tokenizer) are saved in `work_dir` and handed to `publish_checkpoint`."""
    lengths = [len(ids) for ids in dataset["input_ids"]]
    steps_per_epoch = -(-len(dataset) // plan.batch_size)
    total_steps = max(1, int(steps_per_epoch * plan.num_train_epochs))
    args = TrainingArguments(
        output_dir=str(work_dir),
        # Each optimizer step takes `batch_size` examples in random order and splits them, sorted by
        # length, into `micro_batches` forward passes padded to their own longest (BatchRebalanceSampler);
        # the loss is the mean over all the step's tokens (num_items_in_batch), so the gradient is the
        # one of a single random batch while far fewer padding tokens are computed.
        per_device_train_batch_size=plan.batch_size // plan.micro_batches,
        gradient_accumulation_steps=plan.micro_batches,
        train_sampling_strategy="batch_rebalance",
        length_column_name="length",
        num_train_epochs=plan.num_train_epochs,
        learning_rate=plan.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=int(plan.warmup_ratio * steps_per_epoch * plan.num_train_epochs),
        weight_decay=plan.weight_decay,
        seed=plan.seed,
        bf16=plan.bf16,
        tf32=plan.bf16 and torch.cuda.is_available() or None,  # None: leave torch's default (off)
        use_cpu=plan.bf16 and not torch.cuda.is_available(),  # the Trainer's bf16 on CPU (AMP_DTYPE=bfloat16)
        logging_steps=max(1, int(plan.log_every_fraction * steps_per_epoch * plan.num_train_epochs)),
        save_strategy="steps" if plan.checkpoints else "no",
        save_steps=max(1, -(-total_steps // max(1, plan.checkpoints))),
        save_total_limit=1,
        report_to=[],
        disable_tqdm=not progress_bars(),  # off a terminal, LogLines reports progress
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    trainer = SeededTrainer(
        model=model,
        args=args,
        train_dataset=dataset.add_column("length", lengths).select_columns(["input_ids", "attention_mask", "length"]),
        data_collator=PadCollator(tokenizer.pad_token_id, plan.pad_to),
        processing_class=tokenizer,
        callbacks=[LogLines(), PublishCheckpoints(publish_checkpoint, stop_requested)],
    )
    trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.perf_counter() - start
    resumed_step = int(resume_from.name.rsplit("-", 1)[1]) if resume_from else 0
    tokens = sum(lengths) * plan.num_train_epochs * (1 - resumed_step / total_steps)
    losses = [entry for entry in trainer.state.log_history if "loss" in entry]
    return {
        "final_loss": losses[-1]["loss"] if losses else result.training_loss,
        "mean_loss": result.training_loss,
        "loss_curve": [{"step": entry["step"], "loss": entry["loss"]} for entry in losses],
        "train_seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "non_padding_tokens": tokens,
        "steps": trainer.state.global_step,
        "examples": len(dataset),
        "resumed_from_step": resumed_step,
    }


def publish_model(store: Store, work: Path, corpus: Corpus, examples: Dataset, model: PreTrainedModel,
                  tokenizer: PreTrainedTokenizerBase, metrics: dict, record: dict) -> None:
    """data/train/ (the tokenized examples, the planted facts of a demo corpus) and model/ (weights,
    tokenizer, training_metrics.json), model/ last: what train and import_model publish. data/train/
    holds the corpus's BM25 index too, built once here (influence_core.fusion)."""
    from influence_core.fusion import save_bm25

    examples.save_to_disk(str(work / "data"))
    save_bm25(examples["text"], work / "data")
    if corpus.facts:
        (work / "data" / TrainData.PLANTED_FACTS).write_text(json.dumps(corpus.facts, indent=2))
    model.save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")
    (work / "model" / Model.METRICS).write_text(json.dumps(metrics, indent=2))
    store.publish(work / "data", TrainData().relative, record)
    log.info("published %s", store.publish(work / "model", Model().relative, record))
