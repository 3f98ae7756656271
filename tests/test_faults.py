"""Faults a batch job on preemptible machines meets: kill -9 at any point of any stage, SIGTERM,
and the object store going away. After each, a rerun completes with the results of an
uninterrupted run, without recomputing the Kronfluence partitions already finished, and nothing
half-done is ever marked complete."""

from __future__ import annotations

import hashlib
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from influence_core.settings import load_settings
from influence_core.stages import PIPELINE, Stage
from influence_core.storage import PARTIAL
from tests.conftest import SMALL, jobs_ok, run_jobs, run_stage, start_jobs

pytestmark = pytest.mark.slow  # stages killed and cut off, as processes


def outputs(stage: Stage) -> list[str]:
    """What a stage publishes at the settings the tests run it with (SMALL changes no name; one model,
    tests/conftest.py)."""
    return stage.output_paths(load_settings(stage.settings))


STAGES = {  # stage: (its outputs, the outputs of the pipeline stages before it)
    stage.name: (outputs(stage), [path for earlier in PIPELINE[:number] for path in outputs(earlier)])
    for number, stage in enumerate(PIPELINE)
    if outputs(stage)  # not the ensemble, whose members are the train, fit and score stages (tests/test_ensemble.py)
}
# Where each stage is killed, one kill per run, each rerun resuming from the last: a log line the
# stage prints (then `delay` seconds more), or a file it publishes (staged or final) below the
# artifacts. Together they cover start-up, computing, between Kronfluence partitions and publishing.
KILL_POINTS = {
    "train": [("log", "training tiny", 0.0), ("file", "checkpoints/train/checkpoint-*/_SUCCESS", 0.0),
              ("log", "trained:", 0.0)],
    "fit_factors": [("log", "fitting all", 0.5), ("file", "**/*covariance_data_partition0*.safetensors", 0.0),
                    ("file", "**/lambda_matrix_data_partition0*.safetensors", 0.0)],
    "compute_scores": [("log", "scoring", 0.5), ("file", "**/pairwise_scores_data_partition0*.safetensors", 0.0),
                       ("log", "Computing pairwise scores (training gradient) [0/", 0.0)],
    "compute_self_scores": [("start", "", 1.0), ("log", "self-influence of every", 0.2),
                            ("log", "Computing self-influence scores [0/", 0.5)],
    # A short stage with no progress lines: its kills land in start-up, fetching and plotting.
    "inspect_factors": [("start", "", 0.5), ("start", "", 1.5), ("start", "", 2.5)],
    "inspect_scores": [("start", "", 1.0), ("log", "per-token scores", 0.2),
                       ("log", "Computing pairwise scores (training gradient) [0/", 0.3)],
}
PARTITION_SCORED = "Computing pairwise scores (training gradient) [0/"  # a progress line per partition scored
VOLATILE = {"training_metrics.json", "state.json", "_SUCCESS"}  # timings and random fingerprints


def stage_process(stage: str, artifacts: Path, env: dict | None = None) -> subprocess.Popen:
    return start_jobs(stage, env={**SMALL, "ARTIFACTS_URI": str(artifacts), **(env or {})})


def rerun(stage: str, artifacts: Path) -> str:
    """The rerun after a kill, in this process (what is killed is a process; what reruns need not be): its log."""
    return jobs_ok(stage, env={**SMALL, "ARTIFACTS_URI": str(artifacts)})


def new_files(artifacts: Path, pattern: str, before: set[Path]) -> list[Path]:
    return [path for path in artifacts.glob(pattern) if path not in before and PARTIAL not in path.name]


def kill_at(stage: str, artifacts: Path, point: tuple[str, str, float], timeout: float = 300) -> None:
    """Run the stage and SIGKILL it at `point`; it must still be running then."""
    kind, what, delay = point
    before = set(artifacts.glob(what)) if kind == "file" else set()
    process = stage_process(stage, artifacts)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while not (kind == "start" or (kind == "log" and any(what in line for line in lines))
               or (kind == "file" and new_files(artifacts, what, before))):
        assert process.poll() is None, f"{stage} ended before {point}: {''.join(lines)[-2000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(delay)
    assert process.poll() is None, f"{stage} ended before {point}"
    process.send_signal(signal.SIGKILL)
    process.wait()


