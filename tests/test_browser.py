"""The dashboard and the report in headless Chromium (Debian's, driven by Playwright).

Screenshots of every view are saved in ``test-artifacts/``; the page load and hover times are
printed (never asserted: timings are noisy).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import EVAL_CONCEPTS, EVAL_METHODS, EVAL_RANKERS, copy_unevaluated, write_evaluation

from conceptevo.serve.app import ThreadedServer as Server  # in a thread of this process

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
    # the reversion chart's layer labels may be short; their <title> holds the full name
    labels = p.page.evaluate("Array.from(document.querySelectorAll("
                             "'[data-testid=reversion-chart] svg > text.tick'), t => "
                             "[t.firstChild.nodeValue, t.querySelector('title').textContent])")
    study = p.page.evaluate("fetch('/api/study').then(r => r.json())")
    layer_names = {layer["name"] for r in study["runs"] for layer in r["layers"]}
    assert labels and all(full in layer_names and full.endswith(short) for short, full in labels)
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
    # importance against the simple rankers: a row per ranker, ours first; a layer a ranker
    # does not rank shows a dash
    rows = page.locator("[data-testid=evaluation-rankers] tbody tr")
    assert rows.count() == len(EVAL_RANKERS)
    cells = [[c.strip() for c in rows.nth(i).locator("td").all_inner_texts()]
             for i in range(rows.count())]
    assert [r[0] for r in cells] == [t for t, _, _ in EVAL_RANKERS.values()]
    assert cells[0] == ["Gradient x change (ours)", "25.0 pts", "–", "25.0 pts", "75.0%"]
    assert rows.first.get_attribute("class") == "ours"
    assert cells[2][-1] == "–"
    assert "12.5 pts, 6.3 pts, 0.0 pts" in rows.nth(1).locator("td span").nth(1).get_attribute(
        "title")


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


# ------------------------------------------------------------------ workspace variants
CONCEPT_METRICS = ["turnover", "speed", "dead", "degenerate", "distinct_stimuli", "diversity",
                   "nonfinite"]
TRAINING_FIELDS = {"train_acc", "val_acc", "train_loss", "val_loss", "lr", "finite", "n_train"}


def variant(root: Path, dest: Path) -> Path:
    """A copy of the demo workspace whose study config lists its runs in reverse (not
    alphabetical) order: the page must keep the order the API gives."""
    import json

    shutil.copytree(root, dest, ignore=lambda d, names: ["report.html"] if Path(d) == root else [])
    study = json.loads((dest / "study.json").read_text())
    study["runs"] = study["runs"][::-1]
    (dest / "study.json").write_text(json.dumps(study))
    return dest


@pytest.fixture(scope="module")
def no_metrics_site(tiny_demo, tmp_path_factory):
    """No runs/<run>/metrics.csv; the diagnosis alone, with the probe accuracy per epoch."""
    import json

    root, _, _ = tiny_demo
    copy = variant(root, tmp_path_factory.mktemp("no-metrics") / "demo")
    for path in copy.glob("runs/*/metrics.csv"):
        path.unlink()
    diagnosis = json.loads((copy / "diagnosis.json").read_text())
    for d in diagnosis["runs"].values():
        for row in d["metrics"]:
            for field in TRAINING_FIELDS:
                row.pop(field, None)
            row["probe_acc"] = round(0.08 + 0.25 * row["epoch"], 3)
    (copy / "diagnosis.json").write_text(json.dumps(diagnosis))
    with Server(copy) as url:
        yield url, copy


@pytest.fixture(scope="module")
def odd_metrics_site(tiny_demo, tmp_path_factory):
    """Run healthy's metrics with a loss spike (1e4 at epoch 2 among losses of about 1) and
    extra columns with long tick labels (5-digit counts, 4-decimal values)."""
    root, _, _ = tiny_demo
    copy = variant(root, tmp_path_factory.mktemp("odd-metrics") / "demo")
    (copy / "runs" / "healthy" / "metrics.csv").write_text(
        "epoch,finite,lr,n_train,train_acc,train_loss,val_acc,val_loss,images_seen,grad_norm\n"
        "0,1,0.0,240,0.09,2.5,0.08,2.49,0,0.0001\n"
        "1,1,0.0025,240,0.1,1.2,0.13,1.4,12000,0.0003\n"
        "2,1,0.0012,240,0.2,10000.0,0.2,2.0,24000,0.0002\n"
        "3,1,0.0004,240,0.21,0.25,0.21,1.1,36000,0.0004\n")
    with Server(copy) as url:
        yield url, copy


def open_training(browser, url: str) -> Page:
    p = Page(browser, url + "/?view=training")
    p.page.locator("[data-testid=training-view] svg").first.wait_for(state="visible")
    p.page.wait_for_timeout(200)
    return p


def y_ticks(page, chart: str) -> list[float]:
    """The y tick labels of an SVG chart (by its title), as numbers."""
    texts = page.evaluate(f"""Array.from(document.querySelectorAll(
        '[data-testid=training-view] svg[aria-label="{chart}"] g.tick text'),
        t => t.textContent)""")
    return [float(t) for t in texts]


def test_training_view_without_training_metrics_shows_the_concept_metrics(browser, no_metrics_site):
    url, _ = no_metrics_site
    p = open_training(browser, url)
    view = p.page.locator("[data-testid=training-view]")
    study = p.page.evaluate("fetch('/api/study').then(r => r.json())")
    order = [r["name"] for r in study["runs"]]
    assert order == ["overfit", "lr-too-high", "healthy"]

    # a legend naming each run, with its colour, in the API's order
    legend = p.page.locator("[data-testid=training-legend] .legend-item[data-run]")
    assert [legend.nth(i).inner_text().strip() for i in range(legend.count())] == order
    assert legend.locator(".swatch").count() == len(order)
    # a note saying how to give accuracy and loss, not "no training metrics"
    assert "No training metrics are stored" not in view.inner_text()
    hint = p.page.locator("[data-testid=no-training-metrics]")
    assert 'metrics = "log.csv"' in hint.inner_text()
    # every concept metric charted (a line per run), the probe accuracy on a 0..1 axis
    charted = p.page.evaluate("Array.from(document.querySelectorAll("
                              "'[data-testid=training-view] svg'), "
                              "s => s.getAttribute('aria-label'))")
    assert charted[0] == "Probe accuracy"
    assert set(CONCEPT_METRICS) <= set(charted)
    ticks = y_ticks(p.page, "Probe accuracy")
    assert ticks[0] == 0 and ticks[-1] == 1
    runs_drawn = p.page.evaluate("""Array.from(new Set(Array.from(document.querySelectorAll(
        '[data-testid=training-view] svg[aria-label="Probe accuracy"] circle'),
        c => c.dataset.run)))""")
    assert runs_drawn == order
    p.shot("training-no-metrics")
    assert not p.errors, p.errors


def test_runs_keep_the_study_order_everywhere(browser, odd_metrics_site):
    url, _ = odd_metrics_site
    p = open_training(browser, url)
    order = [r["name"] for r in p.page.evaluate("fetch('/api/study').then(r => r.json())")["runs"]]
    assert order != sorted(order)

    def texts(selector: str) -> list[str]:
        return [t.strip() for t in p.page.locator(selector).all_inner_texts()]

    assert texts("[data-testid=training-legend] .legend-item[data-run]") == order
    flagged = [row.split("\t")[0].strip()
               for row in texts("[data-testid=training-view] table.flags tbody tr")]
    flagged = list(dict.fromkeys(flagged))
    assert flagged and flagged == [r for r in order if r in flagged]

    p.page.locator("[data-testid=tab-space]").click()
    p.page.locator("#space-runs .run-choice").first.wait_for(state="visible")
    wait(p.page, "document.querySelectorAll('#legend .legend-item').length > 0")
    assert texts("#space-runs .run-choice") == order
    assert texts("#legend .legend-item")[:len(order)] == order
    p.page.locator("[data-testid=tab-compare]").click()
    p.page.locator("#compare-runs .run-choice").first.wait_for(state="visible")
    assert texts("#compare-runs .run-choice") == order
    assert not p.errors, p.errors


def test_a_loss_spike_gets_a_logarithmic_axis(browser, odd_metrics_site):
    url, _ = odd_metrics_site
    p = open_training(browser, url)
    loss = p.page.locator("[data-testid=training-view] svg[aria-label=Loss]")
    assert loss.get_attribute("data-scale") == "log"
    ticks = y_ticks(p.page, "Loss")
    assert len(ticks) >= 3
    assert all(t > 0 and abs(math.log10(t) - round(math.log10(t))) < 1e-9 for t in ticks), ticks
    assert ticks[-1] >= 1e4
    # healthy's losses of 2.5 (epoch 0) and 0.25 (epoch 3) are a decade apart, not flattened
    cy = p.page.evaluate("""Object.fromEntries(Array.from(document.querySelectorAll(
        '[data-testid=training-view] svg[aria-label=Loss] circle')).filter(c =>
        c.textContent.startsWith('healthy train_loss')).map(c => [c.dataset.epoch,
        Number(c.getAttribute('cy'))]))""")
    assert cy["3"] - cy["0"] > 15, cy
    p.shot("training-loss-spike")

    # the rule: log only for positive values spanning more than a factor 20
    axis = "window.conceptevo.charts.valueAxis({}, {{kind: 'loss'}}).log === true"
    assert p.page.evaluate(axis.format("[0.5, 12]"))
    assert not p.page.evaluate(axis.format("[0.5, 2.4, 3]"))
    assert not p.page.evaluate(axis.format("[0, 5, 10000]"))
    assert not p.errors, p.errors


SVG_AXIS_LAYOUT = """s => {
  const title = s.querySelector('text.axis-label[transform]');
  const ticks = Array.from(s.querySelectorAll('g.tick text'));
  return {chart: s.getAttribute('aria-label'), ticks: ticks.map(t => t.textContent),
          titleRight: title ? title.getBoundingClientRect().right : null,
          ticksLeft: Math.min(...ticks.map(t => t.getBoundingClientRect().left))};
}"""


def test_axis_titles_clear_long_tick_labels(browser, odd_metrics_site):
    url, _ = odd_metrics_site
    p = open_training(browser, url)
    # SVG charts: the rotated y-axis title ends left of every y tick label, in every chart
    # of the page and in charts of 5- and 6-digit ticks
    served = p.page.evaluate(f"""Array.from(document.querySelectorAll(
        '[data-testid=training-view] svg')).map({SVG_AXIS_LAYOUT})""")
    for c in served:
        if c["titleRight"] is not None:
            assert c["titleRight"] + 1 <= c["ticksLeft"], c
    made = p.page.evaluate(f"""(() => {{
      const c = window.conceptevo.charts;
      return [[0, 120000], [10000, 16000], [0.0001, 0.0004], [-0.0004, 0.0001]].map(([lo, hi]) => {{
        const {{node}} = c.chartFrame({{title: `${{lo}}..${{hi}}`, xTicks: c.niceTicks(0, 3, 3, 1),
                                      yTicks: c.niceTicks(lo, hi, 5), yLabel: 'images per epoch'}});
        document.body.append(node);
        const layout = ({SVG_AXIS_LAYOUT})(node);
        node.remove();
        return layout;
      }});
    }})()""")
    assert all(any(len(t) >= 5 for t in c["ticks"]) for c in made), made
    for c in made:
        assert c["titleRight"] + 1 <= c["ticksLeft"], c

    # canvas charts: the title's pixels (what a title adds) lie left of the tick labels' pixels
    columns = p.page.evaluate("""(() => {
      const c = window.conceptevo.charts;
      const frame = (yLabel) => c.canvasFrame({title: 't', xTicks: c.niceTicks(0, 3, 3, 1),
        yTicks: c.niceTicks(0, 120000, 5), yLabel});
      const titled = frame('images per epoch'), bare = frame(' ');   // same margins, no ink
      const w = titled.node.width, h = titled.node.height;
      const a = titled.ctx.getImageData(0, 0, w, h).data;
      const b = bare.ctx.getImageData(0, 0, w, h).data;
      let titleRight = -1, ticksLeft = Infinity;
      for (let y = 22; y < 216; y++) for (let x = 0; x < titled.left; x++) {
        const i = 4 * (y * w + x);
        if (a[i + 3] !== b[i + 3]) titleRight = Math.max(titleRight, x);
        if (x < titled.left - 1 && b[i + 3] > 0) ticksLeft = Math.min(ticksLeft, x);
      }
      return {titleRight, ticksLeft, left: titled.left, dpr: window.devicePixelRatio};
    })()""")
    assert columns["dpr"] == 1
    assert 0 <= columns["titleRight"] < columns["ticksLeft"] < columns["left"], columns
    assert not p.errors, p.errors


def test_counts_and_fractions_start_at_zero(browser, site):
    url, _ = site
    p = open_training(browser, url)
    for metric in CONCEPT_METRICS + ["Accuracy", "Learning rate"]:
        ticks = y_ticks(p.page, metric)
        if not ticks:      # not in this workspace
            continue
        assert ticks[0] == 0 and min(ticks) >= 0, (metric, ticks)
    # the demo's nonfinite is 0 at every epoch: a 0..1 axis
    assert y_ticks(p.page, "nonfinite")[::len(y_ticks(p.page, "nonfinite")) - 1] == [0, 1]
    assert p.page.evaluate("window.conceptevo.charts.niceTicks(0, 0).domain") == [0, 1]
    zero_axis = "window.conceptevo.charts.valueAxis([0, 0, 0], {kind: 'zero'})"
    assert p.page.evaluate(zero_axis + ".domain") == [0, 1]
    assert not p.errors, p.errors


def test_the_epoch_colour_bar_has_integer_ticks(browser, site):
    url, _ = site
    p = Page(browser, url + "/?view=space&color=epoch")
    bar = p.page.locator("#legend [data-testid=epoch-colorbar]")
    bar.wait_for(state="visible")
    epochs = sorted({e for r in p.page.evaluate("fetch('/api/study').then(r => r.json())")["runs"]
                     for e in r["epochs"]})
    ticks = bar.locator(".colorbar-tick").all_inner_texts()
    assert all(t.isdigit() for t in ticks), ticks
    assert [int(t) for t in ticks] == epochs
    p.shot("space-epoch-colours")
    many = p.page.evaluate("window.conceptevo.colors.epochTicks("
                           "Array.from({length: 50}, (_, i) => i))")
    assert many[0] == 0 and many[-1] == 49 and 3 <= len(many) <= 10
    assert all(isinstance(t, int) for t in many)
    assert p.page.evaluate("window.conceptevo.colors.epochTicks([0, 0.5, 1, 1.5, 2])") == [0, 1, 2]
    assert not p.errors, p.errors


def test_neighbours_show_the_full_layer_name(browser, site):
    url, _ = site
    p = Page(browser, url + "/?view=space&runs=healthy&epoch=3&neuron=healthy:3:100")
    neighbours = p.page.locator("[data-testid=neighbours] .neighbour")
    neighbours.first.wait_for(state="visible")
    detail = p.page.evaluate("fetch('/api/neuron/healthy/3/100').then(r => r.json())")
    assert "." in detail["layer"]          # a qualified name, e.g. features.conv3_1
    assert detail["layer"] in p.page.locator("[data-testid=pinned] .facts").inner_text()
    assert neighbours.count() == len(detail["neighbours"])
    for i, n in enumerate(detail["neighbours"]):
        item = neighbours.nth(i)
        assert n["layer"] in item.inner_text(), (n, item.inner_text())
        assert item.locator(".layer-name").get_attribute("title") == n["layer"]
    assert not p.errors, p.errors


def test_layers_are_coloured_by_relative_depth(browser, site):
    url, _ = site
    p = Page(browser, url + "/?view=compare&color=layer")
    p.page.locator("[data-testid=compare-canvas]").first.wait_for(state="visible")
    study = p.page.evaluate("fetch('/api/study').then(r => r.json())")
    compared = p.state("compareRuns")
    epoch = p.state("epoch")
    wait(p.page, f"window.conceptevo.drawnColor({compared[0]!r}, {epoch}, 0) !== null")
    for run in (r for r in study["runs"] if r["name"] in compared):
        layers = run["layers"]
        result = p.page.evaluate("""([run, epoch, layers]) => layers.map((layer, i) => {
          const c = window.conceptevo;
          const colours = new Set();
          for (let k = layer.offset; k < layer.offset + layer.channels; k++) {
            const colour = c.drawnColor(run, epoch, k);
            if (colour !== null) colours.add(colour);
          }
          return {colours: [...colours],
                  expected: c.colors.layerRamp(layers.length > 1 ? i / (layers.length - 1) : 0)};
        })""", [run["name"], epoch, layers])
        for layer, r in zip(layers, result):
            assert r["colours"] == [r["expected"]], (run["name"], layer["name"], r)
        ramp_end = p.page.evaluate("window.conceptevo.colors.layerRamp(1)")
        assert result[-1]["colours"] == [ramp_end]
    legend = p.page.locator("#legend [data-testid=layer-colorbar]").inner_text()
    assert "layer depth (relative" in legend
    assert "first probed layer" in legend and "last probed layer" in legend
    p.shot("compare-layers")

    # architectures of different depth: the same colour means the same relative depth
    palettes = p.page.evaluate("""(() => {
      const fake = (n) => ({layers: Array.from({length: n}, (_, i) => ({name: `l${i}`}))});
      const p = window.conceptevo.colors.layerPalette;
      const ramp = window.conceptevo.colors.layerRamp;
      return {resnet: p(fake(21)), vgg: p(fake(5)), one: p(fake(1)), start: ramp(0), end: ramp(1)};
    })()""")
    assert palettes["resnet"][-1] == palettes["vgg"][-1] == palettes["end"]
    assert palettes["resnet"][0] == palettes["vgg"][0] == palettes["one"][0] == palettes["start"]
    assert palettes["resnet"][10] == palettes["vgg"][2]
    assert palettes["resnet"][4] != palettes["vgg"][4]
    assert not p.errors, p.errors


def test_a_damaged_checkpoint_is_left_out_and_named(browser, tiny_demo, tmp_path):
    """One projection cut short: the pinned neuron of another checkpoint still shows its
    neighbours, and the panel names the checkpoint left out (the server answers 503 for it,
    never 500)."""
    root, _, _ = tiny_demo
    copy = variant(root, tmp_path / "damaged")
    damaged = copy / "space" / "projection" / "healthy" / "epoch_0001.npz"
    damaged.write_bytes(damaged.read_bytes()[:100])
    with Server(copy) as url:
        p = Page(browser, url + "/?view=space&runs=healthy&epoch=3&neuron=healthy:3:100")
        p.page.locator("[data-testid=neighbours] .neighbour").first.wait_for(state="visible")
        wait(p.page, "document.querySelector('[data-testid=pinned]').innerText"
                     ".includes('Left out: healthy epoch 1')")
        status = p.page.evaluate("fetch('/api/points/healthy/1').then(r => r.status)")
        assert status == 503
        p.shot("damaged-checkpoint")


# ------------------------------------------------------------------ a vision transformer
@pytest.fixture(scope="module")
def vit_site(tmp_path_factory):
    """The tiny ViT demo (tests/test_demo.py builds it once per session), served."""
    from test_demo import build_tiny_vit_demo

    root, _, _ = build_tiny_vit_demo(tmp_path_factory)
    with Server(root) as url:
        yield url, root


#: JavaScript: for the images matching a selector, [complete, width, spread of pixel values]
#: (an image drawn on a canvas; spread = max - min over its RGB values: 0 for a blank image)
IMAGE_CONTENT = """(selector) => Array.from(document.querySelectorAll(selector)).map(img => {
  if (!img.complete || img.naturalWidth === 0) return [false, img.naturalWidth, 0];
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext('2d');
  ctx.drawImage(img, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  let lo = 255, hi = 0;
  for (let i = 0; i < d.length; i += 4) for (let k = 0; k < 3; k++) {
    lo = Math.min(lo, d[i + k]); hi = Math.max(hi, d[i + k]);
  }
  return [true, img.naturalWidth, hi - lo];
})"""


def images_with_content(page, selector: str) -> list:
    """[complete, width, spread] of every image matching ``selector`` (see IMAGE_CONTENT)."""
    return page.evaluate(f"({IMAGE_CONTENT})({selector!r})")


def all_loaded(selector: str) -> str:
    return (f"Array.from(document.querySelectorAll({selector!r})).length > 0 && "
            f"Array.from(document.querySelectorAll({selector!r}))"
            ".every(i => i.complete && i.naturalWidth > 0)")


def test_vit_space_view_shows_its_token_neurons_and_their_patches(browser, vit_site):
    url, _ = vit_site
    p = Page(browser, url + "/?view=space")
    p.page.wait_for_timeout(300)
    study = p.page.evaluate("fetch('/api/study').then(r => r.json())")
    layers = [layer["name"] for layer in study["runs"][0]["layers"]]
    assert layers == [f"blocks.{i}.mlp.act" for i in range(4)]
    selected = p.state("runs")
    assert p.state("drawnPoints") == sum(r["n_neurons"] for r in study["runs"]
                                         if r["name"] in selected) > 0

    # hovering a neuron of the last block shows its patches
    epoch = study["runs"][0]["epochs"][-1]
    neuron = study["runs"][0]["layers"][3]["offset"] + 5
    x, y = p.page.evaluate(f"window.conceptevo.screenPosition('healthy', {epoch}, {neuron})")
    box = p.page.locator("[data-testid=space-canvas]").bounding_box()
    p.page.mouse.move(box["x"] + x, box["y"] + y)
    wait(p.page, "window.conceptevo.state.hovered !== null")
    p.page.locator("[data-testid=hover-patches]").wait_for(state="visible")
    wait(p.page, all_loaded("[data-testid=hover-patches]"))
    assert all(ok and width > 0 and spread > 0 for ok, width, spread in
               images_with_content(p.page, "[data-testid=hover-patches]"))
    p.shot("vit-space-hover")

    # pinning it: its trajectory, its patches at every epoch, neighbours in other runs
    hovered = p.state("hovered")
    p.page.mouse.click(box["x"] + x, box["y"] + y)
    wait(p.page, "window.conceptevo.state.pinned !== null")
    run_epochs = next(r["epochs"] for r in study["runs"] if r["name"] == hovered["run"])
    wait(p.page, f"window.conceptevo.state.trajectory.length === {len(run_epochs)}")
    strip = "[data-testid=epoch-strip] img"
    assert p.page.locator(strip).count() == len(run_epochs)
    wait(p.page, all_loaded(strip))
    assert all(ok and spread > 0 for ok, _, spread in images_with_content(p.page, strip))
    p.page.locator("[data-testid=neighbours] .neighbour").first.wait_for(state="visible")
    pinned = p.page.locator("[data-testid=pinned]").inner_text()
    assert "blocks." in pinned and ".mlp.act" in pinned
    p.shot("vit-space-pinned")
    assert not p.errors, p.errors
    assert all(u.startswith(url) for u in p.requests)


def test_vit_class_view_shows_evolutions_with_patches_and_no_empty_panel(browser, vit_site):
    url, _ = vit_site
    p = Page(browser, url + "/?view=class")
    p.page.locator("[data-testid=class-view] .evolution").first.wait_for(state="visible")
    sections = p.page.locator("[data-testid=class-view] .layer-evolutions")
    assert sections.count() == 4
    for i in range(4):
        assert sections.nth(i).locator("h3").inner_text().endswith(".mlp.act")
        assert sections.nth(i).locator(".evolution").count() > 0   # no empty layer
    images = "[data-testid=class-view] .evolution img"
    wait(p.page, all_loaded(images))
    content = images_with_content(p.page, images)
    assert len(content) == 2 * p.page.locator("[data-testid=class-view] .evolution").count()
    assert all(ok and spread > 0 for ok, _, spread in content)
    assert p.page.locator("[data-testid=reversion-chart]").count() >= 1
    # the layers of the reversion chart are told apart (every block's MLP layer ends in
    # "mlp.act": the labels keep the block's number)
    ticks = p.page.evaluate("""Array.from(document.querySelectorAll(
        '[data-testid=reversion-chart] text.tick')).filter(t => t.querySelector('title'))
        .map(t => [t.firstChild.textContent, t.querySelector('title').textContent])""")
    first = [label for label, layer in ticks][:4]
    assert first == [f"{i}.mlp.act" for i in range(4)], ticks
    assert all(layer.endswith(label) for label, layer in ticks)
    assert p.page.locator("[data-testid=class-view] .empty").count() == 0
    assert p.page.locator("[data-testid=class-view] .note.error").count() == 0
    p.shot("vit-class")

    # the other views of the ViT's workspace render too
    p.page.locator("[data-testid=tab-training]").click()
    p.page.locator("[data-testid=training-view] svg").first.wait_for(state="visible")
    p.page.locator("[data-testid=tab-evaluation]").click()
    p.page.locator("[data-testid=evaluation-methods] tbody tr").first.wait_for(state="visible")
    p.shot("vit-evaluation")
    assert not p.errors, p.errors
    assert all(u.startswith(url) for u in p.requests)


def test_a_shortcut_flag_shows_the_patches_of_its_neurons(browser, tiny_demo, tmp_path):
    """The Training view shows, under the flags, the top patches of the neurons a flag names
    (a shortcut flag's detectors of the concept), served from the workspace."""
    import shutil

    from conceptevo.workspace import Workspace, atomic

    root = tmp_path / "demo"
    shutil.copytree(tiny_demo[0], root)
    ws = Workspace(root)
    report = ws.read_json(ws.path("diagnosis.json"))
    report["runs"]["healthy"]["flags"].append(
        {"epoch": 1, "rule": "shortcut", "message": "class 00 relies on 'noise background'",
         "evidence": {"class": 0, "concept": "bg_noise", "rate_in": 0.6, "rate_out": 0.0,
                      "neurons": [0, 5, 9]}})
    atomic.write_json(ws.path("diagnosis.json"), report)
    with Server(root) as url:
        p = Page(browser, url)
        p.page.locator("[data-testid=tab-training]").click()
        block = p.page.locator("[data-testid=flag-evidence]")
        block.first.wait_for(state="visible")
        assert block.count() == 1 and "bg_noise" in block.inner_text()
        imgs = block.locator("img.patches")
        assert imgs.count() == 3
        wait(p.page, "[...document.querySelectorAll('[data-testid=flag-evidence] img')]"
                     ".every((i) => i.complete && i.naturalWidth > 0)")
        assert any("/patches/healthy/1/5.webp" in r for r in p.requests)
        assert not p.errors, p.errors


def test_an_evaluation_without_masks_shows_what_it_skipped_and_the_checks(browser, tiny_demo,
                                                                          tmp_path):
    from conceptevo.workspace import Workspace, atomic

    root, _, _ = tiny_demo
    ws = Workspace(copy_unevaluated(root, tmp_path / "demo"))
    atomic.write_json(ws.path("evaluation", "evaluation.json"), {
        "schema": 1, "created": "2026-12-02T12:00:00+00:00", "annotations": None,
        "labels": None, "alignment": None,
        "skipped": ["concept labels and the alignment study: no pixel-level concept masks"],
        "settings": {"seed": 0, "checkpoints": []},
        "checks": {"checkpoint": {"run": "healthy", "epoch": 2},
                   "permuted_copy": {"recovery": 1.0, "n_neurons": 29, "threshold": 0.99,
                                     "passed": True, "per_layer": {}},
                   "rescaled_copy": {"skipped": "Tanh after layer features.0 does not commute "
                                                "with a positive rescaling"},
                   "agreement": {"pairs": [[["healthy", 2], ["overfit", 2]]], "alpha": 0.01,
                                 "passed": False, "per_layer": {
                                     "features.0": {"agreement": 0.05, "chance": 0.06, "n": 32,
                                                    "p_value": 0.7, "above_chance": False},
                                     "features.3": {"agreement": 0.4, "chance": 0.03, "n": 64,
                                                    "p_value": 1e-30, "above_chance": True}}}},
        "classes": {"order": ["unified", "matched"], "seeds": [0, 1],
                    "wins": {"matched": 1}, "beats_on_seed": [True, False],
                    "beats_all_baselines": False, "passed": True, "above_chance_on_seeds": 2,
                    "n_seeds": 2, "depth_names": {"0": "features.0"},
                    "methods": {m: {"title": title, "auc": auc, "ci95": [auc - 0.02, auc + 0.02],
                                    "mean": auc + 0.01, "spread": [auc, auc + 0.02],
                                    "n_queries": 40, "n_candidates": 240, "positive_rate": 0.3,
                                    "by_depth": {"0": {"auc": auc, "ci95": [auc - 0.1, auc + 0.1],
                                                       "n_queries": 40}},
                                    "roc": {"fpr": [0, 0.5, 1], "tpr": [0, 0.8, 1]},
                                    "per_seed": [{"seed": 0, "auc": auc}, {"seed": 1, "auc": auc}]}
                                for m, title, auc in (("unified", "Unified space (ours)", 0.71),
                                                      ("matched", "Matched", 0.64))}},
        "faithfulness": {"fidelity": {}, "reversion": []},
        "headline": "alignment study skipped: no concept masks (the annotation-free checks ran)"})
    with Server(ws.root) as url:
        p = Page(browser, url + "/?view=evaluation")
        checks = p.page.locator("[data-testid=evaluation-checks]")
        checks.wait_for(state="visible")
        text = checks.inner_text()
        assert "Permuted copy (healthy, epoch 2): pass, 100.0% of 29 alive neurons" in text
        assert "Rescaled copy: skipped (Tanh after layer features.0" in text
        assert "no pixel-level concept masks" in \
            p.page.locator("[data-testid=evaluation-skipped]").inner_text()
        view = p.page.locator("[data-testid=evaluation-view]").inner_text()
        assert "no alignment results" in view
        # the class-level study: the spread over the seeds and the seeds ours won
        rows = p.page.locator("[data-testid=evaluation-classes] tbody tr")
        assert rows.count() == 2
        cells = [c.strip() for c in rows.nth(1).locator("td").all_inner_texts()]
        assert cells[:6] == ["Matched", "0.640", "[0.620, 0.660]", "0.650", "0.640 – 0.660",
                             "1 / 2"]
        assert "above chance (the 95% interval above 0.5) on 2 of 2 seeds: pass" in \
            p.page.locator("[data-testid=evaluation-classes-verdict]").inner_text()
        assert coloured_pixels(p.page, "classes-roc-canvas") > 500
        # check (c): per layer against chance
        agreement = p.page.locator("[data-testid=evaluation-agreement]")
        assert "FAIL, above chance on 1 of 2 layers" in agreement.inner_text()
        assert agreement.locator("tbody tr").count() == 2
        assert not p.errors, p.errors
