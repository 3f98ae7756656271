"""Sharded factors and scores (one process per data partition, then aggregation) equal the
unpartitioned run; a killed shard reruns alone; CPU torchrun with several processes is refused."""

from __future__ import annotations

import importlib
import io
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from influence_core.corpus_order import IN_TRAINING_ORDER
from influence_core.runtime import configure_progress
from influence_core.settings import load_settings
from influence_core.stages import BY_NAME
from tests.conftest import ROOT, run_jobs, start_jobs
from tests.test_faults import PARTITION_SCORED

PARTITIONS = 2  # two workers at once, as two pods of an Indexed Job
VICTIM = 1  # the shard killed in test_killed_shard_reruns_alone


def start(args: list[str], artifacts: Path, **env: str) -> subprocess.Popen:
    return start_jobs(*args, env={"ARTIFACTS_URI": str(artifacts), **env})


def run_shards(args: list[str], artifacts: Path, count: int = PARTITIONS) -> None:
    """`count` workers at once, as an Indexed Job's pods would run: JOB_COMPLETION_INDEX each."""
    workers = [start(args, artifacts, JOB_COMPLETION_INDEX=str(index)) for index in range(count)]
    for worker in workers:
        _, stderr = worker.communicate(timeout=600)
        assert worker.returncode == 0, stderr[-3000:]


def ok(*args: str, artifacts: Path) -> str:
    """A sequential step (a reference run, an aggregation) in-process, as `python -m jobs` runs it;
    returns its log, progress lines included. The shards run as processes, all at once."""
    stage = BY_NAME[args[0]]
    settings = load_settings(stage.settings, [*args[1:], "--artifacts_uri", str(artifacts)])
    configure_progress()  # bars become log lines, as in a pod
    log, handler = io.StringIO(), logging.StreamHandler()
    handler.setStream(log)
    root, level = logging.getLogger(), logging.getLogger().level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        importlib.import_module(stage.module).main(settings)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return log.getvalue()


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
    survivors = [start(args, factored, SHARD_INDEX=str(index)) for index in range(PARTITIONS) if index != VICTIM]
    for worker in survivors:
        _, stderr = worker.communicate(timeout=600)
        assert worker.returncode == 0, stderr[-3000:]
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
    launcher = ROOT / "docker" / "torchrun_stage.py"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ARTIFACTS_URI": str(factored)}
    result = subprocess.run([sys.executable, str(launcher), "--standalone", "--nproc-per-node=2", "-m", "jobs",
                             "compute_scores", "--factors_name", "whole", "--scores_name", "two_processes"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "2 torchrun processes on CPU would each repeat the same work" in result.stderr
    assert not (factored / "influence/scores_two_processes/_SUCCESS").exists()


def test_shard_settings_are_checked(factored):
    result = run_jobs("fit_factors", "--shard_index", "4", "--covariance_data_partitions", "4",
                      "--factor_phase", "covariance", env={"ARTIFACTS_URI": str(factored)})
    assert result.returncode == 2 and "shard 4 is out of range" in result.stderr
    result = run_jobs("fit_factors", "--factors_name", "early", "--lambda_data_partitions", "2", "--shard_index", "0",
                      "--factor_phase", "lambda", env={"ARTIFACTS_URI": str(factored)})
    assert result.returncode == 2 and "the eigendecomposition of 'early' is not published yet" in result.stderr


def test_a_sharded_rerun_with_other_inputs_never_reuses_stale_partitions(factored, tmp_path):
    """Shards of a run with other prompts stage their steps apart from the finished output's, so
    the aggregate is of the new prompts only."""
    args = ["compute_scores", "--factors_name", "whole", "--scores_name", "reused", "--score_data_partitions", "2"]
    run_shards(args, factored, count=2)
    ok(*args, artifacts=factored)
    two = tmp_path / "two.json"
    two.write_text('[{"prompt": "The capital of Velmora is", "completion": " Quistador"},'
                   ' {"prompt": "A week has seven", "completion": " days"}]')
    run_shards([*args, "--prompts", str(two)], factored, count=2)
    ok(*args, "--prompts", str(two), artifacts=factored)
    scores = load_file(str(factored / "influence/scores_reused/pairwise_scores.safetensors"))["all_modules"]
    assert scores.shape[0] == 2
    assert not (factored / "influence/scores_reused/_parts").exists()
