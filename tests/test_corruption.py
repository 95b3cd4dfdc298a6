"""Damaged artifacts: every kind of workspace file, cut to half its size (a full disk, an
interrupted copy) or replaced by a link out of the workspace, is recomputed by the next
``build`` / ``importance`` when it can be, and otherwise named in one ``error:`` line; a
reader (``diagnose``, ``export``, ``report``) never ends in a traceback."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from study_factory import tiny_study

from conceptevo.cli import main
from conceptevo.workspace import Workspace


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny study after `build` and `importance`: its config and workspace."""
    root = tmp_path_factory.mktemp("damaged")
    (config,) = tiny_study(root, n_checkpoints=3)
    assert main(["-q", "build", "--config", str(config)]) == 0
    assert main(["-q", "importance", "--config", str(config), "--run", "a", "--class",
                 "cat"]) == 0
    return config


ARTIFACTS = [
    "conceptevo.json", "study.json", "probe/meta.json", "probe/index.csv", "probe/images.npy",
    "stimuli/a/epoch_0001.npz", "space/base.npz", "space/images.npz", "space/map.npz",
    "space/fidelity.json", "space/projection/a/epoch_0001.npz", "diagnosis.json",
    "patches/receptive_fields.json", "importance/a/c000/from_0001_to_0002.npz",
]


#: what a build cannot rebuild: the manifest that says the directory is a workspace
NOT_RECOMPUTED = {"conceptevo.json"}


def _copy(config, tmp_path):
    """The study with a copy of its workspace (the config rewritten to point at it)."""
    ws = tmp_path / "ws"
    shutil.copytree(config.parent / "ws", ws)
    text = config.read_text().replace((config.parent / "ws").as_posix(), ws.as_posix())
    copy = tmp_path / "study.toml"
    copy.write_text(text)
    return copy, ws


def _readable(ws, name: str) -> None:
    """The artifact can be read back whole."""
    path = ws / name
    if name.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            for key in z.files:
                z[key]
    elif name.endswith(".npy"):
        np.load(path, allow_pickle=False)
    elif name.endswith(".json"):
        json.loads(path.read_text())
    else:
        path.read_text()


def _one_error_line(err: str, name: str) -> bool:
    lines = [line for line in err.splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith("error: ") and name.split("/")[-1] in lines[0]


@pytest.mark.parametrize("name", ARTIFACTS)
@pytest.mark.parametrize("damage", ["truncate", "link-out"])
def test_a_damaged_artifact_is_recomputed_or_named(built, tmp_path, capsys, name, damage):
    config, ws = _copy(built, tmp_path)
    target = ws / name
    if damage == "truncate":
        data = target.read_bytes()
        target.write_bytes(data[:len(data) // 2])
    else:
        outside = tmp_path / "outside" / target.name
        outside.parent.mkdir()
        shutil.copy(target, outside)
        target.unlink()
        target.symlink_to(outside)
    commands = [["build", "--config", config],
                ["importance", "--config", config, "--run", "a", "--class", "cat"]]
    for argv in commands:
        code = main(["-q", *map(str, argv)])
        err = capsys.readouterr().err
        assert "Traceback" not in err
        if code != 0:
            assert code == 2 and _one_error_line(err, name), (argv, err)
            assert name in NOT_RECOMPUTED, f"{name} could have been recomputed: {err}"
            break
    else:  # both succeeded: the artifact was recomputed, as a regular file inside
        assert not target.is_symlink() or target.resolve().is_relative_to(ws.resolve())
        _readable(ws, name)
        Workspace(ws).load_probe()
    for argv in (["diagnose", ws], ["export", ws, "--out", tmp_path / "export"],
                 ["report", ws, "-o", tmp_path / "report.html"]):
        code = main(["-q", *map(str, argv)])
        err = capsys.readouterr().err
        assert "Traceback" not in err and code in (0, 2), (argv, err)
        if code == 2:
            lines = [line for line in err.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("error: "), err


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("command", ["diagnose", "build", "report"])
def test_temporaries_of_killed_commands_are_swept_by_the_next(built, tmp_path, capsys,
                                                              command):
    config, ws = _copy(built, tmp_path)
    pid = _dead_pid()
    left = [ws / "space" / f"map.npz.tmp-{pid}-x1", ws / "stimuli" / "a" /
            f"epoch_0001.npz.tmp-{pid}-x2", ws / f"diagnosis.json.tmp-{pid}-x3"]
    report = tmp_path / "out" / "report.html"
    report.parent.mkdir()
    left.append(report.parent / f"report.html.tmp-{pid}-x4")
    alive = ws / "space" / f"map.npz.tmp-{os.getpid()}-mine"  # a writer still running
    unrelated = report.parent / f"notes.txt.tmp-{pid}-x5"     # not the report's
    for p in [*left, alive, unrelated]:
        p.write_bytes(b"half")
    argv = {"diagnose": ["diagnose", ws], "build": ["build", "--config", config],
            "report": ["report", ws, "-o", report]}[command]
    assert main(["-q", *map(str, argv)]) == 0, capsys.readouterr().err
    swept = left[:3] if command != "report" else left[3:]
    assert not any(p.exists() for p in swept)
    assert alive.exists() and unrelated.exists()
