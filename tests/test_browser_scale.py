"""The map of a million neurons in headless Chromium: a synthetic workspace (no model, no
training, no UMAP: ``conceptevo.serve.synthetic``) served, its map drawn, hovered, panned and
zoomed by ``benchmarks/dashboard_scale.py``'s ``measure``. Asserts no tab crash, no page
error, every neuron drawn and a hover under 50 ms; prints the figures (the benchmark records
them at 100k and 1M in benchmarks/results/dashboard_scale.json)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from test_browser import ARTIFACTS, Server, _need_browser

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from dashboard_scale import CHROMIUM, FLAGS, measure  # noqa: E402

pytestmark = pytest.mark.browser

N_NEURONS = 1_000_000
HOVER_LIMIT_MS = 50


def test_a_million_neuron_map_draws_hovers_and_pans(tmp_path):
    _need_browser()
    from playwright.sync_api import sync_playwright

    from conceptevo.serve.synthetic import build_synthetic

    started = time.perf_counter()
    build_synthetic(tmp_path / "ws", N_NEURONS)
    built = time.perf_counter() - started
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw, Server(tmp_path / "ws") as url:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            figures = measure(browser, url, N_NEURONS, moves=20,
                              shot=ARTIFACTS / "space-1m-hover.png")
        finally:
            browser.close()
    print(f"\nsynthetic workspace of {N_NEURONS:,} neurons built in {built:.1f} s")
    print(json.dumps(figures, indent=1))

    assert not figures["crashed"], "the tab crashed"
    assert not figures["errors"], figures["errors"]
    assert figures["drawn_points"] == 2 * N_NEURONS  # the checkpoint and the base map
    assert figures["first_render"]["how"] == "splat"
    hover = figures["hover"]
    assert hover["hovered"] == hover["to_state_ms"]["n"] == 20
    assert hover["to_state_ms"]["median"] < HOVER_LIMIT_MS, hover
    assert hover["to_ring_drawn_ms"]["median"] < HOVER_LIMIT_MS, hover
    # while the camera moves, frames move the last render (a preview) instead of drawing 2M
    # points again
    pan = figures["camera"]["pan"]
    assert "preview" in pan and pan["preview"]["median"] < 16, pan
    assert figures["render_by_layer"]["how"] == "splat"
