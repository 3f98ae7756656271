"""Bad input: one clear line on stderr, exit code 2, before any model loads, nothing marked complete."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PROBE = (
    "import sys; from jobs.__main__ import main; code = main(sys.argv[1:]); "
    "heavy = [m for m in ('torch', 'transformers', 'kronfluence') if m in sys.modules]; "
    "print('HEAVY', heavy); sys.exit(code)"
)


def run_probe(args: list[str], env: dict, cwd) -> subprocess.CompletedProcess:
    full_env = {key: value for key, value in os.environ.items() if key != "ARTIFACTS_URI"}
    full_env.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=60)


def write(path, content: str):
    path.write_text(content)
    return str(path)


CASES = {
    "prompts not JSON": (lambda tmp: ["compute_scores", "--prompts", write(tmp / "p.json", "[{'prompt': 1")],
                         "not valid JSON"),
    "prompts empty list": (lambda tmp: ["compute_scores", "--prompts", write(tmp / "p.json", "[]")], "empty"),
    "prompt without completion": (
        lambda tmp: ["compute_scores", "--prompts", write(tmp / "p.json", json.dumps([{"prompt": "Hi"}]))],
        "completion: Field required"),
    "completion not a string": (
        lambda tmp: ["compute_scores", "--prompts",
                     write(tmp / "p.json", json.dumps([{"prompt": "Hi", "completion": 3}]))],
        "valid string"),
    "prompts file missing": (lambda tmp: ["compute_scores", "--prompts", str(tmp / "nope.json")], "file not found"),
    "unknown strategy": (lambda tmp: ["fit_factors", "--factor_strategy", "newton"],
                         "'identity', 'diagonal', 'kfac' or 'ekfac'"),
    "negative batch size": (lambda tmp: ["fit_factors", "--factor_batch_size", "-4"], "FACTOR_BATCH_SIZE"),
    "negative train batch size": (lambda tmp: ["compute_scores", "--train_batch_size", "-1"], "TRAIN_BATCH_SIZE"),
    "name with a path": (lambda tmp: ["fit_factors", "--factors_name", "../escape"], "FACTORS_NAME"),
    "unknown flag": (lambda tmp: ["inspect_scores", "--num_influentials", "5"], "unrecognized arguments"),
    "unknown stage": (lambda tmp: ["fit_factor"], "unknown stage 'fit_factor'"),
    "factors before training": (lambda tmp: ["fit_factors"], "run the train stage first"),
    "scores before factors": (lambda tmp: ["inspect_scores"], "run the compute_scores stage first"),
    "pipeline with bad prompts": (lambda tmp: ["pipeline", "--prompts", write(tmp / "p.json", "[]")], "empty"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_exit_2(case, tmp_path):
    make_args, expected = CASES[case]
    artifacts = tmp_path / "artifacts"
    result = run_probe(make_args(tmp_path), {"ARTIFACTS_URI": str(artifacts)}, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0]
    assert "HEAVY []" in result.stdout, "a heavy library was imported before the input was checked"
    assert not artifacts.exists() or not list(artifacts.rglob("_SUCCESS"))


def test_missing_input_names_the_artifact_and_stage(tmp_path):
    artifacts = tmp_path / "artifacts"
    (artifacts / "model").mkdir(parents=True)
    (artifacts / "model" / "_SUCCESS").write_text("{}")
    result = run_probe(["compute_scores"], {"ARTIFACTS_URI": str(artifacts)}, cwd=tmp_path)
    assert result.returncode == 2
    assert f"missing input {artifacts}/data/train" in result.stderr and "run the train stage first" in result.stderr


def test_layer_out_of_range(demo_run):
    result = run_probe(["inspect_factors", "--layer_num", "11"], {"ARTIFACTS_URI": str(demo_run)}, cwd=demo_run)
    assert result.returncode == 2
    assert "the model has layers 0..3, got 11" in result.stderr
