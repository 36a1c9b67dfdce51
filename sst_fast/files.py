"""File helpers every layer uses: atomic writes (a crash leaves the old file or the new one, never half), strict
JSON (NaN as null), a canonical JSON digest, and the cache folder. The ground floor: imports nothing of sst_fast."""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from pathlib import Path

def default_cache_dir() -> Path:
    """``$SST_FAST_CACHE``, else ``$XDG_CACHE_HOME/sst_fast``, else ``~/.cache/sst_fast``."""
    if os.environ.get("SST_FAST_CACHE"):
        return Path(os.environ["SST_FAST_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sst_fast"


def first_missing(path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what ``mkdir(parents=True)`` would create), or
    None: what to remove again when the work that made it fails."""
    path = Path(path)
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none): what a one-line report in
    parentheses quotes, e.g. why a file could not be read or written."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def sha256_json(payload) -> str:
    """SHA-256 of a JSON-able value in canonical form (sorted keys, no spaces): equal content, equal hash."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def strict_json(value, indent: int | None = 1, **options) -> str:
    """``value`` as strict JSON (RFC 8259): NaN and ±inf, which ``json.dumps`` writes as bare ``NaN`` and
    ``Infinity`` (not JSON), become ``null``; tuples become lists. ``options`` go to ``json.dumps``
    (``sort_keys``, ``separators``, ``default``). Every JSON file the project writes goes through it."""
    return json.dumps(_finite_or_none(value), indent=indent, allow_nan=False, **options)


def write_json_atomic(path: Path, value) -> Path:
    """:func:`strict_json` of ``value`` written atomically (:func:`write_text_atomic`), with a final newline."""
    return write_text_atomic(path, strict_json(value) + "\n")


def _finite_or_none(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    return value


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers never see half a file."""
    return write_atomic(path, lambda file: file.write(text.encode()))


def write_atomic(path, write) -> Path:
    """Call ``write(binary_file)`` on a temporary file next to ``path``, sync it to disk, then rename it
    over ``path``: a crash at any point leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name opened with "x" (not mkstemp): the file gets the usual umask permissions, not 0600.
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "xb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)
    return path


def _sync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
