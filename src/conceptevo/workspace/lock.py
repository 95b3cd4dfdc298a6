"""One writer at a time: an advisory lock on a workspace.

Every command that writes a workspace from a study config (``build``, ``stimuli``, ``train``,
``importance``, ``evaluate``, ``diagnose``, ``demo``) holds the workspace's lock while it runs;
a second one waits for it (saying who holds it), then runs on the workspace the first one
left, so two builds with different configs never interleave their artifacts. Creating a
workspace takes the lock for a moment too, so that two processes creating one workspace at
once both succeed.

The lock is the operating system's (``flock`` through the ``filelock`` package) on
``<workspace>/.conceptevo.lock``: it dies with its process, so a killed writer never leaves a
stale lock behind. Readers (``serve``, ``report``, ``export``) take no lock: every file is
replaced atomically, so they see whole artifacts. A live :class:`~conceptevo.Monitor` takes
no workspace lock either (it must never stall a training loop); it writes its own run's
files, and the shared ``diagnosis.json`` is updated under a short lock of its own
(:func:`file_lock`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import filelock

from ..errors import WorkspaceError

log = logging.getLogger("conceptevo")
LOCK_FILE = ".conceptevo.lock"
OWNER_FILE = ".conceptevo.lock.json"
#: files of the lock, which do not make a directory a non-empty non-workspace
LOCK_FILES = (LOCK_FILE, OWNER_FILE)


def _lock(path: Path) -> filelock.FileLock:
    # one object per path and process, re-entrant: a command that opens its workspace twice
    # (or creates it while holding its lock) does not wait for itself
    return filelock.FileLock(str(path), is_singleton=True, thread_local=False)


def _owner(root: Path) -> str:
    try:
        import json

        info = json.loads((root / OWNER_FILE).read_text(encoding="utf-8"))
        return (f"pid {info.get('pid')} ({info.get('command', '?')}, since "
                f"{info.get('since', '?')})")
    except (OSError, ValueError, AttributeError):
        return "another process"


def _is_main_rank() -> bool:
    """Under torchrun only rank 0 writes the workspace, so only it takes the lock."""
    return os.environ.get("RANK", "0") in ("", "0")


@contextmanager
def workspace_lock(root: str | os.PathLike, command: str = "",
                   timeout: float | None = None) -> Iterator[None]:
    """Hold the write lock of the workspace ``root`` (created when missing) while active.

    Waits for another holder (logging who it is once) up to ``timeout`` seconds (None:
    as long as it takes; Ctrl-C stops the wait), then raises a
    :class:`~conceptevo.errors.WorkspaceError`."""
    if not _is_main_rank():
        yield
        return
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise WorkspaceError(f"workspace path {root} is a file, not a directory; choose a "
                             "directory for the workspace")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        from .atomic import write_error

        raise write_error(root, e) or WorkspaceError(
            f"cannot create the workspace directory {root}: {e}") from e
    lock = _lock(root / LOCK_FILE)
    held_before = lock.is_locked
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        log.warning("workspace %s is being written by %s; waiting for it (Ctrl-C to stop)",
                    root, _owner(root))
        start = time.monotonic()
        try:
            lock.acquire(timeout=-1 if timeout is None else timeout)
        except filelock.Timeout:
            raise WorkspaceError(f"workspace {root} is still being written by {_owner(root)} "
                                 f"after {time.monotonic() - start:.0f} s; try again when it "
                                 "is done") from None
    except OSError as e:
        raise WorkspaceError(f"cannot lock workspace {root}: {e}") from None
    try:
        if not held_before:
            _write_owner(root, command)
        yield
    finally:
        if not held_before:
            (root / OWNER_FILE).unlink(missing_ok=True)
        lock.release()


def _write_owner(root: Path, command: str) -> None:
    import json

    info = {"pid": os.getpid(), "command": command or " ".join(sys.argv[:2]),
            "since": datetime.now(UTC).isoformat(timespec="seconds")}
    try:
        (root / OWNER_FILE).write_text(json.dumps(info), encoding="utf-8")
    except OSError:
        pass  # only informative


@contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """A short lock for one read-modify-write of ``path`` (its lock file is ``path.lock``)."""
    lock = _lock(Path(f"{path}.lock"))
    with lock:
        yield