def content_digest(path: Path) -> str:
    """A file's digest; for safetensors, of its tensors only (Kronfluence writes its arguments
    into the header in no fixed order)."""
    if path.suffix != ".safetensors":
        return hashlib.sha256(path.read_bytes()).hexdigest()
    digest = hashlib.sha256()
    for name, tensor in sorted(load_file(str(path)).items()):
        digest.update(name.encode() + tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def digests(directory: Path) -> dict[str, str]:
    return {path.relative_to(directory).as_posix(): content_digest(path)
            for path in sorted(directory.rglob("*")) if path.is_file() and path.name not in VOLATILE}


def partition_files(directory: Path) -> dict[str, tuple[int, int]]:
    """Kronfluence's per-partition files below, staged or final, by name: (mtime, size). Moving a
    file keeps its mtime; recomputing or re-uploading it does not."""
    return {path.name: (path.stat().st_mtime_ns, path.stat().st_size) for path in directory.rglob("*_partition*")
            if path.is_file() and PARTIAL not in path.name}


def finished_partitions(directory: Path, complete: Path) -> dict[str, tuple[int, int]]:
    """partition_files of the partitions Kronfluence finished: those holding every file the
    uninterrupted run's `complete` holds for them. Kronfluence writes a partition's files one after
    another (lambda_matrix_..., then num_lambda_processed_...): a kill between the two leaves a
    partition the rerun must compute again."""
    def partition(name: str) -> str:
        kind = "lambda" if "lambda" in name else "covariance"
        return kind + re.search(r"_data_partition\d+_module_partition\d+", name).group()

    files, expected = partition_files(directory), partition_files(complete)
    done = {partition(name) for name in expected} - {partition(name) for name in expected if name not in files}
    return {name: stamp for name, stamp in files.items() if partition(name) in done}


def copy_inputs(stage: str, source: Path, artifacts: Path) -> None:
    for relative in STAGES[stage][1]:
        shutil.copytree(source / relative, artifacts / relative)


@pytest.mark.parametrize("stage", list(STAGES))
def test_kill_9_at_three_points_then_rerun_gives_the_uninterrupted_result(small_pipeline, tmp_path, stage):
    outputs = STAGES[stage][0]
    artifacts = tmp_path / "artifacts"
    copy_inputs(stage, small_pipeline, artifacts)
    for point in KILL_POINTS[stage]:
        kill_at(stage, artifacts, point)
        assert not all((artifacts / relative / "_SUCCESS").exists() for relative in outputs), (point, "complete")
    finished = {relative: partition_files(artifacts / relative) if stage == "compute_scores" else
                finished_partitions(artifacts / relative, small_pipeline / relative) for relative in outputs}
    if stage in ("fit_factors", "compute_scores"):
        assert all(finished.values()), "no Kronfluence partition was finished before the last kill"
    stderr = rerun(stage, artifacts)
    for relative in outputs:
        assert (artifacts / relative / "_SUCCESS").exists()
        assert digests(artifacts / relative) == digests(small_pipeline / relative), relative
        after = partition_files(artifacts / relative)  # finished partitions were not recomputed
        if stage == "compute_scores":  # its partitions' files (length-sorted) are not published: count instead
            computed = stderr.count(PARTITION_SCORED)
            assert not after and computed == int(SMALL["SCORE_DATA_PARTITIONS"]) - len(finished[relative]), computed
        else:
            assert {name: after[name] for name in finished[relative]} == finished[relative], relative


def test_sigterm_during_training_publishes_a_checkpoint_and_resumes(small_pipeline, tmp_path):
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
    stderr = rerun("train", artifacts)
    assert "resuming from" in stderr, stderr[-3000:]
    assert digests(artifacts / "model") == digests(small_pipeline / "model")


def test_sigterm_during_factors_exits_at_once_keeping_finished_partitions(small_pipeline, tmp_path):
    source = small_pipeline
    artifacts = tmp_path / "artifacts"
    copy_inputs("fit_factors", source, artifacts)
    output = artifacts / "influence/factors_tiny_lm_factors"
    process = stage_process("fit_factors", artifacts)
    deadline = time.monotonic() + 300
    while not [path for path in output.rglob("*covariance_data_partition0*") if PARTIAL not in path.name]:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    start = time.monotonic()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143 and time.monotonic() - start < 30, stderr[-3000:]
    assert "SIGTERM" in stderr and not (output / "_SUCCESS").exists()
    assert list(output.rglob("*covariance_data_partition0*"))
    stderr = rerun("fit_factors", artifacts)
    assert "restored" in stderr, stderr[-3000:]
    assert digests(output) == digests(source / "influence/factors_tiny_lm_factors")


def test_object_store_outage_fails_cleanly_and_a_rerun_completes(small_pipeline, s3_env, tmp_path):
    """The S3 server stops while fit_factors runs: bounded retries, one clear line, non-zero exit;
    once it is back, a rerun restores the published partitions and completes."""
    import boto3
    import fsspec
    from moto.server import ThreadedMotoServer

    source = small_pipeline
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
        # A process: fsspec reads the endpoint from the environment when it is imported.
        again = run_stage("fit_factors", env={**SMALL, **env, "ARTIFACTS_URI": "s3://outage/run"})
        assert again.returncode == 0 and "restored" in again.stderr, again.stderr[-3000:]
        fs.invalidate_cache()  # s3fs lists from its cache, which predates the rerun
        published = tmp_path / "published"
        fs.get("outage/run/influence/factors_tiny_lm_factors/", f"{published}/", recursive=True)
        assert (published / "_SUCCESS").exists()
        assert digests(published) == digests(source / "influence/factors_tiny_lm_factors")
    finally:
        server.stop()


def closed_port() -> int:
    import socket

    with socket.socket() as sock:  # bound, then released: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("args, env", [
    (["train", "--dataset", "s3://corpus/docs.jsonl"],
     {"FSSPEC_S3_ENDPOINT_URL": "http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
      "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}),
    (["import_model", "--model", "some-org/some-model"], {"HF_ENDPOINT": "http://127.0.0.1:{port}"}),
], ids=["dataset in a bucket", "model on the hub"])
def test_an_outage_while_reading_the_dataset_or_the_model_is_worth_a_retry(args, env, tmp_path):
    """The corpus's bucket or the Hugging Face Hub cannot be reached: exit 3 (a retry may work), not
    exit 2 (bad input: the Job would fail at once)."""
    port = closed_port()
    env = {key: value.format(port=port) for key, value in env.items()}
    # The Hub's endpoint is read when huggingface_hub is imported: that case starts a new interpreter.
    run = run_jobs if "HF_ENDPOINT" in env else run_stage
    result = run(*args, env={**env, "ARTIFACTS_URI": str(tmp_path / "artifacts"), "HF_HUB_OFFLINE": "0"}, timeout=300)
    assert result.returncode == 3, result.stderr[-3000:]
    line, = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and ("cannot reach" in line), line
    assert not list(tmp_path.rglob("_SUCCESS"))
