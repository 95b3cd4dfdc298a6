"""Subprocesses of tests/test_faults.py (not a test module).

``python fault_driver.py build STUDY.toml``
    ``conceptevo build`` in a fresh process. With ``CONCEPTEVO_TEST_PAUSE`` set to
    ``<file>|<when>|<marker>`` it stops at one write of the workspace and waits there to be
    killed: ``<file>`` is the artifact's path relative to the workspace, ``<when>`` is
    ``after`` (the file is complete) or ``mid`` (half of its bytes are in the temporary file,
    the final file is untouched); it then writes its pid to ``<marker>``. The test polls for
    the marker and sends SIGKILL, so the kill lands at exactly that point, whatever the speed
    of the machine.

``python fault_driver.py write WORKSPACE N GO_FILE``
    A writer next to a reader: ``N`` times, a :class:`~conceptevo.monitor.Monitor` snapshot of
    run ``a`` epoch 0 (alternating between the weights of epochs 0 and 1) and a new version of
    every projection (see ``study_factory.write_version``), then it keeps going until
    ``GO_FILE`` exists (the reader's "I have read enough").
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)  # the same in every process: the reference and the killed builds


def pause_at(spec: str) -> None:
    from conceptevo.workspace import atomic

    rel, when, marker = spec.split("|")
    real = atomic.write_bytes

    def wait_for_the_kill():
        Path(marker).write_text(str(os.getpid()))
        while True:  # the test kills this process (it fails if it never gets here)
            time.sleep(3600)

    def write_bytes(path, data):
        hit = Path(path).as_posix().endswith("/" + rel)
        if hit and when == "mid":
            with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                wait_for_the_kill()
        real(path, data)
        if hit and when == "after":
            wait_for_the_kill()

    atomic.write_bytes = write_bytes


def build(config: str) -> int:
    spec = os.environ.get("CONCEPTEVO_TEST_PAUSE")
    if spec:
        pause_at(spec)
    from conceptevo.cli import main

    return main(["-q", "build", "--config", config])


def write(workspace: str, n: int, go_file: str) -> int:
    from conftest import TinyVGG, randomise
    from study_factory import write_version

    from conceptevo.monitor import Monitor
    from conceptevo.workspace import Workspace

    models = [randomise(TinyVGG(), seed).eval() for seed in (0, 1)]
    monitor = Monitor(workspace, run="a", k_stimuli=4, k_responsive=5, batch_size=8,
                      save_checkpoints=True, on_flag=lambda flag: None, verbose=False)
    ws = Workspace(workspace)
    i = 0
    while i < n or not Path(go_file).exists():
        i += 1
        monitor.on_epoch_end(models[i % 2], 0, {"train_loss": float(i), "val_loss": float(i)})
        write_version(ws, i)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    if sys.argv[1] == "build":
        sys.exit(build(sys.argv[2]))
    sys.exit(write(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
