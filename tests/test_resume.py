"""A stage killed midway resumes: finished Kronfluence partitions are never recomputed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

from tests.conftest import ROOT, run_jobs

PARTITIONED = ["--covariance_data_partitions", "3", "--lambda_data_partitions", "3", "--factor_batch_size", "8"]


def start_stage(args: list[str], artifacts: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ARTIFACTS_URI": str(artifacts)}
    return subprocess.Popen([sys.executable, "-m", "jobs", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_when(process: subprocess.Popen, directory: Path, name: str, timeout: float = 300) -> None:
    """SIGKILL the process once a file `name` is published (staged) anywhere below `directory`."""
    deadline = time.monotonic() + timeout
    while not list(directory.rglob(name)):
        assert process.poll() is None, "the stage finished before the kill point"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file below, staged or final, by name: a move keeps a file's mtime, a recomputation not."""
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in directory.rglob("*") if p.is_file()}


def test_killed_fit_factors_resumes_without_recomputing(small_trained):
    output = small_trained / "influence" / "factors_resume"
    args = ["fit_factors", "--factors_name", "resume", *PARTITIONED]
    kill_when(start_stage(args, small_trained), output, "lambda_matrix_data_partition0_module_partition0.safetensors")
    assert not (output / "_SUCCESS").exists()
    before = {name: stat for name, stat in snapshot(output).items() if "partition" in name}
    assert len(before) >= 6  # three covariance partitions (two files each) at least

    result = run_jobs(*args, env={"ARTIFACTS_URI": str(small_trained)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "restored" in result.stderr
    after = snapshot(output)
    assert (output / "_SUCCESS").exists()
    assert {name: after[name] for name in before} == before  # finished partitions untouched

    reference = run_jobs(*args[:2], "reference", *args[3:], env={"ARTIFACTS_URI": str(small_trained)})
    assert reference.returncode == 0, reference.stderr[-3000:]
    for factor in ("lambda_matrix", "activation_eigenvalues"):
        resumed = load_file(str(output / f"{factor}.safetensors"))
        uninterrupted = load_file(str(small_trained / "influence/factors_reference" / f"{factor}.safetensors"))
        for module, tensor in uninterrupted.items():
            assert (resumed[module] - tensor).abs().max() <= 1e-5 * tensor.abs().max()
