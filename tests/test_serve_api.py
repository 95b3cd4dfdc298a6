"""The dashboard's JSON API: payloads, validation, and what it refuses to serve."""

from __future__ import annotations

import json
import time
import warnings

import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from conftest import EVAL_CONCEPTS, copy_unevaluated, write_evaluation

from conceptevo.serve.app import create_app
from conceptevo.workspace import Workspace, atomic


@pytest.fixture(scope="module")
def client(tiny_demo):
    root, _, _ = tiny_demo
    return TestClient(create_app(root)), Workspace(root)


def test_payloads_match_the_workspace(client):
    c, ws = client
    study = c.get("/api/study").json()
    assert [r["name"] for r in study["runs"]] == ["healthy", "lr-too-high", "overfit"]
    assert study["runs"][0]["epochs"] == [0, 1, 2, 3]
    assert len(study["classes"]) == 12 and study["importance"]
    pts = c.get("/api/points/overfit/2").json()
    _, proj = ws.load_arrays(ws.projection_path("overfit", 2))
    np.testing.assert_allclose(pts["x"], proj["coords"][:, 0], atol=1e-4)
    neuron = c.get("/api/neuron/healthy/2/20").json()
    s = ws.load_stimuli("healthy", 2)
    assert neuron["stimuli"] == s.stimuli[20].tolist()
    assert [t["epoch"] for t in neuron["trajectory"]] == [0, 1, 2, 3]
    assert neuron["neighbours"] and all((n["run"], n["epoch"]) != ("healthy", 2)
                                        for n in neuron["neighbours"])
    sims = [n["similarity"] for n in neuron["neighbours"]]
    assert sims == sorted(sims, reverse=True)
    png = c.get(neuron["patches"])
    assert png.status_code == 200 and png.content[:4] == b"RIFF" and png.content[8:12] == b"WEBP"
    imp = study["importance"][0]
    payload = c.get(f"/api/importance/{imp['run']}/{imp['class']}/{imp['from']}/{imp['to']}")
    assert payload.status_code == 200 and payload.json()["layers"][0]["top"]
    assert set(c.get("/api/metrics").json()["runs"]) == {"healthy", "lr-too-high", "overfit"}
    assert c.get("/").status_code == 200 and "text/html" in c.get("/").headers["content-type"]


@pytest.mark.parametrize("url,status,words", [
    ("/api/points/nope/1", 404, "unknown run 'nope'"),
    ("/api/points/healthy/99", 404, "no epoch 99"),
    ("/api/points/healthy/-1", 404, "no epoch -1"),
    ("/api/neuron/healthy/1/-3", 404, "neuron -3 is out of range"),
    ("/api/neuron/healthy/1/100000", 404, "out of range"),
    ("/api/points/healthy/one", 422, "valid integer"),
    ("/api/patches/healthy/1/x.webp", 400, "must be <neuron>.webp"),
    ("/api/patches/healthy/1/3.png", 400, "must be <neuron>.webp"),
    ("/api/importance/healthy/40/1/2", 404, "class 40 is out of range"),
    ("/api/importance/healthy/0/5/6", 404, "no importance"),
])
def test_bad_parameters_get_a_4xx_with_a_message(client, url, status, words):
    c, _ = client
    r = c.get(url)
    assert r.status_code == status
    assert words in r.text


@pytest.mark.parametrize("url", [
    "/static/../../conceptevo.json", "/static/%2e%2e/%2e%2e/etc/passwd",
    "/static/..%2f..%2fconceptevo.json", "/api/patches/..%2F..%2Fconceptevo.json/1/2.webp",
    "/api/points/..%2F..%2F/1", "/api/neuron/../../etc/1/1", "/conceptevo.json", "/study.toml",
])
def test_no_file_outside_the_static_directory_or_the_api(client, url):
    c, ws = client
    r = c.get(url)
    assert r.status_code in (400, 404, 422)
    assert "schema_version" not in r.text and "[probe]" not in r.text


