"""The dashboard's map at scale: a synthetic workspace of 100,000 and 1,000,000 neurons per
checkpoint, served, and measured in headless Chromium (Debian's, driven by Playwright).

    python benchmarks/dashboard_scale.py [--sizes 100000 1000000] [--moves 20]
                                         [--json benchmarks/results/dashboard_scale.json]

Per size: the time to build the workspace (``conceptevo.serve.synthetic``: one run, epochs 0
and 1, a base map of as many neurons); the bytes of ``/api/points/{run}/{epoch}`` as typed
arrays (``?format=binary``, what the page loads) and as JSON, and the server's time for each;
in the page: the time from navigation to the first map drawn and that first render alone, a
full render again (colour by layer), ``--moves`` hovers (pointermove -> hovered state and
tooltip updated; -> hover ring drawn; the pick alone), a pan and a zoom (every frame's
render time and kind: ``splat`` a full render, ``preview`` the last render moved), and the
JS heap (CDP ``Runtime.getHeapUsage``, typed-array backing stores included where Chromium
reports them). ``tests/test_browser_scale.py`` runs the same measurement (``measure``) on the
1M map and asserts on it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update"]
RUN = "synthetic"
EPOCH = 1


def payload_bytes(url: str, json_too: bool = True) -> dict:
    """Bytes and server seconds of the points of (RUN, EPOCH): binary, and JSON."""
    out = {}
    for kind, query in (("binary", "?format=binary"), ("json", "")):
        if kind == "json" and not json_too:
            continue
        started = time.perf_counter()
        with urllib.request.urlopen(f"{url}/api/points/{RUN}/{EPOCH}{query}") as r:
            body = r.read()
        out[kind] = {"bytes": len(body), "seconds": round(time.perf_counter() - started, 3)}
    return out


def wait(page, expression: str, timeout: float = 60.0):
    """Poll a JavaScript expression until it is truthy; its value. (The page's
    Content-Security-Policy forbids Playwright's wait_for_function.)"""
    deadline = time.time() + timeout
    while not (value := page.evaluate(expression)):
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {expression}")
        time.sleep(0.02)
    return value


def summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 1), "max": round(max(values), 1),
            "n": len(values)} if values else {}


def heap(page) -> dict:
    """The page's JS heap in MB (CDP): used, total, and typed-array backing stores."""
    cdp = page.context.new_cdp_session(page)
    usage = cdp.send("Runtime.getHeapUsage")
    cdp.send("Performance.enable")
    metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    cdp.detach()
    mb = 1024 * 1024
    out = {"used_mb": round(usage["usedSize"] / mb, 1),
           "total_mb": round(usage["totalSize"] / mb, 1)}
    if "backingStorageSize" in usage:
        out["backing_store_mb"] = round(usage["backingStorageSize"] / mb, 1)
    if "JSHeapUsedSize" in metrics:
        out["metrics_used_mb"] = round(metrics["JSHeapUsedSize"] / mb, 1)
    return out


def hovers(page, n_neurons: int, moves: int, seed: int = 0) -> dict:
    """``moves`` pointermoves onto neurons of (RUN, EPOCH), each waited for: the page's own
    timings (event -> state and tooltip updated, -> ring drawn, the pick) and the round trip
    seen from here (CDP included)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    box = page.locator("[data-testid=space-canvas]").bounding_box()
    ms, frame, pick, trip, found = [], [], [], [], 0
    for neuron in rng.choice(n_neurons, moves, replace=False):
        pos = page.evaluate(f"window.conceptevo.screenPosition({RUN!r}, {EPOCH}, {neuron})")
        x, y = (min(max(v, 2), limit - 2) for v, limit in
                zip(pos, (box["width"], box["height"])))
        count = page.evaluate("window.conceptevo.state.hover.count")
        started = time.perf_counter()
        page.mouse.move(box["x"] + x, box["y"] + y)
        wait(page, f"window.conceptevo.state.hover.count > {count} && "
                   "window.conceptevo.state.hover.frameMs !== null")
        trip.append(1000 * (time.perf_counter() - started))
        hover = page.evaluate("window.conceptevo.state.hover")
        ms.append(hover["ms"])
        frame.append(hover["frameMs"])
        pick.append(hover["handlerMs"])
        found += page.evaluate("window.conceptevo.state.hovered !== null")
        page.evaluate("window.conceptevo.state.hover.frameMs = null")
    return {"to_state_ms": summary(ms), "to_ring_drawn_ms": summary(frame),
            "handler_ms": summary(pick), "round_trip_ms": summary(trip), "hovered": found}


def camera_moves(page) -> dict:
    """A drag across the map in 12 steps, then 6 wheel steps: every render's kind and time."""
    box = page.locator("[data-testid=space-canvas]").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.evaluate("window.conceptevo.state.mapDraws.length = 0")
    page.mouse.move(cx, cy)
    page.mouse.down()
    for i in range(1, 13):
        page.mouse.move(cx + 15 * i, cy + 8 * i)
        page.wait_for_timeout(16)
    page.mouse.up()
    pan = page.evaluate("window.conceptevo.state.mapDraws.splice(0)")
    for _ in range(6):
        page.mouse.wheel(0, -120)
        page.wait_for_timeout(16)
    page.wait_for_timeout(400)  # the render once the camera is still
    zoom = page.evaluate("window.conceptevo.state.mapDraws.splice(0)")

    def kinds(draws):
        return {how: summary([d["ms"] for d in draws if d["how"] == how])
                for how in sorted({d["how"] for d in draws})}

    return {"pan": kinds(pan), "zoom": kinds(zoom)}


