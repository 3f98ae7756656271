"""Shared fixtures: the demo pipeline runs once per session and many tests read its artifacts."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


# The fixtures that train, or run a pipeline, and are read by many tests: each names the group its
# tests run in under pytest-xdist (`make test` runs two workers), so a worker builds it once and no
# other worker builds it again. A test using several goes with the first listed.
SHARED_FIXTURES = {"demo_run": "demo", "small_pipeline": "small", "s3_pipeline": "small", "small_trained": "trained",
                   "exactness_run": "exactness", "imported": "exactness", "ensemble": "ensemble"}

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per worker, and so per stage it starts: two workers with a thread per core each
    # would oversubscribe the cores, and torch's spinning threads then take twice the CPU time.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


# The slow lane (`make test` runs it after the fast one; `make test-fast` leaves it out): tests that
# read a pipeline's or a training run's artifacts, or that start processes (they say so with
# `pytest.mark.slow` themselves, or for their whole module with `pytestmark`).
SLOW_FIXTURES = {"demo_run", "small_pipeline", "s3_pipeline", "small_trained", "tiny_chain", "lds_run", "s3_env",
                 "ensemble"}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups in its own hook
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        groups = [group for name, group in SHARED_FIXTURES.items() if name in item.fixturenames]
        if groups:
            item.add_marker(pytest.mark.xdist_group(groups[0]))
        if SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def query_cache(tmp_path_factory):
    """The CACHE_DIR of every query the tests run (in-process or as processes): a folder of the
    session's, not the user's ~/.cache. Its entries are keyed by content, so tests share them safely."""
    folder = tmp_path_factory.mktemp("query_cache")
    saved = os.environ.get("CACHE_DIR")
    os.environ["CACHE_DIR"] = str(folder)
    yield folder
    if saved is None:
        os.environ.pop("CACHE_DIR", None)
    else:
        os.environ["CACHE_DIR"] = saved


def jobs_env(env: dict | None = None) -> dict:
    """The environment of a `python -m jobs` process: this one's, less ARTIFACTS_URI, plus `env`."""
    full_env = {key: value for key, value in os.environ.items() if key != "ARTIFACTS_URI"}
    full_env.update({"PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}, **(env or {}))
    return full_env


def run_jobs(*args: str, env: dict | None = None, cwd: Path = ROOT, timeout: int = 900) -> subprocess.CompletedProcess:
    """`python -m jobs ...` as a user runs it, in a clean environment plus `env`."""
    return subprocess.run([sys.executable, "-m", "jobs", *args], cwd=cwd, env=jobs_env(env), capture_output=True,
                          text=True, timeout=timeout)


def jobs_in_process(*args: str, env: dict | None = None) -> tuple[int, str]:
    """`python -m jobs ...` run in this process, with `env` set for its duration: its exit code and
    what it wrote to stderr, log lines included (pass `--log_level ERROR` to see a refusal as the one
    line it is). No interpreter to start: use it wherever the process itself is not what is tested
    (kills, signals, outages, settings fsspec reads from the environment when it is imported)."""
    from jobs.__main__ import main

    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(stderr):
        patch.delenv("ARTIFACTS_URI", raising=False)  # as run_jobs: the environment's own is not used
        for name, value in (env or {}).items():
            patch.setenv(name, value)
        code = main(list(args))  # the stage's logging writes to the stderr of this moment
    return code, stderr.getvalue()


def jobs_ok(*args: str, env: dict | None = None) -> str:
    """jobs_in_process for a run that must succeed: returns its log."""
    code, log = jobs_in_process(*args, env=env)
    assert code == 0, log[-4000:]
    return log


def one_line_refusal(result: tuple[int, str]) -> str:
    """The one line of a refusal (exit 2) that jobs_in_process returned."""
    code, stderr = result
    assert code == 2, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    return lines[0]


def assert_a_real_picture(path, least: tuple[int, int] = (400, 300)) -> None:
    """A PNG of at least `least` pixels that draws something: many colours, and no single colour
    (the background) covering nearly all of it."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= least[0] and image.height >= least[1], (path, image.size)
        pixels = image.convert("RGB")
        colours = pixels.getcolors(maxcolors=1 << 20)
    assert len(colours) > 20, path
    assert max(count for count, _ in colours) < 0.97 * image.width * image.height, path


def start_jobs(*args: str, env: dict | None = None):
    """`python -m jobs ...` started in the background (to be killed, signalled or waited for), in the
    environment run_jobs gives it: a process of its own, forked from one that imported the stages
    already (tests/stage_processes.py); stderr piped, stdout discarded."""
    from tests.stage_processes import StageProcess

    return StageProcess(list(args), jobs_env(env), str(ROOT))


def run_stage(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """start_jobs, waited for: a stage run as a process of its own, without the seconds a new
    interpreter spends importing (run_jobs where that import is what is tested)."""
    process = start_jobs(*args, env=env)
    _, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(["jobs", *args], process.returncode, "", stderr)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """Artifacts of `python -m jobs pipeline` at the demo's default settings (what `make demo` runs)."""
    artifacts = tmp_path_factory.mktemp("demo") / "artifacts"
    result = run_stage("pipeline", env={"ARTIFACTS_URI": str(artifacts)})
    assert result.returncode == 0, result.stderr[-4000:]
    return artifacts


@pytest.fixture(scope="session")
def small_trained(tmp_path_factory) -> Path:
    """Artifacts holding only a quickly trained small model (100 documents, 2 epochs)."""
    artifacts = tmp_path_factory.mktemp("small") / "artifacts"
    result = run_stage("train", "--num_examples", "100", "--num_train_epochs", "2",
                      env={"ARTIFACTS_URI": str(artifacts)})
    assert result.returncode == 0, result.stderr[-4000:]
    return artifacts


# A small pipeline with data partitions, so kills and outages land between and inside
# Kronfluence's steps; shared by the fault tests and the S3-versus-local comparison.
SMALL = {"NUM_EXAMPLES": "100", "NUM_TRAIN_EPOCHS": "2", "COVARIANCE_DATA_PARTITIONS": "2",
         "LAMBDA_DATA_PARTITIONS": "2", "SCORE_DATA_PARTITIONS": "2", "NUM_INFLUENTIAL": "3"}


@pytest.fixture(scope="session")
def small_pipeline(tmp_path_factory) -> Path:
    """The whole pipeline at the SMALL settings on a local path (`python -m jobs pipeline`: every
    pipeline stage of influence_core.stages in turn, as each runs alone)."""
    artifacts = tmp_path_factory.mktemp("small_pipeline") / "artifacts"
    result = run_stage("pipeline", env={**SMALL, "ARTIFACTS_URI": str(artifacts)})
    assert result.returncode == 0, result.stderr[-4000:]
    return artifacts


# The indexes most index tests ask for (`indexed`), each built once per worker.
EXACT = ("--index_dim=2048", "--index_shard_size=30", "--index_search=exact")  # 4 shards, scanned row by row
SMALL_INDEX = ("--index_dim=512",)  # far from exact: 8 x 8 in each of the 8 modules
WHOLE = ("--index_dim=0", "--index_dtype=float32")  # nothing projected: compute_scores' scores exactly


@pytest.fixture(scope="session")
def indexed(small_pipeline, tmp_path_factory):
    """`indexed(*flags)`: a copy of small_pipeline's artifacts with the index `build_index *flags`
    makes, built once per session for each set of flags (a test may change its copy at will)."""
    built: dict[tuple[str, ...], Path] = {}

    def copy(*flags: str) -> Path:
        if flags not in built:
            built[flags] = tmp_path_factory.mktemp("indexed") / "artifacts"
            shutil.copytree(small_pipeline, built[flags])
            code, err = jobs_in_process("build_index", f"--artifacts_uri={built[flags]}", *flags)
            assert code == 0, err[-3000:]
        destination = tmp_path_factory.mktemp("copy") / "artifacts"
        shutil.copytree(built[flags], destination)
        return destination

    return copy


@pytest.fixture(scope="session")
def demo_report(demo_run) -> dict:
    return json.loads((demo_run / "reports" / "prompt_scores" / "report.json").read_text())


S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                  "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_env():
    """A real S3-compatible server (moto) on loopback, started once per session, and the
    environment that points fsspec/s3fs at it (dummy credentials, the endpoint URL), for the
    processes a test starts and for the stages it runs in-process."""
    import fsspec
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {**S3_CREDENTIALS, "FSSPEC_S3_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    saved_conf = copy.deepcopy(fsspec.config.conf)
    fsspec.config.set_conf_env(fsspec.config.conf)  # fsspec read its FSSPEC_* variables when imported
    yield env
    fsspec.config.conf.clear()
    fsspec.config.conf.update(saved_conf)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


@pytest.fixture()
def s3_bucket(s3_env) -> str:
    """A new empty bucket on the loopback server; returns its s3:// URL."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_env["FSSPEC_S3_ENDPOINT_URL"]).create_bucket(Bucket=name)
    return f"s3://{name}"
