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
