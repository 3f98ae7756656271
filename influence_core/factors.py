"""Fitting Kronfluence influence factors (EK-FAC, K-FAC, diagonal, identity) for a saved model."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from datasets import Dataset, load_from_disk
from kronfluence.analyzer import Analyzer, prepare_model
from kronfluence.arguments import FactorArguments
from kronfluence.utils.dataset import DataLoaderKwargs
from transformers import AutoTokenizer

from influence_core.data import PadCollator
from influence_core.modeling import load_model
from influence_core.settings import FitFactorsSettings
from influence_core.tasks import TASKS

ANALYSIS_NAME = "influence"  # Kronfluence writes to <work>/influence/{factors,scores}_<name>


def load_training_examples(train_dir: Path) -> Dataset:
    return load_from_disk(str(train_dir)).select_columns(["input_ids", "attention_mask"])


def build_analyzer(model_dir: Path, work_dir: Path, task_name: str = "language_modeling", seed: int = 0) -> Analyzer:
    """A Kronfluence Analyzer over the saved model, writing under `work_dir`, batching by padding
    each batch to its longest example."""
    verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
    model = load_model(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    task = TASKS[task_name](num_layers=model.config.num_layers, seed=seed)
    analyzer = Analyzer(
        analysis_name=ANALYSIS_NAME,
        model=prepare_model(model, task),
        task=task,
        output_dir=str(work_dir),
        disable_model_save=True,
        disable_tqdm=not verbose,
        log_level=None,  # any level given here is also set on the root logger; runtime.py sets kronfluence's
    )
    analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=PadCollator(tokenizer.pad_token_id)))
    return analyzer


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
    )


def data_partitions(count: int) -> list[list[int] | None]:
    """Kronfluence's target_data_partitions for each step: None when the data is not partitioned."""
    return [None] if count == 1 else [[index] for index in range(count)]


def fit_factors(model_dir: Path, train_dir: Path, settings: FitFactorsSettings, work_dir: Path,
                after_step: Callable[[], None] = lambda: None) -> Path:
    """Fit factors on every training example, one data partition at a time, calling `after_step`
    after each finished partition (the caller publishes it). Partitions whose files already lie in
    the output directory are not recomputed. Returns the local directory Kronfluence wrote."""
    analyzer = build_analyzer(model_dir, work_dir, seed=settings.seed)
    args = factor_arguments(settings)
    common = {"factors_name": settings.factors_name, "factor_args": args, "overwrite_output_dir": False}
    data = {"dataset": load_training_examples(train_dir), "per_device_batch_size": settings.factor_batch_size}
    # Kronfluence skips each step its strategy does not need (e.g. all of them for identity).
    for partition in data_partitions(args.covariance_data_partitions):
        analyzer.fit_covariance_matrices(**common, **data, target_data_partitions=partition)
        after_step()
    analyzer.perform_eigendecomposition(**common)
    after_step()
    for partition in data_partitions(args.lambda_data_partitions):
        analyzer.fit_lambda_matrices(**common, **data, target_data_partitions=partition)
        after_step()
    return factors_dir(work_dir, settings.factors_name)


def factors_dir(work_dir: Path, factors_name: str) -> Path:
    return work_dir / ANALYSIS_NAME / f"factors_{factors_name}"
