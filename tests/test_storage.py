"""The artifacts store on a local path: publish, fetch, manifests, completeness; and the typed
artifacts over it: missing inputs named with the stage that makes them, a folder of the user's
never cleared."""

from __future__ import annotations

import json

import pytest

from influence_core.artifacts import Model, require
from influence_core.errors import ConfigError
from influence_core.storage import SUCCESS, Store, publish_to_folder
from jobs.common import up_to_date


def test_publish_replaces_and_marks_complete_last(tmp_path):
    store = Store(str(tmp_path / "artifacts"))
    first = tmp_path / "first"
    (first / "sub").mkdir(parents=True)
    (first / "a.txt").write_text("a")
    (first / "sub" / "b.txt").write_text("b")
    store.publish(first, "out/x", {"stage": "s", "settings": {}, "inputs": {}})
    second = tmp_path / "second"
    second.mkdir()
    (second / "c.txt").write_text("c")
    store.publish(second, "out/x", {"stage": "s", "settings": {"k": 1}, "inputs": {}})
    published = sorted(p.relative_to(tmp_path / "artifacts/out/x").as_posix()
                       for p in (tmp_path / "artifacts/out/x").rglob("*") if p.is_file())
    assert published == [SUCCESS, "c.txt"]
    assert store.manifest("out/x")["settings"] == {"k": 1}
    assert up_to_date(store, "out/x", "s", {"k": 1}, {})
    assert not up_to_date(store, "out/x", "s", {"k": 2}, {})


def test_a_fetched_input_is_a_copy_that_cannot_change_the_published_artifact(tmp_path):
    store = Store(str(tmp_path / "artifacts"))
    source = tmp_path / "made"
    source.mkdir()
    (source / "config.json").write_text("{}")
    store.publish(source, "model", {"stage": "train"})
    local = store.fetch("model", tmp_path / "work" / "model", remedy="rerun")
    assert json.loads((local / "config.json").read_text()) == {}
    (local / "config.json").write_text('{"changed": true}')  # a stage writing into its input
    (local / "extra.txt").write_text("x")
    assert (tmp_path / "artifacts/model/config.json").read_text() == "{}"
    assert not (tmp_path / "artifacts/model/extra.txt").exists()
    store.fetch("model", tmp_path / "again" / "model", remedy="rerun")  # still verifies against its _SUCCESS


def test_an_output_whose_manifest_lists_no_files_is_refused(tmp_path):
    store = Store(str(tmp_path))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "model" / SUCCESS).write_text(json.dumps({"stage": "train"}))  # no "files": nothing to verify
    with pytest.raises(ConfigError, match="lists no files.*rerun the train stage with FORCE=true"):
        require(store, model := Model())
        model.fetch(tmp_path / "work" / "model")


def test_incomplete_output_is_not_an_input(tmp_path):
    store = Store(str(tmp_path))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.safetensors").write_bytes(b"half")
    with pytest.raises(ConfigError, match="no _SUCCESS.*run the train stage first"):
        require(store, Model())
    (tmp_path / "model" / SUCCESS).write_text(json.dumps({"stage": "train"}))
    require(store, model := Model())
    assert model.manifest.stage == "train"


def test_a_store_root_is_never_an_output(tmp_path):
    (tmp_path / "mine.txt").write_text("mine")
    with pytest.raises(ValueError, match="not the root"):
        Store(str(tmp_path)).publish(tmp_path / "nothing", "", {"stage": "s"})
    assert (tmp_path / "mine.txt").read_text() == "mine"


def test_a_folder_of_the_user_s_is_written_only_where_it_was_written_before(tmp_path):
    made = tmp_path / "made"
    made.mkdir()
    (made / "a.png").write_text("a")
    folder = tmp_path / "folder"
    publish_to_folder(made, str(folder), "OUTPUT_DIR", {"stage": "s"})
    assert sorted(p.name for p in folder.iterdir()) == [".influence-jobs", SUCCESS, "a.png"]
    (made / "a.png").unlink()
    (made / "b.png").write_text("b")
    publish_to_folder(made, str(folder), "OUTPUT_DIR", {"stage": "s"})  # its own files: replaced
    assert sorted(p.name for p in folder.iterdir()) == [".influence-jobs", SUCCESS, "b.png"]
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"OUTPUT_DIR=.*folder holds files this tool did not write \(notes.txt\)"):
        publish_to_folder(made, str(folder), "OUTPUT_DIR", {"stage": "s"})
    assert sorted(p.name for p in folder.iterdir()) == [".influence-jobs", SUCCESS, "b.png", "notes.txt"]


