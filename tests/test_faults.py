"""Fault tolerance: a build killed (SIGKILL) at any point and started again ends with exactly
the workspace of an uninterrupted build, and a reader (the dashboard's StudyData, its HTTP
API, a plain np.load) never sees a half-written artifact while a build or a Monitor writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from study_factory import (
    check_version,
    served_workspace,
    stimuli_of,
    tiny_study,
    write_version,
)

from conceptevo.serve.data import StudyData
from conceptevo.workspace import Workspace, atomic

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from conceptevo.serve.app import create_app

TESTS = Path(__file__).parent
DRIVER = TESTS / "fault_driver.py"
WRITES, READS = 8, 15  # at least, in the reader/writer test
TIMEOUT = 300  # seconds for one subprocess to reach its pause point: a hang, not a slow machine

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "CONCEPTEVO_TEST_PAUSE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    env["CONCEPTEVO_PROGRESS"] = "0"
    env.update(extra)
    return env


def _driver(*args, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(DRIVER), *map(str, args)], env=_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> None:
    try:
        _, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    assert proc.returncode == 0, f"exit status {proc.returncode}:\n{err[-3000:]}"


def _kill_at(config: Path, rel: str, when: str, marker: Path) -> None:
    """Run the build until it reaches ``rel`` (``when``: "after" it is written, or "mid",
    half-written), then SIGKILL it there."""
    proc = _driver("build", config, CONCEPTEVO_TEST_PAUSE=f"{rel}|{when}|{marker}")
    deadline = time.monotonic() + TIMEOUT
    try:
        while not marker.exists():
            if proc.poll() is not None:
                _, err = proc.communicate()
                pytest.fail(f"the build ended (status {proc.returncode}) before writing "
                            f"{rel}:\n{err[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the build did not reach {rel} in {TIMEOUT} s")
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def _temporaries(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob(f"*{atomic.TMP_MARK}*"))


def _assert_same_workspace(a: Path, b: Path) -> None:
    """Every artifact of ``a`` and ``b`` identical: arrays exactly (values, dtypes, shapes),
    other files byte for byte; only what names the workspace itself may differ."""
    files_a = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    assert any(f.startswith("space/projection/") for f in files_a)
    for rel in files_a:
        pa, pb = a / rel, b / rel
        if rel == "conceptevo.json":  # its creation time
            continue
        if rel == "study.json":       # the workspace's own path
            sa, sb = atomic.read_json(pa), atomic.read_json(pb)
            for study in (sa, sb):
                study.pop("workspace"), study.pop("base_dir")
            assert sa == sb
        elif rel.endswith(".npz"):
            with np.load(pa, allow_pickle=False) as za, np.load(pb, allow_pickle=False) as zb:
                assert sorted(za.files) == sorted(zb.files), rel
                for name in za.files:
                    x, y = za[name], zb[name]
                    assert x.dtype == y.dtype and x.shape == y.shape, (rel, name)
                    np.testing.assert_array_equal(x, y, err_msg=f"{rel}: {name}")
        elif rel.endswith(".npy"):
            x, y = np.load(pa), np.load(pb)
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x, y, err_msg=rel)
        else:
            assert pa.read_bytes() == pb.read_bytes(), rel


def test_build_killed_at_every_stage_resumes_to_the_same_workspace(tmp_path):
    reference, killed = tiny_study(tmp_path, n_checkpoints=4, workspaces=("ref", "killed"))
    uninterrupted = _driver("build", reference)  # runs alongside the killed builds
    try:
        ws = killed.parent / "ws"
        # 1. the probe set is complete, no stimulus yet
        _kill_at(killed, "probe/meta.json", "after", tmp_path / "m1")
        w = Workspace(ws)
        assert w.has_probe() and w.stimuli_epochs("a") == []
        # 2. two checkpoints' stimuli written, the third half-written
        _kill_at(killed, "stimuli/a/epoch_0002.npz", "mid", tmp_path / "m2")
        assert w.stimuli_epochs("a") == [0, 1]
        assert [n.split(".tmp-")[0] for n in _temporaries(ws)] == ["epoch_0002.npz"]
        # 3. in the space stage: base.npz written, images.npz half-written
        _kill_at(killed, "space/images.npz", "mid", tmp_path / "m3")
        assert w.stimuli_epochs("a") == [0, 1, 2, 3] and w.space_path("base.npz").is_file()
        assert not w.space_path("images.npz").exists()
        assert [n.split(".tmp-")[0] for n in _temporaries(ws)] == ["images.npz"]
        # 4. started again, it finishes (a build that stops among the projections, after the
        # map, is test_build.py::test_projections_missing_after_an_interruption_are_identical)
        _finish(_driver("build", killed))
    except BaseException:
        uninterrupted.kill()
        raise
    _finish(uninterrupted)
    assert _temporaries(ws) == []  # the killed writers' temporaries were swept
    _assert_same_workspace(reference.parent / "ws", ws)


# ------------------------------------------------------------------ readers and writers
def _client(root: Path) -> TestClient:
    return TestClient(create_app(root))


def _pause_in_writes(monkeypatch, target: str):
    """Make ``atomic.write_bytes`` stop half-way through writing ``target`` (in its temporary
    file) until released; returns (paused, release) events."""
    paused, release = threading.Event(), threading.Event()
    real = atomic.write_bytes

    def write_bytes(path, data):
        if Path(path).name != target:
            return real(path, data)
        with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            paused.set()
            assert release.wait(60), "the test never released the writer"
            f.write(data[len(data) // 2:])

    monkeypatch.setattr(atomic, "write_bytes", write_bytes)
    return paused, release


def test_a_half_written_artifact_is_never_seen(tmp_path, monkeypatch):
    ws = served_workspace(tmp_path / "ws")
    client = _client(ws.root)
    data = StudyData(ws.root)
    assert data.points("a", 0)["x"][0] == 0.0
    paused, release = _pause_in_writes(monkeypatch, "epoch_0000.npz")

    # a rewrite of an artifact: readers see the old version until the new one is complete
    writer = threading.Thread(target=write_version, args=(ws, 7))
    writer.start()
    try:
        assert paused.wait(60)
        partial = list(ws.projection_path("a", 0).parent.glob(f"*{atomic.TMP_MARK}*"))
        assert len(partial) == 1 and partial[0].stat().st_size > 0
        assert check_version(ws.load_arrays(ws.projection_path("a", 0))[1]) == 0
        r = client.get("/api/points/a/0")
        assert r.status_code == 200 and set(r.json()["x"]) == {0.0}
        assert data.epochs("a") == [0, 1]
    finally:
        release.set()
        writer.join()
    assert check_version(ws.load_arrays(ws.projection_path("a", 0))[1]) == 7
    assert set(client.get("/api/points/a/0").json()["x"]) == {7.0}

    # a new checkpoint being written is not listed until it is complete
    paused2, release2 = _pause_in_writes(monkeypatch, "epoch_0002.npz")
    writer = threading.Thread(target=ws.save_stimuli,
                              args=("a", 2, stimuli_of(ws.load_probe(), 2)))
    writer.start()
    try:
        assert paused2.wait(60)
        assert ws.stimuli_epochs("a") == [0, 1]
        study = client.get("/api/study").json()
        assert study["runs"][0]["epochs"] == [0, 1]
    finally:
        release2.set()
        writer.join()
    assert ws.stimuli_epochs("a") == [0, 1, 2]


def test_readers_during_a_monitor_and_rewrites_in_another_process(tmp_path):
    """A writer process (Monitor snapshots of run a epoch 0, alternating two models, and new
    versions of every projection) against readers in this process: every read succeeds and
    is one complete version."""
    ws = served_workspace(tmp_path / "ws")
    client = _client(ws.root)
    go = tmp_path / "go"
    writer = _driver("write", ws.root, WRITES, go)
    try:
        # the writer's first snapshot marks that it has started
        deadline = time.monotonic() + TIMEOUT
        while not ws.metrics_path("a").is_file():
            assert writer.poll() is None, writer.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        reads, seen = 0, set()
        while writer.poll() is None:
            seen.add(check_version(ws.load_arrays(ws.projection_path("a", 1))[1]))
            s = ws.load_stimuli("a", 0)  # one model's: its arrays agree with each other
            np.testing.assert_array_equal(s.stimuli_act[:, 0], s.act_max)
            assert s.meta["epoch"] == 0 and s.stimuli.shape == (s.n_neurons, 4)
            points = client.get("/api/points/a/0")
            assert points.status_code == 200, points.text
            assert len(set(points.json()["x"]) | set(points.json()["y"])) == 1
            neuron = client.get("/api/neuron/a/0/3")
            assert neuron.status_code == 200, neuron.text
            for p in neuron.json()["trajectory"]:
                assert p["x"] == p["y"]
            metrics = client.get("/api/metrics").json()
            for row in metrics["runs"]["a"]:
                assert row["train_loss"] == row["val_loss"]
            for row in (metrics["diagnosis"] or {}).get("runs", {}).get("a", {}).get(
                    "metrics", []):
                assert row["train_loss"] == row["val_loss"]
            reads += 1
            if reads == READS:
                go.touch()  # enough reads overlapped the writes: the writer may stop
    finally:
        go.touch()
        if writer.poll() is None:
            try:
                writer.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                writer.kill()
    _, err = writer.communicate()
    assert writer.returncode == 0, err[-3000:]
    assert reads >= READS
    final = check_version(ws.load_arrays(ws.projection_path("a", 0))[1])
    assert final >= WRITES and max(seen) <= final
    assert ws.load_stimuli("a", 0).meta["source"] == "monitor"