def test_no_cors_security_headers_and_only_small_get_requests(client):
    c, _ = client
    r = c.get("/api/study", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in {k.lower() for k in r.headers}
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert c.post("/api/study", json={}).status_code in (405, 413)
    big = c.request("GET", "/api/study", content=b"x" * 100_000)
    assert big.status_code == 413


@pytest.fixture(scope="module")
def evaluated(tiny_demo, tmp_path_factory):
    """A copy of the demo workspace, served, before and after a (made-up) evaluation."""
    root, _, _ = tiny_demo
    copy = copy_unevaluated(root, tmp_path_factory.mktemp("evaluated") / "demo")
    return TestClient(create_app(copy)), copy


def test_evaluation_appears_with_its_concept_labels(evaluated):
    c, root = evaluated
    missing = c.get("/api/evaluation")
    assert missing.status_code == 404 and "conceptevo evaluate" in missing.json()["error"]
    assert c.get("/api/neuron/healthy/2/20").json()["concept"] is None
    assert "label" not in c.get("/api/points/healthy/2").json()
    assert c.get("/api/study").json()["has_evaluation"] is False
    before = c.get("/api/version").json()["version"]

    written, arrays = write_evaluation(root, "healthy", 2)
    assert c.get("/api/version").json()["version"] != before
    assert c.get("/api/study").json()["has_evaluation"] is True
    got = c.get("/api/evaluation").json()
    assert got["headline"] == written["headline"]
    assert got["alignment"]["methods"]["unified"] == written["alignment"]["methods"]["unified"]
    assert got["alignment"]["methods"]["separate"]["by_depth"]["0"]["auc"] is None
    assert got["alignment"]["methods"]["random"]["by_depth"]["1"]["ci95"] == [None, None]  # NaN

    # the neuron's concept: its label and best IoU, and its top concepts by IoU
    names = EVAL_CONCEPTS
    iou, label = arrays["iou"], arrays["label"]
    labelled = int(np.flatnonzero(label >= 0)[0])
    unlabelled = np.flatnonzero(label < 0)
    for n in [labelled, *unlabelled[:1]]:
        concept = c.get(f"/api/neuron/healthy/2/{n}").json()["concept"]
        assert concept["label"] == (names[label[n]] if label[n] >= 0 else None)
        assert concept["iou"] == pytest.approx(float(iou[n].max()), abs=1e-4)
        order = sorted(range(len(names)), key=lambda i: -iou[n, i])[:3]
        assert [name for name, _ in concept["top"]] == [names[i] for i in order]
        assert [v for _, v in concept["top"]] == pytest.approx(iou[n, order], abs=1e-4)
    points = c.get("/api/points/healthy/2").json()
    assert points["concepts"] == names and points["label"] == label.tolist()
    assert points["label_iou"] == pytest.approx(iou.max(1), abs=0.006)
    # checkpoints without labels have none
    assert c.get("/api/neuron/healthy/1/20").json()["concept"] is None
    assert "label" not in c.get("/api/points/overfit/2").json()

    # rewriting the evaluation changes the version and what is served
    before = c.get("/api/version").json()["version"]
    time.sleep(0.05)  # past the file system's timestamp granularity
    atomic.write_json(root / "evaluation" / "evaluation.json", {**written, "headline": "again"})
    assert c.get("/api/version").json()["version"] != before
    assert c.get("/api/evaluation").json()["headline"] == "again"


def test_a_label_file_that_does_not_match_its_checkpoint_is_ignored(evaluated):
    c, root = evaluated
    ws = Workspace(root)
    n = ws.load_stimuli("overfit", 1).n_neurons
    ws.save_arrays(root / "evaluation" / "labels" / "overfit" / "epoch_0001.npz", {},
                   iou=np.zeros((n + 1, 2), np.float32), label=np.zeros(n + 1, np.int64),
                   concept_names=np.array(json.dumps(["a", "b"])))
    assert c.get("/api/neuron/overfit/1/3").json()["concept"] is None
    assert "label" not in c.get("/api/points/overfit/1").json()
