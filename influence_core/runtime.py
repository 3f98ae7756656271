"""Process set-up for compute: logging and CPU threads sized to the container, not the node."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path


def cpu_limit() -> int:
    """CPUs this process may use: the cgroup quota when one is set, else its CPU affinity.

    torch defaults to the node's core count; in a pod limited to 2 of 64 cores that
    oversubscribes the CPU and runs 10-20x slower."""
    available = len(os.sched_getaffinity(0))
    quota = None
    cgroup_v2 = Path("/sys/fs/cgroup/cpu.max")
    cgroup_v1 = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
    try:
        if cgroup_v2.exists():
            limit, period = cgroup_v2.read_text().split()[:2]
            quota = None if limit == "max" else int(limit) / int(period)
        elif cgroup_v1.exists():
            limit = int(cgroup_v1.read_text())
            period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
            quota = None if limit <= 0 else limit / period
    except (OSError, ValueError):
        quota = None
    return max(1, min(available, int(quota))) if quota else available


def configure_threads() -> int:
    """Share the CPU limit among the torchrun processes of this pod; OMP_NUM_THREADS wins if set."""
    import torch

    if "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    threads = max(1, cpu_limit() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    torch.set_num_threads(threads)
    return threads


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    # Kronfluence 1.0.1 calls a deprecated torch.cuda.amp API on every run; nothing for a user to act on.
    warnings.filterwarnings("ignore", category=FutureWarning, module="kronfluence")
    if level != "DEBUG":  # progress bars are noise in pod logs; our stages log progress lines instead
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Kronfluence's INFO lines print the whole model and every argument.
    for noisy in ("kronfluence", "httpx", "urllib3", "botocore", "aiobotocore", "s3fs", "fsspec", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
