"""The dashboard and the report in headless Chromium (Debian's, driven by Playwright).

Screenshots of every view are saved in ``test-artifacts/``; the page load and hover times are
printed (never asserted: timings are noisy).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from conftest import EVAL_CONCEPTS, EVAL_METHODS, copy_unevaluated, write_evaluation

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def _need_browser():
    if shutil.which(CHROMIUM) is None:
        message = f"{CHROMIUM} is missing (make test installs Debian's chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.fail("playwright is not installed (pip install -e '.[dev]')")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``conceptevo serve`` in a thread of the test process."""

    def __init__(self, workspace: Path):
        import uvicorn

        from conceptevo.serve.app import create_app

        self.port = free_port()
        config = uvicorn.Config(create_app(workspace), host="127.0.0.1", port=self.port,
                                log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    _need_browser()
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    b = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
    yield b
    b.close()
    pw.stop()


@pytest.fixture(scope="module")
def site(tiny_demo):
    root, _, _ = tiny_demo
    with Server(root) as url:
        yield url, root


def wait(page, expression: str, timeout: float = 20.0) -> None:
    """Poll a JavaScript expression until it is truthy. (Playwright's wait_for_function
    compiles its predicate with eval, which the dashboard's Content-Security-Policy forbids;
    page.evaluate goes through the DevTools protocol and is not affected.)"""
    deadline = time.time() + timeout
    while not page.evaluate(expression):
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {expression}")
        time.sleep(0.05)


class Page:
    """A page that records console errors and every request it makes."""

    def __init__(self, browser, url: str):
        self.page = browser.new_page(viewport={"width": 1400, "height": 900})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: m.type in ("error", "warning")
                     and self.errors.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(url)
        wait(self.page, "!!window.conceptevo")
        self.page.evaluate("window.conceptevo.ready.then(() => true)")

    def state(self, key: str):
        return self.page.evaluate(f"window.conceptevo.state[{key!r}]")

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def test_space_view(browser, site):
    url, root = site
    p = Page(browser, url + "/?view=space")
    p.page.wait_for_timeout(300)
    assert not p.errors, p.errors
    study = p.page.evaluate("fetch('/api/study').then(r => r.json())")
    selected = p.state("runs")
    assert selected == [r["name"] for r in study["runs"]]
    n_selected = sum(r["n_neurons"] for r in study["runs"] if r["name"] in selected)
    assert p.state("drawnPoints") == n_selected
    print(f"\nfirst page load: {p.state('loadMs'):.0f} ms")
    p.shot("space")

    # the slider changes what is drawn
    before = p.page.evaluate("document.querySelector('[data-testid=space-canvas]').toDataURL()")
    first_epoch = study["runs"][0]["epochs"][0]
    slider = p.page.locator("[data-testid=epoch-slider]")
    slider.fill(str(first_epoch))
    slider.dispatch_event("input")
    wait(p.page, f"window.conceptevo.state.epoch === {first_epoch}")
    p.page.wait_for_timeout(200)
    after = p.page.evaluate("document.querySelector('[data-testid=space-canvas]').toDataURL()")
    assert after != before
    assert p.state("drawnPoints") == n_selected

    # hovering a point shows its patches
    x, y = p.page.evaluate(f"window.conceptevo.screenPosition('healthy', {first_epoch}, 20)")
    box = p.page.locator("[data-testid=space-canvas]").bounding_box()
    p.page.mouse.move(box["x"] + x, box["y"] + y)
    wait(p.page, "window.conceptevo.state.hovered !== null")
    img = p.page.locator("[data-testid=hover-patches]")
    img.wait_for(state="visible")
    wait(p.page, "document.querySelector('[data-testid=hover-patches]').complete "
                             "&& document.querySelector('[data-testid=hover-patches]')"
                             ".naturalWidth > 0")
    print(f"hover response: {p.state('lastHoverMs'):.0f} ms")
    p.shot("space-hover")

    # clicking pins the neuron: its trajectory has one point per epoch of its run
    hovered = p.state("hovered")
    p.page.mouse.click(box["x"] + x, box["y"] + y)
    wait(p.page, "window.conceptevo.state.pinned !== null")
    run_epochs = next(r["epochs"] for r in study["runs"] if r["name"] == hovered["run"])
    wait(p.page, f"window.conceptevo.state.trajectory.length === {len(run_epochs)}")
    strip = p.page.locator("[data-testid=epoch-strip] img")
    assert strip.count() == len(run_epochs)
    neighbours = p.page.locator("[data-testid=neighbours] .neighbour")
    neighbours.first.wait_for(state="visible")
    assert neighbours.count() > 0
    p.shot("space-pinned")
    assert not p.errors, p.errors
    assert all(u.startswith(url) for u in p.requests), \
        [u for u in p.requests if not u.startswith(url)]


def test_class_training_and_compare_views(browser, site):
    url, root = site
    p = Page(browser, url + "/?view=class")
    view = p.page.locator("[data-testid=class-view]")
    view.wait_for(state="visible")
    items = p.page.locator("[data-testid=class-view] .evolution")
    items.first.wait_for(state="visible")
    assert items.count() > 0
    first_imgs = items.first.locator("img")
    assert first_imgs.count() == 2
    wait(p.page, "Array.from(document.querySelectorAll("
                             "'[data-testid=class-view] .evolution img')).slice(0, 2)"
                             ".every(i => i.complete && i.naturalWidth > 0)")
    assert p.page.locator("[data-testid=reversion-chart]").count() >= 1
    p.shot("class")

    p.page.locator("[data-testid=tab-training]").click()
    p.page.locator("[data-testid=training-view]").wait_for(state="visible")
    p.page.wait_for_timeout(200)
    assert p.page.locator("[data-testid=training-view] svg").count() >= 1
    p.shot("training")

    p.page.locator("[data-testid=tab-compare]").click()
    p.page.locator("[data-testid=compare-view]").wait_for(state="visible")
    p.page.wait_for_timeout(300)
    assert p.page.locator("[data-testid=compare-canvas]").count() == 3
    p.shot("compare")
    assert not p.errors, p.errors
    assert all(u.startswith(url) for u in p.requests)


def test_state_in_the_url_restores_the_view(browser, site):
    url, _ = site
    p = Page(browser, url + "/?view=space&runs=overfit&epoch=1&neuron=overfit:1:7")
    assert p.state("runs") == ["overfit"] and p.state("epoch") == 1
    wait(p.page, "window.conceptevo.state.pinned !== null")
    assert p.state("pinned") == {"run": "overfit", "epoch": 1, "neuron": 7}
    assert not p.errors, p.errors


def test_report_opens_offline(browser, tiny_demo, tmp_path):
    root, _, _ = tiny_demo
    report = root / "report.html"
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors, requests = [], []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(report.as_uri())
    wait(page, "!!window.conceptevo")
    page.evaluate("window.conceptevo.ready.then(() => true)")
    assert page.evaluate("window.conceptevo.state.drawnPoints") > 0
    page.locator("[data-testid=tab-class]").click()
    page.locator("[data-testid=class-view] .evolution").first.wait_for(state="visible")
    page.locator("[data-testid=tab-training]").click()
    page.locator("[data-testid=training-view] svg").first.wait_for(state="visible")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report.png"))
    outside = [u for u in requests if not (u.startswith("file://") or u.startswith("data:"))]
    assert not outside, outside
    assert not errors, errors


def test_a_monitored_run_appears_live_without_reloading(browser, tiny_demo, tmp_path):
    """A training with the monitor writes into a served workspace; the open page shows each
    new epoch by itself."""
    import torch
    import torch.nn.functional as F

    from conceptevo import Monitor
    from conceptevo.data.models import SmallVGG

    root, _, _ = tiny_demo
    copy = tmp_path / "live"
    shutil.copytree(root, copy)
    with Server(copy) as url:
        p = Page(browser, url + "/?view=training")
        p.page.evaluate("window.__sameDocument = true")
        monitor = Monitor(copy, run="live", verbose=False)
        torch.manual_seed(0)
        model = SmallVGG(12, widths=(8, 16), depth=1, hidden=8)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = torch.randn(16, 3, 64, 64), torch.randint(0, 12, (16,))
        dots = "document.querySelectorAll('[data-testid=training-view] " \
               "circle[data-run=\"live\"][data-epoch=\"{}\"]').length > 0"
        for epoch in (1, 2):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            monitor.on_epoch_end(model, epoch, {"train_loss": loss.item(), "train_acc": 0.1,
                                                "val_acc": 0.1})
            wait(p.page, dots.format(epoch), timeout=30)
        assert p.page.evaluate("window.__sameDocument === true"), "the page was reloaded"
        # the monitor's diagnosis is shown too
        wait(p.page, "document.querySelector('[data-testid=training-view]')"
                     ".textContent.includes('Diagnosis')")
        p.shot("training-live")
        assert not p.errors, p.errors


@pytest.fixture(scope="module")
def evaluated_site(tiny_demo, tmp_path_factory):
    """A copy of the demo workspace with a (made-up) evaluation of run healthy, epoch 2."""
    root, _, _ = tiny_demo
    copy = copy_unevaluated(root, tmp_path_factory.mktemp("evaluated") / "demo")
    _, arrays = write_evaluation(copy, "healthy", 2)
    with Server(copy) as url:
        yield url, copy, arrays


def coloured_pixels(page, testid: str) -> int:
    """Pixels of a canvas in colour (not the grey of axes, grid and text)."""
    return page.evaluate(f"""(() => {{
      const canvas = document.querySelector('[data-testid={testid}]');
      const d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
      let n = 0;
      for (let i = 0; i < d.length; i += 4) {{
        const spread = Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]);
        if (d[i + 3] > 0 && spread > 60) n++;
      }}
      return n;
    }})()""")


def check_evaluation_view(page) -> None:
    """The method table (ours first, highlighted) and the ROC curves drawn."""
    rows = page.locator("[data-testid=evaluation-methods] tbody tr")
    rows.first.wait_for(state="visible")
    assert rows.count() == len(EVAL_METHODS)
    assert [rows.nth(i).locator("td").first.inner_text().strip() for i in range(rows.count())] \
        == [title for title, _ in EVAL_METHODS.values()]
    assert rows.first.get_attribute("class") == "ours"
    assert rows.first.locator("td").nth(1).inner_text() == "0.860"
    assert "0.86 [0.83, 0.89]" in page.locator("[data-testid=evaluation-headline]").inner_text()
    assert coloured_pixels(page, "roc-canvas") > 1000
    assert coloured_pixels(page, "auc-depth-canvas") > 200
    assert page.locator("[data-testid=evaluation-reversion] tbody tr").count() == 1


def test_evaluation_view_and_concept_labels(browser, evaluated_site):
    url, _, arrays = evaluated_site
    p = Page(browser, url + "/?view=evaluation")
    p.page.locator("[data-testid=evaluation-view]").wait_for(state="visible")
    check_evaluation_view(p.page)
    assert "view=evaluation" in p.page.url
    p.shot("evaluation")

    # a pinned neuron of the labelled checkpoint shows its concept, its IoU, its top concepts
    p.page.goto(url + "/?view=space&runs=healthy&epoch=2&neuron=healthy:2:20")
    wait(p.page, "document.querySelector('[data-testid=pinned]').textContent"
                 ".includes('top concepts')")
    label, iou = arrays["label"][20], arrays["iou"][20]
    concept = f"{EVAL_CONCEPTS[label]} (IoU {iou.max():.2f})" if label >= 0 else "none"
    assert concept in p.page.locator("[data-testid=pinned]").inner_text()
    assert not p.errors, p.errors
    assert all(u.startswith(url) for u in p.requests)


def test_a_missing_evaluation_shows_how_to_compute_it(browser, tiny_demo, tmp_path):
    root, _, _ = tiny_demo
    with Server(copy_unevaluated(root, tmp_path / "demo")) as url:
        p = Page(browser, url + "/?view=evaluation")
        hint = p.page.locator("[data-testid=evaluation-hint]")
        hint.wait_for(state="visible")
        assert "conceptevo evaluate" in hint.inner_text()
        assert not p.errors, p.errors


def test_the_report_shows_the_evaluation_offline(browser, evaluated_site):
    from conceptevo.report import write_report

    _, root, _ = evaluated_site
    report = write_report(root, root / "report.html", patch_epochs=1)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors, requests = [], []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(report.as_uri() + "?view=evaluation")
    wait(page, "!!window.conceptevo")
    page.evaluate("window.conceptevo.ready.then(() => true)")
    check_evaluation_view(page)
    outside = [u for u in requests if not (u.startswith("file://") or u.startswith("data:"))]
    assert not outside, outside
    assert not errors, errors
