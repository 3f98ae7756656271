"""Copy reports/<scores_name>/ from the artifacts (a bucket, usually) to a local folder."""

from __future__ import annotations

import logging

from influence_core.artifacts import Report, require
from influence_core.settings import FetchReportSettings
from influence_core.storage import owned_files, publish_to_folder, work_dir
from jobs.common import open_store

log = logging.getLogger("jobs.fetch_report")


def main(settings: FetchReportSettings) -> None:
    store = open_store(settings.artifacts_uri)
    report = Report(settings.scores_name)
    require(store, report)  # and the scores, model and data it was made from are the ones there now
    owned_files(settings.report_dir, "REPORT_DIR")  # a folder holding anything else is refused before the copy
    with work_dir() as work:
        # Fetched and checked against its _SUCCESS first: a failed copy leaves the folder as it was.
        local = report.fetch(work / "report")
        publish_to_folder(local, settings.report_dir, "REPORT_DIR")
    log.info("copied %s to %s", report.url, settings.report_dir)
