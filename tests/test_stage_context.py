"""The stage layer's shared pieces: the keyed cache, the Context, and the deprecated entry
points that still work."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest

from conceptevo.stages.context import cache_key, cached, stored_key, up_to_date
from conceptevo.workspace import Workspace, atomic


def test_the_cache_computes_once_per_key_and_again_when_damaged(tmp_path):
    ws = Workspace(tmp_path / "ws", create=True)
    path = ws.space_path("thing.npz")
    calls = []

    def compute(value):
        def run():
            calls.append(value)
            return np.full(3, value, dtype=np.float32)
        return run

    def through(key, value):
        """The cache over a typed writer / reader of one array, as the stages use it."""
        return cached(ws, path, key, compute(value), lambda: ws.load_arrays(path)[1]["x"],
                      lambda x: ws.save_arrays(path, {"key": key, "what": "thing"}, x=x))

    key = cache_key(a=1, b=[2, 3])
    assert key == cache_key(b=[2, 3], a=1) != cache_key(a=1, b=[3, 2])
    assert np.all(through(key, 1.0) == 1.0) and calls == [1.0]
    assert ws.load_arrays(path)[0] == {"key": key, "what": "thing"}
    x = through(key, 2.0)  # up to date: read, not computed
    assert calls == [1.0] and np.all(x == 1.0) and up_to_date(ws, path, key)
    other = cache_key(a=2)
    through(other, 3.0)  # another key: computed and stored
    assert calls == [1.0, 3.0] and stored_key(ws, path) == other
    path.write_bytes(b"not an npz")  # damaged: computed again
    assert np.all(through(other, 4.0) == 4.0) and calls == [1.0, 3.0, 4.0]
    assert stored_key(ws, ws.path("missing.json")) is None
    # a JSON artifact's key is its "key" field
    atomic.write_json(ws.path("thing.json"), {"key": other, "value": 1})
    assert stored_key(ws, ws.path("thing.json")) == other


def test_the_old_entry_points_warn_and_still_work(tmp_path):
    from conceptevo.config import config_from_dict
    from conceptevo.pipeline import ensure_training

    cfg = config_from_dict({"workspace": str(tmp_path / "ws"), "probe": {"root": "p"},
                            "model": {"arch": "conceptevo:small_vgg"},
                            "runs": [{"name": "r", "checkpoints": "c"}]}, tmp_path)
    ws = Workspace(cfg.workspace_path, create=True)
    with pytest.warns(DeprecationWarning, match="stages.train.ensure_training"):
        report = ensure_training(cfg, ws)  # no run with a train table: nothing to do
    assert report.computed == [] == report.skipped
    sys.modules.pop("conceptevo.evaluate.stage", None)
    with pytest.warns(DeprecationWarning, match="conceptevo.stages.evaluation"):
        old = importlib.import_module("conceptevo.evaluate.stage")
    from conceptevo.stages.evaluation import run_evaluation
    assert old.run_evaluation is run_evaluation
