"""Progress: bars on a terminal; plain, periodic log lines otherwise (pods, CI)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

LOOP = """
import time
from influence_core.runtime import configure_logging, configure_progress
from tqdm import tqdm
configure_logging("INFO")
configure_progress(interval_s=0.2)
for _ in tqdm(range(12), desc="Counting sheep"):
    time.sleep(0.05)
"""


def test_bars_become_log_lines_off_a_terminal():
    result = subprocess.run([sys.executable, "-c", LOOP], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    progress = [line for line in lines if " INFO progress: Counting sheep" in line]
    assert "\r" not in result.stderr and len(progress) == len(lines)
    # the first state, at least one in between (12 x 50 ms, a line per 200 ms at most), the last
    assert " 0/12 " in progress[0] and " 12/12 " in progress[-1] and 3 <= len(progress) <= 6, progress
