"""The artifacts store on a local path: publish, fetch, manifests, completeness."""

from __future__ import annotations

import json

import pytest

from influence_core.errors import ConfigError
from influence_core.storage import SUCCESS, Artifacts


def test_publish_replaces_and_marks_complete_last(tmp_path):
    store = Artifacts(str(tmp_path / "artifacts"))
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
    assert store.is_up_to_date("out/x", "s", {"k": 1}, {})
    assert not store.is_up_to_date("out/x", "s", {"k": 2}, {})


def test_a_fetched_input_is_a_copy_that_cannot_change_the_published_artifact(tmp_path):
    store = Artifacts(str(tmp_path / "artifacts"))
    source = tmp_path / "made"
    source.mkdir()
    (source / "config.json").write_text("{}")
    store.publish(source, "model", {"stage": "train"})
    local = store.fetch("model", tmp_path / "work" / "model")
    assert json.loads((local / "config.json").read_text()) == {}
    (local / "config.json").write_text('{"changed": true}')  # a stage writing into its input
    (local / "extra.txt").write_text("x")
    assert (tmp_path / "artifacts/model/config.json").read_text() == "{}"
    assert not (tmp_path / "artifacts/model/extra.txt").exists()
    store.fetch("model", tmp_path / "again" / "model")  # still verifies against its _SUCCESS


def test_an_output_whose_manifest_lists_no_files_is_refused(tmp_path):
    store = Artifacts(str(tmp_path))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "model" / SUCCESS).write_text(json.dumps({"stage": "train"}))  # no "files": nothing to verify
    with pytest.raises(ConfigError, match="lists no files.*rerun the train stage with FORCE=true"):
        store.fetch("model", tmp_path / "work" / "model")


def test_incomplete_output_is_not_an_input(tmp_path):
    store = Artifacts(str(tmp_path))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.safetensors").write_bytes(b"half")
    with pytest.raises(ConfigError, match="no _SUCCESS.*run the train stage first"):
        store.require("model")
    (tmp_path / "model" / SUCCESS).write_text(json.dumps({"stage": "train"}))
    assert set(store.require("model")) == {"model"}
