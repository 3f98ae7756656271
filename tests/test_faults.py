"""Faults a batch job on preemptible machines meets: kill -9 at any point of any stage, SIGTERM,
and the object store going away. After each, a rerun completes with the results of an
uninterrupted run, and nothing half-done is ever marked complete."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_jobs

# A small pipeline with partitions, so kills land between and inside Kronfluence's steps.
SMALL = {"NUM_EXAMPLES": "100", "NUM_TRAIN_EPOCHS": "2", "COVARIANCE_DATA_PARTITIONS": "2",
         "LAMBDA_DATA_PARTITIONS": "2", "SCORE_DATA_PARTITIONS": "2", "NUM_INFLUENTIAL": "3"}
STAGES = {  # stage: (its outputs, the outputs of the stages before it)
    "train": (["model", "data/train"], []),
    "fit_factors": (["influence/factors_tiny_lm_factors"], ["model", "data/train"]),
    "inspect_factors": (["reports/factors_tiny_lm_factors"], ["model", "data/train",
                                                              "influence/factors_tiny_lm_factors"]),
    "compute_scores": (["influence/scores_prompt_scores"], ["model", "data/train",
                                                             "influence/factors_tiny_lm_factors"]),
    "inspect_scores": (["reports/prompt_scores"], ["model", "data/train", "influence/factors_tiny_lm_factors",
                                                    "influence/scores_prompt_scores"]),
}
KILL_AT = (0.15, 0.4, 0.65)  # fractions of the stage's uninterrupted run time
VOLATILE = {"training_metrics.json", "state.json", "_SUCCESS"}  # timings and random fingerprints


def stage_process(stage: str, artifacts: Path, env: dict | None = None) -> subprocess.Popen:
    full_env = {**os.environ, **SMALL, "PYTHONPATH": str(ROOT), "ARTIFACTS_URI": str(artifacts), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "jobs", stage], cwd=ROOT, env=full_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def digests(directory: Path) -> dict[str, str]:
    return {path.relative_to(directory).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file() and path.name not in VOLATILE}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    """The uninterrupted small pipeline, stage by stage, with each stage's wall time."""
    artifacts = tmp_path_factory.mktemp("reference") / "artifacts"
    seconds = {}
    for stage in STAGES:
        start = time.monotonic()
        process = stage_process(stage, artifacts)
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
        seconds[stage] = time.monotonic() - start
    return artifacts, seconds


@pytest.mark.parametrize("fraction", KILL_AT)
@pytest.mark.parametrize("stage", list(STAGES))
def test_kill_9_then_rerun_gives_the_uninterrupted_result(reference, tmp_path, stage, fraction):
    source, seconds = reference
    outputs, inputs = STAGES[stage]
    artifacts = tmp_path / "artifacts"
    for relative in inputs:
        shutil.copytree(source / relative, artifacts / relative)
    process = stage_process(stage, artifacts)
    time.sleep(fraction * seconds[stage])
    assert process.poll() is None, f"{stage} finished before {fraction:.0%} of its reference time"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not all((artifacts / relative / "_SUCCESS").exists() for relative in outputs), "looks complete"

    rerun = stage_process(stage, artifacts)
    _, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr[-3000:]
    for relative in outputs:
        assert (artifacts / relative / "_SUCCESS").exists()
        assert digests(artifacts / relative) == digests(source / relative), relative


def test_sigterm_during_training_publishes_a_checkpoint_and_resumes(reference, tmp_path):
    _, seconds = reference
    artifacts = tmp_path / "artifacts"
    process = stage_process("train", artifacts)
    deadline = time.monotonic() + 300
    for line in process.stderr:
        if "step " in line:  # training is under way
            break
        assert time.monotonic() < deadline
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-3000:]
    assert list((artifacts / "checkpoints/train").glob("checkpoint-*/_SUCCESS"))
    assert not (artifacts / "model/_SUCCESS").exists()
    rerun = stage_process("train", artifacts)
    _, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0 and "resuming from" in stderr, stderr[-3000:]
    source, _ = reference
    assert digests(artifacts / "model") == digests(source / "model")


def test_sigterm_during_factors_exits_at_once_keeping_finished_partitions(reference, tmp_path):
    source, _ = reference
    artifacts = tmp_path / "artifacts"
    for relative in STAGES["fit_factors"][1]:
        shutil.copytree(source / relative, artifacts / relative)
    output = artifacts / "influence/factors_tiny_lm_factors"
    process = stage_process("fit_factors", artifacts)
    deadline = time.monotonic() + 300
    while not list(output.rglob("*covariance_data_partition0*")):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    start = time.monotonic()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143 and time.monotonic() - start < 30, stderr[-3000:]
    assert "SIGTERM" in stderr and not (output / "_SUCCESS").exists()
    assert list(output.rglob("*covariance_data_partition0*"))
    rerun = stage_process("fit_factors", artifacts)
    _, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0 and "restored" in stderr, stderr[-3000:]
    assert digests(output) == digests(source / "influence/factors_tiny_lm_factors")


def test_object_store_outage_fails_cleanly_and_a_rerun_completes(reference, s3_env, tmp_path):
    """The S3 server stops while fit_factors runs: bounded retries, one clear line, non-zero exit;
    once it is back, a rerun restores the published partitions and completes."""
    import boto3
    import fsspec
    from moto.server import ThreadedMotoServer

    source, _ = reference
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="outage")
    fs = fsspec.filesystem("s3", endpoint_url=endpoint)
    for relative in STAGES["fit_factors"][1]:
        fs.put(str(source / relative) + "/", f"outage/run/{relative}/", recursive=True)
    env = {**s3_env, "FSSPEC_S3_ENDPOINT_URL": endpoint}
    process = stage_process("fit_factors", Path("unused"), {**env, "ARTIFACTS_URI": "s3://outage/run"})
    deadline = time.monotonic() + 300
    while not fs.glob("outage/run/influence/factors_tiny_lm_factors/**/*covariance_data_partition0*"):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
        fs.invalidate_cache()
    server.stop()
    start = time.monotonic()
    _, stderr = process.communicate(timeout=300)
    assert process.returncode != 0 and time.monotonic() - start < 90, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("error: cannot reach the object store"), stderr[-3000:]

    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)  # moto keeps its state in-process
    server.start()
    try:
        rerun = run_jobs("fit_factors", env={**SMALL, **env, "ARTIFACTS_URI": "s3://outage/run"})
        assert rerun.returncode == 0 and "restored" in rerun.stderr, rerun.stderr[-3000:]
        manifest = json.loads(fs.cat_file("outage/run/influence/factors_tiny_lm_factors/_SUCCESS"))
        local = json.loads((source / "influence/factors_tiny_lm_factors/_SUCCESS").read_text())
        assert {k: v for k, v in manifest["files"].items() if k.endswith(".safetensors")} == {
            k: v for k, v in local["files"].items() if k.endswith(".safetensors")}
    finally:
        server.stop()
