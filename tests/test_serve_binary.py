"""The binary point payloads (``?format=binary``, conceptevo/serve/binary.py) against the JSON
ones, on a small synthetic workspace (``conceptevo.serve.synthetic``), and the builder
itself."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from conceptevo.serve import binary
from conceptevo.serve.app import create_app
from conceptevo.serve.synthetic import build_synthetic
from conceptevo.workspace import Workspace


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "ws"
    build_synthetic(root, 5_003, runs=("a", "b"), epochs=(0, 3), n_layers=7, n_base=1_200,
                    labels=True)
    return TestClient(create_app(root)), Workspace(root)


def test_the_builder_writes_a_servable_workspace(synthetic):
    c, ws = synthetic
    study = c.get("/api/study").json()
    assert [(r["name"], r["epochs"], r["n_neurons"], len(r["layers"])) for r in study["runs"]] \
        == [("a", [0, 3], 5_003, 7), ("b", [0, 3], 5_003, 7)]
    assert ws.load_stimuli("a", 3).n_neurons == 5_003
    patch = c.get("/api/patches/a/3/17.webp")  # its receptive fields are stored
    assert patch.status_code == 200 and patch.content[8:12] == b"WEBP"
    assert ws.path("patches", "a", "0003", "17.webp").is_file()  # rendered once, then cached


@pytest.mark.parametrize("run,epoch", [("a", 3), ("b", 0)])
def test_binary_points_hold_what_the_json_holds(synthetic, run, epoch):
    c, _ = synthetic
    r = c.get(f"/api/points/{run}/{epoch}?format=binary")
    assert r.status_code == 200 and r.headers["content-type"] == binary.MEDIA_TYPE
    header, arrays = binary.decode(r.content)
    js = c.get(f"/api/points/{run}/{epoch}").json()
    assert (header["run"], header["epoch"], header["n"]) == (run, epoch, len(js["x"]))
    np.testing.assert_allclose(arrays["x"], js["x"], atol=1e-4)
    np.testing.assert_allclose(arrays["y"], js["y"], atol=1e-4)
    assert arrays["dead"].tolist() == js["dead"] and arrays["layer"].tolist() == js["layer"]
    assert arrays["x"].dtype == np.float32 and arrays["layer"].dtype == np.uint16
    if "label" in js:  # the last epoch of each run is labelled
        assert header["concepts"] == js["concepts"]
        assert arrays["label"].tolist() == js["label"]
        np.testing.assert_allclose(arrays["label_iou"], js["label_iou"], atol=0.006)
    else:
        assert header["concepts"] is None and "label" not in arrays


def test_binary_arrays_are_aligned_and_the_base_map_too(synthetic):
    c, _ = synthetic
    body = c.get("/api/points/a/3?format=binary").content
    (length,) = np.frombuffer(body[4:8], "<u4")
    table = json.loads(body[8:8 + length])["arrays"]
    assert all(e["offset"] % 8 == 0 for e in table.values())
    assert (8 + length) % 8 == 0
    header, base = binary.decode(c.get("/api/base?format=binary").content)
    js = c.get("/api/base").json()
    assert header["n"] == len(js["x"]) == 1_200
    np.testing.assert_allclose(base["x"], js["x"], atol=1e-4)


def test_binary_requests_fail_like_json_ones(synthetic):
    c, _ = synthetic
    r = c.get("/api/points/a/9?format=binary")
    assert r.status_code == 404 and "no epoch 9" in r.json()["error"]
    r = c.get("/api/points/a/3?format=xml")
    assert r.status_code == 422 and "json or binary" in r.json()["error"]
    assert c.get("/api/base?format=").status_code == 422


def test_the_encoder_round_trips_every_dtype():
    arrays = {name: np.arange(5).astype(name) for name in binary.DTYPES}
    header, back = binary.decode(binary.encode({"n": 5, "note": "x" * 37}, arrays))
    assert header == {"n": 5, "note": "x" * 37}
    for name, a in arrays.items():
        assert back[name].dtype == a.dtype and back[name].tolist() == a.tolist()
    with pytest.raises(ValueError, match="1-D"):
        binary.encode({}, {"bad": np.zeros((2, 2), np.float32)})
    with pytest.raises(ValueError, match="float64"):
        binary.encode({}, {"bad": np.zeros(2)})
