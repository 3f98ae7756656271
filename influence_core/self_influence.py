"""Self-influence: each training example's influence on its own training loss, with Kronfluence.

An example the model can only fit by bending its parameters towards it (a rare fact, an outlier,
a garbled or memorised document) has a large self-influence; ranking by it points at the data
worth looking at, and at the examples that score high for every prompt alike.
"""

from __future__ import annotations

from pathlib import Path

from kronfluence.score.self import self_scores_save_path

from influence_core.corpus_order import length_sorted, restore_training_order
from influence_core.factors import build_analyzer, load_training_examples
from influence_core.scores import score_arguments, scores_dir
from influence_core.settings import ComputeSelfScoresSettings


def compute_self_scores(model_dir: Path, train_dir: Path, settings: ComputeSelfScoresSettings,
                        work_dir: Path) -> Path:
    """Self-influence of every training example. The factors must lie at
    <work_dir>/influence/factors_<factors_name>. Returns the local output directory."""
    # Self-influence uses the training loss, which every task of influence_core.tasks shares.
    analyzer = build_analyzer(model_dir, work_dir, settings.factors_name, seed=settings.seed)
    name = self_scores_name(settings.factors_name)
    train_examples, order = length_sorted(load_training_examples(train_dir))
    analyzer.compute_self_scores(
        scores_name=name,
        factors_name=settings.factors_name,
        train_dataset=train_examples,
        per_device_train_batch_size=settings.train_batch_size,
        score_args=score_arguments(settings),
        overwrite_output_dir=True,
    )
    local = scores_dir(work_dir, name)
    restore_training_order(self_scores_save_path(local), order)
    return local


def self_scores_name(factors_name: str) -> str:
    """The Kronfluence scores name: it writes <work_dir>/influence/scores_<name>/."""
    return f"self_{factors_name}"
