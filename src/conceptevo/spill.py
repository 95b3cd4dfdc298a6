"""The recorded activations of a stimulus pass, streamed to a scratch file instead of kept in
memory: float32 rows [images, neurons] of one checkpoint, appended per batch and read back in
blocks (:class:`ActivationSpill`)."""

from __future__ import annotations

import os
import tempfile

import numpy as np

#: bytes of float32 activations read back at a time when the recorded pass builds its result
SPILL_READ_BYTES = 16 * 2**20


class ActivationSpill:
    """The float32 activations of a recorded pass, batch by batch, in a temporary file.

    Rows (one per image, ``n_neurons`` float32 each) are appended in arrival order with their
    image ids kept in memory (8 bytes per image). The file is anonymous
    (``tempfile.TemporaryFile``: on POSIX systems it has no name, or loses it as soon as it is
    created; on Windows it is deleted when closed), so the operating system reclaims it when
    it is closed or the process ends; :meth:`close` releases it at once. ``directory`` is
    where it lives (default: the system's temporary directory, ``TMPDIR``).

    Pickling (a shard sent to rank 0) carries the rows themselves; unpickling spills them to
    a new file in ``directory`` if it exists there, else in the default temporary directory.
    """

    def __init__(self, n_neurons: int, directory: str | os.PathLike | None = None):
        self.n_neurons = n_neurons
        self.directory = None if directory is None else str(directory)
        self._file = None
        self.records: list[np.ndarray] = []  # image ids of each appended block, in file order
        self.rows = 0

    def _open(self):
        if self._file is None:
            self._file = tempfile.TemporaryFile(dir=self.directory)
        return self._file

    @property
    def closed(self) -> bool:
        return self._file is None or self._file.closed

    def append(self, rows: np.ndarray, ids: np.ndarray) -> None:
        """Append float32 ``rows`` [b, n_neurons] of images ``ids`` [b]."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if rows.shape != (len(ids), self.n_neurons):
            raise ValueError(f"rows of shape {rows.shape} for {len(ids)} images of "
                             f"{self.n_neurons} neurons")
        if not len(ids):
            return
        f = self._open()
        f.seek(self.rows * self.n_neurons * 4)
        f.write(memoryview(rows).cast("B"))
        self.records.append(np.array(ids, dtype=np.int64))
        self.rows += len(ids)

    def blocks(self, max_rows: int | None = None):
        """Yield (image ids [r], float32 rows [r, n_neurons]) in file order, at most
        ``max_rows`` rows at a time (default: about ``SPILL_READ_BYTES``). The rows are a view
        of one buffer that the next block overwrites: use them before asking for the next."""
        if max_rows is None:
            max_rows = max(1, SPILL_READ_BYTES // (4 * max(self.n_neurons, 1)))
        if not self.rows:
            return
        f = self._file
        f.flush()
        f.seek(0)
        row_bytes = self.n_neurons * 4
        buf = np.empty((min(max_rows, max(len(r) for r in self.records)), self.n_neurons),
                       dtype=np.float32)
        for ids in self.records:
            for s in range(0, len(ids), max_rows):
                part = ids[s:s + max_rows]
                view = buf[:len(part)]
                target = memoryview(view).cast("B")
                got = 0
                while got < len(part) * row_bytes:
                    n = f.readinto(target[got:])
                    if not n:
                        raise OSError("the activations' temporary file ended early")
                    got += n
                yield part, view

    def extend(self, other: ActivationSpill) -> None:
        """Append every row of ``other`` (in its order)."""
        for ids, rows in other.blocks():
            self.append(rows, ids)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_file"] = None
        data = np.empty((self.rows, self.n_neurons), np.float32)
        start = 0
        for _, rows in self.blocks():  # (each block is a view of one reused buffer)
            data[start:start + len(rows)] = rows
            start += len(rows)
        state["_rows_data"] = data
        return state

    def __setstate__(self, state: dict) -> None:
        data = state.pop("_rows_data")
        records = state["records"]
        self.__dict__.update(state, records=[], rows=0, _file=None)
        if self.directory is not None and not os.path.isdir(self.directory):
            self.directory = None
        start = 0
        for ids in records:
            self.append(data[start:start + len(ids)], ids)
            start += len(ids)
