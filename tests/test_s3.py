"""Every stage against a real S3-compatible server on loopback (moto), as against a local path.

The pipeline, and each run with another endpoint or other credentials, is a process (fsspec and
botocore read them from the environment once); reruns and refusals run in-process."""

from __future__ import annotations

import json
import socket
import threading
import time

import fsspec
import pytest

from tests.conftest import SMALL, jobs_in_process, jobs_ok, one_line_refusal, run_stage

SECRET = "s3cr3t-value-that-must-not-leak"


def s3(url: str, s3_env: dict):
    """An in-process s3fs for `url` on the loopback server (fsspec read its env config at import)."""
    return fsspec.core.url_to_fs(url, endpoint_url=s3_env["FSSPEC_S3_ENDPOINT_URL"])


def bucket_listing(url: str, s3_env: dict) -> dict:
    fs, root = s3(url, s3_env)
    fs.invalidate_cache()
    return {path: (info["size"], info.get("ETag"), str(info.get("LastModified")))
            for path, info in fs.find(root, detail=True).items()}


@pytest.fixture(scope="module")
def s3_pipeline(s3_env, tmp_path_factory):
    """The small pipeline with ARTIFACTS_URI=s3://..., with a secret-looking key in the environment."""
    import boto3

    boto3.client("s3", endpoint_url=s3_env["FSSPEC_S3_ENDPOINT_URL"]).create_bucket(Bucket="pipeline")
    env = {**s3_env, **SMALL, "AWS_SECRET_ACCESS_KEY": SECRET, "ARTIFACTS_URI": "s3://pipeline/run"}
    result = run_stage("pipeline", env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return env, result


def test_s3_pipeline_report_equals_local_one(s3_pipeline, small_pipeline, tmp_path):
    env, _ = s3_pipeline
    report_dir = tmp_path / "fetched"
    jobs_ok("fetch_report", "--report_dir", str(report_dir), env=env)
    local = json.loads((small_pipeline / "reports/prompt_scores/report.json").read_text())
    assert json.loads((report_dir / "report.json").read_text()) == local
    assert local["prompts"] and local["self_influence"]["top"]  # the whole pipeline, self-influence too
    assert (report_dir / "prompt_scores_report.md").read_text().startswith("# Influence report")


def test_rerun_skips_and_leaves_the_bucket_unchanged(s3_pipeline):
    env, _ = s3_pipeline
    before = bucket_listing("s3://pipeline/run", env)
    for stage in ("train", "fit_factors", "inspect_factors", "compute_scores", "compute_self_scores",
                  "inspect_scores"):
        log = jobs_ok(stage, env=env)
        assert "skipping" in log, (stage, log)
    assert bucket_listing("s3://pipeline/run", env) == before


def test_credentials_never_leak(s3_pipeline):
    env, result = s3_pipeline
    assert SECRET not in result.stdout + result.stderr
    fs, root = s3("s3://pipeline/run", env)
    for path in fs.find(root):
        if path.endswith((".json", ".md", "_SUCCESS")):
            assert SECRET not in fs.cat_file(path).decode(errors="replace"), path


def one_line_failure(result, code: int, expected: str, seconds: float, limit: float = 60):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr[-2000:]
    assert seconds < limit


def timed(*args, env):
    start = time.monotonic()
    result = run_stage(*args, env=env, timeout=120)
    return result, time.monotonic() - start


def test_refused_endpoint_fails_fast(s3_env):
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**s3_env, "FSSPEC_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}", "ARTIFACTS_URI": "s3://any/run"}
    result, seconds = timed("fit_factors", env=env)
    one_line_failure(result, 3, "cannot reach the object store", seconds)


def test_silent_endpoint_times_out_within_a_minute(s3_env):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # accepts connections and never answers
    accepted = []
    stop = threading.Event()

    def accept_forever():
        listener.settimeout(0.5)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept_forever, daemon=True)
    thread.start()
    env = {**s3_env, "FSSPEC_S3_ENDPOINT_URL": f"http://127.0.0.1:{listener.getsockname()[1]}",
           "ARTIFACTS_URI": "s3://any/run"}
    try:
        result, seconds = timed("train", env=env)
    finally:
        stop.set()
        thread.join()
        for connection in accepted:
            connection.close()
        listener.close()
    assert result.returncode != 0 and seconds < 60, (seconds, result.stderr[-2000:])
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]


