/* ConceptEvo dashboard: the unified space of neurons across runs and epochs, class evolutions,
 * training curves, a side-by-side comparison of runs and the evaluation's results.
 *
 * Plain scripts, no dependencies and no build step. index.html loads them in this order and the
 * self-contained report inlines them in the same order; the one list of them is SCRIPTS in
 * conceptevo/serve/page.py (a test checks index.html and the report against it):
 *   constants.js        constants, palettes (this file)
 *   data.js             data access (server or report: getJSON, patch URLs), the store, loaders
 *   dom.js              DOM and formatting helpers, colours
 *   state.js            the state, URL read/write, the rendering loop, the banner
 *   map_splat.js        the renderer of large maps (PointSplat: points written into pixels)
 *   map.js              the map (Camera, HitGrid, MapPanel)
 *   map_scene.js        scenes (what a map draws), the pinned neuron's trajectory, the tooltip
 *   map_controls.js     shared map controls: epoch slider, playing, legends, run picker
 *   charts.js           SVG charts, the reversion chart, canvas charts (one frame, two renderers)
 *   view_space.js       Space view and the pinned neuron panel
 *   view_class.js       Class view
 *   view_training.js    Training view
 *   view_compare.js     Compare view
 *   view_evaluation.js  Evaluation view
 *   main.js             VIEW_RENDERERS, header, live refresh, start, the test hooks
 * A new view is a new view_*.js (before main.js in SCRIPTS and index.html), registered in
 * VIEW_RENDERERS.
 *
 * They are classic scripts sharing one global scope: a top-level const, let, class or function
 * of one file is visible to the files loaded after it (and `let` bindings stay live). Code that
 * runs at load (a top-level initializer) may use only what its own or an earlier file declares;
 * a function may name anything, since it runs once every file has loaded (main.js starts the
 * page last). Top-level names are unique across the files and none is a property of window
 * (a top-level function becomes one; `let top` would be a SyntaxError).
 *
 * It runs in two modes:
 *  - server mode: data comes from the JSON API of `conceptevo serve` (same origin; the points
 *    of a checkpoint and the base map as typed arrays, ?format=binary);
 *  - report mode: `window.CONCEPTEVO_EMBED = {api: {path: payload}, patches: {url: dataURI}}` is
 *    defined before these scripts run and every read is answered from it (nothing is fetched).
 * Every data access goes through getJSON(path) and every patch image through patchSrc(url)
 * (data.js).
 *
 * For tests, `window.conceptevo` exposes the live state, a promise that resolves after the
 * first render of the initial view, where a neuron is drawn and in which colour, and a few pure
 * functions (chart axes, colour ramps): see `window.conceptevo = ...` in main.js.
 */
"use strict";

// ------------------------------------------------------------------------------ constants
const VIEWS = ["space", "class", "training", "compare", "evaluation"];
const MAP_VIEWS = new Set(["space", "compare"]);
const COLOR_MODES = ["run", "epoch", "layer", "label"];
const MAX_COMPARE = 3;
const PLAY_INTERVAL_MS = 500;         // two epochs per second
const POLL_INTERVAL_MS = 2000;        // live refresh (server mode only)
const HIT_RADIUS_PX = 8;              // how close the cursor must be to a point to hover it
const DRAG_THRESHOLD_PX = 4;          // a press that moves less than this is a click
const SQUARE_POINTS_ABOVE = 20000;    // maps with more points draw squares (much faster)
const SPLAT_POINTS_ABOVE = 50000;     // maps with more points are drawn by PointSplat
const FRAME_BUDGET_MS = 12;           // a large map slower than this to render previews a move
const SETTLE_MS = 120;                // ... rendered again once the camera is still this long
const SPLAT_REFRESH_MS = 250;         // ... and at least this often while it moves
const HIT_GRID_MAX = 1024;            // hover index: at most this many cells a side
const MAP_DRAWS_KEPT = 200;           // map renders kept in state.mapDraws (tests, benchmarks)
const TAU = 2 * Math.PI;

// Runs: a calm categorical palette; the base model is drawn grey underneath everything.
const RUN_PALETTE = ["#3465a4", "#e07b28", "#3a9b5b", "#c8425a", "#7c5cb8",
                     "#8c6d46", "#2aa3a8", "#b59f1e", "#d16ba5", "#5f6b7a"];
const LABEL_PALETTE = [...RUN_PALETTE, "#9ecae1", "#fdae6b", "#a1d99b", "#fc9fb5", "#bcbddc"];
const UNLABELLED = "#c4c8ce";
const BASE_COLOR = "rgba(95, 102, 115, 0.22)";
// Viridis, a few stops; interpolated for epochs. Its last, palest yellow is left out: it
// vanishes on a white page.
const VIRIDIS = [[68, 1, 84], [72, 40, 120], [62, 73, 137], [49, 104, 142], [38, 130, 142],
                 [31, 158, 137], [53, 183, 121], [110, 206, 88], [181, 222, 43]];
// Layer depth, relative to the run's probed layers: first (dark purple) to last (orange);
// plasma without its palest yellow. One ramp for every architecture.
const LAYER_RAMP = [[13, 8, 135], [84, 2, 163], [139, 10, 165], [185, 50, 137],
                    [219, 92, 104], [244, 136, 73], [254, 188, 43]];
// Reversion bins, most important (dark) to least important (light).
const BIN_RAMP = [[127, 39, 4], [217, 72, 1], [253, 141, 60], [253, 198, 150]];
const RANDOM_COLOR = "#9aa1ab";
