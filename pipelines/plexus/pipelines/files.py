"""Small atomic file writes shared by the jobs: write to a temporary name, then rename."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object at `path`, or {} when there is no such file."""
    return json.loads(path.read_text()) if path.is_file() else {}


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as JSON so that `path` is either absent, the old file or the whole new one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)


def remove_stale_temporaries(folder: Path, prefix: str) -> list[Path]:
    """Remove `folder/<prefix><pid>` entries whose writer process is gone (a killed job's
    half-written output); returns what was removed. Entries of live processes are kept."""
    removed = []
    for entry in folder.glob(f"{prefix}*") if folder.is_dir() else ():
        pid = entry.name.removeprefix(prefix)
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running: not ours to remove
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # another user's live process
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


STORAGE_ERRNOS = {
    errno.ENOSPC: "the disk is full: free space there, or point output= at another disk",
    errno.EDQUOT: "the disk quota is used up: free space there, or point output= elsewhere",
    errno.EROFS: "the file system is read-only: point output= at a writable folder",
    errno.EACCES: "permission denied: point output= at a folder you can write",
}


def with_errno(exc: OSError, path: Path | str) -> OSError:
    """`exc` with its errno and `path`: polars' (Rust's) I/O errors carry the errno only in their
    text ("No space left on device (os error 28)"), so `storage_error` would not know them."""
    found = re.search(r"\(os error (\d+)\)", str(exc))
    if exc.errno is not None or found is None:
        return exc
    code = int(found.group(1))
    return OSError(code, os.strerror(code), str(path))


def storage_error(exc: BaseException | None) -> OSError | None:
    """The full, read-only or forbidden disk behind `exc`, if that is what failed: `exc` itself,
    its causes, or (Ray Train) the exceptions of its failed workers; None for other errors."""
    todo, seen = [exc], set()
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in STORAGE_ERRNOS:
            return current
        if type(current).__name__ == "OperationalError":  # sqlite3's, or SQLAlchemy's around it
            code = next((c for text, c in _SQLITE_STORAGE.items() if text in str(current)), None)
            if code is not None:
                return OSError(code, os.strerror(code), _sqlite_store())
        todo += [current.__cause__, current.__context__]
        todo += list(getattr(current, "worker_failures", {}).values())
    return None


# What SQLite says when the MLflow store's disk cannot take a write (no OSError behind it).
_SQLITE_STORAGE = {
    "database or disk is full": errno.ENOSPC,
    "attempt to write a readonly database": errno.EROFS,
}


def _sqlite_store() -> str:
    """The SQLite MLflow store's path (from the tracking URI in use), for the error message."""
    import sys

    mlflow = sys.modules.get("mlflow")
    uri = mlflow.get_tracking_uri() if mlflow else os.environ.get("MLFLOW_TRACKING_URI", "")
    where = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:") else "the MLflow store"
    return f"{where} (the MLflow store: tracking.uri)"
