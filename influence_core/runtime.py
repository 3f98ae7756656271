"""Process set-up for compute: logging and CPU threads sized to the container, not the node."""

from __future__ import annotations

import functools
import io
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from influence_core.errors import ConfigError
from influence_core.storage import work_dir

if TYPE_CHECKING:
    import torch


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


def autocast_dtype(amp_dtype: str) -> torch.dtype | None:
    """The dtype AMP_DTYPE names for autocast; None for float32 (no autocast). auto: bfloat16 on a
    CUDA device that supports it (its tensor cores run bfloat16 several times faster than float32)."""
    import torch

    if amp_dtype == "auto":
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if native else None
    return None if amp_dtype == "float32" else getattr(torch, amp_dtype)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    # Kronfluence 1.0.1 calls a deprecated torch.cuda.amp API on every run; nothing for a user to act on.
    warnings.filterwarnings("ignore", category=FutureWarning, module="kronfluence")
    if level != "DEBUG":  # progress bars are noise in pod logs; our stages log progress lines instead
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # datasets logs a parse failure itself before raising it; the stage reports it in one line.
    # (datasets sets its own logger's level from DATASETS_VERBOSITY when it is imported, and a
    # stage run in a process that imported it already needs the level set here)
    os.environ.setdefault("DATASETS_VERBOSITY", "debug" if level == "DEBUG" else "critical")
    logging.getLogger("datasets").setLevel(logging.DEBUG if level == "DEBUG" else logging.CRITICAL)
    # Kronfluence's INFO lines print the whole model and every argument.
    for noisy in ("kronfluence", "httpx", "urllib3", "botocore", "aiobotocore", "s3fs", "fsspec", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


# ---- SIGTERM (pod eviction, preemption) -------------------------------------------------------

class Terminated(SystemExit):
    """SIGTERM: leave now (context managers still clean up), exit code 128 + 15."""

    def __init__(self) -> None:
        super().__init__(143)


_stop_requested = threading.Event()


def handle_sigterm(graceful: bool = False) -> None:
    """On SIGTERM, either leave at once (what is published stays: finished partitions), or, when
    `graceful`, only note the request so training can save a last checkpoint first."""

    def on_sigterm(signum, frame) -> None:
        _stop_requested.set()  # first: nothing below may keep the request from being noted
        message = "SIGTERM: " + ("saving a checkpoint, then exiting" if graceful
                                 else "exiting; what is finished is already published")
        try:
            logging.getLogger("jobs").warning(message)
        except RuntimeError:  # the signal came while a log line was being written: stderr refuses a second
            os.write(2, f"{message}\n".encode())
        if not graceful:
            raise Terminated()

    signal.signal(signal.SIGTERM, on_sigterm)


def stop_requested() -> bool:
    return _stop_requested.is_set()


# ---- torchrun processes ------------------------------------------------------------------------

def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Only the first torchrun process reads and writes the artifacts; the others compute."""
    return rank() == 0


def refuse_cpu_processes(stage: str) -> None:
    """Kronfluence spreads work over torchrun processes only on CUDA: on CPU each process would
    silently repeat the whole computation, so several CPU processes are refused."""
    import torch

    if world_size() > 1 and not torch.cuda.is_available():
        raise ConfigError(
            f"{stage}: {world_size()} torchrun processes on CPU would each repeat the same work (Kronfluence "
            "runs distributed only on CUDA); use --nproc-per-node=1 and spread the work over pods with data "
            "partitions and SHARD_INDEX (Indexed Jobs)"
        )


@contextmanager
def shared_work_dir(stage: str) -> Iterator[Path]:
    """A scratch directory for one stage run, removed afterwards. The torchrun processes of a pod
    share one, since Kronfluence's ranks read the factor files that its main process writes: the
    main process makes it, new for this run (never one an earlier run left behind, whatever the
    rendezvous's run id), and tells the others its name."""
    if world_size() == 1:
        with work_dir() as path:
            yield path
        return
    import torch.distributed as dist

    barrier()  # joins the process group
    name = [tempfile.mkdtemp(prefix=f"influence-{stage}-") if is_main_process() else None]
    device = local_gpu() if dist.get_backend() == "nccl" else None
    dist.broadcast_object_list(name, src=0, device=device)
    path = Path(name[0])
    try:
        yield path
    except BaseException:
        if is_main_process():
            shutil.rmtree(path, ignore_errors=True)
        raise
    barrier()  # every process is done with it
    if is_main_process():
        shutil.rmtree(path, ignore_errors=True)


def local_gpu() -> torch.device:
    """This torchrun process's GPU (its LOCAL_RANK; 0 outside torchrun)."""
    import torch

    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def barrier() -> None:
    """Wait for every torchrun process (a no-op for a single process)."""
    if world_size() == 1:
        return
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    dist.barrier()


# ---- progress ----------------------------------------------------------------------------------

PROGRESS_LOG_INTERVAL_S = 30.0  # in pods: one line per bar at most this often, plus the last


def progress_bars() -> bool:
    """Progress bars on a terminal; in a pod or CI (stderr not a terminal) they become log lines."""
    return sys.stderr.isatty()


class _ProgressLog(io.TextIOBase):
    """A file for tqdm: each refresh of a bar becomes one log line (tqdm redraws with "\\r")."""

    last = ""

    def write(self, text: str) -> int:
        line = text.replace("\x1b[A", "").strip("\r\n ")
        if line and line != self.last:  # a closing bar redraws its last state
            logging.getLogger("progress").info(line)
            self.last = line
        return len(text)


def configure_progress(interval_s: float = PROGRESS_LOG_INTERVAL_S) -> None:
    """Off a terminal, every tqdm bar (ours, Kronfluence's, the Trainer's) logs a plain line at most
    every `interval_s` seconds instead of drawing; on a terminal bars draw as usual. tqdm takes no
    global file setting and Kronfluence creates its bars itself, hence the changed defaults."""
    import tqdm

    if progress_bars() or getattr(tqdm.tqdm, "_logs_progress", False):
        return
    tqdm.tqdm.__init__ = functools.partialmethod(tqdm.tqdm.__init__, file=_ProgressLog(), ascii=True,
                                                 mininterval=interval_s, maxinterval=interval_s)
    tqdm.tqdm._logs_progress = True
