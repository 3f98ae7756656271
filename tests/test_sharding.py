"""Sharded factors and scores (one process per data partition, then aggregation) equal the
unpartitioned run; a killed shard reruns alone; several torchrun processes on CPU are refused."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from influence_core.corpus_order import IN_TRAINING_ORDER
from tests.conftest import jobs_in_process, jobs_ok, one_line_refusal, start_jobs
from tests.test_faults import PARTITION_SCORED

PARTITIONS = 2  # two workers at once, as two pods of an Indexed Job
VICTIM = 1  # the shard killed in test_killed_shard_reruns_alone


def start(args: list[str], artifacts: Path, **env: str) -> subprocess.Popen:
    return start_jobs(*args, env={"ARTIFACTS_URI": str(artifacts), **env})


def run_shards(args: list[str], artifacts: Path) -> None:
    """PARTITIONS workers at once, as an Indexed Job's pods would run: JOB_COMPLETION_INDEX each."""
    workers = [start(args, artifacts, JOB_COMPLETION_INDEX=str(index)) for index in range(PARTITIONS)]
    for worker in workers:
        _, stderr = worker.communicate(timeout=600)
        assert worker.returncode == 0, stderr[-3000:]


def ok(*args: str, artifacts: Path) -> str:
    """A sequential step (a reference run, an aggregation, a shard rerun) in this process, as `python -m
    jobs` runs it; returns its log, progress lines included. Shards meant to run at once are processes."""
    return jobs_ok(*args, "--artifacts_uri", str(artifacts))


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.fixture(scope="module")
def factored(small_trained) -> Path:
    """Unpartitioned EK-FAC factors and scores of the small model: the reference."""
    ok("fit_factors", "--factors_name", "whole", artifacts=small_trained)
    ok("compute_scores", "--factors_name", "whole", "--scores_name", "whole", artifacts=small_trained)
    return small_trained


def test_sharded_factors_equal_unpartitioned(factored):
    partitions = ["--factors_name", "sharded", "--covariance_data_partitions", str(PARTITIONS),
                  "--lambda_data_partitions", str(PARTITIONS)]
    run_shards(["fit_factors", *partitions, "--factor_phase", "covariance"], factored)
    ok("fit_factors", *partitions, "--factor_phase", "eigendecomposition", artifacts=factored)
    run_shards(["fit_factors", *partitions, "--factor_phase", "lambda"], factored)
    log = ok("fit_factors", *partitions, artifacts=factored)
    assert "restored" in log and (factored / "influence/factors_sharded/_SUCCESS").exists()
    for factor in ("activation_eigenvalues", "gradient_eigenvalues", "lambda_matrix"):
        sharded = load_file(str(factored / f"influence/factors_sharded/{factor}.safetensors"))
        whole = load_file(str(factored / f"influence/factors_whole/{factor}.safetensors"))
        assert sharded.keys() == whole.keys()
        for module in whole:
            assert relative_difference(sharded[module], whole[module]) <= 1e-5, (factor, module)


def test_sharded_scores_equal_unpartitioned(factored):
    args = ["compute_scores", "--factors_name", "whole", "--scores_name", "sharded",
            "--score_data_partitions", str(PARTITIONS)]
    run_shards(args, factored)
    partition_files = sorted((factored / "influence/scores_sharded").rglob("pairwise_scores_data_partition*"))
    assert len(partition_files) == PARTITIONS
    ok(*args, artifacts=factored)
    # Every published score file is in corpus order (the partitions' files, length-sorted, are not published).
    published = sorted((factored / "influence/scores_sharded").rglob("*.safetensors"))
    assert [path.name for path in published] == ["pairwise_scores.safetensors"]
    for path in published:
        with safe_open(str(path), "pt") as scores_file:
            assert scores_file.metadata().items() >= IN_TRAINING_ORDER.items(), path
    sharded = load_file(str(factored / "influence/scores_sharded/pairwise_scores.safetensors"))["all_modules"]
    whole = load_file(str(factored / "influence/scores_whole/pairwise_scores.safetensors"))["all_modules"]
    assert sharded.shape == whole.shape
    assert relative_difference(sharded, whole) <= 1e-5
    for row_sharded, row_whole in zip(sharded, whole):
        assert row_sharded.topk(10).indices.tolist() == row_whole.topk(10).indices.tolist()


