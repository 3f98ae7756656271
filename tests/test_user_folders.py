"""A user's folder (inspect_factors' OUTPUT_DIR, fetch_report's REPORT_DIR) is never cleared: a stage
writes there only when the folder is new, empty, or holds only what the stage itself wrote before
(its `_SUCCESS` lists it), and then replaces those files alone, after the new ones are complete."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.conftest import jobs_in_process, one_line_refusal


def files_below(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file()}


def run(stage: str, artifacts: Path, *flags: str) -> tuple[int, str]:
    return jobs_in_process(stage, "--artifacts_uri", str(artifacts), "--log_level", "ERROR", *flags)


def refused_beside_a_file_of_yours(stage: str, artifacts: Path, setting: str, tmp_path: Path) -> None:
    """`stage` writing to a folder holding a file of yours: one line naming the setting and the file,
    and the folder as it was."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    line = one_line_refusal(run(stage, artifacts, f"--{setting.lower()}", str(mine)))
    assert setting in line and "notes.txt" in line
    assert files_below(mine) == {"notes.txt": b"my notes"}


def test_inspect_factors_refuses_a_folder_holding_other_files_and_writes_into_its_own(small_pipeline, tmp_path):
    refused_beside_a_file_of_yours("inspect_factors", small_pipeline, "OUTPUT_DIR", tmp_path)

    plots = tmp_path / "plots"  # does not exist yet
    code, stderr = run("inspect_factors", small_pipeline, "--output_dir", str(plots), "--layer_num", "0")
    assert code == 0, stderr[-3000:]
    written = files_below(plots)
    assert "_SUCCESS" in written and "summary.json" in written and any("h.0.mlp" in name for name in written)
    # Another folder is another output: written too, not skipped because the first one is complete.
    other = tmp_path / "other"
    assert run("inspect_factors", small_pipeline, "--output_dir", str(other), "--layer_num", "0")[0] == 0
    assert set(files_below(other)) == set(written)
    # Its own folder is replaced: the plots of layer 0 go, those of layer 1 come.
    code, stderr = run("inspect_factors", small_pipeline, "--output_dir", str(plots), "--layer_num", "1")
    assert code == 0, stderr[-3000:]
    now = files_below(plots)
    assert any("h.1.mlp" in name for name in now) and not any("h.0.mlp" in name for name in now)


def test_fetch_report_refuses_a_folder_holding_other_files(small_pipeline, tmp_path):
    refused_beside_a_file_of_yours("fetch_report", small_pipeline, "REPORT_DIR", tmp_path)


def test_a_failed_fetch_keeps_the_report_fetched_before(small_pipeline, tmp_path):
    artifacts = tmp_path / "artifacts"
    shutil.copytree(small_pipeline, artifacts)
    report = tmp_path / "report"
    code, stderr = run("fetch_report", artifacts, "--report_dir", str(report))
    assert code == 0, stderr[-3000:]
    before = files_below(report)
    assert "report.html" in before and "report.json" in before
    (artifacts / "reports/prompt_scores/report.html").unlink()  # the published report is damaged
    line = one_line_refusal(run("fetch_report", artifacts, "--report_dir", str(report)))
    assert "report.html" in line
    assert files_below(report) == before
