"""Fitting Kronfluence influence factors (EK-FAC, K-FAC, diagonal, identity) for a saved model."""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from datasets import Dataset, load_from_disk
from kronfluence.analyzer import Analyzer, prepare_model
from kronfluence.arguments import FactorArguments
from kronfluence.factor.eigen import eigendecomposition_save_path
from kronfluence.utils.constants import ACTIVATION_EIGENVECTORS_NAME
from kronfluence.utils.dataset import DataLoaderKwargs
from transformers import AutoTokenizer

from influence_core.artifacts import Factors
from influence_core.corpus_order import length_sorted
from influence_core.data import PadCollator
from influence_core.errors import ConfigError
from influence_core.modeling import checked_tracked_modules, load_model
from influence_core.runtime import autocast_dtype, barrier, is_main_process
from influence_core.settings import FitFactorsSettings
from influence_core.storage import PARTIAL
from influence_core.tasks import TASKS

# Kronfluence writes <work>/<analysis name>/{factors,scores}_<name>: with this name, the artifacts'
# own layout (influence/factors_<name>, influence/scores_<name>; influence_core.artifacts).
ANALYSIS_NAME = "influence"


def load_training_examples(train_dir: Path) -> Dataset:
    return load_from_disk(str(train_dir)).select_columns(["input_ids", "attention_mask"])


def build_analyzer(model_dir: Path, work_dir: Path, factors_name: str, task_name: str = "language_modeling",
                   seed: int = 0) -> Analyzer:
    """A Kronfluence Analyzer over the saved model, writing under `work_dir`, batching by padding
    each batch to its longest example, tracking the modules the factors <factors_name> cover."""
    model = load_model(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    task = TASKS[task_name](tracked_modules(factors_dir(work_dir, factors_name)), seed=seed)
    analyzer = Analyzer(
        analysis_name=ANALYSIS_NAME,
        model=prepare_model(model, task),
        task=task,
        output_dir=str(work_dir),
        disable_model_save=True,
        disable_tqdm=False,  # bars on a terminal, periodic log lines in pods (runtime.configure_progress)
        log_level=None,  # any level given here is also set on the root logger; runtime.py sets kronfluence's
    )
    analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=PadCollator(tokenizer.pad_token_id)))
    # Kronfluence runs gc.collect() around every step, which walks every object of torch,
    # transformers and datasets (slow on a CPU); what is alive now lives to the end anyway.
    gc.freeze()
    return analyzer


def tracked_modules(local_factors_dir: Path) -> list[str]:
    """The modules fitted factors cover (their tracked_modules.json)."""
    return json.loads(Factors.tracked_modules_file(local_factors_dir).read_text())


def record_tracked_modules(model_dir: Path, settings: FitFactorsSettings, local_factors_dir: Path) -> list[str]:
    """Resolve TRACKED_MODULES against the model and record the names in the factors: the main
    torchrun process writes them, atomically, while the others wait, then every process reads them."""
    if is_main_process():
        names = checked_tracked_modules(model_dir, settings.tracked_modules)
        record = Factors.tracked_modules_file(local_factors_dir)
        record.parent.mkdir(parents=True, exist_ok=True)
        partial = record.with_name(f"{record.name}{PARTIAL}{os.getpid()}")
        partial.write_text(json.dumps(names))
        os.replace(partial, record)
    barrier()
    return tracked_modules(local_factors_dir)


def factor_arguments(settings: FitFactorsSettings) -> FactorArguments:
    return FactorArguments(
        strategy=settings.factor_strategy,
        use_empirical_fisher=settings.use_empirical_fisher,
        covariance_max_examples=settings.covariance_max_examples,
        covariance_data_partitions=settings.covariance_data_partitions,
        lambda_max_examples=settings.lambda_max_examples,
        lambda_data_partitions=settings.lambda_data_partitions,
        activation_covariance_dtype=getattr(torch, settings.activation_covariance_dtype),
        gradient_covariance_dtype=getattr(torch, settings.gradient_covariance_dtype),
        eigendecomposition_dtype=getattr(torch, settings.eigendecomposition_dtype),
        lambda_dtype=getattr(torch, settings.lambda_dtype),
        amp_dtype=autocast_dtype(settings.amp_dtype),
    )