def test_killed_shard_reruns_alone(factored):
    args = ["compute_scores", "--factors_name", "whole", "--scores_name", "killed",
            "--score_data_partitions", str(PARTITIONS)]
    output = factored / "influence/scores_killed"
    for index in range(PARTITIONS):
        if index != VICTIM:
            ok(*args, "--shard_index", str(index), artifacts=factored)
    victim = start(args, factored, SHARD_INDEX=str(VICTIM))
    deadline = time.monotonic() + 300
    for line in victim.stderr:  # kill it as it starts on the training examples of its partition
        if "Computing pairwise scores (training gradient)" in line:
            break
        assert time.monotonic() < deadline
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not list(output.rglob(f"pairwise_scores_data_partition{VICTIM}_*"))
    others = {path.name: path.stat().st_mtime_ns for path in output.rglob("pairwise_scores_data_partition*")}
    assert len(others) == PARTITIONS - 1

    # The victim's rerun scores its partition alone; aggregating scores none (progress lines per partition).
    assert ok(*args, "--shard_index", str(VICTIM), artifacts=factored).count(PARTITION_SCORED) == 1
    assert ok(*args, artifacts=factored).count(PARTITION_SCORED) == 0
    scores = load_file(str(output / "pairwise_scores.safetensors"))["all_modules"]
    whole = load_file(str(factored / "influence/scores_whole/pairwise_scores.safetensors"))["all_modules"]
    assert relative_difference(scores, whole) <= 1e-5


def test_several_cpu_processes_are_refused(factored):
    """A stage started by torchrun with two processes on CPU (the variables torchrun sets, rank 0):
    refused in one line before any work."""
    torchrun = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    line = one_line_refusal(jobs_in_process("compute_scores", "--factors_name", "whole", "--scores_name",
                                            "two_processes", "--log_level", "ERROR",
                                            env={"ARTIFACTS_URI": str(factored), **torchrun}))
    assert "2 torchrun processes on CPU would each repeat the same work" in line
    assert not (factored / "influence/scores_two_processes/_SUCCESS").exists()


def test_shard_settings_are_checked(factored):
    uri = ["--artifacts_uri", str(factored), "--log_level", "ERROR"]
    line = one_line_refusal(jobs_in_process("fit_factors", "--shard_index", "4", "--covariance_data_partitions", "4",
                                            "--factor_phase", "covariance", *uri))
    assert "shard 4 is out of range" in line
    line = one_line_refusal(jobs_in_process("fit_factors", "--factors_name", "early", "--lambda_data_partitions", "2",
                                            "--shard_index", "0", "--factor_phase", "lambda", *uri))
    assert "the eigendecomposition of 'early' is not published yet" in line


def test_a_sharded_rerun_with_other_inputs_never_reuses_stale_partitions(factored, tmp_path):
    """Shards of a run with other prompts stage their steps apart from the finished output's, so
    the aggregate is of the new prompts only."""
    args = ["compute_scores", "--factors_name", "whole", "--scores_name", "reused", "--score_data_partitions", "2"]
    for index in range(2):  # one after the other, in this process: what matters is where each stages its step
        ok(*args, "--shard_index", str(index), artifacts=factored)
    ok(*args, artifacts=factored)
    two = tmp_path / "two.json"
    two.write_text('[{"prompt": "The capital of Velmora is", "completion": " Quistador"},'
                   ' {"prompt": "A week has seven", "completion": " days"}]')
    for index in range(2):
        ok(*args, "--prompts", str(two), "--shard_index", str(index), artifacts=factored)
    ok(*args, "--prompts", str(two), artifacts=factored)
    scores = load_file(str(factored / "influence/scores_reused/pairwise_scores.safetensors"))["all_modules"]
    assert scores.shape[0] == 2
    assert not (factored / "influence/scores_reused/_parts").exists()
