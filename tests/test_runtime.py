"""The torchrun processes of a pod: two real processes joined by a gloo process group (as torchrun
starts them, with a static rendezvous whose run id is "none"), sharing one work folder that no other
run ever sees and that is gone afterwards; files every process needs written once, by the main one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.families import save_tiny_model

pytestmark = pytest.mark.slow  # torchrun processes

SHARE = """
import json, os
from influence_core.runtime import barrier, shared_work_dir
with shared_work_dir("fit_factors") as work:
    (work / f"rank{os.environ['RANK']}").write_text("here")
    barrier()
    print(json.dumps({"work": str(work), "seen": sorted(path.name for path in work.iterdir())}))
"""

RECORD = """
import json, os, pathlib, sys
from influence_core import factors
from influence_core.runtime import barrier
from influence_core.settings import FitFactorsSettings
writes = []
original_write, original_replace = pathlib.Path.write_text, os.replace
def write_text(self, *args, **kwargs):
    writes.append(str(self))
    return original_write(self, *args, **kwargs)
def replace(source, target, *args, **kwargs):
    writes.append(str(target))
    return original_replace(source, target, *args, **kwargs)
pathlib.Path.write_text, os.replace = write_text, replace
barrier()
names = factors.record_tracked_modules(pathlib.Path(sys.argv[1]), FitFactorsSettings(), pathlib.Path(sys.argv[2]))
print(json.dumps({"names": names, "writes": [path for path in writes if "tracked_modules" in path]}))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_ranks(script: str, tmp_path, *args: str) -> list[dict]:
    """`script` run as ranks 0 and 1 of one process group; each one's JSON line."""
    port = free_port()
    processes = []
    for rank in (0, 1):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "TORCHELASTIC_RUN_ID": "none", "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
        processes.append(subprocess.Popen([sys.executable, "-c", script, *args], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr[-3000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return results


def test_each_run_gets_a_work_folder_of_its_own_shared_by_its_processes_and_removed_after(tmp_path):
    first = two_ranks(SHARE, tmp_path)
    second = two_ranks(SHARE, tmp_path)
    for run in (first, second):
        assert run[0]["work"] == run[1]["work"]
        assert run[0]["seen"] == run[1]["seen"] == ["rank0", "rank1"]
        assert not os.path.exists(run[0]["work"])
    assert first[0]["work"] != second[0]["work"]


def test_tracked_modules_are_written_once_by_the_main_process(tmp_path):
    model = save_tiny_model("gpt_neo", tmp_path / "model")
    shared = tmp_path / "factors"
    ranks = two_ranks(RECORD, tmp_path, str(model), str(shared))
    assert ranks[0]["names"] == ranks[1]["names"] == json.loads((shared / "tracked_modules.json").read_text())
    assert len(ranks[0]["writes"]) >= 1 and ranks[1]["writes"] == []