# ---- the cache a query fetches through (CACHE_DIR): verified once, read as it is after ---------

def published_model(tmp_path, files: dict[str, str]) -> Store:
    """A store at tmp_path/artifacts holding a model/ of `files` (name: content)."""
    made = tmp_path / f"made-{len(list(tmp_path.glob('made-*')))}"
    for name, content in files.items():
        (made / name).parent.mkdir(parents=True, exist_ok=True)
        (made / name).write_text(content)
    store = Store(str(tmp_path / "artifacts"))
    store.publish(made, "model", {"stage": "train"})
    return store


def contents(folder) -> dict[str, str]:
    return {path.relative_to(folder).as_posix(): path.read_text() for path in sorted(folder.rglob("*"))
            if path.is_file()}


FILES = {"config.json": "{}", "sub/weights.bin": "w" * 5000}


def forbid_downloads_and_hashing(monkeypatch) -> None:
    from fsspec.implementations.local import LocalFileSystem

    import influence_core.storage

    def forbidden(*args, **kwargs):
        raise AssertionError("downloaded or hashed again")

    monkeypatch.setattr(influence_core.storage, "_sha256", forbidden)
    for method in ("get", "get_file", "cp_file", "copy"):
        monkeypatch.setattr(LocalFileSystem, method, forbidden)


def test_a_second_fetch_through_the_cache_neither_downloads_nor_hashes(tmp_path, monkeypatch):
    store, cache = published_model(tmp_path, FILES), tmp_path / "cache"
    entry = store.fetch_cached("model", cache, remedy="rerun")
    assert contents(entry) == FILES and entry.is_relative_to(cache / "model")
    shard = store.fetch_file_cached("model", "sub/weights.bin", store.manifest("model")["files"], cache, "rerun")
    assert shard == entry / "sub/weights.bin"
    forbid_downloads_and_hashing(monkeypatch)
    again = Store(str(tmp_path / "artifacts"))
    assert again.fetch_cached("model", cache, remedy="rerun") == entry
    assert contents(entry) == FILES
    assert again.fetch_file_cached("model", "config.json", again.manifest("model")["files"], cache, "rerun") == (
        entry / "config.json")
    model = Model().bind(again)  # as a stage fetches it: a link at the place it asks for, to the cached copy
    linked = model.fetch(tmp_path / "work" / "model", cache=cache)
    assert linked == tmp_path / "work" / "model" and linked.resolve() == entry.resolve() and contents(linked) == FILES
    # Read-only: nothing may write into a copy that is never checked again (root may all the same).
    assert all(path.stat().st_mode & 0o777 == 0o444 for path in entry.rglob("*") if path.is_file())


def test_an_artifact_republished_with_other_content_gets_a_fresh_verified_copy(tmp_path, monkeypatch):
    import influence_core.storage

    store, cache = published_model(tmp_path, FILES), tmp_path / "cache"
    old = store.fetch_cached("model", cache, remedy="rerun")
    changed = {**FILES, "sub/weights.bin": "v" * 5000}  # the same size, other bytes
    store = published_model(tmp_path, changed)
    hashed, sha256 = [], influence_core.storage._sha256
    monkeypatch.setattr(influence_core.storage, "_sha256", lambda path: hashed.append(path.name) or sha256(path))
    new = store.fetch_cached("model", cache, remedy="rerun")
    assert new != old and contents(new) == changed and contents(old) == FILES
    assert len(hashed) == len(FILES)  # every file of the new version verified
    assert store.fetch_file_cached("model", "sub/weights.bin", store.manifest("model")["files"], cache,
                                   "rerun").read_text() == "v" * 5000


