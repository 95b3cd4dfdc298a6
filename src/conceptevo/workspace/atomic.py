"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Each writer fills a temporary file in the destination directory, flushes it to disk, then
renames it over the destination with ``os.replace`` (atomic on POSIX and Windows). If
anything fails (an exception, a full disk, a kill) the temporary file is removed or, after a
SIGKILL, left with a ``.tmp-`` name that readers ignore and :func:`clean_temporaries` sweeps.
A write that the system refuses (a full disk, a read-only or unwritable directory) raises a
:class:`~conceptevo.errors.WorkspaceError` naming the file; the previous version of the file,
if any, is left intact.
"""

from __future__ import annotations

import errno
import io
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import WorkspaceError

TMP_MARK = ".tmp-"

# errors of the file system, not of the data: reported as a WorkspaceError saying what to do
_WRITE_ERRORS = {
    getattr(errno, "EDQUOT", errno.ENOSPC):
        "the disk quota is exceeded; free some space (or choose a workspace on another disk) "
        "and run the command again",
    errno.ENOSPC: "the disk is full; free some space (or choose a workspace on another disk) "
                  "and run the command again",
    errno.EFBIG: "the file is too large for this file system; choose a workspace on another "
                 "file system",
    errno.EROFS: "the file system is read-only; choose a writable workspace directory",
    errno.EACCES: "permission denied; make the workspace writable (chmod/chown) or choose "
                  "another directory",
    errno.EPERM: "permission denied; make the workspace writable (chmod/chown) or choose "
                 "another directory",
}


def write_error(path: Path, error: OSError) -> WorkspaceError | None:
    """A :class:`WorkspaceError` that says why ``path`` could not be written and what to do,
    for the errors of the file system in ``_WRITE_ERRORS`` (None for other errors)."""
    advice = _WRITE_ERRORS.get(error.errno)
    if advice is None:
        return None
    reason = error.strerror or os.strerror(error.errno)
    return WorkspaceError(f"cannot write {path}: {reason}. The file was not changed (its "
                          f"previous version, if any, is intact): {advice}")


def _umask() -> int:
    """The process's file-creation mask, read without changing it where the system allows
    (Linux's /proc); elsewhere set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{path.name}{TMP_MARK}{os.getpid()}-",
                                   dir=path.parent)
    except OSError as e:
        if (err := write_error(path, e)) is None:
            raise
        raise err from e
    tmp = Path(tmp)
    try:
        # mkstemp creates 0600: a new file gets the mode any other new file would (the
        # umask's), a rewritten one keeps its own
        try:
            mode = path.stat().st_mode & 0o777
        except OSError:
            mode = 0o666 & ~_umask()
        os.fchmod(fd, mode)
    except OSError:
        pass
    finally:
        os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and (err := write_error(path, e)) is not None:
            raise err from e
        raise


def reserve(path: str | os.PathLike) -> None:
    """Allocate the disk blocks of a (sparse) file of its current size now, so that a full disk
    is an ``OSError`` here rather than a crash (SIGBUS) when a memory map of it is filled."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        # EINVAL, EOPNOTSUPP: this file system cannot preallocate; the file stays sparse
        if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", 0)):
            raise
    finally:
        os.close(fd)


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


def _sweep(candidates) -> int:
    removed = 0
    for p in candidates:
        pid_text = p.name.split(TMP_MARK, 1)[1].split("-", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)) and p.is_file() \
                and not p.is_symlink():
            try:
                p.unlink()
                removed += 1
            except OSError:
                pass
    return removed


def clean_temporaries(root: str | os.PathLike) -> int:
    """Remove temporary files left under ``root`` by writers that died; returns how many.

    A temporary file carries its writer's process id, so files of writers still running
    (a monitor next to a build) are left alone.
    """
    return _sweep(Path(root).rglob(f"*{TMP_MARK}*"))


def clean_temporaries_of(path: str | os.PathLike) -> int:
    """Remove the temporaries that dead writers of ``path`` left beside it (e.g. a killed
    ``conceptevo report``'s half report); other files of its directory are not looked at."""
    path = Path(path)
    if not path.parent.is_dir():
        return 0
    return _sweep(path.parent.glob(f"{glob_escape(path.name)}{TMP_MARK}*"))


def glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)
