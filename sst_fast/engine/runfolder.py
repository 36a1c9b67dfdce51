"""A run folder's owner and identity: one writing process at a time, and checkpoints that belong to it.

**Ownership.** A process that trains into a run folder holds an OS file lock on ``<run>/.lock``
(``flock`` on POSIX, ``msvcrt.locking`` on Windows) from the start of the run to its end. The
operating system releases the lock whenever the process ends, however it ends, so a crashed or killed
run leaves no stale lock behind: the file stays, the lock does not. A second process that finds the
lock held refuses to start and names the holder (its pid, host and start time, which the holder writes
into the file). Under torchrun only rank 0 takes the lock; the other ranks write nothing.

**Identity.** A new run draws a random run id, writes it into the folder (``version.json``) and into
every checkpoint. A resume accepts ``checkpoints/last.pt`` only when its id is the folder's: a
checkpoint copied in from another run is refused, so it can never replace ``best.pt`` or leave
``config.yaml`` describing another run. Checkpoints from before run ids existed are accepted when their
configuration is the folder's ``config.yaml`` (up to the settings a resume may change).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path

from ..files import strict_json, write_json_atomic
from .runconfig import ConfigError

LOCK_NAME = ".lock"
VERSION_NAME = "version.json"


class RunFolderBusy(ConfigError):
    """Another live process holds the run folder."""


class RunLock:
    """The exclusive lock on a run folder (created if missing). ``acquire`` never waits: it takes the lock or
    raises :class:`RunFolderBusy`; ``release`` (idempotent) lets the next process in."""

    def __init__(self, folder) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> RunLock:
        if self._file is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            file = open(self.path, "a+")  # held open for as long as the lock is
            if not _try_lock(file):
                holder = _read_holder(self.path)
                file.close()
                raise RunFolderBusy(
                    f"run_dir: {self.folder} is in use by another process{holder}; wait for it to finish, "
                    "or choose another folder"
                )
            # The file may have been removed (and another one made) between our open and our lock: retry on it.
            try:
                same = os.stat(self.path).st_ino == os.fstat(file.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            file.close()
        file.seek(0)
        file.truncate()
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        file.write(strict_json(holder, indent=None))
        file.flush()
        self._file = file
        return self

    def release(self) -> None:
        if self._file is None:
            return
        file, self._file = self._file, None
        _unlock(file)
        file.close()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *_exc) -> None:
        self.release()


def new_run_id() -> str:
    return uuid.uuid4().hex


def _version_record(folder) -> dict:
    """The folder's ``version.json`` as a dict ({} when it is missing or not a JSON object)."""
    try:
        record = json.loads((Path(folder) / VERSION_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def folder_run_id(folder) -> str | None:
    """The run id recorded in ``folder`` (None for a folder without one, e.g. a run from before run ids)."""
    value = _version_record(folder).get("run_id")
    return value if isinstance(value, str) else None


def record_run_id(folder, run_id: str) -> None:
    """Write ``run_id`` into the folder's ``version.json`` (keeping what else it records)."""
    write_json_atomic(Path(folder) / VERSION_NAME, {**_version_record(folder), "run_id": run_id})


def check_belongs(folder, state: dict, saved: dict, resumable: tuple[str, ...]) -> str:
    """The run id a resume of ``folder`` from checkpoint ``state`` continues, or a :class:`ConfigError` when
    the checkpoint belongs to another run. ``saved``: the checkpoint's configuration as read today;
    ``resumable``: the ``section.key`` settings a resume may change (they may differ from config.yaml)."""
    folder = Path(folder)
    path = state.get("path", "checkpoints/last.pt")
    theirs, ours = state.get("run_id"), folder_run_id(folder)
    if theirs is not None and ours is not None:
        if theirs != ours:
            raise ConfigError(
                f"resume: {path} belongs to another run (run id {theirs[:12]}, this folder's is {ours[:12]}): "
                "it was copied in from elsewhere; start a new run folder for it"
            )
        return ours
    # A checkpoint (or a folder) from before run ids: accept it when it was trained with this folder's config.
    config_file = folder / "config.yaml"
    if config_file.exists():
        from .runconfig import RunConfig, load_run_config

        try:
            folder_config = load_run_config(config_file).to_dict()
            trained = RunConfig.from_dict(saved).to_dict()  # every default written out, as in config.yaml
        except ConfigError as error:
            raise ConfigError(f"resume: {config_file} does not describe {path} ({error})") from None
        differ = _differences(trained, folder_config, resumable)
        if differ:
            raise ConfigError(
                f"resume: {path} was not trained with {config_file} (they differ in {', '.join(differ[:5])}): "
                "it belongs to another run; start a new run folder for it"
            )
    return theirs or ours or new_run_id()


def _differences(a: dict, b: dict, ignored: tuple[str, ...]) -> list[str]:
    keys = []
    for section in sorted(set(a) | set(b)):
        left, right = a.get(section) or {}, b.get(section) or {}
        for key in sorted(set(left) | set(right)):
            name = f"{section}.{key}"
            if name not in ignored and left.get(key) != right.get(key):
                keys.append(name)
    return keys


def _read_holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return ""
    if not isinstance(holder, dict) or "pid" not in holder:
        return ""
    return f" (pid {holder['pid']} on {holder.get('host', '?')}, since {holder.get('since', '?')})"


if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(file) -> bool:
        file.seek(0)
        try:
            msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(file) -> None:
        file.seek(0)
        try:
            msvcrt.locking(file.fileno(), msvcrt.LK_UNLCK, 1)
        except OSError:
            pass

else:
    import fcntl

    def _try_lock(file) -> bool:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(file) -> None:
        fcntl.flock(file.fileno(), fcntl.LOCK_UN)
