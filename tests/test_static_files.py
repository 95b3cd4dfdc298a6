"""The dashboard's scripts: one list in load order (``serve/page.py``: SCRIPTS) that every
script file of ``serve/static`` is in, index.html loads and the report inlines, in that order;
each file parses (``node --check``, when node is installed) and the files' top-level names,
which share one global scope, neither repeat nor clash with window's own."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from conceptevo import report
from conceptevo.serve.page import SCRIPTS, STATIC

SCRIPT_TAG = re.compile(r"<script\b([^>]*)>")
#: top-level declarations (the files are written at column 0, one declaration a line)
DECLARATION = re.compile(r"^(?:async\s+)?(?:function\*?|class|const|let|var)\s+([A-Za-z_$][\w$]*)",
                         re.MULTILINE)
#: window's non-configurable properties (a top-level let/const/class of that name is a
#: SyntaxError, a function one a TypeError) and names the page itself reads from window
WINDOW_NAMES = {"window", "document", "location", "top", "self", "parent", "frames", "name",
                "status", "history", "navigator", "origin", "length", "closed", "opener",
                "event", "fetch", "setTimeout", "performance", "requestAnimationFrame",
                "requestIdleCallback", "getComputedStyle", "CONCEPTEVO_EMBED", "conceptevo",
                "undefined", "NaN", "Infinity", "globalThis"}


def test_every_script_file_is_listed_once():
    files = sorted(p.name for p in STATIC.glob("*.js"))
    assert len(set(SCRIPTS)) == len(SCRIPTS), SCRIPTS
    assert sorted(SCRIPTS) == files
    assert SCRIPTS[-1] == "main.js"  # it starts the page: every other file must have loaded


def test_index_html_loads_the_scripts_in_order():
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    tags = SCRIPT_TAG.findall(html)
    assert tags == [f' src="/static/{name}"' for name in SCRIPTS]


def test_the_report_inlines_the_scripts_in_order():
    html = report.render({"api": {}, "patches": {}}, "study")
    assert "/static/" not in html
    names = re.findall(r"^//# sourceURL=(\S+)\n</script>", html, re.MULTILINE)
    assert tuple(names) == SCRIPTS
    embed = html.index("window.CONCEPTEVO_EMBED = ")
    at = embed
    for name in SCRIPTS:
        code = (STATIC / name).read_text(encoding="utf-8").replace("</script", "<\\/script")
        found = html.index(f"<script>\n{code}\n//# sourceURL={name}\n</script>", at)
        assert found > at
        at = found
    assert len(SCRIPT_TAG.findall(html)) == len(SCRIPTS) + 1  # the data, then one per file


def test_the_report_refuses_an_index_html_that_loads_other_scripts(tmp_path, monkeypatch):
    for path in STATIC.iterdir():
        shutil.copy(path, tmp_path / path.name)
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    first, second = (f'<script src="/static/{n}"></script>' for n in SCRIPTS[:2])
    swapped = html.replace(first, "@").replace(second, first).replace("@", second)
    (tmp_path / "index.html").write_text(swapped, encoding="utf-8")
    monkeypatch.setattr(report, "STATIC", tmp_path)
    with pytest.raises(RuntimeError, match="in this order"):
        report.render({"api": {}, "patches": {}}, "study")
    (tmp_path / "index.html").write_text(html.replace(first, ""), encoding="utf-8")
    with pytest.raises(RuntimeError, match=SCRIPTS[0]):
        report.render({"api": {}, "patches": {}}, "study")


def test_the_top_level_names_are_unique_and_none_is_one_of_window():
    owner: dict[str, str] = {}
    for name in SCRIPTS:
        text = (STATIC / name).read_text(encoding="utf-8")
        assert '\n"use strict";\n' in text, f"{name} is not strict"
        for declared in DECLARATION.findall(text):
            assert declared not in owner, f"{declared} is declared in {owner[declared]} and {name}"
            assert declared not in WINDOW_NAMES, f"{name} declares {declared}, a name of window"
            owner[declared] = name
    assert {"VIEW_RENDERERS", "start", "store", "state"} <= set(owner)


@pytest.mark.parametrize("name", SCRIPTS)
def test_each_script_parses(name):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    done = subprocess.run([node, "--check", str(STATIC / name)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
