"""Progress bars for long stages (tqdm on stderr; ``CONCEPTEVO_PROGRESS=0`` silences them;
under torchrun only rank 0 shows its bars)."""

from __future__ import annotations

import os

from tqdm.auto import tqdm


def progress_bar(total: int | None, desc: str, unit: str = "it", leave: bool = False):
    """A tqdm bar; disabled when ``CONCEPTEVO_PROGRESS=0`` and on the ranks of torchrun other
    than 0 (rank 0's bar counts its own share of the work)."""
    from .distributed import is_main_process

    disable = os.environ.get("CONCEPTEVO_PROGRESS", "1") == "0" or not is_main_process()
    return tqdm(total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True,
                mininterval=0.5, disable=disable)
