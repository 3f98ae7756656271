"""Stages as processes of their own, for the tests that kill, signal or run several at once.

Each is forked from a server process that imported torch, transformers and every stage once
(multiprocessing's forkserver, one per test worker): a new interpreter would spend several
CPU-seconds on those imports before the stage begins, and these tests start dozens. The server
has imported and nothing more (no torch thread pool, no progress bar and its lock, no socket of
the test's), so each child starts as a new `python -m jobs` would, and a kill -9 or a SIGTERM
reaches the stage all the same. What the child cannot get this way is what a library reads from
the environment when it is imported (the Hugging Face Hub's endpoint): those tests use run_jobs.
"""

from __future__ import annotations

import importlib
import multiprocessing
import multiprocessing.connection
import os
import pkgutil
import signal
import subprocess
import sys
import time

import s3fs  # noqa: F401
from transformers import GPTNeoForCausalLM  # noqa: F401  (transformers imports a model's module lazily)

import influence_core
from influence_core.stages import BY_NAME
from jobs.__main__ import main

# What each child would otherwise import first: the core (which imports torch, transformers, datasets,
# Kronfluence and matplotlib) and every stage.
for _module in pkgutil.iter_modules(influence_core.__path__):
    importlib.import_module(f"influence_core.{_module.name}")
for _stage in BY_NAME.values():
    importlib.import_module(_stage.module)

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload([__name__])


def _run(args: list[str], env: dict, cwd: str, stderr: multiprocessing.connection.Connection) -> None:
    """The child: `python -m jobs *args` with `env` as its whole environment, stdout and stderr
    into the pipe."""
    # As a new process starts: no signal blocked (a test worker may block some), default handlers.
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.dup2(stderr.fileno(), 2)
    os.dup2(stderr.fileno(), 1)  # what a stage prints goes with its log, so that tests see all of it
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    os.environ.clear()
    os.environ.update(env)
    import fsspec

    fsspec.config.conf.clear()  # fsspec read its FSSPEC_* variables when the server imported it
    fsspec.config.set_conf_env(fsspec.config.conf)
    from tqdm.std import TqdmDefaultWriteLock

    # Progress bars share a semaphore across processes unless told not to: none for a child that
    # may be killed holding it (and none left behind for multiprocessing to warn about).
    TqdmDefaultWriteLock.mp_lock = None
    os.chdir(cwd)
    code = 1
    try:
        code = main(args)
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # no interpreter shutdown of multiprocessing's own: the stage's exit code


class StageProcess:
    """`python -m jobs *args` forked from the server, with `env` as its whole environment and `cwd`
    as its working directory: the parts of subprocess.Popen the tests use (pid, poll, wait,
    send_signal, communicate, returncode, and stderr to read its output from, stdout included)."""

    def __init__(self, args: list[str], env: dict, cwd: str) -> None:
        read_end, write_end = os.pipe()
        pipe = multiprocessing.connection.Connection(write_end, readable=False)  # sent as the child's
        self._process = _CONTEXT.Process(target=_run, args=(list(args), env, cwd, pipe))
        self._process.start()
        pipe.close()  # the child holds the only write end now: its exit is the pipe's end
        self.pid = self._process.pid
        self.stderr = os.fdopen(read_end, "r")

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode  # -9 after kill -9, as Popen's

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(f"jobs {self.pid}", timeout)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def communicate(self, timeout: float | None = None) -> tuple[None, str]:
        deadline = None if timeout is None else time.monotonic() + timeout
        text = self.stderr.read()
        self.stderr.close()
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return None, text
