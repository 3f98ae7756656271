"""The documentation cannot drift from the code: the settings reference is what the settings
classes generate, and the site builds with every link resolved."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from influence_core.settings_reference import render

ROOT = Path(__file__).resolve().parent.parent


def test_the_settings_reference_is_what_the_settings_classes_generate():
    committed = (ROOT / "docs" / "settings.md").read_text()
    assert committed == render(), "docs/settings.md is stale: run `make settings-docs` and commit it"


def test_every_setting_of_every_stage_is_in_the_reference():
    from influence_core.stages import STAGES

    page = render()
    for stage in STAGES:
        for name, info in stage.settings.model_fields.items():
            assert f"`{(info.alias or name).upper()}`" in page, (stage.name, name)


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path):
    mkdocs = Path(sys.executable).with_name("mkdocs")
    result = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                            capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "settings" / "index.html").exists()
