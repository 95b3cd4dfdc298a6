"""Reading a workspace that may be written while it is read (a build, a live monitor): a
file cache keyed by each file's identity, and answers computed from one state of the
workspace (:meth:`ConsistentReader.consistent`), never from files of two moments."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from ..errors import WorkspaceError
from ..workspace import Workspace

#: the trees whose files the payloads are read from; ``patches/`` (which the server writes
#: itself) and the probe images' source folders are not watched
WATCHED = ("probe", "runs", "stimuli", "space", "importance", "evaluation")
QUIET = 0.05           # an answer starts once the workspace has been unchanged this long (s),
SETTLE_LIMIT = 0.2     # waiting for that at most this long (s) per request
ANSWER_LIMIT = 2.0     # an answer that is never consistent: 503 after this long (s)
T = TypeVar("T")


class BadRequest(ValueError):
    """A request parameter is invalid; the message says which and why (HTTP 400/404)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class WorkspaceChanging(WorkspaceError):
    """No answer could be computed from one state of the workspace within ``ANSWER_LIMIT``
    seconds: a build or a monitor is rewriting it. The server answers 503 with
    ``Retry-After: RETRY_AFTER`` (seconds)."""

    RETRY_AFTER = 1


def _stamp(path: Path) -> tuple[int, int, int]:
    """What identifies one version of a file: inode, modification time and size (an atomic
    rewrite is a new file, so its inode differs even within the clock's granularity)."""
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


def _entries(directory: Path, recursive: bool) -> Iterator[tuple[str, os.stat_result]]:
    """(path, lstat) of every entry below ``directory`` (links are not followed, unreadable
    directories are skipped)."""
    try:
        with os.scandir(directory) as it:
            found = list(it)
    except OSError:
        return
    for entry in found:
        try:
            yield entry.path, entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if recursive and entry.is_dir(follow_symlinks=False):
            yield from _entries(Path(entry.path), True)


class ConsistentReader:
    """The base of the dashboard's data: ``ws``, a thread-safe file cache and consistent
    answers. A subclass's ``_cached(path, load)`` answers note the files they read."""

    def __init__(self, root: str | Path):
        self.ws = Workspace(root)
        self._lock = threading.Lock()
        self._files: dict[Path, tuple[int, object]] = {}
        self._seen = (self.version(), time.monotonic())  # the last token seen, and since when
        self._local = threading.local()  # .used: {path: stamp} read by this thread's answer

    def _cached(self, path: Path, load):
        """``load()``, cached until the file at ``path`` changes (a build or a live monitor
        may rewrite it while the server runs). A missing file is a 404; one that is not a
        regular file inside the workspace (a link out, a FIFO) a
        :class:`~conceptevo.errors.CorruptArtifactError`, before anything opens it."""
        try:
            stamp = _stamp(self.ws.contained(path))
        except FileNotFoundError:
            raise BadRequest(f"{path.name} is missing from the workspace", 404) from None
        self._used(path, stamp)
        with self._lock:
            hit = self._files.get(path)
            if hit is not None and hit[0] == stamp:
                return hit[1]
        value = load()
        with self._lock:
            if len(self._files) > 512:
                self._files.clear()
            self._files[path] = (stamp, value)
        return value

    def version(self) -> str:
        """A token that changes whenever a file the payloads are read from is added, removed
        or rewritten, and while one is being written (its temporary file grows): a hash of
        the path, inode, modification time and size of every entry of the workspace's top
        level and of the ``WATCHED`` trees."""
        digest = hashlib.blake2b(digest_size=12)
        root = self.ws.root
        entries = [e for e in _entries(root, False) if Path(e[0]).name != "patches"]
        for name in WATCHED:
            entries.extend(_entries(root / name, True))
        for path, st in sorted(entries):
            digest.update(f"{path}\0{st.st_ino}\0{st.st_mtime_ns}\0{st.st_size}\n".encode())
        return digest.hexdigest()

    def consistent(self, answer: Callable[..., T], *args) -> T:
        """``answer(*args)``, computed from one state of the workspace, never from files
        of two moments.

        It starts once the workspace has been unchanged for ``QUIET`` seconds (files that a
        writer writes one after the other, less than that apart, are then all in place),
        waiting at most ``SETTLE_LIMIT``, and it is accepted, or its error raised, when the
        workspace did not change while it was computed. When the workspace never stood still
        (a monitor writing all the time), it is accepted when none of the files it was
        computed from changed meanwhile (it shows the workspace as it was at its end). A
        rejected answer is computed again; after ``ANSWER_LIMIT`` seconds,
        :class:`WorkspaceChanging` (503, retry)."""
        deadline = time.monotonic() + ANSWER_LIMIT
        still = self._settle()
        while True:
            before = self.version()
            self._local.used = used = {}
            try:
                value, error = answer(*args), None
            except Exception as e:
                value, error = None, e
            finally:
                self._local.used = None
            if (self.version() == before) if still else self._unchanged(used):
                if error is not None:
                    raise error
                return value
            if time.monotonic() > deadline:
                raise WorkspaceChanging(
                    f"the workspace {self.ws.root} changed while this request was answered, "
                    f"for {ANSWER_LIMIT:g} s (a build or a monitor is writing it); retry in a "
                    "moment")
            still = still and self._settle()

    def _settle(self) -> bool:
        """Wait until the version token has been the same for ``QUIET`` seconds (at most
        ``SETTLE_LIMIT``); whether it was."""
        deadline = time.monotonic() + SETTLE_LIMIT
        while True:
            token, now = self.version(), time.monotonic()
            with self._lock:
                if self._seen[0] != token:
                    self._seen = (token, now)
                still = now - self._seen[1]
            if still >= QUIET:
                return True
            if now + QUIET - still > deadline:
                return False
            time.sleep(QUIET - still)

    def _used(self, path: Path, stamp) -> None:
        """Note that the answer being computed in this thread read ``path`` at ``stamp``."""
        used = getattr(self._local, "used", None)
        if used is not None:
            used.setdefault(path, stamp)

    def _unchanged(self, used: dict) -> bool:
        return all(self._file_stamp(path) == stamp for path, stamp in used.items())

    def _file_stamp(self, path: Path):
        try:
            return _stamp(path)
        except OSError:
            return None
