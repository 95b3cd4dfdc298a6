"""A workspace received from someone else is data: no command imports a model factory or
unpickles a checkpoint because the workspace's study.json says so."""

from __future__ import annotations

import json
import os
import pickle

import pytest
from conftest import copy_unevaluated

from conceptevo.cli import main


class _Shell:
    """Unpickling this runs a shell command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.fixture
def received(tiny_demo, tmp_path):
    """A copy of the tiny demo workspace, not evaluated yet (so that evaluate needs the
    models), and a canary file path that any executed payload would create."""
    root, _, _ = tiny_demo
    ws = copy_unevaluated(root, tmp_path / "received")
    _edit_study(ws, base_dir=str(ws))  # its data and checkpoints: the copy's
    return ws, tmp_path / "PWNED"


def _edit_study(ws, **changes):
    path = ws / "study.json"
    study = json.loads(path.read_text())
    for key, value in changes.items():
        target = study
        *parents, last = key.split(".")
        for p in parents:
            target = target.setdefault(p, {})
        target[last] = value
    path.write_text(json.dumps(study))
    return study


def run(capsys, *argv) -> tuple[int, str]:
    code = main(["-q", *map(str, argv)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_a_factory_named_by_a_workspace_runs_under_no_command(received, capsys, tmp_path):
    ws, pwned = received
    _edit_study(ws, **{"model.arch": "os:system",
                       "model.kwargs": {"command": f"touch {pwned}"},
                       "trust_checkpoints": True})
    code, err = run(capsys, "evaluate", ws)
    assert code == 2 and "runs no code that a workspace names" in err
    assert "conceptevo evaluate study.toml" in err
    for argv in (["diagnose", ws], ["export", ws, "--out", tmp_path / "export"],
                 ["report", ws, "-o", tmp_path / "report.html"]):
        code, err = run(capsys, *argv)
        assert code in (0, 2), err
    from conceptevo.serve.data import StudyData

    data = StudyData(ws)
    data.neuron("healthy", 0, 3)
    assert not pwned.exists()


def test_trust_checkpoints_in_a_workspace_unpickles_nothing(received, capsys):
    ws, pwned = received
    _edit_study(ws, trust_checkpoints=True)
    target = sorted((ws / "runs" / "healthy" / "checkpoints").glob("epoch_*.pt"))[0]
    with open(target, "wb") as f:
        pickle.dump({"state_dict": _Shell(f"touch {pwned}")}, f, protocol=2)
    code, err = run(capsys, "evaluate", ws)
    assert code == 2 and "contains Python objects" in err
    assert not pwned.exists()
