"""The dashboard's page: the folder of its files (``static/``) and its scripts in load order.

The scripts are plain JavaScript, no bundler and no build step: classic scripts that share one
global scope, so each may use what the ones before it declare (``static/constants.js`` says
how). ``static/index.html`` loads exactly :data:`SCRIPTS`, in this order, and the report
(:func:`conceptevo.report.render`) inlines them in the same order; tests check both.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

STATIC = Path(str(resources.files("conceptevo") / "serve" / "static"))

#: every script of the page, in load order: constants, data access and the store, DOM helpers,
#: state and rendering, the map (the renderer of large maps, the panel, the scenes) and its
#: controls, charts, one file per view, then main.js (which registers the views in
#: VIEW_RENDERERS and starts the page). A new view is a new view_*.js here, before main.js,
#: and in index.html.
SCRIPTS = (
    "constants.js",
    "data.js",
    "dom.js",
    "state.js",
    "map_splat.js",
    "map.js",
    "map_scene.js",
    "map_controls.js",
    "charts.js",
    "view_space.js",
    "view_class.js",
    "view_training.js",
    "view_compare.js",
    "view_evaluation.js",
    "main.js",
)