def test_missing_bucket(s3_env):
    start = time.monotonic()
    line = one_line_refusal(jobs_in_process("train", env={"ARTIFACTS_URI": "s3://no-such-bucket-here/run"}))
    assert "object store error" in line and time.monotonic() - start < 60, line


def test_missing_credentials(s3_env, tmp_path):
    env = {key: value for key, value in s3_env.items() if not key.startswith("AWS_ACCESS")}
    env.update(AWS_SECRET_ACCESS_KEY="", AWS_ACCESS_KEY_ID="", AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_EC2_METADATA_DISABLED="true",
               ARTIFACTS_URI="s3://any/run")
    result, seconds = timed("fit_factors", env=env)
    one_line_failure(result, 2, "no credentials", seconds)


def test_damaged_input_is_refused(s3_env, s3_bucket, small_trained):
    """A model file truncated after _SUCCESS was written fails with one line, not a traceback."""
    fs, root = s3(s3_bucket, s3_env)
    fs.put(str(small_trained) + "/", root + "/run/", recursive=True)
    weights = f"{root}/run/model/model.safetensors"
    fs.pipe_file(weights, fs.cat_file(weights)[:1000])
    line = one_line_refusal(jobs_in_process("fit_factors", env={"ARTIFACTS_URI": f"{s3_bucket}/run"}))
    assert "model/model.safetensors is missing, truncated or changed" in line, line


def test_a_query_s_cache_fetches_from_the_bucket_once_and_each_new_version_again(s3_env, s3_bucket, tmp_path,
                                                                                  monkeypatch):
    """Store.fetch_cached against the bucket: the first fetch downloads and verifies, a second one of the
    same version neither downloads nor hashes, a republished version is fetched and verified anew, and
    an object changed behind its _SUCCESS is refused on the first fetch, in the one line of today."""
    import s3fs

    import influence_core.storage
    from influence_core.errors import ConfigError
    from influence_core.storage import Store

    store, cache = Store(f"{s3_bucket}/run"), tmp_path / "cache"
    made = tmp_path / "made"
    (made / "sub").mkdir(parents=True)
    (made / "config.json").write_text("{}")
    (made / "sub" / "weights.bin").write_bytes(b"w" * 5000)
    store.publish(made, "model", {"stage": "train"})
    first = store.fetch_cached("model", cache, remedy="rerun")
    assert (first / "sub" / "weights.bin").read_bytes() == b"w" * 5000

    def forbidden(*args, **kwargs):
        raise AssertionError("downloaded or hashed again")

    with monkeypatch.context() as patch:
        patch.setattr(influence_core.storage, "_sha256", forbidden)
        patch.setattr(s3fs.S3FileSystem, "_get_file", forbidden)
        assert Store(f"{s3_bucket}/run").fetch_cached("model", cache, remedy="rerun") == first
        recorded = store.manifest("model")["files"]
        shard = store.fetch_file_cached("model", "sub/weights.bin", recorded, cache, "rerun")
        assert shard == first / "sub/weights.bin"
        with pytest.raises(AssertionError, match="downloaded"):  # what would have downloaded is what is forbidden
            store.fetch_cached("model", tmp_path / "empty", remedy="rerun")

    (made / "sub" / "weights.bin").write_bytes(b"v" * 5000)
    store.publish(made, "model", {"stage": "train"})
    second = store.fetch_cached("model", cache, remedy="rerun")
    assert second != first and (second / "sub" / "weights.bin").read_bytes() == b"v" * 5000

    fs, root = s3(s3_bucket, s3_env)
    fs.pipe_file(f"{root}/run/model/sub/weights.bin", b"x" * 5000)  # changed behind its _SUCCESS
    with pytest.raises(ConfigError, match="model/sub/weights.bin is missing, truncated or changed"):
        store.fetch_cached("model", tmp_path / "fresh", remedy="rerun")
    assert not list((tmp_path / "fresh").rglob("weights.bin"))