def measure(browser, url: str, n_neurons: int, moves: int = 20, shot: Path | None = None
            ) -> dict:
    """The page's figures on a served synthetic workspace (see the module's docstring), with a
    screenshot of the hovered map at ``shot``; records whether the tab crashed and the errors
    it logged."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    crashed, errors = [], []
    page.on("crash", lambda *_: crashed.append(True))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    started = time.perf_counter()
    page.goto(f"{url}/?view=space&epoch={EPOCH}")
    wait(page, "!!window.conceptevo && window.conceptevo.state.loadMs !== null")
    first = page.evaluate("window.conceptevo.state.mapDraw")
    out = {"load_ms": page.evaluate("window.conceptevo.state.loadMs"),
           "load_wall_ms": round(1000 * (time.perf_counter() - started)),
           "first_render": first, "drawn_points": page.evaluate(
               "window.conceptevo.state.drawnPoints + window.conceptevo.state.drawnBase")}
    page.wait_for_timeout(300)  # the hover index, built while idle
    out["hover"] = hovers(page, n_neurons, moves)
    # the last hovered neuron's patches, rendered by the server on first request (then cached)
    wait(page, "(() => { const i = document.querySelector('[data-testid=hover-patches]'); "
               "return i && i.complete && i.naturalWidth > 0; })()", timeout=20)
    out["hover"]["to_patches_ms"] = page.evaluate("window.conceptevo.state.lastHoverMs")
    if shot is not None:
        page.screenshot(path=str(shot))
    page.mouse.move(2, 2)
    out["camera"] = camera_moves(page)
    page.select_option("#color-by", "layer")
    wait(page, "window.conceptevo.state.mapDraw && window.conceptevo.state.color === 'layer' "
               "&& window.conceptevo.state.mapDraws.some(d => d.how !== 'preview')")
    out["render_by_layer"] = page.evaluate("window.conceptevo.state.mapDraw")
    out["heap"] = heap(page)
    out["crashed"] = bool(crashed)
    out["errors"] = errors
    page.close()
    return out


def run_size(browser, n_neurons: int, moves: int, json_too: bool = True) -> dict:
    from conceptevo.serve.app import ThreadedServer
    from conceptevo.serve.synthetic import build_synthetic

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        build_synthetic(Path(tmp) / "ws", n_neurons)
        built = round(time.perf_counter() - started, 2)
        with ThreadedServer(Path(tmp) / "ws") as url:
            payload = payload_bytes(url, json_too)
            page = measure(browser, url, n_neurons, moves)
    return {"neurons": n_neurons, "build_seconds": built, "payload": payload, **page}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--moves", type=int, default=20)
    parser.add_argument("--json", type=Path,
                        default=ROOT / "benchmarks" / "results" / "dashboard_scale.json")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        results = {str(n): run_size(browser, n, args.moves) for n in args.sizes}
        version = browser.version
        browser.close()
    doc = {"command": " ".join(["python benchmarks/dashboard_scale.py",
                                *(sys.argv[1:] if argv is None else argv)]),
           "machine": {"cpus": _cpus(), "platform": platform.platform(),
                       "chromium": version, "flags": FLAGS},
           "sizes": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    return doc


def _cpus() -> int:
    try:
        return int(subprocess.run(["nproc"], capture_output=True, text=True).stdout)
    except (OSError, ValueError):
        return 0


if __name__ == "__main__":
    main()
