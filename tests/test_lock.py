"""One writer at a time: the workspace lock serialises writers, dies with its process, and
lets concurrent creators of one workspace all succeed."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from study_factory import tiny_study

from conceptevo.errors import WorkspaceError
from conceptevo.workspace import Workspace
from conceptevo.workspace.lock import OWNER_FILE, workspace_lock

TESTS = Path(__file__).resolve().parent


def _create(path: str, start: float) -> str:
    while time.time() < start:  # all processes try at once
        pass
    try:
        Workspace(path, create=True)
        return "ok"
    except WorkspaceError as e:
        return f"error: {e}"


def test_concurrent_creators_of_one_workspace_all_succeed(tmp_path):
    ctx = mp.get_context("fork")
    start = time.time() + 0.5
    with ctx.Pool(8) as pool:
        results = pool.starmap(_create, [(str(tmp_path / "ws"), start)] * 24)
    assert results == ["ok"] * 24
    assert Workspace(tmp_path / "ws").info["schema_version"] == 1


def _hold(path: str, ready, release) -> None:
    with workspace_lock(path, "conceptevo build"):
        ready.set()
        release.wait(30)


def test_a_second_writer_waits_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), ready, release))
    holder.start()
    assert ready.wait(20)
    assert f'"pid": {holder.pid}' in (tmp_path / OWNER_FILE).read_text()
    with pytest.raises(WorkspaceError, match=rf"being written by pid {holder.pid} "
                                             r"\(conceptevo build"):
        with workspace_lock(tmp_path, "second", timeout=0.3):
            pass
    os.kill(holder.pid, signal.SIGKILL)  # dies holding the lock
    holder.join(10)
    t = time.monotonic()
    with workspace_lock(tmp_path, "third", timeout=5):  # the OS released it
        pass
    assert time.monotonic() - t < 2


def test_the_same_process_can_reenter_its_lock(tmp_path):
    with workspace_lock(tmp_path, "outer"):
        with workspace_lock(tmp_path, "inner", timeout=0):
            Workspace(tmp_path / "sub", create=True)
        assert (tmp_path / OWNER_FILE).is_file()  # the outer holder is still named
    assert not (tmp_path / OWNER_FILE).exists()


def test_two_writers_with_different_configs_run_one_after_the_other(tmp_path):
    """A `conceptevo build` and a `conceptevo stimuli` with another config on one workspace:
    both succeed, one after the other (the second waits, then computes what its config
    changes), and the workspace ends as the second one's config says, every artifact whole."""
    (config,) = tiny_study(tmp_path, n_checkpoints=3)
    other = config.with_name("other.toml")
    other.write_text(config.read_text().replace("k_stimuli = 4", "k_stimuli = 3"))
    env = dict(os.environ, PYTHONPATH=str(TESTS), CONCEPTEVO_PROGRESS="0")
    first = subprocess.Popen([sys.executable, "-m", "conceptevo", "build", "--config",
                              str(config)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (config.parent / "ws" / OWNER_FILE).is_file():  # the first holds the lock
        assert time.time() < deadline and first.poll() is None
        time.sleep(0.05)
    # (the second only recomputes the stimuli: a second full build here only cost time)
    second = subprocess.run([sys.executable, "-m", "conceptevo", "stimuli", "--config",
                             str(other)], env=env, capture_output=True, text=True, timeout=300)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 0, second.stderr
    assert "is being written by pid" in second.stderr and "waiting for it" in second.stderr
    ws = Workspace(config.parent / "ws")
    assert ws.load_arrays(ws.space_path("base.npz"))[1]["neuron_embedding"].shape[1] == 4
    for epoch in range(3):
        assert ws.load_stimuli("a", epoch).stimuli.shape[1] == 3
