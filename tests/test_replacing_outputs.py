"""Replacing a published output, on a local path and on a real S3-compatible server (moto): the
previous version stays complete until every new file is uploaded and checked, a run's `complete`
leaves other runs' staged steps alone, and a file still being written is never staged, restored
or published."""

from __future__ import annotations

from pathlib import Path

import pytest

from influence_core.artifacts import Index, Manifest
from influence_core.errors import StorageError
from influence_core.storage import PARTIAL, SUCCESS, Output, Store

OLD = {"a.bin": b"old a" * 1000, "sub/b.bin": b"old b" * 10}
NEW = {"a.bin": b"new a" * 2000, "c.bin": b"new c"}


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.slow)])
def store(request, tmp_path) -> Store:
    if request.param == "local":
        return Store(str(tmp_path / "artifacts"))
    return Store(f"{request.getfixturevalue('s3_bucket')}/run")


def folder(path: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    return path


def published(store: Store, relative: str, destination: Path) -> dict[str, bytes]:
    """Every file of a complete output (`_SUCCESS` aside), fetched and checked against its manifest."""
    store.fetch(relative, destination, remedy="rerun")
    return {path.relative_to(destination).as_posix(): path.read_bytes() for path in sorted(destination.rglob("*"))
            if path.is_file() and path.name != SUCCESS}


def uploads_through(store: Store, monkeypatch, swap) -> None:
    """Every file the store uploads goes through `swap(local path)` first, at the call each
    filesystem makes per file: it may raise, as a dropped connection does, or name another local
    file to upload in its place."""
    name = "put_file" if store.is_local else "_put_file"  # s3fs's put runs its async per-file call
    upload = getattr(store.fs, name)

    def put_file(lpath, rpath, **kwargs):
        return upload(swap(lpath), rpath, **kwargs)

    async def put_file_async(lpath, rpath, **kwargs):
        return await upload(swap(lpath), rpath, **kwargs)

    monkeypatch.setattr(store.fs, name, put_file if store.is_local else put_file_async)


def test_a_failed_upload_leaves_the_previous_output_complete(store, tmp_path, monkeypatch):
    store.publish(folder(tmp_path / "v1", OLD), "out", {"stage": "s", "settings": {"v": 1}})
    uploaded = []

    def after_the_first(lpath):
        if uploaded:
            raise ConnectionError("connection reset by peer")
        uploaded.append(lpath)
        return lpath

    uploads_through(store, monkeypatch, after_the_first)
    with pytest.raises(ConnectionError):
        store.publish(folder(tmp_path / "v2", NEW), "out", {"stage": "s", "settings": {"v": 2}})
    assert uploaded  # the failure came midway, after a new file was uploaded
    assert store.exists(f"out/{SUCCESS}"), "the previous output is no longer complete"
    assert store.manifest("out")["settings"] == {"v": 1}
    assert published(store, "out", tmp_path / "after_failure") == OLD
    monkeypatch.undo()
    store.publish(tmp_path / "v2", "out", {"stage": "s", "settings": {"v": 2}})  # the retry replaces it
    assert store.manifest("out")["settings"] == {"v": 2}
    assert published(store, "out", tmp_path / "after_retry") == NEW
    assert not store.exists("out/_parts")


def test_a_truncated_upload_is_caught_before_the_previous_output_is_touched(store, tmp_path, monkeypatch):
    store.publish(folder(tmp_path / "v1", OLD), "out", {"stage": "s", "settings": {"v": 1}})

    def truncated(lpath):
        return str(folder(tmp_path / "short", {Path(lpath).name: Path(lpath).read_bytes()[:3]}) / Path(lpath).name)

    uploads_through(store, monkeypatch, truncated)
    with pytest.raises(StorageError, match="is missing or truncated after its upload; the published output is "
                                           "unchanged"):
        store.publish(folder(tmp_path / "v2", NEW), "out", {"stage": "s", "settings": {"v": 2}})
    assert store.manifest("out")["settings"] == {"v": 1}
    assert published(store, "out", tmp_path / "after_failure") == OLD


def test_completing_an_output_leaves_other_runs_staged_steps(store, tmp_path):
    first = Output(store, "out", tmp_path / "first", stamp={"settings": 1})
    folder(first.local_dir, {"step_0.bin": b"a step of the run with settings 1"})
    assert first.sync() == ["step_0.bin"]
    second = Output(store, "out", tmp_path / "second", stamp={"settings": 2})
    folder(second.local_dir, {"result.bin": b"settings 2's output"})
    second.complete({"stage": "s"})
    assert published(store, "out", tmp_path / "fetched") == {"result.bin": b"settings 2's output"}
    again = Output(store, "out", tmp_path / "again", stamp={"settings": 1})  # the first run, rerun after a kill
    assert again.resume() == ["step_0.bin"]
    assert (again.local_dir / "step_0.bin").read_bytes() == b"a step of the run with settings 1"
    again.complete({"stage": "s"})  # and its own staging folder goes
    assert published(store, "out", tmp_path / "fetched_again") == {"step_0.bin": b"a step of the run with settings 1"}
    assert Output(store, "out", tmp_path / "third", stamp={"settings": 1}).resume() == []


def test_a_file_still_being_written_is_never_staged_nor_published(store, tmp_path):
    out = Output(store, "index/x", tmp_path / "index", stamp={"stage": "build_index"})
    folder(out.local_dir, {"shard_00000.safetensors": b"finished",
                           "shard_00001.safetensors.partial": b"half",  # the name build_shards wrote before
                           f"shard_00002.safetensors{PARTIAL}1a2b3c4d": b"half"})  # storage.partial_name's
    assert out.sync() == ["shard_00000.safetensors"]
    out.complete({"stage": "build_index"})
    assert list(store.manifest("index/x")["files"]) == ["shard_00000.safetensors"]
    assert published(store, "index/x", tmp_path / "fetched") == {"shard_00000.safetensors": b"finished"}


def test_a_partial_file_an_older_run_staged_is_never_restored(store, tmp_path):
    out = Output(store, "index/x", tmp_path / "index", stamp={"stage": "build_index"})
    made = folder(tmp_path / "older", {"shard_00000.safetensors": b"finished", "shard_00001.safetensors.partial": b"h"})
    store._put([made / "shard_00000.safetensors", made / "shard_00001.safetensors.partial"],
               [store.path(f"{out.staging}/shard_00000.safetensors"),
                store.path(f"{out.staging}/shard_00001.safetensors.partial")])
    assert out.resume() == ["shard_00000.safetensors"]
    out.complete({"stage": "build_index"})
    assert list(store.manifest("index/x")["files"]) == ["shard_00000.safetensors"]


def test_an_index_reads_only_the_shard_files_it_writes():
    index = Index("x")
    names = ["shard_00001.safetensors.partial", "shard_x.txt", "shard_00000.safetensors", Index.PROJECTION]
    index.manifest = Manifest.parse({"stage": "build_index", "files": {name: [1, "0" * 64] for name in names}})
    assert index.shards() == ["shard_00000.safetensors"]


def test_scores_replaced_by_a_run_whose_upload_fails_are_still_the_previous_readable_scores(store, tmp_path,
                                                                                            monkeypatch):
    """The issue's case: compute_scores' output replaced, the upload of the new matrix failing midway;
    the previous scores are still complete, verified and read as they were."""
    import json

    import torch
    from safetensors.torch import save_file

    from influence_core.artifacts import Scores

    def scores_folder(path: Path, matrix: torch.Tensor) -> Path:
        path.mkdir(parents=True)
        save_file({Scores.KEY: matrix}, str(path / Scores.MATRIX))
        (path / Scores.PROMPTS).write_text(json.dumps([{"prompt": "p", "completion": " c"}]))
        return path

    old, new = torch.arange(6.0).reshape(1, 6), -torch.arange(6.0).reshape(1, 6)
    relative = Scores("s").relative
    store.publish(scores_folder(tmp_path / "old", old), relative, {"stage": "compute_scores"})

    def fails(lpath):
        raise ConnectionError("connection reset by peer")

    uploads_through(store, monkeypatch, fails)
    with pytest.raises(ConnectionError):
        store.publish(scores_folder(tmp_path / "new", new), relative, {"stage": "compute_scores"})
    monkeypatch.undo()
    scores = Scores("s").bind(store)
    assert scores is not None, "the previous scores are no longer complete"
    assert torch.equal(Scores.influence(scores.fetch(tmp_path / "read")), old)
