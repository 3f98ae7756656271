"""What every stage does the same way: settings, logging, skip-if-complete, manifests."""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from influence_core.artifacts import Artifact, Manifest, check_names
from influence_core.runtime import (
    barrier,
    configure_logging,
    configure_progress,
    configure_threads,
    is_main_process,
    refuse_cpu_processes,
    shared_work_dir,
)
from influence_core.settings import CommonSettings, S, load_settings
from influence_core.storage import Output, Store, environment_facts

log = logging.getLogger("jobs")

# Settings that do not change a stage's outputs, so they do not invalidate a finished one.
NOT_FINGERPRINTED = {"artifacts_uri", "force", "log_level", "output_dir", "shard_index", "job_completion_index",
                     "factor_phase", "subset_index", "device_memory_gib", "disk_gib", "force_fit",
                     "cache_dir"}


def parse(cls: type[S], argv: list[str], stage: str) -> S:
    settings = load_settings(cls, argv, prog=f"python -m jobs {stage}")
    check_names(settings)
    configure_logging(settings.log_level)
    configure_progress()
    return settings


def open_store(uri: str) -> Store:
    """The artifacts store (or a folder of the user's), checked to be reachable before any work is done."""
    store = Store(uri)
    store.check_reachable()
    return store


def run_stage(name: str, settings: CommonSettings) -> None:
    """Another stage, run in this process with its own settings (its skip, checks and publishing
    included): the pipeline's stages, the lds stage's baseline, the evaluation's strategies."""
    from influence_core.stages import BY_NAME

    importlib.import_module(BY_NAME[name].module).main(settings)


def fingerprint(settings: CommonSettings) -> dict:
    return settings.model_dump(mode="json", exclude=NOT_FINGERPRINTED)


def up_to_date(store: Store, relative: str, stage: str, settings: dict, inputs: dict[str, str]) -> bool:
    """True when `relative` is complete and was made by `stage` from these settings and inputs."""
    raw = store.manifest(relative)
    if raw is None:
        return False
    made = Manifest.parse(raw)
    return made.stage == stage and made.settings == settings and made.inputs == inputs


def already_done(store: Store, outputs: list[str | Artifact], stage: str, settings: CommonSettings,
                 inputs: dict[str, str]) -> bool:
    """True (and says so) when every output is complete for these settings and inputs."""
    if settings.force:
        return False
    paths = [output.relative if isinstance(output, Artifact) else output for output in outputs]
    if all(up_to_date(store, path, stage, fingerprint(settings), inputs) for path in paths):
        log.info("%s: %s complete for these settings and inputs; skipping (FORCE=true redoes it)",
                 stage, ", ".join(store.url(path) for path in paths))
        return True
    return False


def manifest(stage: str, settings: CommonSettings, inputs: dict[str, str], started: float, **extra) -> dict:
    """The `_SUCCESS` content: what was made, from what, by which code, how long it took."""
    return {
        "stage": stage,
        "settings": fingerprint(settings),
        "inputs": inputs,
        **environment_facts(),
        "timings": {"started_unix": started, "seconds": round(time.time() - started, 3)},
        **extra,
    }


@contextmanager
def torchrun_stage(stage: str, settings: CommonSettings, store: Store, fetch: list[Artifact], output: str,
                   inputs: dict[str, str], restore: Callable[[str], bool] | None = None,
                   ) -> Iterator[tuple[Path, Output]]:
    """The torchrun protocol of a stage that Kronfluence spreads over a pod's GPUs: several CPU
    processes are refused (each would repeat all the work); the processes share one work directory,
    where the main process fetches the artifacts `fetch` to <work>/<artifact path> (where
    Kronfluence looks for factors) and restores the steps that earlier runs with the same settings and inputs
    staged (an interrupted run, other shards; with `restore`, the files whose name it accepts alone),
    while the others wait. Yields the work directory and
    the output, built at <work>/<output> and stamped with the settings and `inputs` (their
    fingerprints); only the main process may publish (`is_main_process`)."""
    refuse_cpu_processes(stage)
    configure_threads()
    with shared_work_dir(stage) as work:
        out = Output(store, output, work / output, stamp={"stage": stage, "settings": fingerprint(settings),
                                                          "inputs": inputs})
        if is_main_process():
            for artifact in fetch:
                artifact.fetch(work / artifact.relative)
            if restored := out.resume(restore):
                log.info("restored %d published files of this output", len(restored))
        barrier()
        yield work, out
