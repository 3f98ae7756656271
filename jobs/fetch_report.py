"""Copy reports/<scores_name>/ from the artifacts (a bucket, usually) to a local folder."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from influence_core import paths
from influence_core.settings import FetchReportSettings
from jobs.common import open_artifacts

log = logging.getLogger("jobs.fetch_report")


def main(settings: FetchReportSettings) -> None:
    artifacts = open_artifacts(settings.artifacts_uri)
    report = paths.REPORT(settings.scores_name)
    artifacts.require(report)
    destination = Path(settings.report_dir)
    if destination.exists():
        shutil.rmtree(destination)
    artifacts.fetch(report, destination)  # checked against its _SUCCESS
    log.info("copied %s to %s", artifacts.url(report), destination)

