"""Copy reports/<scores_name>/ from the artifacts (a bucket, usually) to a local folder."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from pydantic import Field

from influence_core.settings import CommonSettings, Name
from jobs.common import open_artifacts, parse

log = logging.getLogger("jobs.fetch_report")


class FetchReportSettings(CommonSettings):
    scores_name: Name = "prompt_scores"
    report_dir: str = Field("./report", description="Local folder the report is copied into")


def main(settings: FetchReportSettings) -> None:
    artifacts = open_artifacts(settings.artifacts_uri)
    report = f"reports/{settings.scores_name}"
    artifacts.require(report)
    destination = Path(settings.report_dir)
    if destination.exists():
        shutil.rmtree(destination)
    if artifacts.is_local:
        shutil.copytree(artifacts.path(report), destination)
    else:
        artifacts.fetch(report, destination)
    log.info("copied %s to %s", artifacts.url(report), destination)


def run(argv: list[str]) -> None:
    main(parse(FetchReportSettings, argv, "fetch_report"))
