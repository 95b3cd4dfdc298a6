"""The dashboard's binary payload: typed arrays behind a small JSON header, for point sets
too large to send as JSON lists (a checkpoint of a million neurons: about 11 MB instead of
about 25 MB of JSON, decoded by the page without parsing a number).

Layout (every number little-endian)::

    bytes 0..3   the magic b"CEVB"
    bytes 4..7   uint32: the length H of the JSON header
    bytes 8..    the header, UTF-8 JSON padded with spaces so that the first array starts at
                 a multiple of 8
    then         the arrays, each starting at a multiple of 8 bytes from the start of the body

The header holds the payload's own fields (``run``, ``epoch``, ``n``, ``concepts``...) and
``arrays``: {name: {"dtype": "float32" | "int32" | "int16" | "uint16" | "uint32" | "uint8",
"offset": bytes from the start of the body, "length": elements}}. ``data.js`` decodes it
(``decodeArrays``) into typed-array views of the response, without copying.
"""

from __future__ import annotations

import json
import struct

import numpy as np

MAGIC = b"CEVB"
ALIGN = 8
DTYPES = ("float32", "int32", "int16", "uint16", "uint32", "uint8")
MEDIA_TYPE = "application/octet-stream"


def _pad(length: int) -> int:
    return -length % ALIGN


def encode(header: dict, arrays: dict[str, np.ndarray]) -> bytes:
    """The body of a binary payload: ``header`` (JSON-serialisable) and 1-D ``arrays``, each
    stored in its own dtype (one of :data:`DTYPES`), little-endian."""
    blobs, table, offset = [], {}, 0
    for name, array in arrays.items():
        a = np.ascontiguousarray(array)
        if a.ndim != 1 or a.dtype.name not in DTYPES:
            raise ValueError(f"array {name!r}: 1-D {', '.join(DTYPES)} only, not "
                             f"{a.dtype.name} {a.shape}")
        data = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        table[name] = {"dtype": a.dtype.name, "offset": offset, "length": int(a.size)}
        blobs.append(data + b"\0" * _pad(len(data)))
        offset += len(blobs[-1])
    # the offsets count from the start of the body, after the header, whose length depends
    # on them: grow the room for the header until its text fits
    start = 8
    while True:
        placed = {k: {**e, "offset": e["offset"] + start} for k, e in table.items()}
        text = json.dumps({**header, "arrays": placed}, separators=(",", ":")).encode()
        if 8 + len(text) <= start:
            break
        start = 8 + len(text) + _pad(8 + len(text))
    text += b" " * (start - 8 - len(text))
    return MAGIC + struct.pack("<I", len(text)) + text + b"".join(blobs)


def decode(body: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, {name: array}) of a body written by :func:`encode` (tests, benchmarks)."""
    if body[:4] != MAGIC:
        raise ValueError("not a ConceptEvo binary payload (bad magic)")
    (length,) = struct.unpack("<I", body[4:8])
    header = json.loads(body[8:8 + length])
    arrays = {name: np.frombuffer(body, dtype=np.dtype(e["dtype"]).newbyteorder("<"),
                                  count=e["length"], offset=e["offset"])
              for name, e in header.pop("arrays").items()}
    return header, arrays
