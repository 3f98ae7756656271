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


def test_a_default_the_docs_and_manifests_state_is_the_code_s():
    """A default the README, the docs (not the dated results pages, which say what was the default
    then) and the manifests' comments state is the setting's default in the code: `NAME=value (the
    default ...)` or `NAME=value, the default`, and the docs' convention `` `NAME` (value) `` where the
    value is a number."""
    import re

    from influence_core.stages import STAGES

    defaults = {name.upper(): info.default for stage in STAGES for name, info in stage.settings.model_fields.items()}
    pages = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "k8s").rglob("*.yaml"),
             *(ROOT / "k8s").rglob("*.env")]
    stated, wrong = 0, []
    for page in pages:
        if "results" in page.parts or page.name == "settings.md":  # settings.md: generated from the code
            continue
        text = page.read_text()
        said = re.findall(r"\b([A-Z][A-Z0-9_]+)=([\w.\-]+)`?(?:,| \()\s*the default", text)
        in_parentheses = re.findall(r"`([A-Z][A-Z0-9_]+)` \((?:default )?([\d.e\-]+)[;,)]", text)
        said += [(name, value) for name, value in in_parentheses if re.fullmatch(r"-?\d+(\.\d+)?(e-?\d+)?", value)]
        for name, value in said:
            if name not in defaults:
                continue
            stated += 1
            default = defaults[name]
            numeric = isinstance(default, int | float) and not isinstance(default, bool)
            if (float(value) != float(default)) if numeric and re.fullmatch(r"-?[\d.e\-]+", value) else (
                    value.lower() != str(default).lower()):
                wrong.append((str(page.relative_to(ROOT)), name, value, default))
    assert stated > 10  # the patterns find what they are for
    assert wrong == []
