"""The artifacts store: one interface over a local path or any fsspec URL (s3://, gs://, file://).

Stages compute in a local work directory, fetch their inputs into it and publish their outputs
from it. A published output directory ends with `_SUCCESS`, written last; an output without it is
incomplete, whatever else it holds. This is the only module that knows about fsspec.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from influence_core.errors import ConfigError

SUCCESS = "_SUCCESS"
# Which stage makes each input, for the message when a stage runs before the one it needs.
PRODUCERS = {"model": "train", "data/train": "train", "influence/factors_": "fit_factors",
             "influence/scores_": "compute_scores", "reports/factors_": "inspect_factors"}
VERSIONED_PACKAGES = ("torch", "transformers", "datasets", "tokenizers", "kronfluence", "fsspec")


def producer_of(relative: str) -> str:
    return next(stage for prefix, stage in PRODUCERS.items() if relative.startswith(prefix))


class Artifacts:
    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.uri)
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def path(self, relative: str) -> str:
        return posixpath.join(self.root, relative) if relative else self.root

    def url(self, relative: str) -> str:
        return f"{self.uri}/{relative}" if relative else self.uri

    def exists(self, relative: str) -> bool:
        return self.fs.exists(self.path(relative))

    def read_bytes(self, relative: str) -> bytes:
        return self.fs.cat_file(self.path(relative))

    def manifest(self, relative: str) -> dict | None:
        """The `_SUCCESS` manifest of a complete output, or None."""
        try:
            return json.loads(self.read_bytes(f"{relative}/{SUCCESS}"))
        except FileNotFoundError:
            return None

    def require(self, *relatives: str) -> dict[str, str]:
        """Fingerprints of complete inputs; a ConfigError naming the first missing one and its stage."""
        fingerprints = {}
        for relative in relatives:
            manifest = self.manifest(relative)
            if manifest is None:
                stage = producer_of(relative)
                raise ConfigError(
                    f"missing input {self.url(relative)} (no {SUCCESS}): run the {stage} stage first "
                    f"(python -m jobs {stage}) with the same ARTIFACTS_URI"
                )
            fingerprints[relative] = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
        return fingerprints

    def is_up_to_date(self, relative: str, stage: str, settings: dict, inputs: dict[str, str]) -> bool:
        """True when `relative` is complete and was made by `stage` from these settings and inputs."""
        manifest = self.manifest(relative)
        return bool(manifest) and manifest.get("stage") == stage and manifest.get("settings") == settings and (
            manifest.get("inputs") == inputs
        )

    def fetch(self, relative: str, destination: Path) -> Path:
        """Make an artifact directory available locally at `destination` (a link when local)."""
        destination.parent.mkdir(parents=True, exist_ok=True)
        if self.is_local:
            destination.symlink_to(Path(self.path(relative)).resolve(), target_is_directory=True)
            return destination
        remote = self.fs.find(self.path(relative))
        local = [str(destination / posixpath.relpath(path, self.path(relative))) for path in remote]
        for path in local:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.fs.get(remote, local)
        return destination

    def publish(self, local_dir: Path, relative: str, manifest: dict) -> str:
        """Copy `local_dir` to `relative`, replacing what was there; `_SUCCESS` goes last."""
        target = self.path(relative)
        if self.fs.exists(target):
            # Unmark first, so a reader never sees old _SUCCESS beside new, half-copied files.
            if self.fs.exists(f"{target}/{SUCCESS}"):
                self.fs.rm_file(f"{target}/{SUCCESS}")
            self.fs.rm(target, recursive=True)
        files = sorted(path for path in local_dir.rglob("*") if path.is_file() and path.name != SUCCESS)
        remote = [posixpath.join(target, path.relative_to(local_dir).as_posix()) for path in files]
        if self.is_local:
            for path in {posixpath.dirname(name) for name in remote} | {target}:
                self.fs.makedirs(path, exist_ok=True)
        if files:
            # Explicit file-to-file lists: a recursive directory put nests on reruns.
            self.fs.put([str(path) for path in files], remote)
        self.fs.pipe_file(f"{target}/{SUCCESS}", json.dumps(manifest, indent=2, default=str).encode())
        return self.url(relative)

    def write_text(self, relative: str, text: str) -> None:
        self.fs.pipe_file(self.path(relative), text.encode())


def read_uri(uri: str, setting: str) -> bytes:
    """The bytes of a single file given by path or URL (e.g. the prompts file)."""
    try:
        with fsspec.open(uri, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise ConfigError(f"{setting}={uri}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{setting}={uri}: is a directory, expected a file") from None


def environment_facts() -> dict:
    """Package versions and the git sha, recorded in every manifest."""
    versions = {}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    sha = os.environ.get("GIT_SHA")
    if not sha:
        try:
            sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                 cwd=Path(__file__).parent).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            sha = None
    return {"versions": versions, "git_sha": sha}


@contextmanager
def work_dir() -> Iterator[Path]:
    """A local scratch directory for one stage run (under $TMPDIR), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="influence-") as path:
        yield Path(path)
