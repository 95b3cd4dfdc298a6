"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Each writer fills a temporary file in the destination directory, flushes it to disk, then
renames it over the destination with ``os.replace`` (atomic on POSIX and Windows). If
anything fails (an exception, a full disk, a kill) the temporary file is removed or, after a
SIGKILL, left with a ``.tmp-`` name that readers ignore and :func:`clean_temporaries` sweeps.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

TMP_MARK = ".tmp-"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}{TMP_MARK}{os.getpid()}-", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def write_npz(path: str | os.PathLike, **arrays) -> None:
    """``np.savez`` (uncompressed: members can be memory-mapped-fast to read) atomically."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes(path, buf.getvalue())


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def read_json(path: str | os.PathLike):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_temporaries(root: str | os.PathLike) -> int:
    """Remove temporary files left by writers that died; returns how many.

    A temporary file carries its writer's process id, so files of writers still running
    (a monitor next to a build) are left alone.
    """
    removed = 0
    for p in Path(root).rglob(f"*{TMP_MARK}*"):
        pid_text = p.name.split(TMP_MARK, 1)[1].split("-", 1)[0]
        if p.is_file() and pid_text.isdigit() and not _pid_alive(int(pid_text)):
            p.unlink(missing_ok=True)
            removed += 1
    return removed
