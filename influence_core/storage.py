"""The artifacts store: one interface over a local path or any fsspec URL (s3://, gs://, file://).

Stages compute in a local work directory, fetch their inputs into it and publish their outputs
from it. A published output directory ends with `_SUCCESS`, written last; an output without it is
incomplete, whatever else it holds. An output built in steps (Kronfluence partitions) stages each
finished step under `_parts/`, so a rerun with the same settings and inputs resumes from them. A new
version replaces an output only once all its files are uploaded and checked, so a failed upload
leaves the previous version complete. A file still being written (`partial_name`) is never staged,
published or fetched.
A query fetches its inputs through a cache folder (`fetch_cached`, CACHE_DIR): each artifact is
verified once when it reaches the machine and kept there under a key of its manifest's checksums,
so later queries neither download nor hash it again, and another version gets another key.
This is the only module that knows about fsspec; what the artifacts are (their kinds, files and
lineage) is influence_core.artifacts'.

Retries, multipart uploads, endpoints (FSSPEC_S3_ENDPOINT_URL) and credentials (the standard AWS
chain, so workload identity works) are s3fs's and botocore's; we only bound the retries so a dead
endpoint fails in well under a minute.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import hashlib
import json
import os
import posixpath
import re
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from importlib import metadata
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from influence_core.errors import ConfigError, StorageError

SUCCESS = "_SUCCESS"
PARTS = "_parts"  # staged steps of outputs being built, one folder per settings and inputs
PARTIAL = ".partial-"  # a file still being written (partial_name), renamed when complete
VERIFIED = ".verified"  # beside a cache entry <key>: every file of it verified (fetch_cached)
ABANDONED_S = 3600  # a cache entry's partial file not written for this long is a killed fetch's, removed
VERSIONED_PACKAGES = ("torch", "transformers", "datasets", "tokenizers", "kronfluence", "fsspec", "s3fs")
# Bounded S3 retries: s3fs tries each call 3 times with backoff (botocore's own retries off), each
# try waiting at most 5 s to connect and 15 s for data: a dead endpoint fails in under a minute.
S3_TRIES = 3
S3_CONFIG = {"connect_timeout": 5, "read_timeout": 15, "retries": {"total_max_attempts": 1}}


def redact(uri: str) -> str:
    """A URI without credentials (s3://KEY:SECRET@bucket -> s3://***@bucket)."""
    return re.sub(r"//[^/@]+@", "//***@", uri)


def _filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    protocol = fsspec.core.split_protocol(uri)[0] or "file"
    options = {}
    if protocol in ("s3", "s3a") and "config_kwargs" not in fsspec.config.conf.get("s3", {}):
        options["config_kwargs"] = S3_CONFIG
    fs, root = fsspec.core.url_to_fs(uri, **options)
    if protocol in ("s3", "s3a"):
        fs.retries = S3_TRIES  # s3fs reads this attribute; it has no constructor argument for it
    return fs, root


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint_of(manifest: dict) -> str:
    """What a stage records of a complete input: the digest of its `_SUCCESS` manifest."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def partial_name(name: str) -> str:
    """The name to write the file `name` (or path) under until it is complete, then renamed to
    `name`: unique, so processes never write into each other's, and one that no listing here
    stages, publishes or fetches (`is_partial`)."""
    return f"{name}{PARTIAL}{uuid.uuid4().hex[:8]}"


def is_partial(name: str) -> bool:
    """Whether a file name is that of a file still being written: `partial_name`'s, or the
    `.partial` suffix build_shards used before, which staging folders of older runs may still hold."""
    return PARTIAL in name or name.endswith(".partial")


def below(relative: str, name: str) -> str:
    """`name` inside the artifact directory `relative` ("" is the store's root)."""
    return posixpath.join(relative, name) if relative else name


def cache_entry(cache: Path, relative: str, recorded: dict) -> Path:
    """Where a cache folder keeps its verified copy of the artifact `relative` whose `_SUCCESS`
    lists the files `recorded`: <cache>/<relative>/<key>, the key a digest of every file's name,
    size and SHA-256, so a republished artifact with other content gets another entry (and one with
    the same content, wherever it lies, the same)."""
    key = hashlib.sha256(json.dumps(recorded, sort_keys=True).encode()).hexdigest()[:32]
    return cache / relative / key


def writable(cache: Path) -> Path:
    """The cache folder, made if missing; refused in one line when this user cannot write there (a
    local folder of the user's, not the object store: a PermissionError here is no outage)."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        if not os.access(cache, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as error:
        raise ConfigError(f"CACHE_DIR {cache}: this user cannot write there ({error.strerror or error}); set "
                          "CACHE_DIR to a folder it can write, or to 'off'") from None
    return cache


def _cached(path: Path, entry: tuple[int, str] | None) -> bool:
    """Whether a cache entry holds a file under its own name, and of its recorded size: it was
    verified when it came (a file is renamed to its name only then), so it is not hashed again."""
    return entry is not None and path.is_file() and path.stat().st_size == entry[0]


class Store:
    """The files below one URI (ARTIFACTS_URI, or a folder of the user's): read, fetch, publish."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/") or uri
        self.fs, self.root = _filesystem(self.uri)
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def path(self, relative: str) -> str:
        return posixpath.join(self.root, relative) if relative else self.root

    def url(self, relative: str = "") -> str:
        return redact(f"{self.uri}/{relative}" if relative else self.uri)

    def check_reachable(self) -> None:
        """Fail fast on a missing bucket, missing credentials or a dead endpoint, before any work."""
        if self.is_local:
            return
        bucket = self.root.split("/", 1)[0]
        self.fs.ls(bucket, refresh=True)  # FileNotFoundError when the bucket does not exist

    def exists(self, relative: str) -> bool:
        return self.fs.exists(self.path(relative))

    def read_bytes(self, relative: str) -> bytes:
        return self.fs.cat_file(self.path(relative))

    def read_json(self, relative: str) -> dict | list | None:
        try:
            return json.loads(self.read_bytes(relative))
        except FileNotFoundError:
            return None

    def manifest(self, relative: str) -> dict | None:
        """The `_SUCCESS` manifest of a complete output, or None."""
        return self.read_json(below(relative, SUCCESS))

    def fetch(self, relative: str, destination: Path, remedy: str) -> Path:
        """Copy a complete artifact directory to `destination` and check every file against the
        sizes and checksums its `_SUCCESS` recorded (`remedy` says what to do when one differs). A
        copy, also from a local path: a stage that writes into its input must not change an
        artifact already marked complete."""
        recorded = (self.manifest(relative) or {}).get("files")
        if recorded is None:
            raise ConfigError(f"input {self.url(relative)}: its {SUCCESS} lists no files to verify: {remedy}")
        destination.mkdir(parents=True, exist_ok=True)
        self._download(relative, destination)
        for name, entry in recorded.items():
            self._verify(destination / name, entry, below(relative, name), remedy)
        return destination

    def fetch_file(self, relative: str, name: str, recorded: dict, destination: Path, remedy: str) -> Path:
        """One file of a complete artifact, checked against the size and checksum its `_SUCCESS`
        recorded (`recorded`, that manifest's files): read where it lies in a local store (never
        written to), else copied to `destination`. For an artifact read a file at a time (the
        index's shards)."""
        source = self.path(below(relative, name))
        path = Path(source) if self.is_local else destination
        if not self.is_local and self.fs.exists(source):
            destination.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(source, str(destination))
        self._verify(path, recorded.get(name), below(relative, name), remedy)
        return path

    def fetch_cached(self, relative: str, cache: Path, remedy: str) -> Path:
        """`fetch` through a cache folder: the artifact's copy in `cache` (`cache_entry`), every
        file checked against its `_SUCCESS` as `fetch` checks them when it first comes, and returned
        as it is, neither downloaded nor hashed, by every later fetch of the same version. The
        entry counts as complete only once a marker (VERIFIED, beside it) is written after the
        last file is verified; a fetch finding no marker (an interrupted one) fetches what is
        missing again, each file under a partial name until it is verified. Its files are made
        read-only: nothing may write into a copy that is never checked again."""
        recorded = (self.manifest(relative) or {}).get("files")
        if recorded is None:
            raise ConfigError(f"input {self.url(relative)}: its {SUCCESS} lists no files to verify: {remedy}")
        entry = cache_entry(writable(cache), relative, recorded)
        marker = entry.with_name(entry.name + VERIFIED)
        missing = [name for name in recorded if not _cached(entry / name, recorded[name])]
        if marker.is_file() and not missing:
            return entry
        self._fill(relative, entry, missing, recorded, set(self._files(relative)), remedy)
        entry.mkdir(parents=True, exist_ok=True)  # an artifact of no files has an entry too
        partial = marker.with_name(partial_name(marker.name))
        partial.write_text(json.dumps({"source": self.url(relative), "files": recorded}, indent=2))
        os.replace(partial, marker)
        return entry

    def fetch_file_cached(self, relative: str, name: str, recorded: dict, cache: Path, remedy: str) -> Path:
        """One file of an artifact through a cache folder (`fetch_cached`'s entry): verified when it
        first comes, then read from there without download or checksum; for an artifact read a file
        at a time (the index's shards)."""
        entry = cache_entry(writable(cache), relative, recorded)
        if not _cached(entry / name, recorded.get(name)):
            listed = {name} if name in recorded and self.fs.exists(self.path(below(relative, name))) else set()
            self._fill(relative, entry, [name], recorded, listed, remedy)
        return entry / name

    def _fill(self, relative: str, entry: Path, names: list[str], recorded: dict, listed: set[str],
              remedy: str) -> None:
        """Put the files `names` of an artifact into its cache entry: downloaded (those the store
        lists, `listed`) under partial names, each verified as `fetch` verifies it, then made
        read-only and renamed to its name; a missing or changed one is refused as `fetch` refuses
        it, and leaves nothing under its name. A partial file of a killed fetch (not written for
        ABANDONED_S) goes."""
        partials = {name: entry / partial_name(name) for name in names}
        for name, partial in partials.items():
            partial.parent.mkdir(parents=True, exist_ok=True)
            for left in partial.parent.glob(f"{glob.escape(Path(name).name)}{PARTIAL}*"):
                with suppress(OSError):  # one another fetch is writing is younger; one gone meanwhile, no matter
                    if time.time() - left.stat().st_mtime > ABANDONED_S:
                        left.unlink()
        wanted = [name for name in names if name in listed]
        try:
            if wanted:
                self.fs.get([self.path(below(relative, name)) for name in wanted],
                            [str(partials[name]) for name in wanted])
            for name, partial in partials.items():
                self._verify(partial, recorded.get(name), below(relative, name), remedy)
                partial.chmod(0o444)
                os.replace(partial, entry / name)
        finally:
            for partial in partials.values():
                partial.unlink(missing_ok=True)

    def _verify(self, path: Path, entry: tuple[int, str] | None, relative: str, remedy: str) -> None:
        """Refuse a file that is missing, or whose size or SHA-256 differs from its manifest `entry`."""
        if entry is None or not path.is_file() or path.stat().st_size != entry[0] or _sha256(path) != entry[1]:
            raise ConfigError(f"input {self.url(relative)} is missing, truncated or changed since {SUCCESS} was "
                              f"written: {remedy}")

    def _files(self, relative: str) -> list[str]:
        """The files below a directory (relative to it), leaving out unfinished copies and staged steps."""
        base = self.path(relative)
        if not self.fs.exists(base):
            return []
        return [posixpath.relpath(path, base) for path in self.fs.find(base)
                if not is_partial(posixpath.basename(path)) and f"/{PARTS}/" not in path[len(base):]]

    def _sizes(self, relative: str) -> dict[str, int]:
        """The size of each file below a directory (relative to it) as the store lists it now, not
        as a cached listing remembers it."""
        base = self.path(relative)
        self.fs.invalidate_cache(base)
        if not self.fs.exists(base):
            return {}
        return {posixpath.relpath(path, base): info["size"] for path, info in self.fs.find(base, detail=True).items()}

    def _download(self, relative: str, destination: Path, keep: Callable[[str], bool] | None = None) -> list[str]:
        """Copy a directory's files here, leaving out unfinished copies and staged steps (and, with
        `keep`, the files whose name it refuses)."""
        names = [name for name in self._files(relative) if keep is None or keep(name)]
        for name in names:
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
        if names:
            self.fs.get([self.path(below(relative, name)) for name in names],
                        [str(destination / name) for name in names])
        return names

    def _put(self, local: list[Path], remote: list[str]) -> None:
        if not local:
            return
        if not self.is_local:
            # Explicit file-to-file lists (a recursive directory put nests on reruns); S3 objects
            # appear whole or not at all.
            self.fs.put([str(path) for path in local], remote)
            return
        for source, target in zip(local, remote):
            # Copy beside, then rename: a killed copy never leaves a truncated file under its name.
            self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
            partial = partial_name(target)
            self.fs.put_file(str(source), partial)
            os.replace(partial, target)

    def _move(self, source: str, target: str) -> None:
        """Move a file within the store, replacing `target`."""
        if not self.is_local:
            self.fs.mv(source, target)
            return
        self.fs.makedirs(posixpath.dirname(target), exist_ok=True)  # shutil.move, fsspec's, would not
        os.replace(source, target)

    def _write_json(self, relative: str, content: dict) -> None:
        data, target = json.dumps(content, indent=2, default=str).encode(), self.path(relative)
        if not self.is_local:
            self.fs.pipe_file(target, data)
            return
        self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
        partial = partial_name(target)
        Path(partial).write_bytes(data)
        os.replace(partial, target)

    def publish(self, local_dir: Path, relative: str, manifest: dict) -> str:
        """Replace `relative` with the contents of `local_dir`, `_SUCCESS` last; the previous
        version stays complete until every new file is uploaded (Output.complete)."""
        return Output(self, relative, local_dir, stamp={}).complete(manifest)


OWNED = ".influence-jobs"  # in a user's folder: the files a stage wrote there, the only ones it may replace


def owned_files(uri: str, setting: str) -> set[str]:
    """The files a stage wrote into a folder of the user's (empty for a new or empty folder);
    refused in one line when the folder holds anything else, before any work is done."""
    return _folder_files(Store(uri), setting)[1]


def _folder_files(folder: Store, setting: str) -> tuple[list[str], set[str]]:
    """The files in a folder of the user's and those of them a stage wrote (its OWNED marker)."""
    present = folder._files("")
    marker = folder.read_json(OWNED)
    owned = set(marker.get("files", [])) if isinstance(marker, dict) else set()
    foreign = sorted(set(present) - owned - {OWNED})
    if foreign:
        raise ConfigError(f"{setting}={folder.url()}: the folder holds files this tool did not write "
                          f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); nothing is deleted there: "
                          "choose a new or empty folder")
    return present, owned


def publish_to_folder(local_dir: Path, uri: str, setting: str, manifest: dict | None = None) -> str:
    """Put the files of `local_dir` into a folder of the user's (OUTPUT_DIR, REPORT_DIR), never
    clearing it: the folder must be new, empty, or hold only files a stage wrote there before (the
    OWNED marker lists them); it is refused in one line otherwise. The marker first lists the old
    and new files (a killed run leaves nothing the next one would take for the user's), then the
    old `_SUCCESS` goes, the new files come, the old ones not written again go, and `_SUCCESS` comes
    last: from `manifest`, or `local_dir`'s own when `manifest` is None (a fetched report)."""
    folder = Store(uri)
    present, owned = _folder_files(folder, setting)
    files = {path.relative_to(local_dir).as_posix(): path for path in sorted(local_dir.rglob("*"))
             if path.is_file() and path.name != SUCCESS}
    new = set(files) | {SUCCESS}
    folder._write_json(OWNED, {"files": sorted(owned | new)})
    if SUCCESS in present:
        folder.fs.rm_file(folder.path(SUCCESS))
    folder._put(list(files.values()), [folder.path(name) for name in files])
    stale = sorted(set(present) - new - {OWNED})
    if stale:
        folder.fs.rm([folder.path(name) for name in stale])
    if manifest is None:
        folder._put([local_dir / SUCCESS], [folder.path(SUCCESS)])
    else:
        folder._write_json(SUCCESS, {**manifest, "files": {name: [path.stat().st_size, _sha256(path)]
                                                           for name, path in files.items()}})
    folder._write_json(OWNED, {"files": sorted(new)})
    return folder.url()


class Output:
    """An output directory published in steps. Each finished step (a Kronfluence partition) is
    uploaded at once to a staging folder, <output>/_parts/<hash of settings and inputs>/: a killed
    run loses only the step in progress, the shards of one run share their steps, and a run with
    other settings or inputs uses another folder, so it never picks up stale steps (nor loses its
    own to another run's `complete`, which clears only its own folder). A file still being written
    (`is_partial`) is never staged. `complete` stages the remaining files and checks every staged
    file's size on the store before it touches the output: a failed upload leaves the previous
    version complete. Only then the old `_SUCCESS` goes, the staged files move in, the old files
    not among them go, and the new `_SUCCESS` comes last."""

    def __init__(self, store: Store, relative: str, local_dir: Path, stamp: dict) -> None:
        if not relative.strip("/"):  # completing it replaces everything below it: never a whole store
            raise ValueError("an output is a directory below the store's root, not the root itself")
        self.store, self.relative, self.local_dir = store, relative, local_dir
        digest = hashlib.sha256(json.dumps(stamp, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.staging = f"{relative}/{PARTS}/{digest}"
        self.synced: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns) when staged

    def resume(self, keep: Callable[[str], bool] | None = None) -> list[str]:
        """Restore the steps that earlier runs with the same settings and inputs staged (an
        interrupted run, or the other shards); with `keep`, only the files whose name (relative to
        the output) it accepts: a pod's own (the others stay staged, for the run that completes the
        output). Returns their names."""
        if not self.store.exists(self.staging):
            return []
        self.local_dir.mkdir(parents=True, exist_ok=True)
        names = self.store._download(self.staging, self.local_dir, keep)
        self._mark_synced(names)
        return names

    def _local_files(self) -> dict[str, Path]:
        # Another process's file in the shared work folder may still be being written (build_shards).
        return {path.relative_to(self.local_dir).as_posix(): path for path in sorted(self.local_dir.rglob("*"))
                if path.is_file() and path.name != SUCCESS and not is_partial(path.name)}

    def _mark_synced(self, names: list[str]) -> None:
        for name in names:
            stat = (self.local_dir / name).stat()
            self.synced[name] = (stat.st_size, stat.st_mtime_ns)

    def _unsynced(self, files: dict[str, Path]) -> list[str]:
        return [name for name, path in files.items()
                if self.synced.get(name) != (path.stat().st_size, path.stat().st_mtime_ns)]

    def sync(self) -> list[str]:
        """Stage the files that are new or changed since the last sync."""
        files = self._local_files()
        changed = self._unsynced(files)
        self.store._put([files[name] for name in changed],
                        [self.store.path(f"{self.staging}/{name}") for name in changed])
        self._mark_synced(changed)
        return changed

    def _check_staged(self, files: dict[str, Path]) -> None:
        """Refuse to publish a file the store does not hold whole: its size as listed there must be
        the local one."""
        staged = self.store._sizes(self.staging)
        for name, path in files.items():
            if staged.get(name) != path.stat().st_size:
                self.synced.pop(name, None)  # a retry uploads it again
                raise StorageError(f"{self.store.url(f'{self.staging}/{name}')} is missing or truncated after its "
                                   "upload; the published output is unchanged; a retry may succeed", exit_code=3)

    def complete(self, manifest: dict) -> str:
        """Replace the output with the local files and write `_SUCCESS` (sizes and checksums of
        every file) last. Nothing of the previous version is touched before every file is staged
        and checked; this run's staging folder goes, other runs' stay."""
        store = self.store
        self.sync()  # the steps staged already are not uploaded again
        files = self._local_files()
        self._check_staged(files)
        target = store.path(self.relative)
        if store.fs.exists(f"{target}/{SUCCESS}"):
            # Unmark first, so a reader never sees an old _SUCCESS beside new, half-moved files.
            store.fs.rm_file(f"{target}/{SUCCESS}")
        for name in files:
            store._move(store.path(f"{self.staging}/{name}"), f"{target}/{name}")
        store.fs.invalidate_cache(target)
        # Other runs' staged steps are never part of the output, nor stale files of it.
        stale = [path for path in store.fs.find(target) if not path[len(target):].startswith(f"/{PARTS}/")
                 and posixpath.relpath(path, target) not in files]
        if stale:
            store.fs.rm(stale)
        if store.exists(self.staging):  # only leftovers of an earlier try remain in it
            store.fs.rm(store.path(self.staging), recursive=True)
        if store.is_local:
            with suppress(OSError):  # kept while it holds other runs' staging folders
                os.rmdir(store.path(below(self.relative, PARTS)))
        self.synced.clear()
        manifest = {**manifest, "files": {name: [path.stat().st_size, _sha256(path)] for name, path in files.items()}}
        store._write_json(below(self.relative, SUCCESS), manifest)
        return store.url(self.relative)


class Checkpoints:
    """Training checkpoints published under <relative>/checkpoint-<step>/, each complete with its
    own `_SUCCESS`; only the latest is kept. A rerun with the same stamp resumes from it."""

    def __init__(self, store: Store, relative: str, stamp: dict) -> None:
        self.store, self.relative, self.stamp = store, relative, stamp

    def _steps(self) -> dict[int, str]:
        base = self.store.path(self.relative)
        if not self.store.fs.exists(base):
            return {}
        names = [posixpath.basename(path.rstrip("/")) for path in self.store.fs.ls(base, detail=False)]
        return {int(name.split("-")[1]): f"{self.relative}/{name}" for name in names
                if re.fullmatch(r"checkpoint-\d+", name)}

    def latest(self) -> str | None:
        """The newest complete checkpoint made with this stamp."""
        for _, relative in sorted(self._steps().items(), reverse=True):
            manifest = self.store.manifest(relative) or {}
            if {key: manifest.get(key) for key in self.stamp} == json.loads(json.dumps(self.stamp, default=str)):
                return relative
        return None

    def publish(self, local_dir: Path) -> None:
        """Publish a checkpoint, then drop the older ones."""
        relative = f"{self.relative}/{local_dir.name}"
        self.store.publish(local_dir, relative, self.stamp)
        for _, older in self._steps().items():
            if older != relative:
                self.store.fs.rm(self.store.path(older), recursive=True)

    def clear(self) -> None:
        if self.store.exists(self.relative):
            self.store.fs.rm(self.store.path(self.relative), recursive=True)


def read_uri(uri: str, setting: str) -> bytes:
    """The bytes of a single file given by path or URL (e.g. the prompts file)."""
    try:
        with fsspec.open(uri, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise ConfigError(f"{setting}={redact(uri)}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{setting}={redact(uri)}: is a directory, expected a file") from None


def download_directory(uri: str, destination: Path) -> Path:
    """Copy every file below a directory URL (any fsspec URL) to `destination`."""
    destination.mkdir(parents=True, exist_ok=True)
    Store(uri)._download("", destination)
    return destination


# Failures on the way to a server, by class name anywhere in an exception's chain: the builtin
# ConnectionError and TimeoutError, botocore's connection errors, httpx's (the Hugging Face Hub's
# client) TransportError, aiohttp's (s3fs's) ClientConnectionError, a DNS lookup's gaierror.
TRANSIENT = {"ConnectionError", "TimeoutError", "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
             "TransportError", "TimeoutException", "ClientConnectionError", "ServerDisconnectedError", "gaierror"}
RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}


def is_transient(error: BaseException) -> bool:
    """Whether an error, or one it was raised from, is a network failure or a server's temporary
    refusal (HTTP 429 or 5xx): worth a retry, unlike bad input."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if any(cls.__name__ in TRANSIENT for cls in type(error).__mro__):
            return True
        if getattr(getattr(error, "response", None), "status_code", None) in RETRYABLE_STATUS:
            return True
        error = error.__cause__ or error.__context__
    return False


def unreachable(what: str, error: BaseException) -> StorageError:
    """The one line for a transient failure to read `what` (exit 3: worth a retry)."""
    reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    return StorageError(f"cannot reach {what} ({reason}); a retry may succeed", exit_code=3)


def describe_failure(error: BaseException) -> StorageError | None:
    """A one-line StorageError for failures of the object store (unreachable endpoint, missing
    bucket or credentials, access denied) or any other transient network failure, or None for any
    other error."""
    try:
        from botocore import exceptions as boto
    except ImportError:  # no S3 support installed: nothing of botocore's can have failed
        boto = None
    endpoint = os.environ.get("FSSPEC_S3_ENDPOINT_URL", "the default AWS endpoint")
    if boto and isinstance(error, (boto.NoCredentialsError, boto.PartialCredentialsError)):
        return StorageError("no credentials for the object store: set AWS_ACCESS_KEY_ID and "
                            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or workload identity", exit_code=2)
    if boto and isinstance(error, (boto.EndpointConnectionError, boto.ConnectTimeoutError, boto.ReadTimeoutError)):
        return StorageError(f"cannot reach the object store at {endpoint} after {S3_TRIES} tries "
                            f"({type(error).__name__}); check FSSPEC_S3_ENDPOINT_URL and the network", exit_code=3)
    message = str(error).lower()
    if (boto and isinstance(error, boto.ClientError)) or (
        isinstance(error, (FileNotFoundError, PermissionError)) and ("bucket" in message or "denied" in message)
    ):
        return StorageError(f"object store error at {endpoint}: {str(error).splitlines()[0][:300]}", exit_code=2)
    if is_transient(error):
        return unreachable("a server", error)
    return None


def content_digest(uri: str, names: list[str] | None = None) -> str:
    """A digest of what a file or a folder (any fsspec URL) holds: the SHA-256 of each file's bytes,
    or, in an object store, its ETag (which changes with the content), by relative name. `names`
    (glob patterns) limits a folder to those files."""
    fs, root = _filesystem(uri)
    if any(character in root for character in "*?["):  # a glob of data files
        paths = {path: path for path in fs.glob(root)}
    elif fs.isfile(root):
        paths = {posixpath.basename(root): root}
    else:
        paths = {posixpath.relpath(path, root): path for path in fs.find(root)
                 if names is None or any(fnmatch.fnmatch(posixpath.basename(path), pattern) for pattern in names)}
    if not paths:
        raise FileNotFoundError(uri)
    digest = hashlib.sha256()
    for name, path in sorted(paths.items()):
        if isinstance(fs, LocalFileSystem):
            value = _sha256(Path(path))
        else:
            value = str(fs.info(path).get("ETag") or hashlib.sha256(fs.cat_file(path)).hexdigest())
        digest.update(f"{name}\0{value}\0".encode())
    return digest.hexdigest()


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
