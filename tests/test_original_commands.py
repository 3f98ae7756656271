"""The original project's commands, as its README's "Complete Pipeline" gives them, at the defaults:
every one exits 0 on a fresh folder and the report is prompt_scores_report.md; then a second
prompts file is scored and reported by compute_scores.py and inspect_scores.py alone. Each script
runs in this process as `python <script>` runs it (its argv, from the user's folder: no new
interpreter to start), and only the corpus is made smaller (NUM_EXAMPLES, NUM_TRAIN_EPOCHS) so the
test is quick; bench/original_commands.py runs the same commands as processes at the full defaults.

The same flow as Kubernetes Jobs needs no other Job at the overlays' settings
(tests/test_sharded_manifests.py); every Job runs as a container in tests/test_image.py."""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import shlex
import sys

import pytest

from tests.conftest import ROOT

# The original README's five commands, verbatim (its line continuations joined).
ORIGINAL = """
python train.py
python fit_factors.py --factors_name tiny_lm_factors --factor_strategy ekfac --factor_batch_size 4 --covariance_data_partitions 8 --lambda_data_partitions 8 --eigendecomposition_dtype float64
python inspect_factors.py --factors_name tiny_lm_factors --layer_num 11 --output_dir influence_results/factor_analysis
python compute_scores.py --factors_name tiny_lm_factors --scores_name prompt_scores --query_gradient_rank 64 --train_batch_size 8 --damping_factor 1e-5 --per_sample_gradient_dtype float32 --precondition_dtype float32
python inspect_scores.py --scores_name prompt_scores --num_influential 5
""".strip().splitlines()  # noqa: E501
SMALLER = {"NUM_EXAMPLES": "100", "NUM_TRAIN_EPOCHS": "1"}
NEW_PROMPTS = [{"prompt": "The bassoon player of the Tallow quartet is", "completion": " Edrik Solvane"},
               {"prompt": "The winter festival of Quistador is held at", "completion": " midsummer"}]


def original(command: str, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """One of the commands, from the current folder (the user's: ./artifacts and OUTPUT_DIR land
    there), as `python <script> <flags>` runs it: its exit code and stderr."""
    words = shlex.split(command)
    assert words[0] == "python"
    script, stderr = str(ROOT / words[1]), io.StringIO()
    with monkeypatch.context() as patch, contextlib.redirect_stderr(stderr):
        patch.setattr(sys, "argv", [script, *words[2:]])
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as exit:  # every script ends with sys.exit(the stage's exit code)
            return exit.code, stderr.getvalue()
    return 0, stderr.getvalue()


@pytest.mark.slow
def test_the_original_complete_pipeline_runs_at_the_defaults_then_new_prompts_need_two_commands(tmp_path,
                                                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("ARTIFACTS_URI", "ENSEMBLE_SEEDS"):  # the defaults, whatever the test's environment says
        monkeypatch.delenv(name, raising=False)
    for name, value in SMALLER.items():
        monkeypatch.setenv(name, value)
    for command in ORIGINAL:
        code, log = original(command, monkeypatch)
        assert code == 0, f"{command}\n{log[-3000:]}"
    assert (tmp_path / "artifacts/reports/prompt_scores/prompt_scores_report.md").is_file()
    assert json.loads((tmp_path / "influence_results/factor_analysis/summary.json").read_text())["layer_plotted"] == 3

    (tmp_path / "new_prompts.json").write_text(json.dumps(NEW_PROMPTS))
    for command in ("python compute_scores.py --scores_name new_scores --prompts new_prompts.json",
                    "python inspect_scores.py --scores_name new_scores --num_influential 5"):
        code, log = original(command, monkeypatch)
        assert code == 0, f"{command}\n{log[-3000:]}"
    report = json.loads((tmp_path / "artifacts/reports/new_scores/report.json").read_text())
    assert [entry["completion"] for entry in report["prompts"]] == [" Edrik Solvane", " midsummer"]
    assert (tmp_path / "artifacts/reports/new_scores/new_scores_report.md").is_file()