PHASES = ("covariance", "eigendecomposition", "lambda")


def data_partitions(count: int, shard: int | None = None) -> list[list[int] | None]:
    """Kronfluence's target_data_partitions, one entry per step: every partition, or only the
    shard's; None when the data is not partitioned."""
    if count == 1:
        return [None]
    return [[index] for index in range(count) if shard is None or index == shard]


def fit_factors(model_dir: Path, train_dir: Path, settings: FitFactorsSettings, work_dir: Path,
                after_step: Callable[[], None] = lambda: None) -> Path:
    """Fit factors one data partition at a time, calling `after_step` after each (the caller
    publishes it); partitions whose files already lie in the output directory are skipped.

    Without a shard, every phase up to FACTOR_PHASE runs over all missing partitions, and
    Kronfluence aggregates a phase once all its partitions exist. A shard computes its one
    partition of FACTOR_PHASE (covariance or lambda) only. Returns the local output directory."""
    record_tracked_modules(model_dir, settings, factors_dir(work_dir, settings.factors_name))
    analyzer = build_analyzer(model_dir, work_dir, settings.factors_name, seed=settings.seed)
    args = factor_arguments(settings)
    common = {"factors_name": settings.factors_name, "factor_args": args, "overwrite_output_dir": False}
    examples = load_training_examples(train_dir)
    shard = settings.shard
    last = len(PHASES) if settings.factor_phase == "all" else PHASES.index(settings.factor_phase) + 1
    phases = [settings.factor_phase] if shard is not None else PHASES[:last]
    # Kronfluence skips each step its strategy does not need (e.g. all of them for identity).
    if "covariance" in phases:
        data = phase_data(examples, args.covariance_max_examples, args.covariance_data_partitions, settings)
        for partition in data_partitions(args.covariance_data_partitions, shard):
            analyzer.fit_covariance_matrices(**common, **data, target_data_partitions=partition)
            after_step()
    if "eigendecomposition" in phases:
        analyzer.perform_eigendecomposition(**common)
        after_step()
    if "lambda" in phases:
        data = phase_data(examples, args.lambda_max_examples, args.lambda_data_partitions, settings)
        for partition in data_partitions(args.lambda_data_partitions, shard):
            analyzer.fit_lambda_matrices(**common, **data, target_data_partitions=partition)
            after_step()
    return factors_dir(work_dir, settings.factors_name)


def phase_data(examples: Dataset, max_examples: int | None, partitions: int, settings: FitFactorsSettings) -> dict:
    """Kronfluence's data arguments of a phase: the first `max_examples` examples (those Kronfluence
    would take), length-sorted within each data partition. The factors are sums over examples whose
    sampled labels are seeded by each example's tokens (tasks._sample_labels), so the order changes
    only float rounding, while batches of similar lengths hold far less padding."""
    if max_examples is not None and max_examples < len(examples):
        examples = examples.select(range(max_examples))
    return {"dataset": length_sorted(examples, partitions)[0], "per_device_batch_size": settings.factor_batch_size}


def factors_dir(work_dir: Path, factors_name: str) -> Path:
    """Where Kronfluence, working in `work_dir`, reads and writes the factors `factors_name`."""
    return work_dir / Factors(factors_name).relative


def check_phase_inputs(local_dir: Path, settings: FitFactorsSettings) -> None:
    """A lambda shard of EK-FAC needs the eigendecomposition that an earlier phase published."""
    eigenvectors = eigendecomposition_save_path(local_dir, ACTIVATION_EIGENVECTORS_NAME)
    if settings.shard is not None and settings.factor_phase == "lambda" and settings.factor_strategy == "ekfac" and (
        not eigenvectors.exists()
    ):
        raise ConfigError(
            f"FACTOR_PHASE=lambda shard {settings.shard}: the eigendecomposition of {settings.factors_name!r} is not "
            "published yet; run fit_factors with FACTOR_PHASE=eigendecomposition and no SHARD_INDEX first"
        )
