"""Pairwise influence scores of every training example on every prompt, with Kronfluence."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from datasets import Dataset
from kronfluence.arguments import ScoreArguments
from kronfluence.score.pairwise import pairwise_scores_save_path
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer

from influence_core.artifacts import Scores
from influence_core.corpus_order import length_sorted, restore_on_main_process
from influence_core.data import tokenize_prompts
from influence_core.errors import ConfigError
from influence_core.factors import build_analyzer, data_partitions, load_training_examples
from influence_core.prompts import Prompt
from influence_core.runtime import autocast_dtype, is_main_process
from influence_core.settings import (
    ComputeScoresSettings,
    FusionSettings,
    QueryIndexSettings,
    ScoringSettings,
    kronfluence_damping,
)

log = logging.getLogger(__name__)


def score_arguments(settings: ScoringSettings, **more) -> ScoreArguments:
    """Kronfluence's ScoreArguments of the scoring settings (pairwise and self-scores), plus `more`."""
    return ScoreArguments(
        damping_factor=kronfluence_damping(settings.damping_factor),
        per_sample_gradient_dtype=getattr(torch, settings.per_sample_gradient_dtype),
        precondition_dtype=getattr(torch, settings.precondition_dtype),
        score_dtype=getattr(torch, settings.score_dtype),
        amp_dtype=autocast_dtype(settings.amp_dtype),
        **more,
    )


def compute_scores(model_dir: Path, train_dir: Path, prompts: list[Prompt], settings: ComputeScoresSettings,
                   work_dir: Path, after_step: Callable[[], None] = lambda: None) -> Path:
    """Score all prompts against all training examples, one data partition at a time (only the
    shard's partition when SHARD_INDEX is set), calling `after_step` after each; partitions
    already in the output directory are skipped, and Kronfluence aggregates once all exist. The
    factors must lie at <work_dir>/influence/factors_<factors_name>. Returns the local scores
    directory."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    context = AutoConfig.from_pretrained(model_dir).max_position_embeddings
    queries = tokenize_prompts(prompts, tokenizer, context)  # before the model loads: fails fast
    shard = "" if settings.shard is None else f" (shard {settings.shard} of {settings.score_data_partitions})"
    log.info("scoring %d prompts with factors %r%s", len(prompts), settings.factors_name, shard)
    analyzer = build_analyzer(model_dir, work_dir, settings.factors_name, settings.task)
    train_examples, order = length_sorted(load_training_examples(train_dir), settings.score_data_partitions)
    local = scores_dir(work_dir, settings.scores_name)
    for partition in data_partitions(settings.score_data_partitions, settings.shard):
        analyzer.compute_pairwise_scores(
            scores_name=settings.scores_name,
            factors_name=settings.factors_name,
            query_dataset=queries,
            train_dataset=train_examples,
            per_device_query_batch_size=settings.query_batch_size or len(queries),
            per_device_train_batch_size=settings.train_batch_size,
            score_args=score_arguments(settings, data_partitions=settings.score_data_partitions,
                                       query_gradient_low_rank=settings.query_gradient_rank),
            target_data_partitions=partition,
            overwrite_output_dir=False,
        )
        aggregated = pairwise_scores_save_path(local)
        if aggregated.exists():  # every partition is in and Kronfluence has aggregated them
            check_one_row_per_prompt(aggregated, len(prompts))
            restore_on_main_process(aggregated, order)  # before the step is staged: uploaded once
        after_step()
    if aggregated.exists() and is_main_process():
        # The partitions' files hold length-sorted columns; only the aggregate, in corpus order, is
        # published (a rerun restores them from the staged steps, which are never published).
        for partition in range(settings.score_data_partitions):
            pairwise_scores_save_path(local, partition=(partition, 0)).unlink(missing_ok=True)
    return local


def rescore(model_dir: Path, examples: Dataset, queries: Dataset, settings: QueryIndexSettings, work_dir: Path,
            name: str = "rescored") -> torch.Tensor:
    """The queries' exact scores against some training examples (the index's candidates), as
    compute_scores computes them: queries x examples. Kronfluence writes under `work_dir`, where the
    factors must lie."""
    analyzer = build_analyzer(model_dir, work_dir, settings.factors_name, settings.task)
    analyzer.compute_pairwise_scores(
        scores_name=name, factors_name=settings.factors_name, query_dataset=queries, train_dataset=examples,
        per_device_query_batch_size=settings.query_batch_size or len(queries),
        per_device_train_batch_size=settings.train_batch_size,
        score_args=score_arguments(settings, query_gradient_low_rank=settings.query_gradient_rank),
        overwrite_output_dir=True)
    return analyzer.load_pairwise_scores(name)[Scores.KEY]


def check_one_row_per_prompt(path: Path, prompts: int) -> None:
    """Kronfluence takes a tracked module's first input dimension for the batch: a module whose
    input is flattened over the batch and the tokens (OPT's fc1 and fc2) gives a row per token."""
    with safe_open(str(path), "pt") as scores_file:
        rows = scores_file.get_slice(Scores.KEY).get_shape()[0]
    if rows != prompts:
        raise ConfigError(f"TRACKED_MODULES: a tracked module sees the tokens of all examples as one batch (its "
                          f"input is flattened), so the scores have {rows} rows for {prompts} prompts; track "
                          "modules whose input keeps the example dimension")


def scores_dir(work_dir: Path, scores_name: str) -> Path:
    """Where Kronfluence, working in `work_dir`, writes the scores `scores_name`."""
    return work_dir / Scores(scores_name).relative


def average_members(local: Path, members: list[Scores], work_dir: Path) -> None:
    """With ENSEMBLE_SEEDS: the influence in `local` (the model's own) replaced by its mean with the
    ensemble members' (bound Scores, checked by check_members), summed in float64."""
    from safetensors.torch import save_file

    own = Scores.influence(local)
    total = own.double()
    for scores in members:
        total += Scores.load(scores.fetch_file(Scores.MATRIX, work_dir / scores.relative / Scores.MATRIX)).double()
    save_file({Scores.KEY: (total / (len(members) + 1)).to(own.dtype).contiguous()}, str(local / Scores.MATRIX))


def fuse_with_bm25(local: Path, train_dir: Path, prompts: list[Prompt], settings: FusionSettings) -> None:
    """With SCORE_FUSION: BM25 of every training document for every prompt, and the ranking fused from
    it and the influence, written beside Kronfluence's scores in `local` (influence_core.fusion)."""
    from safetensors.torch import save_file

    from influence_core.fusion import corpus_bm25, fuse, prompt_bm25

    lexical = prompt_bm25(prompts, corpus_bm25(train_dir))  # the index published with the data
    fused = fuse(Scores.influence(local), lexical, settings.score_fusion, settings.fusion_weight,
                 settings.gate_fraction)
    save_file({Scores.KEY: lexical.float().contiguous()}, str(local / Scores.LEXICAL))
    save_file({Scores.KEY: fused.float().contiguous()}, str(local / Scores.FUSED))
