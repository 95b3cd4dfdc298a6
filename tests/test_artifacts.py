"""The workspace's typed writers and readers: what a writer stores, its reader gives back,
and a file that does not match its schema is refused with the file named."""

from __future__ import annotations

import numpy as np
import pytest

from conceptevo.errors import CorruptArtifactError
from conceptevo.evaluate.labels import ConceptLabels
from conceptevo.workspace import Workspace, artifacts


@pytest.fixture
def ws(tmp_path):
    return Workspace(tmp_path / "ws", create=True)


def test_map_and_projection_round_trip_and_are_checked(ws):
    coords = np.arange(8, dtype=np.float32).reshape(4, 2)
    artifacts.save_map(ws, coords, key="k1")
    np.testing.assert_array_equal(artifacts.load_map(ws), coords)
    assert ws.arrays_key(artifacts.map_path(ws)) == "k1"
    emb = np.ones((3, 5), np.float32)
    dead = np.array([False, True, False])
    artifacts.save_projection(ws, "r", 2, "k2", emb, coords[:3], dead)
    got = artifacts.load_projection(ws, "r", 2)
    np.testing.assert_array_equal(got["embedding"], emb)
    np.testing.assert_array_equal(got["dead"], dead)
    assert ws.load_arrays(ws.projection_path("r", 2))[0] == {"key": "k2", "run": "r",
                                                             "epoch": 2}
    artifacts.save_projection(ws, "r", 3, "k3", emb, coords, dead)  # 4 points, 3 neurons
    with pytest.raises(CorruptArtifactError, match="epoch_0003.npz.*same neurons"):
        artifacts.load_projection(ws, "r", 3)
    ws.save_arrays(artifacts.map_path(ws), {"key": "k1"}, coords=np.zeros(3))
    with pytest.raises(CorruptArtifactError, match=r"map.npz.*shape \[n, 2\]"):
        artifacts.load_map(ws)


def test_labels_round_trip_and_the_dashboard_table_is_checked(ws):
    labels = ConceptLabels(np.array([[0.1, 0.5], [0.0, 0.0], [0.7, 0.2]], np.float32),
                           np.array([1, -1, 0]), np.ones(3, np.float32),
                           np.zeros((3, 4), np.float32))
    artifacts.save_labels(ws, "r", 1, labels, ["disc", "red"],
                          {"key": "k", "probe_ids": [1, 2], "match_ids": [0, 3]})
    meta, _ = ws.load_arrays(artifacts.labels_path(ws, "r", 1))
    assert list(meta) == ["key", "run", "epoch", "probe_ids", "match_ids"]
    back, names = artifacts.load_labels(ws, "r", 1)
    assert names == ["disc", "red"]
    for field in ("iou", "label", "threshold", "activations"):
        np.testing.assert_array_equal(getattr(back, field), getattr(labels, field))
    table = artifacts.load_label_table(ws, "r", 1, n_neurons=3)
    np.testing.assert_array_equal(table["best"], np.float32([0.5, 0.0, 0.7]))
    with pytest.raises(CorruptArtifactError, match="epoch_0001.npz.*for 4 neurons"):
        artifacts.load_label_table(ws, "r", 1, n_neurons=4)


def test_json_artifacts_round_trip(ws):
    assert artifacts.load_fidelity(ws, required=False) == {}
    with pytest.raises(CorruptArtifactError, match="fidelity.json"):
        artifacts.load_fidelity(ws)
    artifacts.save_evaluation(ws, {"headline": "h"})
    assert artifacts.load_evaluation(ws) == {"headline": "h"}
    artifacts.save_diagnosis(ws, {"runs": {}})
    assert artifacts.load_diagnosis(ws) == {"runs": {}}
    artifacts.save_receptive_fields(ws, {"m": [1]})
    assert artifacts.load_receptive_fields(ws) == {"m": [1]}
    artifacts.receptive_fields_path(ws).write_text("{not json")
    assert artifacts.load_receptive_fields(ws) == {}  # damaged: recomputed by its user
