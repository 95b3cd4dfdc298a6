"""``conceptevo report``: the dashboard as one self-contained HTML file.

The page code is the dashboard's own (``serve/static``: its style and its scripts, inlined in
the order of ``serve/page.py``'s ``SCRIPTS``); the data it would fetch from the server is
embedded as ``window.CONCEPTEVO_EMBED = {api: {path: payload}, patches: {url: data URI}}``,
so the file opens offline, in any browser, with no request to anything.

Embedded: the study, the base map, every checkpoint's points (with their concept labels), the
metrics, every stored importance result, the evaluation (when ``conceptevo evaluate`` ran);
neuron details (trajectory, neighbours, top concepts) for each run's last epoch, and
patches (4 per neuron, WebP) for a few epochs of each run (``patch_epochs``: the first and the
last by default) and for every evolution the class view lists. Other neurons show their
position but no patches.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from .progress import progress_bar
from .serve.data import BadRequest, StudyData
from .serve.page import SCRIPTS, STATIC
from .workspace import atomic

REPORT_PATCHES, REPORT_TILE = 4, 40  # smaller strips than the dashboard's, to keep the file light


def _pick_epochs(epochs: list[int], count: int) -> list[int]:
    if count >= len(epochs):
        return list(epochs)
    if count <= 1:
        return [epochs[-1]]
    idx = sorted({round(i * (len(epochs) - 1) / (count - 1)) for i in range(count)})
    return [epochs[i] for i in idx]


def collect(data: StudyData, patch_epochs: int = 2) -> dict:
    """The payloads and patches the report embeds."""
    api: dict[str, object] = {}
    patches: dict[str, str] = {}
    study = data.study()
    api["/api/study"] = study
    api["/api/base"] = data.base()
    api["/api/metrics"] = data.metrics()
    try:
        api["/api/evaluation"] = data.evaluation()
    except BadRequest as e:
        if e.status != 404:
            raise
        # not evaluated yet: the page says how to
    wanted: set[tuple[str, int, int]] = set()
    detail: set[tuple[str, int, int]] = set()
    for run in study["runs"]:
        for epoch in run["epochs"]:
            api[f"/api/points/{run['name']}/{epoch}"] = data.points(run["name"], epoch)
        for epoch in _pick_epochs(run["epochs"], patch_epochs):
            for n in range(run["n_neurons"]):
                wanted.add((run["name"], epoch, n))
                if epoch == run["epochs"][-1]:
                    detail.add((run["name"], epoch, n))
    for item in study["importance"]:
        payload = data.importance(item["run"], item["class"], item["from"], item["to"])
        api[f"/api/importance/{item['run']}/{item['class']}/{item['from']}/{item['to']}"] = payload
        for layer in payload["layers"]:
            for ev in layer["top"]:
                wanted.add((item["run"], item["from"], ev["neuron"]))
                wanted.add((item["run"], item["to"], ev["neuron"]))
    with progress_bar(len(detail) + len(wanted), "report", "neuron") as bar:
        for run, epoch, n in sorted(detail):
            api[f"/api/neuron/{run}/{epoch}/{n}"] = data.neuron(run, epoch, n)
            bar.update(1)
        for run, epoch, n in sorted(wanted):
            image = data.patch_image(run, epoch, n, count=REPORT_PATCHES, tile=REPORT_TILE,
                                     quality=70)
            patches[f"/api/patches/{run}/{epoch}/{n}.webp"] = \
                "data:image/webp;base64," + base64.b64encode(image).decode("ascii")
            bar.update(1)
    return {"api": api, "patches": patches}


def render(embed: dict, title: str) -> str:
    """The HTML page: the dashboard's index.html with its CSS and scripts inlined (one inline
    script per file of SCRIPTS, in their order, each named by a ``sourceURL`` comment) and the
    data embedded before the code."""
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    css = (STATIC / "style.css").read_text(encoding="utf-8")
    payload = script_safe_json(embed)
    link = re.compile(r'<link[^>]*href="/static/style\.css"[^>]*>')
    script = re.compile(r'<script[^>]*src="/static/([^"]*)"[^>]*>\s*</script>')
    loaded = tuple(m.group(1) for m in script.finditer(html))
    if not link.search(html) or loaded != SCRIPTS:
        raise RuntimeError("index.html must load /static/style.css with a <link> and the "
                           f"scripts {', '.join(SCRIPTS)} (serve/page.py: SCRIPTS), in this "
                           f"order, each with a <script src>; it loads {list(loaded)}")
    html = link.sub(lambda m: f"<style>\n{css}\n</style>", html, count=1)

    def inline(match: re.Match) -> str:
        name = match.group(1)
        code = (STATIC / name).read_text(encoding="utf-8").replace("</script", "<\\/script")
        data = ("<script>window.CONCEPTEVO_EMBED = " + payload + ";</script>\n"
                if name == SCRIPTS[0] else "")
        return f"{data}<script>\n{code}\n//# sourceURL={name}\n</script>"

    html = script.sub(inline, html)
    from html import escape

    return re.sub(r"<title>(.*?)</title>",
                  lambda m: f"<title>{m.group(1)}: {escape(title)}</title>", html, count=1)


def script_safe_json(value) -> str:
    """JSON to place inside an inline ``<script>``: every ``<``, ``>`` and ``&`` escaped as a
    JSON unicode escape (the value is unchanged), so that no string of a workspace (a class
    folder named ``<!--<script>``, ``</script>``) can end the script or open a comment; and the
    line separators U+2028/U+2029, which old JavaScript parsers reject in strings."""
    text = json.dumps(value, separators=(",", ":"))
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text


def write_report(workspace: str | Path, out: str | Path, patch_epochs: int = 2) -> Path:
    """Write the self-contained report of ``workspace`` to ``out``."""
    data = StudyData(workspace)
    out = Path(out)
    atomic.clean_temporaries_of(out)  # the half report of a killed earlier run
    embed = collect(data, patch_epochs)
    atomic.write_text(out, render(embed, data.ws.root.name))
    return out
