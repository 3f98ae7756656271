"""Scores computed on length-sorted training examples come back in corpus order."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing
from datasets import Dataset
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from influence_core.corpus_order import length_sorted, restore_training_order
from tests.ranks import restore_as_rank


def test_length_sorted_keeps_each_partition_s_examples():
    lengths = [3, 9, 1, 7, 5, 2, 8, 4, 6]
    examples = Dataset.from_dict({"input_ids": [[1] * n for n in lengths]})
    ordered, order = length_sorted(examples, partitions=3)
    assert order == [1, 0, 2, 3, 4, 5, 6, 8, 7]  # partitions [0, 3), [3, 6), [6, 9), longest first
    assert [len(ids) for ids in ordered["input_ids"]] == [lengths[i] for i in order]


def test_restored_scores_follow_the_corpus_once(tmp_path):
    order = [2, 0, 3, 1]
    pairwise = torch.arange(8.0).reshape(2, 4)  # column k: the example at position k of the order
    path = tmp_path / "pairwise_scores.safetensors"
    save_file({"all_modules": pairwise}, str(path), metadata={"kronfluence": "kept"})
    restore_training_order(path, order)
    restore_training_order(path, order)  # a rerun after a kill must not permute again
    restored = load_file(str(path))["all_modules"]
    for position, example in enumerate(order):
        assert torch.equal(restored[:, example], pairwise[:, position])
    with safe_open(str(path), "pt") as scores_file:
        assert scores_file.metadata()["kronfluence"] == "kept"
    assert not list(tmp_path.glob("*.partial*"))

    self_scores = tmp_path / "self_scores.safetensors"
    save_file({"all_modules": torch.tensor([10.0, 11.0, 12.0, 13.0])}, str(self_scores))
    restore_training_order(self_scores, order)
    assert load_file(str(self_scores))["all_modules"].tolist() == [11.0, 13.0, 10.0, 12.0]


@pytest.mark.slow
def test_several_processes_restore_a_shared_scores_file_once(tmp_path):
    """Every torchrun process of a pod finishes compute_scores on the one file in their shared work
    directory: it is permuted once, by one process, whatever the others do meanwhile."""
    examples, world = 20_000, 4
    order = torch.randperm(examples, generator=torch.Generator().manual_seed(0)).tolist()
    pairwise = torch.arange(16 * examples, dtype=torch.float32).reshape(16, examples)
    path = tmp_path / "pairwise_scores.safetensors"
    save_file({"all_modules": pairwise}, str(path))
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    torch.multiprocessing.spawn(restore_as_rank, args=(world, port, path, order), nprocs=world)
    restored = load_file(str(path))["all_modules"]
    assert torch.equal(restored[:, order], pairwise)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