KILLED_MID_FETCH = """
import os, signal, sys
from pathlib import Path
from influence_core.storage import Store

verify, seen = Store._verify, []
def killed(self, path, *rest):
    seen.append(path)
    if len(seen) == 2:  # the second file is downloaded, not yet verified
        os.kill(os.getpid(), signal.SIGKILL)
    return verify(self, path, *rest)
Store._verify = killed
Store(sys.argv[1]).fetch_cached("model", Path(sys.argv[2]), remedy="rerun")
"""


def test_a_fetch_killed_midway_is_fetched_again_and_its_half_never_used(tmp_path, monkeypatch):
    import os
    import signal
    import subprocess
    import sys

    from fsspec.implementations.local import LocalFileSystem

    from influence_core.storage import ABANDONED_S, VERIFIED, cache_entry
    from tests.conftest import ROOT

    store, cache = published_model(tmp_path, FILES), tmp_path / "cache"
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_FETCH, str(tmp_path / "artifacts"), str(cache)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    entry = cache_entry(cache, "model", store.manifest("model")["files"])
    marker = entry.with_name(entry.name + VERIFIED)
    assert not marker.exists()  # the marker comes only after every file is verified
    assert len([name for name in FILES if (entry / name).is_file()]) == 1  # the other one is still a partial file
    (left,) = list(entry.rglob("*.partial-*"))
    os.utime(left, (left.stat().st_atime, left.stat().st_mtime - ABANDONED_S - 1))  # abandoned an hour ago
    downloaded, get = [], LocalFileSystem.get
    monkeypatch.setattr(LocalFileSystem, "get", lambda self, sources, *rest, **named: downloaded.extend(
        sources) or get(self, sources, *rest, **named))
    assert store.fetch_cached("model", cache, remedy="rerun") == entry
    assert contents(entry) == FILES and marker.is_file()  # the partial left behind is gone too
    assert len(downloaded) == 1  # what the killed fetch had not verified, and that alone
    # An entry whose marker went missing is not taken for complete either: what it lacks is fetched again.
    marker.unlink()
    (entry / "sub/weights.bin").chmod(0o644)
    (entry / "sub/weights.bin").unlink()
    assert contents(store.fetch_cached("model", cache, remedy="rerun")) == FILES and marker.is_file()
    assert len(downloaded) == 2


def test_a_corrupted_file_in_the_store_is_refused_on_the_first_fetch_through_the_cache(tmp_path):
    from influence_core.storage import VERIFIED, cache_entry

    store, cache = published_model(tmp_path, FILES), tmp_path / "cache"
    (tmp_path / "artifacts/model/sub/weights.bin").write_text("x" * 5000)  # the same size, other bytes
    recorded = store.manifest("model")["files"]
    remedy = "rerun the train stage"
    for fetch in (lambda: store.fetch_cached("model", cache, remedy=remedy),
                  lambda: store.fetch_file_cached("model", "sub/weights.bin", recorded, cache, remedy)):
        with pytest.raises(ConfigError, match=r"model/sub/weights.bin is missing, truncated or changed since _SUCCESS "
                                              r"was written: rerun the train stage$"):
            fetch()
    entry = cache_entry(cache, "model", recorded)
    assert not entry.with_name(entry.name + VERIFIED).exists() and not (entry / "sub/weights.bin").exists()
    assert sorted(path.name for path in (entry / "sub").iterdir()) == []  # no partial file left either


def test_a_cache_folder_that_cannot_be_written_is_refused_in_one_line_naming_cache_dir(tmp_path, monkeypatch):
    import os

    store = published_model(tmp_path, FILES)
    recorded = store.manifest("model")["files"]
    (tmp_path / "a-file").write_text("not a folder")
    unwritable = [tmp_path / "a-file" / "cache"]  # below a file: no user can make it
    if os.geteuid() != 0:  # root writes into any folder whatever its mode
        (tmp_path / "read-only").mkdir(mode=0o555)
        unwritable.append(tmp_path / "read-only")
    for cache in unwritable:
        for fetch in (lambda folder: store.fetch_cached("model", folder, remedy="rerun"),
                      lambda folder: store.fetch_file_cached("model", "config.json", recorded, folder, "rerun")):
            with pytest.raises(ConfigError, match=rf"^CACHE_DIR {cache}: this user cannot write there \(.+\); set "
                                                  r"CACHE_DIR to a folder it can write, or to 'off'$"):
                fetch(cache)
