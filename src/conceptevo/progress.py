"""Progress bars for long stages (tqdm on stderr; ``CONCEPTEVO_PROGRESS=0`` silences them)."""

from __future__ import annotations

import os

from tqdm.auto import tqdm


def progress_bar(total: int | None, desc: str, unit: str = "it", leave: bool = False):
    """A tqdm bar; disabled when ``CONCEPTEVO_PROGRESS=0``."""
    return tqdm(total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True,
                mininterval=0.5, disable=os.environ.get("CONCEPTEVO_PROGRESS", "1") == "0")
