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


def test_fetch_links_local_directories(tmp_path):
    store = Artifacts(str(tmp_path / "artifacts"))
    (tmp_path / "artifacts/model").mkdir(parents=True)
    (tmp_path / "artifacts/model/config.json").write_text("{}")
    local = store.fetch("model", tmp_path / "work" / "model")
    assert json.loads((local / "config.json").read_text()) == {}


def test_incomplete_output_is_not_an_input(tmp_path):
    store = Artifacts(str(tmp_path))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.safetensors").write_bytes(b"half")
    with pytest.raises(ConfigError, match="no _SUCCESS.*run the train stage first"):
        store.require("model")
    (tmp_path / "model" / SUCCESS).write_text(json.dumps({"stage": "train"}))
    assert set(store.require("model")) == {"model"}
