"""Shared fixtures: the demo pipeline runs once per session and many tests read its artifacts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_jobs(*args: str, env: dict | None = None, cwd: Path = ROOT, timeout: int = 900) -> subprocess.CompletedProcess:
    """`python -m jobs ...` as a user runs it, in a clean environment plus `env`."""
    full_env = {key: value for key, value in os.environ.items() if key != "ARTIFACTS_URI"}
    full_env.update({"PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}, **(env or {}))
    return subprocess.run([sys.executable, "-m", "jobs", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """Artifacts of `python -m jobs pipeline` at the demo's default settings (what `make demo` runs)."""
    artifacts = tmp_path_factory.mktemp("demo") / "artifacts"
    result = run_jobs("pipeline", env={"ARTIFACTS_URI": str(artifacts)})
    assert result.returncode == 0, result.stderr[-4000:]
    return artifacts


@pytest.fixture(scope="session")
def demo_report(demo_run) -> dict:
    return json.loads((demo_run / "reports" / "prompt_scores" / "report.json").read_text())
