/* ConceptEvo dashboard: the unified space of neurons across runs and epochs, class evolutions,
 * training curves, a side-by-side comparison of runs and the evaluation's results.
 *
 * One plain script, no dependencies. It runs in two modes:
 *  - server mode: data comes from the JSON API of `conceptevo serve` (same origin);
 *  - report mode: `window.CONCEPTEVO_EMBED = {api: {path: payload}, patches: {url: dataURI}}` is
 *    defined before this script runs and every read is answered from it (nothing is fetched).
 * Every data access goes through getJSON(path) and every patch image through patchSrc(url).
 *
 * For tests, `window.conceptevo` exposes the live state, a promise that resolves after the
 * first render of the initial view, where a neuron is drawn and in which colour, and a few pure
 * functions (chart axes, colour ramps): see `window.conceptevo = ...` below.
 */
(() => {
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

  // ---------------------------------------------------------------------------- data access
  const EMBED = window.CONCEPTEVO_EMBED || null;
  const REPORT_MODE = EMBED !== null;

  class ApiError extends Error {
    /** `missing`: the report does not include this payload (not a failure of the page). */
    constructor(message, {status = 0, missing = false} = {}) {
      super(message);
      this.name = "ApiError";
      this.status = status;
      this.missing = missing;
    }
  }

  const hasOwn = (table, key) => table != null && Object.prototype.hasOwnProperty.call(table, key);

  /** A value of one of the report's tables. The page percent-encodes path segments; the
   * report's keys use raw run names, so both spellings are tried. */
  function embedded(table, path) {
    if (hasOwn(table, path)) return table[path];
    const raw = decodeURIComponent(path);
    return hasOwn(table, raw) ? table[raw] : undefined;
  }

  function apiPath(...segments) {
    return "/api/" + segments.map((s) => encodeURIComponent(String(s))).join("/");
  }

  /** The payload at an API path, from the report or the server. Throws ApiError with the
   * server's message ({"error": ...}) or "not included in this report". */
  async function getJSON(path) {
    if (REPORT_MODE) {
      const payload = embedded(EMBED.api, path);
      if (payload === undefined) throw new ApiError("not included in this report", {missing: true});
      return payload;
    }
    let response;
    for (let attempt = 0; ; attempt++) {
      try {
        response = await fetch(path, {headers: {Accept: "application/json"}});
      } catch (err) {
        throw new ApiError(`cannot reach the server (${err.message})`);
      }
      // 503 + Retry-After: the workspace is being rewritten (a build, a live run); ask again
      const retry = Number(response.headers.get("Retry-After"));
      if (response.status !== 503 || !(retry >= 0) || attempt >= 2) break;
      await new Promise((resolve) => setTimeout(resolve, 1000 * Math.min(retry, 5)));
    }
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const message = body && body.error ? body.error : `${response.status} ${response.statusText}`;
      throw new ApiError(message, {status: response.status});
    }
    return body;
  }

  function patchUrl(run, epoch, neuron) {
    return apiPath("patches", run, epoch, `${neuron}.webp`);
  }

  /** What an <img> should load for a patch URL; null when a report does not include it. */
  function patchSrc(url) {
    return REPORT_MODE ? embedded(EMBED.patches, url) ?? null : url;
  }

  // --------------------------------------------------------------------------------- store
  /** Loaded data. The caches are dropped when the workspace changes (live refresh);
   * `generation` counts those changes, so views know to re-render. */
  const store = {
    study: null,
    base: null,            // {x, y: Float32Array} of the base model's neurons
    metrics: undefined,    // undefined: not asked yet; null: unavailable
    generation: 0,
    points: new Map(),     // "run/epoch" -> Points
    failed: new Map(),     // "run/epoch" -> why its points could not be loaded
    requests: new Map(),   // API path -> Promise of its payload
    hasLabels: false,      // some points payload carries concept labels
  };

  /** getJSON(path) then transform, once per path per generation (failures are forgotten,
   * to be retried). A path is always read with the same transform. */
  function cachedJSON(path, transform = (payload) => payload) {
    let request = store.requests.get(path);
    if (!request) {
      request = getJSON(path).then(transform);
      store.requests.set(path, request);
      request.catch(() => {
        if (store.requests.get(path) === request) store.requests.delete(path);
      });
    }
    return request;
  }

  function toFloats(values) {
    const out = new Float32Array(values.length);
    for (let i = 0; i < values.length; i++) out[i] = values[i] ?? NaN;  // null: not placed
    return out;
  }

  const pointsKey = (run, epoch) => `${run}/${epoch}`;

  /** One checkpoint's neurons in typed arrays; neuron i is index i. `label` (concept name or
   * null) and `labelIou` (its best concept's IoU) are null when the checkpoint has no labels. */
  function toPoints(payload, run, epoch) {
    const labelled = Array.isArray(payload.label) && Array.isArray(payload.concepts);
    if (labelled) store.hasLabels = true;
    return {
      run, epoch, n: payload.x.length,
      x: toFloats(payload.x), y: toFloats(payload.y),
      dead: Uint8Array.from(payload.dead || []),
      layer: Uint16Array.from(payload.layer || []),
      // The payload holds an index into its concepts per neuron (-1: none).
      label: labelled ? payload.label.map((i) => payload.concepts[i] ?? null) : null,
      labelIou: labelled ? toFloats(payload.label_iou || []) : null,
    };
  }

  function loadPoints(run, epoch) {
    const key = pointsKey(run, epoch);
    const generation = store.generation;
    const current = () => generation === store.generation;  // not refreshed meanwhile
    return cachedJSON(apiPath("points", run, epoch), (payload) => {
      const points = toPoints(payload, run, epoch);
      if (current()) store.points.set(key, points);
      return points;
    }).catch((err) => {
      if (current()) store.failed.set(key, err.message);
      throw err;
    });
  }

  /** Start loading the given [run, epoch] pairs; the view re-renders as each arrives. */
  function requestPoints(pairs) {
    for (const [run, epoch] of pairs) loadPoints(run, epoch).then(invalidate, invalidate);
  }

  const runInfo = (name) => store.study.runs.find((r) => r.name === name) || null;
  const runNames = () => store.study.runs.map((r) => r.name);

  /** Run names in the study's order (the server's: the study config's), then those the study
   * does not know (runs only in the metrics or the diagnosis) in the order given. Never
   * alphabetical: the metrics and the diagnosis list their runs in their own order. */
  function inStudyOrder(names) {
    const wanted = new Set(names);
    return [...runNames().filter((r) => wanted.has(r)), ...[...wanted].filter((r) => !runInfo(r))];
  }

  /** Every epoch of any run, ascending: the slider's stops. */
  function allEpochs() {
    const epochs = new Set();
    for (const run of store.study.runs) for (const e of run.epochs) epochs.add(e);
    return [...epochs].sort((a, b) => a - b);
  }

  /** What a neuron of a layer is, by the layer's layout (docs/models.md). */
  function unitText(layer) {
    const grid = layer.map ? `${layer.map[0]}x${layer.map[1]}` : "";
    switch (layer.layout) {
      case "tokens":
        return layer.map && layer.map[0] * layer.map[1] > 1
          ? `hidden unit, max over ${grid} patch tokens` +
            (layer.prefix ? ` (${layer.prefix} class/register token${layer.prefix > 1 ? "s" : ""} left out)` : "")
          : "hidden unit at the class token";
      case "nhwc": return `channel of a ${grid} map (channels last)`;
      case "flat": return "unit (no positions)";
      default: return grid ? `channel of a ${grid} map` : "channel";
    }
  }

  /** Run, epoch, layer, channel... of a neuron, from its checkpoint's points and the study. */
  function neuronInfo(run, epoch, neuron) {
    const points = store.points.get(pointsKey(run, epoch));
    const layers = runInfo(run)?.layers || [];
    const layerIndex = points ? points.layer[neuron]
                              : layers.reduce((found, l, i) => (l.offset <= neuron ? i : found), -1);
    const layer = layers[layerIndex];
    return {
      run, epoch, neuron,
      layer: layer ? layer.name : `layer ${layerIndex}`,
      unit: layer ? unitText(layer) : null,
      channel: layer ? neuron - layer.offset : neuron,
      dead: points ? points.dead[neuron] === 1 : false,
      concept: points && points.label ? {label: points.label[neuron], iou: points.labelIou[neuron]}
                                      : null,
    };
  }

  // ------------------------------------------------------------------------------- helpers
  const $ = (selector) => document.querySelector(selector);

  /** An HTML element. props: class, text, style (object), on<event> (listener), form
   * properties (checked, disabled, selected, value) and any other attribute. */
  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    setProps(node, props);
    node.append(...present(children));
    return node;
  }

  /** Children worth adding: nested lists flattened, null and false dropped (append and
   * replaceChildren would print them as text). */
  const present = (children) => children.flat().filter((c) => c != null && c !== false);

  /** Replace a node's children. */
  function fill(node, ...children) {
    node.replaceChildren(...present(children));
    return node;
  }

  const FORM_PROPERTIES = new Set(["checked", "disabled", "selected", "value"]);

  function setProps(node, props) {
    for (const [key, value] of Object.entries(props)) {
      if (value == null || value === false) continue;
      if (key === "class") node.setAttribute("class", value);
      else if (key === "text") node.textContent = value;
      else if (key === "style") Object.assign(node.style, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (FORM_PROPERTIES.has(key)) node[key] = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
  }

  /** An SVG element; same props as el() (attributes are set verbatim). */
  function svg(tag, props = {}, ...children) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    setProps(node, props);
    node.append(...present(children));
    return node;
  }

  const note = (text, cls = "note") => el("p", {class: cls, text});
  const swatch = (color, cls = "swatch") => el("span", {class: cls, style: {background: color}});
  const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
  const percent = (v) => `${(100 * v).toFixed(1)}%`;
  const last = (array) => array[array.length - 1];
  const plural = (count, noun) => `${count} ${noun}${count === 1 ? "" : "s"}`;
  /** A layer's short name: its last component ("conv4_2"; "stage2.0" when that is a number),
   *  lengthened while another name of `among` ends the same way ("0.mlp.act", "1.mlp.act" for
   *  a transformer's blocks, whose MLP layers share their last components). */
  const shortLayer = (name, among = []) => {
    const parts = name.split(".");
    let n = /^\d+$/.test(parts[parts.length - 1]) && parts.length > 1 ? 2 : 1;
    const tail = (other, k) => other.split(".").slice(-k).join(".");
    while (n < parts.length &&
           among.some((other) => other !== name && tail(other, n) === tail(name, n))) n += 1;
    return parts.slice(-n).join(".");
  };

  /** A long text shortened in the middle ("features.blo…conv2"), so both ends stay readable. */
  function elideMiddle(text, max = 36) {
    if (text.length <= max) return text;
    const head = Math.ceil((max - 1) / 2);
    return `${text.slice(0, head)}…${text.slice(text.length - (max - 1 - head))}`;
  }

  /** A neuron's full qualified layer name, shortened in the middle only when very long (the
   * full name is its title). */
  const layerName = (name) => el("span", {class: "layer-name", title: name, text: elideMiddle(name)});

  /** A number for a label: fixed digits for ordinary magnitudes, exponent for tiny ones. */
  function formatNumber(v, digits = 3) {
    if (!Number.isFinite(v)) return String(v);
    if (v !== 0 && Math.abs(v) < 1e-3) return v.toExponential(1);
    return String(Number(v.toFixed(digits)));
  }

  /** format(v), or a dash when v is missing (null in a partial result) or not finite. */
  const shown = (v, format = formatNumber) => (Number.isFinite(v) ? format(v) : "–");
  const fixed = (digits) => (v) => v.toFixed(digits);

  /** "[0.830, 0.890]" for a confidence interval [lo, hi]. */
  const interval = (ci) => (Array.isArray(ci) && ci.length === 2 && ci.every(Number.isFinite)
    ? `[${ci[0].toFixed(3)}, ${ci[1].toFixed(3)}]` : "–");

  /** "red (IoU 0.31)" for a neuron's concept {label, iou}; "none (best IoU 0.02)" unlabelled. */
  const conceptText = (c) => (c.label ? `${c.label} (IoU ${shown(c.iou, fixed(2))})`
                                      : `none (best IoU ${shown(c.iou, fixed(2))})`);

  /** A small horizontal bar filled to a fraction. */
  const scoreBar = (fraction) =>
    el("span", {class: "score-bar"}, el("span", {style: {width: percent(clamp(fraction, 0, 1))}}));

  /** A table of rows of cells (text, numbers or nodes); rowProps(i) gives row i's attributes. */
  function dataTable(headers, rows, {cls = "data-table", testid, rowProps = () => ({})} = {}) {
    return el("table", {class: cls, "data-testid": testid},
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", {text: h})))),
      el("tbody", {}, rows.map((cells, i) => el("tr", rowProps(i), cells.map((c) => el("td", {}, c))))));
  }

  const idle = window.requestIdleCallback
    ? (fn) => window.requestIdleCallback(fn, {timeout: 500})
    : (fn) => setTimeout(fn, 50);

  /** The patch strip of a URL as an <img>, or a note when the report does not include it.
   * onReady(ok) runs once the image is decoded (ok) or failed to load (not ok). */
  function patchImage(url, {alt, testid, onReady} = {}) {
    const src = patchSrc(url);
    if (src === null) {
      if (onReady) onReady(false);
      return note("patches not in this report", "note patches-missing");
    }
    const img = el("img", {class: "patches", alt, "data-testid": testid, decoding: "async"});
    img.src = src;
    img.decode().then(() => onReady && onReady(true), () => {
      img.replaceWith(note("patches unavailable", "note patches-missing"));
      if (onReady) onReady(false);
    });
    return img;
  }

  // ------------------------------------------------------------------------------- colours
  function mixRamp(stops, t) {
    const s = clamp(t, 0, 1) * (stops.length - 1);
    const i = Math.min(Math.floor(s), stops.length - 2);
    const f = s - i;
    const [r, g, b] = stops[i].map((c, k) => Math.round(c + f * (stops[i + 1][k] - c)));
    return `rgb(${r}, ${g}, ${b})`;
  }

  /** Runs keep one colour everywhere; runs known only to the metrics or the diagnosis come
   * after the study's. */
  function runColor(run) {
    let index = runNames().indexOf(run);
    if (index < 0) {
      const known = [...Object.keys(store.metrics?.runs || {}),
                     ...Object.keys(store.metrics?.diagnosis?.runs || {})];
      const extra = [...new Set(known)].filter((r) => !runInfo(r));
      index = store.study.runs.length + Math.max(0, extra.indexOf(run));
    }
    return RUN_PALETTE[index % RUN_PALETTE.length];
  }

  /** Where an epoch sits on the epoch ramp: its rank among the study's epochs, 0..1. */
  function epochPosition(epoch) {
    const epochs = allEpochs();
    return epochs.length > 1 ? Math.max(epochs.indexOf(epoch), 0) / (epochs.length - 1) : 1;
  }

  const epochColor = (epoch) => mixRamp(VIRIDIS, epochPosition(epoch));

  /** Relative depth of a layer in its run: 0 for the first probed layer, 1 for the last (0
   * when the run probes one layer). */
  const relativeDepth = (index, count) => (count > 1 ? clamp(index / (count - 1), 0, 1) : 0);

  /** A layer's colour: its relative depth on LAYER_RAMP, so the same colour means the same
   * relative depth in architectures of any depth. */
  const layerColor = (index, count) => mixRamp(LAYER_RAMP, relativeDepth(index, count));

  /** The colour of each layer of a run ({layers: [...]} as in /api/study); `count` at least
   * (a checkpoint may index more layers than the study lists). */
  function layerPalette(run, count = 0) {
    const n = Math.max(1, count, run && run.layers ? run.layers.length : 0);
    return Array.from({length: n}, (_, i) => layerColor(i, n));
  }

  const binColor = (bin, count) => mixRamp(BIN_RAMP, count > 1 ? bin / (count - 1) : 0);

  // ---------------------------------------------------------------------------- state, URL
  const state = {
    view: "space",
    runs: [],              // runs shown in the Space view
    compareRuns: [],       // runs side by side in the Compare view
    epoch: 0,              // the slider's epoch
    color: "run",
    showEarlier: false,
    playing: false,
    pinned: null,          // {run, epoch, neuron}
    trajectory: [],        // [{epoch, x, y}] drawn for the pinned neuron
    hovered: null,         // {run, epoch, neuron}
    importance: null,      // {run, class, from, to} shown in the Class view
    drawnPoints: 0,        // neuron points in the last Space render (base excluded)
    drawnBase: 0,          // grey base points in the last Space render
    lastHoverMs: null,     // mousemove that found a new point -> its tooltip with patches shown
    loadMs: null,          // navigation start -> first render of the initial view
  };

  let resolveReady;
  const ready = new Promise((resolve) => { resolveReady = resolve; });
  window.conceptevo = {
    state, ready, screenPosition, drawnColor,
    // Pure functions, for tests of the axes and colours without a matching workspace.
    charts: {niceTicks, valueAxis, canvasFrame, chartFrame},
    colors: {layerColor, layerPalette, layerRamp: (t) => mixRamp(LAYER_RAMP, t), epochTicks},
  };

  /** Where the Space view draws a neuron: [x, y] in CSS pixels from the canvas's top-left
   * corner, or null when its checkpoint is not loaded (tests use it to hover a point). */
  function screenPosition(run, epoch, neuron) {
    const points = store.points.get(pointsKey(run, epoch));
    if (!points || !spaceView.panel) return null;
    return spaceView.panel.toScreen(points.x[neuron], points.y[neuron]);
  }

  /** The colour a shown map (Space or Compare) draws a neuron in, or null when no map draws
   * it now. */
  function drawnColor(run, epoch, neuron) {
    const panels = [spaceView.panel, ...compareView.panels.map((p) => p.panel)];
    for (const panel of panels) {
      if (!panel || !panel.scene || !panel.host.isConnected || panel.host.closest("[hidden]")) continue;
      for (const set of panel.scene.sets) {
        if (set.points.run !== run || set.points.epoch !== epoch) continue;
        const k = set.order.indexOf(neuron);
        if (k < 0) continue;
        let bucket = 0;
        while (set.starts[bucket + 1] <= k) bucket++;
        return set.palette[bucket >> 1];
      }
    }
    return null;
  }

  function markRendered() {
    if (state.loadMs !== null) return;
    state.loadMs = Math.round(performance.now());
    resolveReady();
  }

  /** The query string as a map of raw (still percent-encoded) values: lists are split on
   * commas before decoding, so a comma inside a run name survives. */
  function parseQuery(search) {
    const query = new Map();
    for (const part of search.replace(/^\?/, "").split("&")) {
      if (!part) continue;
      const eq = part.indexOf("=");
      query.set(decode(eq < 0 ? part : part.slice(0, eq)), eq < 0 ? "" : part.slice(eq + 1));
    }
    return query;
  }

  function decode(raw) {
    try {
      return decodeURIComponent(raw.replace(/\+/g, " "));
    } catch {
      return raw;
    }
  }

  const decodeList = (raw) => raw.split(",").filter(Boolean).map(decode);
  const encodeList = (values) => values.map(encodeURIComponent).join(",");

  /** Restore the state from the URL, keeping only what the study knows. */
  function readUrl() {
    const query = parseQuery(location.search);
    const runs = runNames();
    const epochs = allEpochs();
    const get = (key) => (query.has(key) ? decode(query.get(key)) : null);

    if (VIEWS.includes(get("view"))) state.view = get("view");
    const listed = (key) => new Set(decodeList(query.get(key)));
    state.runs = query.has("runs") ? runs.filter((r) => listed("runs").has(r)) : runs.slice();
    state.compareRuns = query.has("compare")
      ? runs.filter((r) => listed("compare").has(r)).slice(0, MAX_COMPARE) : [];
    if (!state.compareRuns.length) state.compareRuns = runs.slice(0, MAX_COMPARE);
    state.epoch = nearestEpoch(query.has("epoch") ? Number(get("epoch")) : last(epochs));
    if (COLOR_MODES.includes(get("color"))) state.color = get("color");
    state.showEarlier = get("earlier") === "1";
    if (query.has("neuron")) state.pinned = parseNeuron(get("neuron"));
    if (query.has("run") || query.has("class")) {
      state.importance = {run: get("run"), class: Number(get("class")),
                          from: Number(get("from")), to: Number(get("to"))};
    }
  }

  /** "run:epoch:neuron" -> {run, epoch, neuron}, or null (with a message) when invalid. */
  function parseNeuron(text) {
    const parts = text.split(":");   // run names cannot contain ":"
    const [run, epoch, neuron] = [parts[0], Number(parts[1]), Number(parts[2])];
    const info = runInfo(run);
    if (parts.length !== 3 || !info || !info.epochs.includes(epoch) || !Number.isInteger(neuron) ||
        neuron < 0 || neuron >= info.n_neurons) {
      showBanner(`Ignoring neuron=${text}: expected run:epoch:neuron of this study, e.g. ` +
                 `${runNames()[0]}:${last(allEpochs())}:0`);
      return null;
    }
    return {run, epoch, neuron};
  }

  function nearestEpoch(value) {
    const epochs = allEpochs();
    if (!Number.isFinite(value)) return last(epochs);
    return epochs.reduce((best, e) => (Math.abs(e - value) < Math.abs(best - value) ? e : best));
  }

  /** The URL of the current view, so it can be shared; replaces the history entry. */
  function writeUrl() {
    const params = [["view", state.view]];
    if (state.view === "space" || state.view === "compare") {
      if (state.view === "space") params.push(["runs", encodeList(state.runs)]);
      else params.push(["compare", encodeList(state.compareRuns)]);
      params.push(["epoch", state.epoch], ["color", state.color]);
      if (state.showEarlier) params.push(["earlier", 1]);
      const p = state.pinned;
      if (p) params.push(["neuron", [p.run, p.epoch, p.neuron].map(encodeURIComponent).join(":")]);
    } else if (state.view === "class" && state.importance) {
      const s = state.importance;
      params.push(["run", encodeURIComponent(s.run)], ["class", s.class], ["from", s.from],
                  ["to", s.to]);
    }
    const search = "?" + params.map(([k, v]) => `${k}=${v}`).join("&");
    if (search === location.search) return;
    try {
      history.replaceState(null, "", search);
    } catch {
      // Some browsers refuse to rewrite file:// URLs (a report opened from disk): no sharing.
    }
  }

  // ----------------------------------------------------------------------------- rendering
  let frameRequested = false;

  /** Re-render the current view on the next animation frame (many calls, one render). */
  function invalidate() {
    if (frameRequested) return;
    frameRequested = true;
    requestAnimationFrame(() => {
      frameRequested = false;
      render();
    });
  }

  function render() {
    if (!store.study) return;
    for (const button of document.querySelectorAll(".tabs [data-view]")) {
      button.setAttribute("aria-selected", String(button.dataset.view === state.view));
    }
    for (const section of document.querySelectorAll("main > .view")) {
      section.hidden = section.dataset.view !== state.view;
    }
    // Until a map view mounts them, the map controls sit outside every view.
    $("#map-controls").hidden = !MAP_VIEWS.has(state.view);
    VIEW_RENDERERS[state.view]();
    writeUrl();   // after the view, which may have settled its selection
  }

  function showBanner(message) {
    $("#banner-text").textContent = message;
    $("#banner").hidden = false;
  }

  // ------------------------------------------------------------------------------ the map
  /** Where a map looks: a centre and zoom over fixed world bounds. Shared by the Compare
   * panels so they pan and zoom together. */
  class Camera {
    constructor() {
      this.bounds = null;
      this.cx = 0;
      this.cy = 0;
      this.zoom = 1;
      this.panels = new Set();
    }

    fit(bounds) {
      this.bounds = bounds;
      this.cx = (bounds.x0 + bounds.x1) / 2;
      this.cy = (bounds.y0 + bounds.y1) / 2;
      this.zoom = 1;
      this.changed();
    }

    /** Pixels per world unit in a w x h panel. */
    scale(w, h) {
      const b = this.bounds;
      return 0.94 * this.zoom * Math.min(w / Math.max(b.x1 - b.x0, 1e-9),
                                         h / Math.max(b.y1 - b.y0, 1e-9));
    }

    changed() {
      for (const panel of this.panels) panel.requestDraw(true);
    }
  }

  /** Bounds of every placed point of some coordinate arrays. */
  function extentOf(arrays) {
    const b = {x0: Infinity, x1: -Infinity, y0: Infinity, y1: -Infinity};
    for (const {x, y} of arrays) {
      for (let i = 0; i < x.length; i++) {
        if (!Number.isFinite(x[i]) || !Number.isFinite(y[i])) continue;
        b.x0 = Math.min(b.x0, x[i]); b.x1 = Math.max(b.x1, x[i]);
        b.y0 = Math.min(b.y0, y[i]); b.y1 = Math.max(b.y1, y[i]);
      }
    }
    return Number.isFinite(b.x0) ? b : {x0: 0, x1: 1, y0: 0, y1: 1};
  }

  /** A uniform grid over the drawn points: the nearest one to the cursor is found by looking
   * at a few cells instead of every point. Entries are indices into xs / ys. */
  class HitGrid {
    constructor(xs, ys, weight) {
      const n = xs.length;
      const b = extentOf([{x: xs, y: ys}]);
      this.xs = xs;
      this.ys = ys;
      this.weight = weight;
      this.size = clamp(Math.ceil(Math.sqrt(n / 2)), 1, 256);  // about 2 points per cell
      this.x0 = b.x0;
      this.y0 = b.y0;
      this.cw = (b.x1 - b.x0) / this.size || 1;
      this.ch = (b.y1 - b.y0) / this.size || 1;
      // Counting sort of the points by cell: cell c holds items[start[c] .. start[c + 1]).
      const cellOf = new Int32Array(n);
      this.start = new Int32Array(this.size * this.size + 1);
      for (let i = 0; i < n; i++) {
        cellOf[i] = this.row(ys[i]) * this.size + this.col(xs[i]);
        this.start[cellOf[i] + 1]++;
      }
      for (let c = 0; c < this.size * this.size; c++) this.start[c + 1] += this.start[c];
      const next = this.start.slice(0, -1);
      this.items = new Int32Array(n);
      for (let i = 0; i < n; i++) this.items[next[cellOf[i]]++] = i;
    }

    col(x) { return clamp(Math.floor((x - this.x0) / this.cw), 0, this.size - 1); }

    row(y) { return clamp(Math.floor((y - this.y0) / this.ch), 0, this.size - 1); }

    /** Index of the nearest point within `radius` (distances scaled by the point's weight),
     * or -1. On ties the later point wins: it is drawn on top. */
    nearest(x, y, radius) {
      let best = -1;
      let bestD = radius * radius;
      for (let r = this.row(y - radius); r <= this.row(y + radius); r++) {
        for (let c = this.col(x - radius); c <= this.col(x + radius); c++) {
          const cell = r * this.size + c;
          for (let k = this.start[cell]; k < this.start[cell + 1]; k++) {
            const i = this.items[k];
            const dx = this.xs[i] - x;
            const dy = this.ys[i] - y;
            const d = (dx * dx + dy * dy) * this.weight[i];
            if (d <= bestD) {
              bestD = d;
              best = i;
            }
          }
        }
      }
      return best;
    }
  }

  /** Point radius in CSS pixels: smaller for crowded maps, a little larger when zoomed in. */
  const pointRadius = (count, zoom) =>
    (count > 20000 ? 1.6 : count > 5000 ? 2.2 : 3) * clamp(Math.sqrt(zoom), 1, 2.5);

  /** One map: a canvas of points (redrawn only when the scene or camera changes) under an
   * overlay canvas (hover ring, trajectory) that redraws alone on hover. */
  class MapPanel {
    /**
     * @param host element the canvases fill
     * @param options.testid data-testid of the points canvas (it receives the pointer events)
     * @param options.camera shared Camera
     * @param options.onHover (hit | null, event) when the hovered point changes
     * @param options.onPick (hit) on a click on a point
     * @param options.drawOverlay (ctx, panel) extra overlay drawing, in CSS pixels
     */
    constructor(host, {testid, camera, onHover, onPick, drawOverlay}) {
      this.host = host;
      this.camera = camera;
      this.options = {onHover, onPick, drawOverlay};
      this.canvas = el("canvas", {class: "map-canvas", "data-testid": testid,
                                  "aria-label": "map of neurons"});
      this.overlay = el("canvas", {class: "map-overlay", "aria-hidden": "true"});
      host.prepend(this.canvas, this.overlay);
      this.w = 0;
      this.h = 0;
      this.dpr = 0;
      this.scene = null;
      this.index = null;      // flattened drawn points + HitGrid, built on first hover
      this.hot = -1;          // index of the hovered point in this.index
      this.drag = null;
      this.dirtyPoints = false;
      this.dirtyOverlay = false;
      this.frame = 0;
      camera.panels.add(this);
      this.resizeObserver = new ResizeObserver(() => this.requestDraw(true));
      this.resizeObserver.observe(host);
      this.listen();
    }

    destroy() {
      this.camera.panels.delete(this);
      this.resizeObserver.disconnect();
      cancelAnimationFrame(this.frame);
    }

    setScene(scene) {
      if (scene === this.scene) return;
      this.scene = scene;
      this.index = null;
      this.setHot(-1, null);
      this.requestDraw(true);
    }

    requestDraw(points = false) {
      this.dirtyPoints = this.dirtyPoints || points;
      this.dirtyOverlay = true;
      if (!this.frame) this.frame = requestAnimationFrame(() => this.draw());
    }

    /** Draw what is dirty now (also called directly by views that need the frame done). */
    draw() {
      cancelAnimationFrame(this.frame);
      this.frame = 0;
      this.measure();
      if (!this.w || !this.h || !this.camera.bounds) return;
      if (this.dirtyPoints) this.drawPoints();
      if (this.dirtyOverlay) this.drawOverlay();
      this.dirtyPoints = this.dirtyOverlay = false;
    }

    measure() {
      const w = this.host.clientWidth;
      const h = this.host.clientHeight;
      const dpr = window.devicePixelRatio || 1;
      if (w === this.w && h === this.h && dpr === this.dpr) return;
      Object.assign(this, {w, h, dpr, dirtyPoints: true, dirtyOverlay: true});
      for (const canvas of [this.canvas, this.overlay]) {
        canvas.width = Math.round(w * dpr);
        canvas.height = Math.round(h * dpr);
      }
    }

    /** The world -> CSS pixel transform: sx = x * s + ox, sy = -y * s + oy (y points up). */
    transform() {
      const s = this.camera.scale(this.w, this.h);
      return {s, ox: this.w / 2 - this.camera.cx * s, oy: this.h / 2 + this.camera.cy * s};
    }

    toScreen(x, y) {
      const t = this.transform();
      return [x * t.s + t.ox, -y * t.s + t.oy];
    }

    toWorld(px, py) {
      const t = this.transform();
      return [(px - t.ox) / t.s, -(py - t.oy) / t.s];
    }

    context(canvas) {
      const ctx = canvas.getContext("2d");
      ctx.setTransform(this.dpr, 0, 0, this.dpr, 0, 0);
      ctx.clearRect(0, 0, this.w, this.h);
      return ctx;
    }

    drawPoints() {
      const ctx = this.context(this.canvas);
      const scene = this.scene;
      if (!scene) return;
      const t = this.transform();
      const r = pointRadius(scene.count, this.camera.zoom);
      // Tiny circles cost several times more than squares and look the same on a crowded map.
      const square = scene.count + scene.baseCount > SQUARE_POINTS_ABOVE;
      if (scene.base) {
        this.dots(ctx, scene.base, null, 0, scene.base.x.length,
                  {t, r: r * 0.9, color: BASE_COLOR, square, hollow: false});
      }
      ctx.lineWidth = 1;
      for (const set of scene.sets) {
        ctx.globalAlpha = set.alpha;
        for (let bucket = 0; bucket + 1 < set.starts.length; bucket++) {
          if (set.starts[bucket] === set.starts[bucket + 1]) continue;
          this.dots(ctx, set.points, set.order, set.starts[bucket], set.starts[bucket + 1],
                    {t, r, color: set.palette[bucket >> 1], square, hollow: (bucket & 1) === 1});
        }
      }
      ctx.globalAlpha = 1;
    }

    /** Points order[from..to) (from..to when order is null) in one colour, skipping those
     * off screen: filled, or hollow (dead neurons); circles, or squares when crowded. */
    dots(ctx, {x, y}, order, from, to, {t, r, color, square, hollow}) {
      const visible = (sx, sy) => sx > -r && sx < this.w + r && sy > -r && sy < this.h + r;
      if (square && !hollow) {          // fillRect needs no path: the fastest way
        ctx.fillStyle = color;
        for (let k = from; k < to; k++) {
          const i = order ? order[k] : k;
          const sx = x[i] * t.s + t.ox;
          const sy = -y[i] * t.s + t.oy;
          if (visible(sx, sy)) ctx.fillRect(sx - r, sy - r, 2 * r, 2 * r);   // NaN: not visible
        }
        return;
      }
      ctx.beginPath();
      for (let k = from; k < to; k++) {
        const i = order ? order[k] : k;
        const sx = x[i] * t.s + t.ox;
        const sy = -y[i] * t.s + t.oy;
        if (!visible(sx, sy)) continue;
        if (square) {
          ctx.rect(sx - r, sy - r, 2 * r, 2 * r);
        } else {
          ctx.moveTo(sx + r, sy);
          ctx.arc(sx, sy, r, 0, TAU);
        }
      }
      if (hollow) {
        ctx.strokeStyle = color;
        ctx.stroke();
      } else {
        ctx.fillStyle = color;
        ctx.fill();
      }
    }

    drawOverlay() {
      const ctx = this.context(this.overlay);
      if (this.options.drawOverlay) this.options.drawOverlay(ctx, this);
      if (this.hot < 0) return;
      const [sx, sy] = this.toScreen(this.index.xs[this.hot], this.index.ys[this.hot]);
      const r = pointRadius(this.scene.count, this.camera.zoom) + 3.5;
      ctx.lineWidth = 2;
      ctx.strokeStyle = "#fff";
      ctx.beginPath();
      ctx.arc(sx, sy, r + 1.5, 0, TAU);
      ctx.stroke();
      ctx.strokeStyle = "#1d2330";
      ctx.beginPath();
      ctx.arc(sx, sy, r, 0, TAU);
      ctx.stroke();
    }

    /** Flatten the scene's placed points for hit testing. Earlier (faded) epochs weigh more,
     * so a point of the slider's epoch wins when both are under the cursor. */
    buildIndex() {
      const total = this.scene.count;
      const xs = new Float32Array(total);
      const ys = new Float32Array(total);
      const weight = new Float32Array(total);
      const set = new Uint16Array(total);
      const neuron = new Int32Array(total);
      let k = 0;
      this.scene.sets.forEach((s, si) => {
        for (let j = 0; j < s.count; j++) {
          const i = s.order[j];
          xs[k] = s.points.x[i];
          ys[k] = s.points.y[i];
          weight[k] = s.faded ? 4 : 1;
          set[k] = si;
          neuron[k++] = i;
        }
      });
      this.index = {xs, ys, set, neuron, grid: new HitGrid(xs, ys, weight)};
    }

    pick(px, py) {
      if (!this.scene || !this.scene.count || !this.w || !this.camera.bounds) return -1;
      if (!this.index) this.buildIndex();
      const [x, y] = this.toWorld(px, py);
      return this.index.grid.nearest(x, y, HIT_RADIUS_PX / this.transform().s);
    }

    hit(k) {
      const points = this.scene.sets[this.index.set[k]].points;
      return {run: points.run, epoch: points.epoch, neuron: this.index.neuron[k]};
    }

    setHot(k, event) {
      if (k === this.hot) return;
      this.hot = k;
      this.requestDraw();
      if (this.options.onHover) this.options.onHover(k < 0 ? null : this.hit(k), event);
    }

    listen() {
      const canvas = this.canvas;
      canvas.addEventListener("pointerdown", (e) => {
        if (e.button !== 0) return;
        this.drag = {x: e.clientX, y: e.clientY, cx: this.camera.cx, cy: this.camera.cy,
                     moved: false};
        canvas.setPointerCapture(e.pointerId);
      });
      canvas.addEventListener("pointermove", (e) => this.onPointerMove(e));
      canvas.addEventListener("pointerup", (e) => {
        const drag = this.drag;
        this.drag = null;
        if (!drag || drag.moved) return;
        const k = this.pickEvent(e);
        if (k >= 0 && this.options.onPick) this.options.onPick(this.hit(k));
      });
      canvas.addEventListener("pointerleave", () => {
        if (!this.drag) this.setHot(-1, null);
      });
      canvas.addEventListener("wheel", (e) => this.onWheel(e), {passive: false});
      canvas.addEventListener("dblclick", () => this.resetView());
    }

    pickEvent(e) {
      const rect = this.canvas.getBoundingClientRect();
      return this.pick(e.clientX - rect.left, e.clientY - rect.top);
    }

    onPointerMove(e) {
      const drag = this.drag;
      if (drag) {
        const dx = e.clientX - drag.x;
        const dy = e.clientY - drag.y;
        if (!drag.moved && Math.hypot(dx, dy) < DRAG_THRESHOLD_PX) return;
        drag.moved = true;
        const s = this.transform().s;
        this.camera.cx = drag.cx - dx / s;
        this.camera.cy = drag.cy + dy / s;
        this.setHot(-1, null);
        this.camera.changed();
        return;
      }
      const k = this.pickEvent(e);
      if (k === this.hot) tooltip.follow(e);
      else this.setHot(k, e);
    }

    /** Zoom about the cursor: the world point under it stays under it. */
    onWheel(e) {
      if (!this.camera.bounds) return;
      e.preventDefault();
      const rect = this.canvas.getBoundingClientRect();
      const px = e.clientX - rect.left;
      const py = e.clientY - rect.top;
      const [bx, by] = this.toWorld(px, py);
      this.camera.zoom = clamp(this.camera.zoom * Math.exp(-e.deltaY * 0.0015), 0.5, 80);
      const [ax, ay] = this.toWorld(px, py);
      this.camera.cx += bx - ax;
      this.camera.cy += by - ay;
      this.setHot(-1, null);
      this.camera.changed();
    }

    resetView() {
      if (!this.scene) return;
      this.camera.fit(sceneBounds([this.scene]));
    }
  }

  // ---------------------------------------------------------------------------- scenes
  /** Colour index per point for a colour mode: {palette, index (per point) or null when the
   * whole checkpoint has palette[0]}. */
  function paint(points, labels) {
    switch (state.color) {
      case "epoch":
        return {palette: [epochColor(points.epoch)], index: null};
      case "layer": {
        // Relative depth within the run's own architecture (see layerColor).
        const highest = points.layer.reduce((m, l) => Math.max(m, l), 0);
        return {palette: layerPalette(runInfo(points.run), highest + 1), index: points.layer};
      }
      case "label": {
        // Unlabelled neurons first: buckets draw in palette order, so labelled ones end on top.
        const palette = [UNLABELLED, ...labels.map((_, i) => LABEL_PALETTE[i % LABEL_PALETTE.length])];
        const position = new Map(labels.map((label, i) => [label, i + 1]));
        const index = new Uint16Array(points.n);
        if (points.label) points.label.forEach((l, i) => { index[i] = position.get(l) || 0; });
        return {palette, index};
      }
      default:
        return {palette: [runColor(points.run)], index: null};
    }
  }

  /** Draw order of one checkpoint's placed points, grouped by (colour, dead) bucket so each
   * bucket is one canvas path: bucket b holds order[starts[b] .. starts[b + 1]). */
  function bucketize(points, index, paletteSize) {
    const buckets = 2 * paletteSize;
    const bucketOf = new Int32Array(points.n).fill(-1);
    const starts = new Int32Array(buckets + 1);
    for (let i = 0; i < points.n; i++) {
      if (!Number.isFinite(points.x[i]) || !Number.isFinite(points.y[i])) continue;
      bucketOf[i] = 2 * (index ? index[i] : 0) + (points.dead[i] ? 1 : 0);
      starts[bucketOf[i] + 1]++;
    }
    for (let b = 0; b < buckets; b++) starts[b + 1] += starts[b];
    const count = starts[buckets];
    const order = new Int32Array(count);
    const next = starts.slice(0, -1);
    for (let i = 0; i < points.n; i++) if (bucketOf[i] >= 0) order[next[bucketOf[i]]++] = i;
    return {order, starts, count};
  }

  /** Concept labels present in some checkpoints, most frequent first. */
  function labelsOf(pointSets) {
    const counts = new Map();
    for (const points of pointSets) {
      for (const label of points.label || []) {
        if (label != null) counts.set(label, (counts.get(label) || 0) + 1);
      }
    }
    return [...counts.keys()].sort((a, b) => counts.get(b) - counts.get(a));
  }

  /** Recent scenes by what they show, so an unchanged scene keeps its identity (and its map
   * is not redrawn, nor its hover index rebuilt). */
  const sceneCache = new Map();
  const SCENE_CACHE_SIZE = 16;

  /** The scene of some runs at the slider epoch (and earlier ones, fainter, when asked).
   * Returns {missing: [[run, epoch]]} while points still have to be loaded. */
  function sceneOf(runs) {
    const key = [store.generation, runs.join("\n"), state.epoch, state.color,
                 state.showEarlier].join("|");
    if (sceneCache.has(key)) return sceneCache.get(key);
    const scene = buildScene(runs);
    if (scene.missing) return scene;
    sceneCache.set(key, scene);
    if (sceneCache.size > SCENE_CACHE_SIZE) sceneCache.delete(sceneCache.keys().next().value);
    return scene;
  }

  function buildScene(runs) {
    const loaded = [];
    const missing = [];
    const unavailable = [];
    for (const name of runs) {
      const run = runInfo(name);
      if (!run.epochs.includes(state.epoch)) unavailable.push(`${name} has no epoch ${state.epoch}`);
      for (const epoch of run.epochs) {
        if (epoch > state.epoch || (epoch < state.epoch && !state.showEarlier)) continue;
        const key = pointsKey(name, epoch);
        if (store.points.has(key)) loaded.push(store.points.get(key));
        else if (store.failed.has(key)) unavailable.push(`${name}, epoch ${epoch}: ${store.failed.get(key)}`);
        else missing.push([name, epoch]);
      }
    }
    if (missing.length) return {missing};
    loaded.sort((a, b) => a.epoch - b.epoch);   // older epochs underneath
    const earlier = [...new Set(loaded.map((p) => p.epoch))].filter((e) => e < state.epoch);
    const labels = state.color === "label" ? labelsOf(loaded) : [];
    const sets = loaded.map((points) => {
      const {palette, index} = paint(points, labels);
      const faded = points.epoch < state.epoch;
      // Earlier epochs fade with age: the oldest is faintest.
      const alpha = faded ? 0.1 + 0.35 * (earlier.indexOf(points.epoch) + 1) / (earlier.length + 1)
                          : 0.9;
      return {points, palette, faded, alpha, ...bucketize(points, index, palette.length)};
    });
    const base = store.base;
    return {
      sets, labels, unavailable, base,
      count: sets.reduce((sum, s) => sum + s.count, 0),
      baseCount: base ? base.count : 0,
    };
  }

  function sceneBounds(scenes) {
    const arrays = store.base ? [store.base] : [];
    for (const scene of scenes) for (const set of scene.sets) arrays.push(set.points);
    return extentOf(arrays);
  }

  /** Load the epochs next to the slider's while the browser is idle, so stepping is instant. */
  function prefetchAround(runs) {
    const epochs = allEpochs();
    const i = epochs.indexOf(state.epoch);
    const wanted = [epochs[i + 1], epochs[i - 1], state.playing ? epochs[i + 2] : undefined];
    idle(() => {
      for (const run of runs) {
        for (const epoch of wanted) {
          const key = pointsKey(run, epoch);
          if (epoch === undefined || !runInfo(run)?.epochs.includes(epoch) ||
              store.points.has(key) || store.failed.has(key)) continue;
          loadPoints(run, epoch).catch(() => {});   // remembered in store.failed
        }
      }
    });
  }

  /** Pinned neuron's path: a polyline through its epochs, a dot per epoch (epoch colours),
   * the slider's epoch ringed. */
  function drawTrajectory(ctx, panel) {
    const path = state.trajectory;
    if (!state.pinned || !path.length) return;
    const screen = path.map((p) => panel.toScreen(p.x, p.y));
    ctx.lineJoin = "round";
    for (const [width, color] of [[5, "rgba(255,255,255,0.85)"], [2, runColor(state.pinned.run)]]) {
      ctx.lineWidth = width;
      ctx.strokeStyle = color;
      ctx.beginPath();
      screen.forEach(([sx, sy], i) => (i ? ctx.lineTo(sx, sy) : ctx.moveTo(sx, sy)));
      ctx.stroke();
    }
    ctx.lineWidth = 1.5;
    ctx.font = "11px system-ui, sans-serif";
    path.forEach((p, i) => {
      const [sx, sy] = screen[i];
      const current = p.epoch === state.epoch;
      ctx.fillStyle = epochColor(p.epoch);
      ctx.strokeStyle = "#fff";
      ctx.beginPath();
      ctx.arc(sx, sy, current ? 6 : 4, 0, TAU);
      ctx.fill();
      ctx.stroke();
      if (current) {
        ctx.strokeStyle = "#1d2330";
        ctx.beginPath();
        ctx.arc(sx, sy, 9, 0, TAU);
        ctx.stroke();
      }
      if (current || i === 0 || i === path.length - 1) {
        ctx.fillStyle = "#1d2330";
        ctx.fillText(`e${p.epoch}`, sx + 8, sy - 8);
      }
    });
  }

  // ------------------------------------------------------------------------------ tooltip
  const tooltip = {
    node: null,
    token: 0,

    /** Show a hovered neuron (or hide for null). lastHoverMs is measured from the event. */
    show(hit, event) {
      state.hovered = hit;
      const token = ++this.token;
      if (!hit) {
        this.node.hidden = true;
        return;
      }
      const started = event ? event.timeStamp : performance.now();
      const info = neuronInfo(hit.run, hit.epoch, hit.neuron);
      const done = () => {
        if (token !== this.token) return;
        state.lastHoverMs = Math.round(10 * (performance.now() - started)) / 10;
        this.follow(event);
      };
      fill(this.node,
        el("div", {class: "tt-title"}, swatch(runColor(hit.run)), el("strong", {text: hit.run}),
           ` · epoch ${hit.epoch}`),
        el("div", {class: "tt-meta"}, `${info.layer} · channel ${info.channel} · neuron ${hit.neuron}`,
           info.dead ? el("span", {class: "badge dead", text: "dead"}) : null),
        info.concept && info.concept.label
          ? el("div", {class: "tt-label", text: `concept: ${conceptText(info.concept)}`}) : null,
        el("div", {class: "patch-frame"},
           patchImage(patchUrl(hit.run, hit.epoch, hit.neuron),
                      {alt: `top patches of ${hit.run} neuron ${hit.neuron} at epoch ${hit.epoch}`,
                       testid: "hover-patches", onReady: done})),
        el("div", {class: "tt-hint", text: "click to pin"}));
      this.node.hidden = false;
      this.follow(event);
    },

    /** Keep the tooltip next to the cursor, inside the window. */
    follow(event) {
      if (!event || this.node.hidden) return;
      const gap = 14;
      const {offsetWidth: w, offsetHeight: h} = this.node;
      let left = event.clientX + gap;
      let top = event.clientY + gap;
      if (left + w > window.innerWidth - 4) left = event.clientX - gap - w;
      if (top + h > window.innerHeight - 4) top = event.clientY - gap - h;
      this.node.style.left = `${Math.max(4, left)}px`;
      this.node.style.top = `${Math.max(4, top)}px`;
    },
  };

  // ------------------------------------------------------------------- shared map controls
  /** Epoch slider, play button, "show earlier", colour-by and legend: one block, moved into
   * the Space or Compare view (each data-testid exists once in the page). */
  const mapControls = {
    mount(view) {
      const slot = document.querySelector(`.controls-slot[data-slot="${view}"]`);
      if ($("#map-controls").parentElement !== slot) slot.append($("#map-controls"));
    },

    sync() {
      const epochs = allEpochs();
      const slider = $("#epoch-slider");
      slider.min = epochs[0];
      slider.max = last(epochs);
      slider.value = state.epoch;
      const ticks = $("#epoch-ticks");
      if (ticks.options.length !== epochs.length) {
        fill(ticks, ...epochs.map((e) => el("option", {value: e})));
      }
      $("#epoch-value").textContent = state.epoch;
      $("#show-earlier").checked = state.showEarlier;
      const color = $("#color-by");
      color.value = state.color;
      const labelOption = color.querySelector('option[value="label"]');
      labelOption.disabled = !store.hasLabels;
      labelOption.title = store.hasLabels ? "" : "no concept labels in this workspace yet";
      const play = $("#play");
      play.textContent = state.playing ? "❚❚" : "▶";
      play.setAttribute("aria-pressed", String(state.playing));
      play.setAttribute("aria-label", state.playing ? "Pause" : "Play");
    },

    loading(on) {
      $("#map-loading").hidden = !on;
    },

    bind() {
      $("#epoch-slider").addEventListener("input", (e) => setEpoch(nearestEpoch(Number(e.target.value))));
      $("#play").addEventListener("click", () => setPlaying(!state.playing));
      $("#show-earlier").addEventListener("change", (e) => {
        state.showEarlier = e.target.checked;
        invalidate();
      });
      $("#color-by").addEventListener("change", (e) => {
        state.color = e.target.value;
        invalidate();
      });
    },
  };

  function setEpoch(epoch) {
    state.epoch = epoch;
    $("#epoch-slider").value = epoch;   // snap the thumb to an existing epoch
    invalidate();
  }

  // Playing steps one epoch every PLAY_INTERVAL_MS, waiting for a frame still loading.
  let playTimer = 0;
  let mapComplete = false;   // the shown map has every checkpoint it needs

  function setPlaying(on) {
    state.playing = on;
    clearTimeout(playTimer);
    if (on) {
      const epochs = allEpochs();
      if (state.epoch === last(epochs)) setEpoch(epochs[0]);
      playTimer = setTimeout(playStep, PLAY_INTERVAL_MS);
    }
    mapControls.sync();
  }

  function playStep() {
    if (!state.playing) return;
    if (!mapComplete) {
      playTimer = setTimeout(playStep, 50);
      return;
    }
    const epochs = allEpochs();
    const i = epochs.indexOf(state.epoch);
    if (i < 0 || i >= epochs.length - 1) {
      setPlaying(false);
      return;
    }
    setEpoch(epochs[i + 1]);
    playTimer = setTimeout(playStep, PLAY_INTERVAL_MS);
  }

  /** The epochs labelled under the epoch colour bar: integers only, every epoch when there are
   * few, else the first, the last and round ones between (multiples of a nice step) that are
   * not crowding the ends. */
  function epochTicks(epochs) {
    const whole = epochs.filter(Number.isInteger);
    if (whole.length <= 8) return whole;
    const first = whole[0];
    const end = last(whole);
    const {step} = niceTicks(first, end, 6, 1);
    const at = (e) => whole.indexOf(e) / (whole.length - 1);
    const between = whole.filter((e) => e !== first && e !== end && e % step === 0 &&
                                        at(e) > 0.08 && at(e) < 0.92);
    return [first, ...between, end];
  }

  /** A CSS gradient along a ramp (its stops evenly spaced, as mixRamp reads them). */
  const rampGradient = (stops) => `linear-gradient(to right, ${stops.map((c, i) =>
    `rgb(${c.join(", ")}) ${(100 * i / (stops.length - 1)).toFixed(1)}%`).join(", ")})`;

  /** The epoch colour bar: the ramp, each labelled epoch under its place on it. */
  function epochColorBar() {
    const ticks = epochTicks(allEpochs()).map((e) =>
      el("span", {class: "colorbar-tick", style: {left: percent(epochPosition(e))}, text: String(e)}));
    return el("span", {class: "legend-item colorbar", "data-testid": "epoch-colorbar"},
      el("span", {class: "colorbar-title", text: "epoch"}),
      el("span", {class: "colorbar-scale"},
         el("span", {class: "colorbar-bar", style: {background: rampGradient(VIRIDIS)}}),
         el("span", {class: "colorbar-ticks"}, ticks)));
  }

  /** The layer colour bar: relative depth, from each run's first to its last probed layer. */
  function layerColorBar(runs) {
    const ends = runs.map(runInfo).filter((r) => r && r.layers.length)
      .map((r) => `${r.name}: ${r.layers[0].name} … ${last(r.layers).name} (${plural(r.layers.length, "layer")})`);
    return el("span", {class: "legend-item colorbar", "data-testid": "layer-colorbar",
                       title: ends.join("\n") || null},
      el("span", {class: "colorbar-title", text: "layer depth (relative):"}),
      el("span", {class: "colorbar-end", text: "first probed layer"}),
      el("span", {class: "colorbar-bar", style: {background: rampGradient(LAYER_RAMP)}}),
      el("span", {class: "colorbar-end", text: "last probed layer"}));
  }

  /** Legend entries for the colour mode: [[color, text]] (epoch and layer: a colour bar). */
  function legendEntries(scenes, runs) {
    switch (state.color) {
      case "label": {
        const labels = [...new Set(scenes.flatMap((s) => s.labels))];
        if (!labels.length) return [[UNLABELLED, "no concept labels yet"]];
        const shown = labels.slice(0, LABEL_PALETTE.length);
        return [...shown.map((l, i) => [LABEL_PALETTE[i % LABEL_PALETTE.length], l]),
                [UNLABELLED, labels.length > shown.length ? "other / unlabelled" : "unlabelled"]];
      }
      default:
        return runs.map((r) => [runColor(r), r]);
    }
  }

  function renderLegend(scenes, runs) {
    const items = state.color === "epoch" ? [epochColorBar()]
      : state.color === "layer" ? [layerColorBar(runs)]
      : legendEntries(scenes, runs).map(([color, text]) =>
          el("span", {class: "legend-item"}, swatch(color), text));
    items.push(el("span", {class: "legend-item muted"}, swatch(BASE_COLOR), "base model"),
               el("span", {class: "legend-item muted"}, el("span", {class: "swatch hollow"}), "dead neuron"));
    if (state.showEarlier) items.push(el("span", {class: "legend-item muted", text: "fainter: earlier epochs"}));
    const problems = [...new Set(scenes.flatMap((s) => s.unavailable))];
    if (problems.length) items.push(el("span", {class: "legend-item warn", text: problems.join("; ")}));
    fill($("#legend"), ...items);
  }

  /** Run checkboxes with colour swatches; `limit` disables the others once reached. */
  function renderRunPicker(fieldset, selected, onChange, limit = Infinity) {
    const legend = fieldset.querySelector("legend");
    const boxes = store.study.runs.map(({name}) => {
      const checked = selected.includes(name);
      return el("label", {class: "check run-choice"},
                el("input", {type: "checkbox", value: name, checked,
                             disabled: !checked && selected.length >= limit,
                             onchange: (e) => {
                               const next = new Set(selected);
                               if (e.target.checked) next.add(name); else next.delete(name);
                               onChange(runNames().filter((r) => next.has(r)));
                             }}),
                swatch(runColor(name)), name);
    });
    fill(fieldset, legend, ...boxes);
  }

  // ------------------------------------------------------------------------- Space view
  const spaceView = {
    camera: new Camera(),
    panel: null,
    pickerKey: null,

    init() {
      this.panel = new MapPanel($("#space-map"), {
        testid: "space-canvas",
        camera: this.camera,
        onHover: (hit, event) => tooltip.show(hit, event),
        onPick: (hit) => pin(hit),
        drawOverlay: drawTrajectory,
      });
    },

    render() {
      mapControls.mount("space");
      const key = `${store.generation}|${state.runs}`;
      if (key !== this.pickerKey) {
        this.pickerKey = key;
        renderRunPicker($("#space-runs"), state.runs, (runs) => {
          state.runs = runs;
          invalidate();
        });
      }
      mapControls.sync();
      const scene = sceneOf(state.runs);
      mapComplete = !scene.missing;
      mapControls.loading(!mapComplete);
      if (scene.missing) {
        requestPoints(scene.missing);   // the previous frame stays up meanwhile
        return;
      }
      if (!this.camera.bounds) this.camera.fit(sceneBounds([scene]));
      this.panel.setScene(scene);
      this.panel.draw();
      state.drawnPoints = scene.count;
      state.drawnBase = scene.baseCount;
      renderLegend([scene], state.runs);
      pinnedPanel.render();
      prefetchAround(state.runs);
      markRendered();
    },
  };

  // ---------------------------------------------------------------------- pinned neuron
  function pin(target) {
    state.pinned = target;
    state.trajectory = [];
    redrawOverlays();
    invalidate();
  }

  function redrawOverlays() {
    if (spaceView.panel) spaceView.panel.requestDraw();
    for (const {panel} of compareView.panels) panel.requestDraw();
  }

  /** A neuron's positions at every epoch of its run, from the checkpoints' points (used when
   * a report does not include the neuron's details). */
  async function trajectoryFromPoints(run, neuron) {
    const epochs = runInfo(run).epochs;
    const all = await Promise.all(epochs.map((e) => loadPoints(run, e).catch(() => null)));
    return all.filter(Boolean)
      .map((points) => ({epoch: points.epoch, x: points.x[neuron], y: points.y[neuron]}))
      .filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
  }

  const pinnedPanel = {
    renderedKey: null,
    token: 0,

    /** Rebuild when the pinned neuron (or the workspace) changed; otherwise only move the
     * "current epoch" highlight of the strip. */
    render() {
      const node = $("#pinned");
      const p = state.pinned;
      node.hidden = !p;
      if (!p) {
        this.renderedKey = null;
        return;
      }
      const key = `${store.generation}|${p.run}|${p.epoch}|${p.neuron}`;
      if (key !== this.renderedKey) {
        this.renderedKey = key;
        this.build(p);
      }
      for (const item of node.querySelectorAll(".strip-item")) {
        item.classList.toggle("current", Number(item.dataset.epoch) === state.epoch);
      }
    },

    async build(p) {
      const token = ++this.token;
      const info = neuronInfo(p.run, p.epoch, p.neuron);
      const node = $("#pinned");
      fill(node, this.header(p), this.facts(info, null), note("loading…"));
      let detail = null;
      let problem = null;
      try {
        detail = await cachedJSON(apiPath("neuron", p.run, p.epoch, p.neuron));
      } catch (err) {
        problem = err;
        if (!err.missing) showBanner(`Neuron ${p.run}:${p.epoch}:${p.neuron}: ${err.message}`);
      }
      const trajectory = detail ? detail.trajectory : await trajectoryFromPoints(p.run, p.neuron);
      if (token !== this.token) return;   // another neuron was pinned meanwhile
      state.trajectory = trajectory;
      fill(node,
        this.header(p),
        this.facts(info, detail),
        el("h3", {text: `Patches at epoch ${p.epoch}`}),
        el("div", {class: "patch-frame"}, patchImage(patchUrl(p.run, p.epoch, p.neuron), {alt: "top patches"})),
        el("h3", {text: "Across epochs"}),
        this.strip(p),
        detail ? this.stimuliClasses(detail) : null,
        el("h3", {text: "Nearest neurons in other runs and epochs"}),
        detail ? this.neighbours(detail.neighbours)
               : note(problem && problem.missing ? "neighbours not in this report"
                                                 : "neighbours unavailable"),
        detail && detail.skipped && detail.skipped.length ? note(
          `Left out: ${detail.skipped.map((s) => `${s.run} epoch ${s.epoch}`).join(", ")} ` +
          `(a damaged file: ${detail.skipped[0].error})`, "note error") : null);
      this.render();
      redrawOverlays();
    },

    header(p) {
      return el("div", {class: "pinned-head"},
                el("h2", {}, swatch(runColor(p.run)), `${p.run} · neuron ${p.neuron}`),
                el("button", {type: "button", class: "icon-button", "aria-label": "Unpin",
                              title: "Unpin (Esc)", text: "×", onclick: () => pin(null)}));
    },

    facts(info, detail) {
      const rows = [["pinned at", `epoch ${info.epoch}`], ["layer", info.layer],
                    ["channel", info.channel]];
      if (info.unit) rows.push(["neuron", info.unit]);
      const concept = detail ? detail.concept : info.concept;   // null: no labels here
      if (concept) {
        rows.push(["concept", conceptText(concept)]);
        if (concept.top && concept.top.length) {
          rows.push(["top concepts", concept.top.map(([name, iou]) => `${name} ${iou.toFixed(2)}`).join(", ")]);
        }
      }
      if (detail) {
        rows.push(["max activation", formatNumber(detail.act_max)],
                  ["active on", percent(detail.frac_positive) + " of probe images"]);
      }
      if (detail ? detail.dead : info.dead) rows.push(["status", "dead (no positive activation)"]);
      return el("dl", {class: "facts"}, rows.flatMap(([k, v]) => [el("dt", {text: k}), el("dd", {text: String(v)})]));
    },

    /** One patch strip per epoch of the run; click one to move the slider there. */
    strip(p) {
      const items = runInfo(p.run).epochs.map((epoch) =>
        el("button", {type: "button", class: "strip-item", "data-epoch": epoch,
                      title: `show epoch ${epoch}`, onclick: () => setEpoch(epoch)},
           el("span", {class: "strip-epoch", text: `e${epoch}`}),
           el("span", {class: "patch-frame"},
              patchImage(patchUrl(p.run, epoch, p.neuron), {alt: `epoch ${epoch}`}))));
      return el("div", {class: "epoch-strip", "data-testid": "epoch-strip"}, items);
    },

    /** The classes of the neuron's top stimuli, most common first. */
    stimuliClasses(detail) {
      const counts = new Map();
      for (const c of detail.stimuli_class || []) counts.set(c, (counts.get(c) || 0) + 1);
      if (!counts.size) return null;
      const top = [...counts].sort((a, b) => b[1] - a[1]).slice(0, 4);
      return el("p", {class: "stimuli-classes"},
                el("span", {class: "muted", text: `top ${detail.stimuli.length} stimuli: `}),
                top.map(([c, n]) => `${c} (${n})`).join(", "));
    },

    neighbours(list) {
      if (!list.length) return note("no other runs or epochs to compare with");
      return el("ol", {class: "neighbours", "data-testid": "neighbours"},
        list.map((n) => el("li", {class: "neighbour"},
          el("button", {type: "button", title: "pin this neuron", onclick: () => pinNeighbour(n)},
             el("span", {class: "neighbour-meta"}, swatch(runColor(n.run)),
                el("span", {class: "neighbour-where"}, `${n.run} · e${n.epoch} · `,
                   layerName(n.layer), ` ch ${n.channel}`),
                el("span", {class: "similarity", text: `cos ${n.similarity.toFixed(2)}`})),
             el("span", {class: "patch-frame"},
                patchImage(patchUrl(n.run, n.epoch, n.neuron), {alt: `neighbour ${n.neuron}`}))))));
    },
  };

  /** Pin a neighbour and show it: its run becomes visible and the slider goes to its epoch. */
  function pinNeighbour(n) {
    if (!state.runs.includes(n.run)) state.runs = runNames().filter((r) => r === n.run || state.runs.includes(r));
    state.epoch = n.epoch;
    pin({run: n.run, epoch: n.epoch, neuron: n.neuron});
  }

  // ------------------------------------------------------------------------- Class view
  /** The stored importance entries, their runs in the study's order (the server lists them
   * by file path). */
  function importanceEntries() {
    const order = inStudyOrder(store.study.importance.map((e) => e.run));
    return store.study.importance.map((e, i) => [e, i])
      .sort(([a, i], [b, j]) => order.indexOf(a.run) - order.indexOf(b.run) || i - j)
      .map(([e]) => e);
  }

  const classView = {
    renderedKey: null,

    render() {
      const entries = importanceEntries();
      const body = $("#class-body");
      if (!entries.length) {
        this.renderedKey = null;
        fill(body, this.howTo());
        this.syncSelects([]);
        markRendered();
        return;
      }
      const s = this.selection(entries);
      this.syncSelects(entries);
      const key = `${store.generation}|${s.run}|${s.class}|${s.from}|${s.to}`;
      if (key === this.renderedKey) return;
      this.renderedKey = key;
      fill(body, note("loading…"));
      cachedJSON(apiPath("importance", s.run, s.class, s.from, s.to)).then((payload) => {
        if (key === this.renderedKey) fill(body, ...this.content(payload));
      }, (err) => {
        if (key !== this.renderedKey) return;
        fill(body, note(err.missing ? "This class evolution is not included in this report."
                                    : err.message, "note error"));
      }).finally(markRendered);
    },

    howTo() {
      const run = runNames()[0];
      return el("div", {class: "empty"},
        el("h2", {text: "No class evolution computed yet"}),
        el("p", {text: "Which concept changes between two epochs matter for a class is computed " +
                       "per run, class and pair of epochs. For example:"}),
        el("pre", {text: `conceptevo importance --config study.toml --run ${run} --class 0`}),
        el("p", {text: REPORT_MODE ? "Then build the report again."
                                   : "This page shows the result as soon as it is written."}));
    },

    /** The shown entry: the state's when the study has it, else the first stored one. */
    selection(entries) {
      const s = state.importance;
      const same = (e) => s && e.run === s.run && e.class === s.class && e.from === s.from && e.to === s.to;
      if (!entries.some(same)) {
        if (s && s.run !== null) showBanner(`No importance stored for run ${s.run}, class ${s.class}, epochs ${s.from} → ${s.to}; showing the first stored one.`);
        const e = entries[0];
        state.importance = {run: e.run, class: e.class, from: e.from, to: e.to};
      }
      return state.importance;
    },

    /** Run, class and epoch-pair selects, each offering only what is stored. */
    syncSelects(entries) {
      const s = state.importance;
      const forRun = entries.filter((e) => s && e.run === s.run);
      const forClass = forRun.filter((e) => e.class === s.class);
      const offer = (select, options, current) => {
        fill(select, options.map(([value, text]) =>
          el("option", {value, text, selected: value === current})));
        select.disabled = options.length === 0;
      };
      const unique = (list) => [...new Map(list.map((o) => [o[0], o])).values()];
      offer($("#class-run"), unique(entries.map((e) => [e.run, e.run])), s && s.run);
      offer($("#class-class"), unique(forRun.map((e) => [String(e.class), e.class_name])),
            s && String(s.class));
      offer($("#class-pair"), unique(forClass.map((e) => [`${e.from}-${e.to}`, `${e.from} → ${e.to}`])),
            s && `${s.from}-${s.to}`);
    },

    /** A select changed: keep what still exists, else take the first stored option. */
    choose(change) {
      const entries = importanceEntries();
      const want = {...state.importance, ...change};
      const score = (e) => (e.run === want.run) * 4 + (e.class === want.class) * 2 +
                           (e.from === want.from && e.to === want.to);
      const best = entries.filter((e) => e.run === want.run)
        .sort((a, b) => score(b) - score(a))[0] || entries[0];
      state.importance = {run: best.run, class: best.class, from: best.from, to: best.to};
      invalidate();
    },

    bind() {
      $("#class-run").addEventListener("change", (e) => this.choose({run: e.target.value}));
      $("#class-class").addEventListener("change", (e) => this.choose({class: Number(e.target.value)}));
      $("#class-pair").addEventListener("change", (e) => {
        const [from, to] = e.target.value.split("-").map(Number);
        this.choose({from, to});
      });
    },

    content(payload) {
      return [
        el("header", {class: "class-head"},
           el("h2", {text: payload.class_name}),
           el("p", {class: "muted", text:
             `Run ${payload.run}, epoch ${payload.from} → ${payload.to}, ${payload.n_images} ` +
             "class images. Importance of a neuron's change = the fraction of those images whose " +
             "class score it raises (first-order estimate)."})),
        reversionFigure(payload.reversion),
        el("h2", {class: "section-title", text: "Most important evolutions per layer"}),
        ...payload.layers.map((layer) => this.layer(payload, layer)),
      ];
    },

    layer(payload, layer) {
      return el("section", {class: "layer-evolutions"},
        el("h3", {text: layer.name}),
        layer.top.length ? layer.top.map((ev) => this.evolution(payload, ev))
                         : note("no neuron of this layer changed"));
    },

    evolution(payload, ev) {
      const side = (epoch) => el("figure", {},
        el("span", {class: "patch-frame"},
           patchImage(patchUrl(payload.run, epoch, ev.neuron), {alt: `channel ${ev.channel}, epoch ${epoch}`})),
        el("figcaption", {text: `epoch ${epoch}`}));
      return el("article", {class: "evolution"},
        el("div", {class: "evo-meta"},
           el("strong", {text: `channel ${ev.channel}`}),
           el("span", {class: "score", title: "importance: fraction of class images helped"},
              scoreBar(ev.score),
              ev.score.toFixed(2)),
           el("button", {type: "button", class: "link-button", text: "show in space",
                         onclick: () => showInSpace(payload.run, payload.to, ev.neuron)})),
        side(payload.from), el("span", {class: "arrow", "aria-hidden": "true", text: "→"}), side(payload.to));
    },
  };

  function showInSpace(run, epoch, neuron) {
    if (!state.runs.includes(run)) state.runs = runNames().filter((r) => r === run || state.runs.includes(r));
    state.view = "space";
    state.epoch = epoch;
    pin({run, epoch, neuron});
  }

  // ---------------------------------------------------------------------- SVG charts
  function linearScale([d0, d1], [r0, r1]) {
    const k = d1 === d0 ? 0 : (r1 - r0) / (d1 - d0);
    return (v) => r0 + (v - d0) * k;
  }

  /** A logarithmic scale over a positive domain (v <= 0 maps to a non-finite pixel). */
  function logScale([d0, d1], range) {
    const decades = linearScale([Math.log10(d0), Math.log10(d1)], range);
    return (v) => decades(Math.log10(v));
  }

  /** The scale of an axis's ticks (niceTicks: linear, logTicks: logarithmic). */
  const axisScale = (ticks, range) => (ticks.log ? logScale : linearScale)(ticks.domain, range);

  /** Round ticks covering [lo, hi]: {ticks, domain (extended to the outer ticks), step}. A
   * single value gets a range around it; 0 alone gets [0, 1] (a count or a fraction that is
   * always 0 must not show negative ticks). */
  function niceTicks(lo, hi, count = 5, minStep = 0) {
    if (!(hi > lo)) {
      const pad = Math.abs(lo) * 0.1;
      [lo, hi] = lo === 0 ? [0, 1] : [lo - pad, hi + pad];
    }
    const raw = (hi - lo) / count;
    const power = 10 ** Math.floor(Math.log10(raw));
    const step = Math.max(minStep, [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw));
    const first = Math.floor(lo / step);
    const end = Math.ceil(hi / step);
    const ticks = [];
    // Multiples of the step (not sums, which drift: 0.1 + 0.2 is not 0.3).
    for (let i = first; i <= end; i++) ticks.push(Number((i * step).toPrecision(12)));
    return {ticks, domain: [ticks[0], last(ticks)], step};
  }

  /** Ticks of a logarithmic axis covering [lo, hi] (both > 0): powers of ten (every second
   * or third one over many decades); 1, 2 and 5 times them when the values span at most two
   * decades. {ticks, domain, step (in decades), log: true}. */
  function logTicks(lo, hi) {
    const round = (v) => Number(v.toPrecision(12));
    const a = Math.floor(Math.log10(lo) + 1e-9);
    const b = Math.ceil(Math.log10(hi) - 1e-9);
    if (Math.log10(hi / lo) <= 2) {
      const stops = [];
      for (let k = a; k <= b; k++) for (const m of [1, 2, 5]) stops.push(round(m * 10 ** k));
      const start = stops.filter((v) => v <= lo * (1 + 1e-9)).pop();
      const end = stops.find((v) => v >= hi * (1 - 1e-9));
      return {ticks: stops.filter((v) => v >= start && v <= end), domain: [start, end], step: 1, log: true};
    }
    const step = Math.ceil((b - a) / 6);
    const ticks = [];
    for (let k = Math.floor(a / step) * step; k <= Math.ceil(b / step) * step; k += step) {
      ticks.push(round(10 ** k));
    }
    return {ticks, domain: [ticks[0], last(ticks)], step, log: true};
  }

  const LOG_SPAN = 20;   // a loss chart turns logarithmic when its values span more than this factor

  /**
   * The y axis for some values, as niceTicks or logTicks give it.
   * @param options.kind "zero": fractions and other non-negative values, from 0 and never
   *   negative ([0, 1] when every value is 0; a negative value, which none of them has, gets a
   *   linear axis); "count": the same with whole-number ticks; "loss": logarithmic when every value is > 0 and they span more than
   *   LOG_SPAN (one spike does not flatten the rest), else linear; otherwise linear.
   * @param options.domain a fixed [lo, hi] (accuracies: [0, 1])
   */
  function valueAxis(values, {kind = "linear", domain = null} = {}) {
    if (domain) return niceTicks(domain[0], domain[1], 5);
    const finite = values.filter(Number.isFinite);
    const lo = Math.min(...finite);
    const hi = Math.max(...finite);
    if ((kind === "zero" || kind === "count") && !(lo < 0)) {
      return niceTicks(0, hi, 5, kind === "count" ? 1 : 0);
    }
    if (kind === "loss" && lo > 0 && hi / lo > LOG_SPAN) return logTicks(lo, hi);
    return niceTicks(lo, hi, 5);
  }

  /** A number in exponent notation with the significant digits a tick step needs
   * ("1.2e-4", "3e6"). */
  function exponentLabel(v, step) {
    const magnitude = (u) => Math.floor(Math.log10(Math.abs(u)) + 1e-9);
    return v.toExponential(clamp(magnitude(v) - magnitude(step), 0, 6)).replace("e+", "e");
  }

  function tickLabel(v, step) {
    const digits = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
    if (v !== 0 && (digits > 4 || Math.abs(v) >= 1e6)) return exponentLabel(v, step);
    return v.toFixed(digits > 4 ? 0 : digits);
  }

  /** A tick of a logarithmic axis: plain from 0.01 to 500 (0.5, 1, 20), else an exponent
   * (1e3, 2e-4). */
  function logTickLabel(v) {
    const k = Math.floor(Math.log10(v) + 1e-9);
    return k >= -2 && k <= 2 ? String(Number(v.toPrecision(6))) : v.toExponential(0).replace("e+", "e");
  }

  /** The text of an axis's ticks. */
  const tickText = (ticks) => (ticks.log ? logTickLabel : (v) => tickLabel(v, ticks.step));

  const CHART = {width: 440, height: 250, left: 56, right: 16, top: 30, bottom: 40};
  const TICK_GAP = 6;      // y tick labels end this far left of the axis
  const Y_TITLE_X = 14;    // baseline of the rotated y-axis title, from the chart's left edge

  let measurer = null;

  /** Width in CSS pixels of a text in a CSS font (a canvas measures it; nothing is drawn). */
  function textWidth(text, font) {
    measurer = measurer || document.createElement("canvas").getContext("2d");
    measurer.font = font;
    return measurer.measureText(text).width;
  }

  /** The SVG charts' tick font (style.css: .chart is 11px of the page's family). */
  const svgChartFont = () => `11px ${getComputedStyle(document.body).fontFamily}`;

  /** The left margin of a chart: CHART.left, or wider when its widest y tick label would
   * reach the rotated y-axis title (11px text whose baseline is Y_TITLE_X; 8px for its
   * descent and a gap) or, without a title, the chart's edge. */
  function chartLeft(yTicks, font, titled = true) {
    const widest = Math.max(0, ...yTicks.ticks.map((v) => textWidth(tickText(yTicks)(v), font)));
    return Math.max(CHART.left, Math.ceil(widest) + TICK_GAP + (titled ? Y_TITLE_X : 0) + 8);
  }

  /** Axes, grid and labels of a chart; returns the SVG, its scales and its left margin. */
  function chartFrame({title, xTicks, yTicks, xLabel, yLabel, width = CHART.width,
                       xTickText = (v) => tickLabel(v, xTicks.step)}) {
    const {height, right, top, bottom} = CHART;
    const left = chartLeft(yTicks, svgChartFont(), Boolean(yLabel));
    const x = linearScale(xTicks.domain, [left, width - right]);
    const y = axisScale(yTicks, [height - bottom, top]);
    const yText = tickText(yTicks);
    const node = svg("svg", {class: "chart", width, height, viewBox: `0 0 ${width} ${height}`,
                             role: "img", "aria-label": title});
    node.append(
      svg("text", {class: "chart-title", x: left, y: 16, text: title}),
      ...yTicks.ticks.map((v) => svg("g", {class: "tick"},
        svg("line", {x1: left, x2: width - right, y1: y(v), y2: y(v), class: "grid"}),
        svg("text", {x: left - TICK_GAP, y: y(v), "text-anchor": "end", "dominant-baseline": "middle",
                     "data-axis": "y", text: yText(v)}))),
      ...xTicks.ticks.map((v) => svg("text", {class: "tick", x: x(v), y: height - bottom + 16,
                                              "text-anchor": "middle", text: xTickText(v)})),
      svg("line", {class: "axis", x1: left, x2: width - right, y1: height - bottom, y2: height - bottom}),
      svg("line", {class: "axis", x1: left, x2: left, y1: top, y2: height - bottom}),
      xLabel ? svg("text", {class: "axis-label", x: (left + width - right) / 2, y: height - 6,
                            "text-anchor": "middle", text: xLabel}) : null,
      yLabel ? svg("text", {class: "axis-label", "data-axis": "y", x: Y_TITLE_X - height / 2,
                            y: Y_TITLE_X, transform: "rotate(-90)", "text-anchor": "middle",
                            text: yLabel}) : null);
    return {node, x, y, left};
  }

  /**
   * A line chart over epochs.
   * @param series [{name, color, dash, points: [{x, y}]}] (non-finite y breaks the line)
   * @param flags [{x, color, text}] marked with a triangle above the plot
   * @param axis valueAxis's options for the y axis ({kind, domain})
   * @param metric what it charts, as its data-metric attribute
   */
  function lineChart({title, yLabel, series, flags = [], axis = {}, metric = null}) {
    const xs = series.flatMap((s) => s.points.map((p) => p.x)).concat(flags.map((f) => f.x));
    const ys = series.flatMap((s) => s.points.map((p) => p.y)).filter(Number.isFinite);
    if (!xs.length || !ys.length) return null;
    const xTicks = niceTicks(Math.min(...xs), Math.max(...xs), 8, 1);
    const yTicks = valueAxis(ys, axis);
    const {node, x, y} = chartFrame({title, xTicks, yTicks, xLabel: "epoch",
                                     yLabel: yTicks.log ? `${yLabel || title} (log scale)` : yLabel});
    setProps(node, {"data-metric": metric, "data-scale": yTicks.log ? "log" : "linear"});
    for (const s of series) {
      const segments = [[]];
      for (const p of s.points) {
        if (Number.isFinite(p.y)) last(segments).push(`${x(p.x).toFixed(1)},${y(p.y).toFixed(1)}`);
        else if (last(segments).length) segments.push([]);
      }
      node.append(...segments.filter((seg) => seg.length > 1).map((seg) =>
        svg("polyline", {class: "series", points: seg.join(" "), stroke: s.color,
                         "stroke-dasharray": s.dash || null})));
      node.append(...s.points.filter((p) => Number.isFinite(p.y)).map((p) =>
        svg("circle", {class: "dot", cx: x(p.x), cy: y(p.y), r: 2.6, fill: s.color,
                       "data-run": s.run ?? null, "data-epoch": p.x},
            svg("title", {text: `${s.name}, epoch ${p.x}: ${formatNumber(p.y, 4)}`}))));
    }
    const top = CHART.top;
    for (const f of flags) {
      node.append(svg("g", {class: "flag"},
        svg("line", {x1: x(f.x), x2: x(f.x), y1: top, y2: CHART.height - CHART.bottom, stroke: f.color}),
        svg("path", {d: `M${x(f.x) - 5},${top - 9} h10 l-5,8 z`, fill: f.color}),
        svg("title", {text: f.text})));
    }
    return node;
  }

  // -------------------------------------------------------------------- reversion chart
  const BAR = {width: 11, gap: 2, groupGap: 20};

  /** Per layer, the drop of the class's top-1 accuracy when reverting each importance bin
   * (bin 1 = most important) and random sets of the same size (mean ± std), train and
   * held-out images side by side, on one y scale. */
  function reversionFigure(reversion) {
    const figure = el("figure", {class: "reversion", "data-testid": "reversion-chart"});
    const splits = [["train", "train images"], ["heldout", "held-out images"]]
      .filter(([key]) => reversion && reversion[key]);
    if (!splits.length) {
      figure.append(note("No reversion results are stored for this pair."));
      return figure;
    }
    const nBins = Math.max(...splits.flatMap(([k]) => reversion[k].layers.map((l) => l.bins.length)));
    const drops = splits.flatMap(([k]) => reversionDrops(reversion[k]).flatMap((d) =>
      [...d.bins, d.random - d.std, d.random + d.std])).filter(Number.isFinite);
    const yTicks = niceTicks(Math.min(0, ...drops), Math.max(0, ...drops), 5);
    figure.append(
      el("h2", {class: "section-title", text: "Does reverting these evolutions hurt the class?"}),
      el("div", {class: "legend"},
         Array.from({length: nBins}, (_, b) => el("span", {class: "legend-item"}, swatch(binColor(b, nBins), "swatch square"),
                                                  b === 0 ? "bin 1 (most important)" : `bin ${b + 1}`)),
         el("span", {class: "legend-item"}, swatch(RANDOM_COLOR, "swatch square"), "random neurons (mean ± std)")),
      el("div", {class: "reversion-panels"},
         splits.map(([key, label]) => reversionPanel(reversion[key], label, nBins, yTicks))),
      el("figcaption", {class: "muted", text:
        "Each layer's neurons are ranked by importance and split into bins; a bin is reverted by " +
        "giving its channels the earlier epoch's feature maps. Bars show the drop in the class's " +
        "top-1 accuracy (percentage points; below zero: accuracy rose)."}));
    return figure;
  }

  /** Accuracy drops in percentage points, per layer. */
  function reversionDrops(split) {
    return split.layers.map((l) => ({
      layer: l.layer,
      bins: l.bins.map((acc) => 100 * (split.accuracy - acc)),
      random: l.random_mean == null ? NaN : 100 * (split.accuracy - l.random_mean),
      std: 100 * (l.random_std || 0),
    }));
  }

  function reversionPanel(split, label, nBins, yTicks) {
    const drops = reversionDrops(split);
    const groupWidth = (nBins + 1) * (BAR.width + BAR.gap) + BAR.groupGap;
    const width = chartLeft(yTicks, svgChartFont()) + drops.length * groupWidth + CHART.right;
    const xTicks = {ticks: [], domain: [0, 1], step: 1};
    const {node, y, left} = chartFrame({title: `${label} (accuracy ${percent(split.accuracy)})`,
                                        xTicks, yTicks, width, yLabel: "accuracy drop (points)"});
    node.append(svg("line", {class: "zero", x1: left, x2: width - CHART.right, y1: y(0), y2: y(0)}));
    drops.forEach((d, g) => {
      const x0 = left + g * groupWidth + BAR.groupGap / 2;
      const bar = (i, value, fill, text) => svg("rect", {
        x: x0 + i * (BAR.width + BAR.gap), width: BAR.width, fill,
        y: Math.min(y(value), y(0)), height: Math.max(1, Math.abs(y(value) - y(0)))},
        svg("title", {text}));
      d.bins.forEach((v, b) => node.append(bar(b, v, binColor(b, nBins),
        `${d.layer}, bin ${b + 1}: ${v.toFixed(1)} points`)));
      if (Number.isFinite(d.random)) {
        const cx = x0 + nBins * (BAR.width + BAR.gap) + BAR.width / 2;
        node.append(bar(nBins, d.random, RANDOM_COLOR,
                        `${d.layer}, random: ${d.random.toFixed(1)} ± ${d.std.toFixed(1)} points`),
                    svg("path", {class: "whisker", d: `M${cx},${y(d.random - d.std)} V${y(d.random + d.std)}` +
                                 ` M${cx - 3},${y(d.random - d.std)} h6 M${cx - 3},${y(d.random + d.std)} h6`}));
      }
      node.append(svg("text", {class: "tick", x: x0 + (groupWidth - BAR.groupGap) / 2,
                               y: CHART.height - CHART.bottom + 16, "text-anchor": "middle",
                               text: shortLayer(d.layer, drops.map((o) => o.layer))},
                               svg("title", {text: d.layer})));
    });
    return node;
  }

  // ---------------------------------------------------------------------- canvas charts
  // The colours of the SVG charts' style (style.css, .chart), for charts drawn on a canvas.
  const CANVAS_CHART = {ink: "#1d2330", muted: "#5f6877", faint: "#8a929e", grid: "#eceef1",
                        axis: "#c5cad1", font: "11px system-ui, sans-serif"};

  /** chartFrame's axes, grid and labels on a canvas (for figures of many lines or points):
   * same margins (widened alike for long y tick labels), ticks and look. Returns the canvas,
   * its context (in CSS pixels), scales and left margin. */
  function canvasFrame({title, xTicks, yTicks, xLabel, yLabel, testid, width = CHART.width,
                        height = CHART.height, xTickText = (v) => tickLabel(v, xTicks.step)}) {
    const {right, top, bottom} = CHART;
    const left = chartLeft(yTicks, CANVAS_CHART.font, Boolean(yLabel));
    const x = linearScale(xTicks.domain, [left, width - right]);
    const y = axisScale(yTicks, [height - bottom, top]);
    const yText = tickText(yTicks);
    const dpr = window.devicePixelRatio || 1;
    const node = el("canvas", {class: "chart", width: Math.round(width * dpr),
                               height: Math.round(height * dpr), role: "img", "aria-label": title,
                               "data-testid": testid, style: {width: `${width}px`, height: `${height}px`}});
    const ctx = node.getContext("2d");
    ctx.scale(dpr, dpr);
    const line = (x1, y1, x2, y2, color) => {
      ctx.strokeStyle = color;
      ctx.beginPath();
      ctx.moveTo(x1, y1);
      ctx.lineTo(x2, y2);
      ctx.stroke();
    };
    const text = (value, tx, ty, {color = CANVAS_CHART.muted, align = "center", baseline = "alphabetic"} = {}) => {
      ctx.fillStyle = color;
      ctx.textAlign = align;
      ctx.textBaseline = baseline;
      ctx.fillText(value, tx, ty);
    };
    ctx.font = CANVAS_CHART.font;
    ctx.lineWidth = 1;
    for (const v of yTicks.ticks) {
      line(left, y(v), width - right, y(v), CANVAS_CHART.grid);
      text(yText(v), left - TICK_GAP, y(v), {align: "right", baseline: "middle"});
    }
    for (const v of xTicks.ticks) text(xTickText(v), x(v), height - bottom + 16);
    line(left, height - bottom, width - right, height - bottom, CANVAS_CHART.axis);
    line(left, top, left, height - bottom, CANVAS_CHART.axis);
    if (xLabel) text(xLabel, (left + width - right) / 2, height - 6, {color: CANVAS_CHART.faint});
    if (yLabel) {
      ctx.save();
      ctx.translate(Y_TITLE_X, height / 2);
      ctx.rotate(-Math.PI / 2);
      text(yLabel, 0, 0, {color: CANVAS_CHART.faint});
      ctx.restore();
    }
    ctx.font = "600 13px system-ui, sans-serif";
    text(title, left, 16, {color: CANVAS_CHART.ink, align: "left"});
    ctx.font = CANVAS_CHART.font;
    return {node, ctx, x, y, left};
  }

  /** A dashed reference line between two data points (chance level, the ROC diagonal). */
  function dashedLine(ctx, [x1, y1], [x2, y2]) {
    ctx.save();
    ctx.setLineDash([4, 4]);
    ctx.strokeStyle = CANVAS_CHART.faint;
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(x1, y1);
    ctx.lineTo(x2, y2);
    ctx.stroke();
    ctx.restore();
  }

  // ---------------------------------------------------------------------- Training view
  const TRAINING_FIELDS = new Set(["epoch", "train_acc", "val_acc", "train_loss", "val_loss", "lr",
                                   "finite", "n_train"]);
  const CURVE_FIELDS = ["train_acc", "val_acc", "train_loss", "val_loss", "lr"];

  /** The diagnosis's concept metrics (docs/monitor.md) in the order they are charted: chart
   * title and y-axis title. Every one is a count or a fraction (its axis starts at 0). */
  const CONCEPT_METRICS = {
    probe_acc: ["Probe accuracy", "top-1 accuracy (probe set)"],
    turnover: ["turnover", "1 − Jaccard (stimuli)"],
    speed: ["speed", "× base spread"],
    dead: ["dead", "fraction of neurons"],
    degenerate: ["degenerate", "fraction of neurons"],
    distinct_stimuli: ["distinct_stimuli", "fraction of images"],
    diversity: ["diversity", "× base spread"],
    nonfinite: ["nonfinite", "NaN/inf activations"],
  };

  /** valueAxis's kind for a metric, from its name: losses may turn logarithmic; the concept
   * metrics, accuracies, counts and fractions start at 0 (counts with whole-number ticks). */
  function metricKind(name) {
    if (/loss/i.test(name)) return "loss";
    if (name === "nonfinite" || /(^|_)(count|n|num)(_|$)/i.test(name)) return "count";
    if (hasOwn(CONCEPT_METRICS, name) ||
        /(^|_)(acc|accuracy|frac|fraction|share|rate|ratio|lr)(_|$)/i.test(name)) return "zero";
    return "linear";
  }

  const trainingView = {
    renderedKey: null,

    render() {
      const body = $("#training-body");
      if (store.metrics === undefined) {
        const generation = store.generation;
        store.metrics = null;
        fill(body, note("loading…"));
        cachedJSON("/api/metrics").then((metrics) => {
          if (generation === store.generation) store.metrics = metrics;
        }, (err) => {
          fill(body, note(err.message, "note error"));
          markRendered();
        }).then(invalidate);
        return;
      }
      const key = `${store.generation}|${Boolean(store.metrics)}`;
      if (key === this.renderedKey || !store.metrics) return;
      this.renderedKey = key;
      fill(body, ...this.content(store.metrics));
      markRendered();
    },

    /** The run legend (whenever a chart is drawn), the training curves or a note saying how to
     * give them, then the diagnosis. Runs in the study's order. */
    content(metrics) {
      const diagnosis = metrics.diagnosis && metrics.diagnosis.runs ? metrics.diagnosis : null;
      const curves = trainingCurves(metrics);
      const trained = [...curves.keys()];
      const extras = extraMetricNames(curves);
      const diagnosed = diagnosisSection(diagnosis, new Set(extras));
      const runs = inStudyOrder([...trained, ...diagnosed.runs]);
      const out = [];
      if (runs.length) out.push(this.legend(runs, trained.length > 0));
      if (trained.length) {
        const series = (field, dash) => trained.map((r) => ({
          name: `${r} ${field}`, run: r, color: runColor(r), dash,
          points: curves.get(r).map((row) => ({x: row.epoch, y: row[field]}))}));
        const flags = diagnosisFlags(diagnosis);
        out.push(el("div", {class: "charts"},
          lineChart({title: "Accuracy", yLabel: "top-1 accuracy", axis: {domain: [0, 1]}, flags,
                     metric: "accuracy", series: [...series("train_acc"), ...series("val_acc", "5 4")]}),
          lineChart({title: "Loss", yLabel: "cross-entropy", axis: {kind: "loss"}, metric: "loss",
                     series: [...series("train_loss"), ...series("val_loss", "5 4")]}),
          lineChart({title: "Learning rate", yLabel: "lr", axis: {kind: "zero"}, metric: "lr",
                     series: series("lr")}),
          ...extras.map((name) => lineChart({title: name, axis: {kind: metricKind(name)}, metric: name,
                                             series: series(name)}))));
      }
      if (!trained.length) out.push(this.noCurves(runs.length > 0));
      out.push(...diagnosed.nodes);
      return out;
    },

    legend(runs, curves) {
      return el("div", {class: "legend training-legend", "data-testid": "training-legend"},
        runs.map((r) => el("span", {class: "legend-item", "data-run": r}, swatch(runColor(r)), r)),
        curves ? [el("span", {class: "legend-item muted"}, el("span", {class: "line-key"}), "train"),
                  el("span", {class: "legend-item muted"}, el("span", {class: "line-key dashed"}), "validation")]
               : null);
    },

    /** No accuracy or loss was given: how to give them. */
    noCurves(diagnosed) {
      return el("p", {class: "note", "data-testid": "no-training-metrics"},
        diagnosed ? "No training accuracy or loss was given for these runs; the concept metrics " +
                    "below come from their checkpoints alone. To chart them, name each run's " +
                    "training log (a CSV with an epoch column) in the study config: "
                  : "No training metrics or diagnosis are stored in this workspace. To chart a " +
                    "run's accuracy and loss, name its training log (a CSV with an epoch column) " +
                    "in the study config: ",
        el("code", {text: '[[runs]] metrics = "log.csv"'}), ".");
    },
  };

  /** Each run's per-epoch training metrics (a Map, runs in the study's order): its metrics
   * file's rows, or, for a run without one, the recorded fields its diagnosis rows repeat. */
  function trainingCurves(metrics) {
    const recorded = metrics.runs || {};
    const diagnosed = (metrics.diagnosis && metrics.diagnosis.runs) || {};
    const fromDiagnosis = (rows) => rows
      .map((row) => Object.fromEntries(Object.entries(row).filter(([k, v]) =>
        TRAINING_FIELDS.has(k) && typeof v === "number")))
      .filter((row) => CURVE_FIELDS.some((k) => hasOwn(row, k)));
    const curves = new Map();
    for (const run of inStudyOrder([...Object.keys(recorded), ...Object.keys(diagnosed)])) {
      const rows = recorded[run] && recorded[run].length ? recorded[run]
                                                          : fromDiagnosis(diagnosed[run]?.metrics || []);
      if (rows.length) curves.set(run, rows);
    }
    return curves;
  }

  /** Numeric per-epoch fields other than the standard ones (a custom logger may add some). */
  function extraMetricNames(curves) {
    const names = new Set();
    for (const rows of curves.values()) {
      for (const row of rows) for (const k of Object.keys(row)) if (!TRAINING_FIELDS.has(k)) names.add(k);
    }
    return [...names].sort();
  }

  /** The diagnosis's runs in the study's order: [[run, {metrics, flags}]]. */
  const diagnosedRuns = (diagnosis) => (diagnosis && diagnosis.runs
    ? inStudyOrder(Object.keys(diagnosis.runs)).map((run) => [run, diagnosis.runs[run]]) : []);

  function diagnosisFlags(diagnosis) {
    return diagnosedRuns(diagnosis).flatMap(([run, d]) => (d.flags || []).map((f) => ({
      x: f.epoch, color: runColor(run), text: `${run}, epoch ${f.epoch}: ${f.rule}: ${f.message}`})));
  }

  /** The concept evidence of the flags that name neurons (a shortcut flag: the neurons that
   * detect the concept the class relies on), as their top patches at the flag's epoch. */
  function flagEvidence(runs) {
    return runs.flatMap(([run, d]) => (d.flags || [])
      .filter((f) => f.evidence && Array.isArray(f.evidence.neurons) && f.evidence.neurons.length)
      .map((f) => el("div", {class: "flag-evidence", "data-testid": "flag-evidence"}, [
        el("p", {class: "note", text: `${run}, epoch ${f.epoch}, ${f.rule}: the neurons whose ` +
                 `stimuli show '${f.evidence.concept}' (top patches)`}),
        el("div", {class: "evidence-strip"}, f.evidence.neurons.slice(0, 6).map((n) =>
          el("span", {class: "patch-frame", title: `neuron ${n}`},
             patchImage(patchUrl(run, f.epoch, n), {alt: `${run} neuron ${n}, epoch ${f.epoch}`})))),
      ])));
  }

  /** The diagnosis: one chart per metric (a line per run, flags marked; the concept metrics in
   * their documented order, probe accuracy first) and the flags. `charted`: recorded metrics
   * the training charts show already. Returns {runs, nodes}. */
  function diagnosisSection(diagnosis, charted = new Set()) {
    const runs = diagnosedRuns(diagnosis);
    if (!runs.length) return {runs: [], nodes: []};
    // Diagnosis rows repeat the training metrics, charted above already.
    const names = new Set(runs.flatMap(([, d]) => (d.metrics || []).flatMap((row) =>
      Object.keys(row).filter((k) => !TRAINING_FIELDS.has(k) && !charted.has(k) &&
                                     typeof row[k] === "number"))));
    const ordered = [...Object.keys(CONCEPT_METRICS).filter((k) => names.has(k)),
                     ...[...names].filter((k) => !hasOwn(CONCEPT_METRICS, k)).sort()];
    const flags = diagnosisFlags(diagnosis);
    const charts = ordered.map((name) => {
      const [title, yLabel] = CONCEPT_METRICS[name] || [name, null];
      return lineChart({
        title, yLabel, flags, metric: name,
        axis: name === "probe_acc" ? {domain: [0, 1]} : {kind: metricKind(name)},
        series: runs.map(([run, d]) => ({name: run, run, color: runColor(run),
                                         points: (d.metrics || []).map((row) => ({x: row.epoch, y: row[name]}))}))});
    });
    const rows = runs.flatMap(([run, d]) => (d.flags || []).map((f) =>
      [[swatch(runColor(run)), run], f.epoch, f.rule, f.message]));
    return {
      runs: runs.map(([run]) => run),
      nodes: [
        el("h2", {class: "section-title", text: "Diagnosis"}),
        el("div", {class: "charts", "data-testid": "diagnosis-charts"}, charts),
        rows.length ? dataTable(["run", "epoch", "rule", "message"], rows, {cls: "flags", testid: "diagnosis-flags"})
                    : note("No run was flagged."),
        ...flagEvidence(runs),
      ],
    };
  }

  // ---------------------------------------------------------------------- Compare view
  const compareView = {
    camera: new Camera(),
    panels: [],          // [{run, panel, caption}]
    pickerKey: null,

    render() {
      mapControls.mount("compare");
      const key = `${store.generation}|${state.compareRuns}`;
      if (key !== this.pickerKey) {
        this.pickerKey = key;
        renderRunPicker($("#compare-runs"), state.compareRuns, (runs) => {
          state.compareRuns = runs;
          invalidate();
        }, MAX_COMPARE);
      }
      mapControls.sync();
      this.syncPanels();
      const scenes = this.panels.map(({run}) => sceneOf([run]));
      const missing = scenes.flatMap((s) => s.missing || []);
      mapComplete = !missing.length;
      mapControls.loading(!mapComplete);
      if (missing.length) {
        requestPoints(missing);
        return;
      }
      if (!this.camera.bounds) this.camera.fit(sceneBounds(scenes));
      this.panels.forEach(({run, panel, caption}, i) => {
        panel.setScene(scenes[i]);
        panel.draw();
        fill(caption, swatch(runColor(run)), el("strong", {text: run}),
                                ` · epoch ${state.epoch} · ${liveCount(scenes[i])}`);
      });
      renderLegend(scenes, state.compareRuns);
      pinnedPanel.render();   // loads the pinned neuron's trajectory drawn here too
      prefetchAround(state.compareRuns);
      markRendered();
    },

    /** One figure per compared run (rebuilt only when the runs change). */
    syncPanels() {
      if (this.panels.map((p) => p.run).join("\n") === state.compareRuns.join("\n")) return;
      for (const {panel} of this.panels) panel.destroy();
      const host = $("#compare-panels");
      host.style.setProperty("--columns", Math.max(1, state.compareRuns.length));
      host.replaceChildren();
      this.panels = state.compareRuns.map((run) => {
        const map = el("div", {class: "map"});
        const caption = el("figcaption");
        host.append(el("figure", {class: "compare-panel"}, caption, map));
        const panel = new MapPanel(map, {
          testid: "compare-canvas",
          camera: this.camera,
          onHover: (hit, event) => tooltip.show(hit, event),
          onPick: (hit) => pin(hit),
          drawOverlay: (ctx, p) => {
            if (state.pinned && state.pinned.run === run) drawTrajectory(ctx, p);
          },
        });
        return {run, panel, caption};
      });
      if (!this.panels.length) host.append(note("Choose up to three runs to compare."));
    },
  };

  /** "425 live / 432" for a single-run scene at the slider's epoch. */
  function liveCount(scene) {
    const current = scene.sets.filter((s) => !s.faded);
    const total = current.reduce((sum, s) => sum + s.points.n, 0);
    const dead = current.reduce((sum, s) => sum + s.points.dead.reduce((a, d) => a + d, 0), 0);
    return total ? `${total - dead} live / ${total} neurons` : "no checkpoint at this epoch";
  }

  // -------------------------------------------------------------------- Evaluation view
  const OUR_METHOD = "unified";   // the alignment method of the unified space; others: baselines
  const CONCEPT_STUDY = {
    title: "Do neighbours in the space share a concept?",
    testid: "evaluation-methods",
    charts: "",
    intro: "Query neurons are paired with candidate neurons of other runs and epochs; a candidate " +
           "is positive when it has the query's concept label. Each method scores the pairs by " +
           "similarity; its ROC AUC says how well the score finds the positives (0.5: chance). " +
           "Intervals: 95% bootstrap.",
    verdict: (a, seeds) => (typeof a.beats_all_baselines === "boolean" ? {
      good: a.beats_all_baselines,
      text: a.beats_all_baselines
        ? `The unified space beats every baseline${seeds > 1 ? ` on every seed (${seeds})` : ""}.`
        : `The unified space does not beat every baseline${seeds > 1
          ? ` on every seed (it does on ${(a.beats_on_seed || []).filter(Boolean).length} of ${seeds})` : ""}.`} : null),
  };
  const CLASS_STUDY = {
    title: "Class-level check: do neighbours share a class? (no masks needed)",
    testid: "evaluation-classes",
    charts: "classes-",
    intro: "A weak truth from the labels every study has: a neuron's label is the class that " +
           "holds at least half of its stimuli (deep, class-selective neurons get one). The same " +
           "study as above is scored with these labels.",
    verdict: (a) => (typeof a.passed === "boolean" ? {
      good: a.passed,
      text: `Unified space above chance (the 95% interval above 0.5) on ${shown(a.above_chance_on_seeds)} ` +
            `of ${shown(a.n_seeds)} seeds: ${a.passed ? "pass" : "FAIL"}.`} : null),
  };

  const evaluationView = {
    renderedKey: null,

    render() {
      const key = String(store.generation);
      if (key === this.renderedKey) return;
      this.renderedKey = key;
      const body = $("#evaluation-body");
      if (store.study.has_evaluation === false) {   // no request that would only get a 404
        fill(body, this.howTo());
        markRendered();
        return;
      }
      fill(body, note("loading…"));
      cachedJSON("/api/evaluation").then((evaluation) => {
        if (key === this.renderedKey) fill(body, ...this.content(evaluation));
      }, (err) => {
        if (key !== this.renderedKey) return;
        fill(body, err.missing || err.status === 404 ? this.howTo() : note(err.message, "note error"));
      }).finally(markRendered);
    },

    howTo() {
      return el("div", {class: "empty", "data-testid": "evaluation-hint"},
        el("h2", {text: "No evaluation yet"}),
        el("p", {text: "The evaluation labels every neuron with a concept, from images with " +
                       "pixel-level concept masks, and measures whether neurons near each other in " +
                       "the unified space share their concept, against baselines. Compute it with " +
                       "(the argument is the workspace directory):"}),
        el("pre", {text: `conceptevo evaluate ${store.study.name}`}),
        el("p", {text: REPORT_MODE ? "Then build the report again."
                                   : "This page shows the result as soon as it is written."}));
    },

    content(evaluation) {
      return [this.head(evaluation), this.skipped(evaluation.skipped),
              this.alignment(evaluation.alignment), this.labels(evaluation.labels),
              evaluation.classes ? this.alignment(evaluation.classes, CLASS_STUDY) : null,
              this.checks(evaluation.checks), this.faithfulness(evaluation.faithfulness)];
    },

    skipped(reasons) {
      if (!Array.isArray(reasons) || !reasons.length) return null;
      return el("ul", {class: "muted", "data-testid": "evaluation-skipped"},
        reasons.map((why) => el("li", {text: `Skipped: ${why}`})));
    },

    /** The annotation-free checks: a pass/fail line each (or why it was skipped). */
    checks(checks) {
      const title = "Checks that need no annotations";
      if (!checks || (!checks.permuted_copy && !checks.rescaled_copy)) {
        if (!checks) return null;
        return this.section(title, checks.skipped ? note(`Skipped: ${checks.skipped}`) : null,
                            this.agreement(checks.agreement));
      }
      const at = checks.checkpoint ? ` (${checks.checkpoint.run}, epoch ${checks.checkpoint.epoch})` : "";
      const line = (check, name, figure) => {
        if (!check) return null;
        if (check.skipped) return el("p", {class: "muted", text: `${name}: skipped (${check.skipped})`});
        return el("p", {class: check.passed ? "verdict good" : "verdict bad",
                        text: `${name}${at}: ${check.passed ? "pass" : "FAIL"}, ${figure(check)}`});
      };
      return this.section(title,
        el("p", {class: "muted", text:
          "Copies of a checkpoint that compute exactly the same function, with the channels of " +
          "every probed layer shuffled, or rescaled by positive factors that the next layer " +
          "undoes, are projected into the space: a neuron should land on its original."}),
        el("div", {"data-testid": "evaluation-checks"},
          line(checks.permuted_copy, "Permuted copy", (c) =>
            `${shown(c.recovery, percent)} of ${shown(c.n_neurons)} alive neurons have their ` +
            `original as nearest neighbour (needs ${shown(c.threshold, percent)})`),
          line(checks.rescaled_copy, "Rescaled copy", (c) =>
            `largest shift ${shown(c.max_shift, (v) => v.toExponential(1))} of the neurons' ` +
            `spread (needs at most ${shown(c.threshold, (v) => v.toExponential(0))})`)),
        this.agreement(checks.agreement));
    },

    /** Check (c): the space's nearest neighbours against one-to-one correlation matching. */
    agreement(agreement) {
      if (!agreement) return null;
      if (agreement.skipped) return el("p", {class: "muted", text: `Agreement with matching: skipped (${agreement.skipped})`});
      const layers = Object.entries(agreement.per_layer || {});
      return el("div", {"data-testid": "evaluation-agreement"},
        el("p", {class: agreement.passed ? "verdict good" : "verdict bad", text:
          `Agreement with one-to-one correlation matching (${plural((agreement.pairs || []).length, "checkpoint pair")}): ` +
          `${agreement.passed ? "pass" : "FAIL"}, above chance on ` +
          `${layers.filter(([, v]) => v.above_chance).length} of ${layers.length} layers ` +
          `(binomial p < ${shown(agreement.alpha)})`}),
        el("p", {class: "muted", text:
          "The neurons of one layer of two checkpoints are matched one to one by the correlation " +
          "of their activations over the probe set (Hungarian algorithm); how often is a " +
          "neuron's nearest neighbour in the space, among that layer of the other checkpoint, " +
          "its match?"}),
        dataTable(["layer", "agreement", "chance", "neurons", "p-value", ""],
          layers.map(([name, v]) => [name, shown(v.agreement, percent), shown(v.chance, percent),
                                     shown(v.n), shown(v.p_value, (p) => p.toExponential(1)),
                                     scoreBar(Number.isFinite(v.agreement) ? v.agreement : 0)]),
          {cls: "data-table numeric"}));
    },

    section(title, ...children) {
      return el("section", {class: "eval-section"}, el("h2", {class: "section-title", text: title}),
                ...children);
    },

    head({headline, created, annotations, settings}) {
      const a = annotations || {};
      const s = settings || {};
      const facts = [
        created && `computed ${created.slice(0, 16).replace("T", " ")}`,
        Number.isFinite(a.n_images) && `${a.n_images} annotated images`,
        Array.isArray(a.concepts) && `${a.concepts.length} concepts`,
        Array.isArray(s.checkpoints) && plural(s.checkpoints.length, "labelled checkpoint"),
        Number.isFinite(s.queries_per_layer) && `${s.queries_per_layer} queries per layer`,
        Number.isFinite(s.neighbours) && `${s.neighbours} neighbours per query`,
        Number.isFinite(s.bootstrap) && `${s.bootstrap} bootstrap resamples`,
      ].filter(Boolean);
      return el("header", {class: "class-head"},
        el("h2", {text: "Evaluation"}),
        headline ? el("p", {class: "eval-headline", "data-testid": "evaluation-headline", text: headline}) : null,
        facts.length ? el("p", {class: "muted", text: facts.join(" · ")}) : null);
    },

    /** The alignment methods in their stored order, with a colour each. */
    methods(alignment) {
      const table = (alignment && alignment.methods) || {};
      const keys = [...new Set([...(alignment && alignment.order) || [], ...Object.keys(table)])];
      return keys.filter((key) => table[key]).map((key, i) => ({
        ...table[key], key, title: table[key].title || key, ours: key === OUR_METHOD,
        color: key === "random" ? RANDOM_COLOR : RUN_PALETTE[i % RUN_PALETTE.length]}));
    },

    /** An alignment study (the concept one, or ``CLASS_STUDY``): every method's AUC, with
     *  the spread over the space's seeds and how many seeds ours won, when there are several. */
    alignment(alignment, study = CONCEPT_STUDY) {
      const methods = this.methods(alignment);
      if (!methods.length) return this.section(study.title, note("This evaluation has no alignment results."));
      const seeds = Array.isArray(alignment.seeds) ? alignment.seeds.length : 1;
      const wins = alignment.wins || {};
      const verdict = study.verdict(alignment, seeds);
      const columns = ["method", "AUC", "95% CI"];
      if (seeds > 1) columns.push(`mean of ${seeds} seeds`, "min – max", "ours won");
      columns.push("queries", "candidates", "positive rate");
      const row = (m) => {
        const cells = [[swatch(m.color), m.title], shown(m.auc, fixed(3)), interval(m.ci95)];
        if (seeds > 1) {
          cells.push(shown(m.mean, fixed(3)),
                     Array.isArray(m.spread) ? `${shown(m.spread[0], fixed(3))} – ${shown(m.spread[1], fixed(3))}` : "–",
                     m.ours ? "" : `${shown(wins[m.key])} / ${seeds}`);
        }
        return [...cells, shown(m.n_queries), shown(m.n_candidates), shown(m.positive_rate, percent)];
      };
      return this.section(study.title,
        el("p", {class: "muted", text: study.intro + (seeds > 1
          ? ` The space is built with ${seeds} seeds; each seed draws its own queries. "Ours ` +
            "won\": seeds where the unified space's interval lies wholly above the method's." : "")}),
        verdict ? el("p", {class: verdict.good ? "verdict good" : "verdict bad", text: verdict.text,
                           "data-testid": `${study.testid}-verdict`}) : null,
        dataTable(columns, methods.map(row),
          {cls: "data-table numeric", testid: study.testid,
           rowProps: (i) => ({class: methods[i].ours ? "ours" : null})}),
        el("div", {class: "legend"}, methods.map((m) =>
          el("span", {class: "legend-item"}, swatch(m.color), `${m.title}: AUC ${shown(m.auc, fixed(2))}`))),
        el("div", {class: "charts"}, this.rocChart(methods, study.charts),
           this.depthChart(methods, alignment.depth_names || {}, study.charts)));
    },

    /** Every method's ROC curve, the chance diagonal underneath, ours drawn last (on top). */
    rocChart(methods, prefix = "") {
      const ticks = niceTicks(0, 1, 5);
      const {node, ctx, x, y} = canvasFrame({
        title: "ROC curves", xTicks: ticks, yTicks: ticks, xLabel: "false positive rate",
        yLabel: "true positive rate", width: 380, height: 360, testid: `${prefix}roc-canvas`});
      dashedLine(ctx, [x(0), y(0)], [x(1), y(1)]);
      ctx.lineJoin = "round";
      for (const m of [...methods].sort((a, b) => a.ours - b.ours)) {
        const fpr = (m.roc && m.roc.fpr) || [];
        const tpr = (m.roc && m.roc.tpr) || [];
        const curve = fpr.map((f, i) => [f, tpr[i]]).filter(([f, t]) => Number.isFinite(f) && Number.isFinite(t));
        if (curve.length < 2) continue;
        ctx.strokeStyle = m.color;
        ctx.lineWidth = m.ours ? 2.6 : 1.6;
        ctx.beginPath();
        curve.forEach(([f, t], i) => (i ? ctx.lineTo(x(f), y(t)) : ctx.moveTo(x(f), y(t))));
        ctx.stroke();
      }
      return node;
    },

    /** Each method's AUC per layer depth with its 95% interval, side by side per depth. */
    depthChart(methods, depthNames, prefix = "") {
      const depths = [...new Set(methods.flatMap((m) => Object.keys(m.by_depth || {})))]
        .sort((a, b) => Number(a) - Number(b));
      const cell = (m, d) => (m.by_depth || {})[d] || {};
      const values = methods.flatMap((m) => depths.flatMap((d) => [cell(m, d).auc, ...(cell(m, d).ci95 || [])]))
        .filter(Number.isFinite);
      if (!values.length) return null;
      const slot = 14;                                  // pixels between methods of one depth
      const group = methods.length * slot + 28;
      const width = Math.max(CHART.width, CHART.left + CHART.right + depths.length * group);
      const {node, ctx, x, y} = canvasFrame({
        title: "AUC by layer depth", yLabel: "AUC", xLabel: "layer depth", width,
        testid: `${prefix}auc-depth-canvas`, yTicks: niceTicks(Math.min(0.5, ...values), Math.max(0.5, ...values), 5),
        xTicks: {ticks: depths.map((_, i) => i), domain: [-0.5, depths.length - 0.5], step: 1},
        xTickText: (i) => (depthNames[depths[i]]
          ? shortLayer(depthNames[depths[i]], Object.values(depthNames)) : `depth ${depths[i]}`)});
      // The ticks may be short names: the full ones in the tooltip.
      node.title = depths.map((d) => `depth ${d}: ${depthNames[d] || "?"}`).join("\n");
      dashedLine(ctx, [x(-0.5), y(0.5)], [x(depths.length - 0.5), y(0.5)]);
      methods.forEach((m, k) => {
        const offset = (k - (methods.length - 1) / 2) * slot;
        depths.forEach((d, i) => {
          const {auc, ci95} = cell(m, d);
          if (!Number.isFinite(auc)) return;   // a depth with one kind of candidate has no AUC
          const cx = x(i) + offset;
          if (Array.isArray(ci95) && ci95.every(Number.isFinite)) {
            const [lo, hi] = ci95.map(y);
            ctx.strokeStyle = m.color;
            ctx.lineWidth = 1.2;
            ctx.beginPath();
            for (const [x1, y1, x2, y2] of [[cx, lo, cx, hi], [cx - 3, lo, cx + 3, lo], [cx - 3, hi, cx + 3, hi]]) {
              ctx.moveTo(x1, y1);
              ctx.lineTo(x2, y2);
            }
            ctx.stroke();
          }
          ctx.fillStyle = m.color;
          ctx.strokeStyle = "#fff";
          ctx.beginPath();
          ctx.arc(cx, y(auc), m.ours ? 4.5 : 3.5, 0, TAU);
          ctx.fill();
          ctx.stroke();
        });
      });
      return node;
    },

    labels(labels) {
      const title = "Concept labels";
      if (!labels) return this.section(title, note("This evaluation has no concept labels."));
      const byConcept = Object.entries(labels.by_concept || {}).sort((a, b) => b[1] - a[1]);
      const most = Math.max(1, ...byConcept.map(([, n]) => n));
      const byDepth = labels.by_depth || [];
      const share = (part, whole) => (whole > 0 ? ` (${percent(part / whole)})` : "");
      return this.section(title,
        el("p", {class: "muted", text:
          `${shown(labels.n_labelled)} of ${shown(labels.n_neurons)} neurons of the labelled ` +
          `checkpoints have a concept${share(labels.n_labelled, labels.n_neurons)}: the concept ` +
          "whose masks their strongest activations overlap most (IoU). Hover or pin a neuron in " +
          "the Space view to see its label."}),
        el("div", {class: "eval-tables"},
          byConcept.length
            ? dataTable(["concept", "neurons", ""], byConcept.map(([c, n]) => [c, n, scoreBar(n / most)]),
                        {cls: "data-table numeric", testid: "evaluation-concepts"}) : null,
          byDepth.length
            ? dataTable(["depth", "layer", "neurons", "labelled", "mean best IoU"], byDepth.map((r) =>
                [shown(r.depth), r.layer, shown(r.n), `${shown(r.labelled)}${share(r.labelled, r.n)}`,
                 shown(r.mean_best_iou, fixed(3))]), {cls: "data-table numeric"}) : null));
    },

    faithfulness(faithfulness) {
      const fidelity = (faithfulness && faithfulness.fidelity) || {};
      const seeds = fidelity.seeds || [];
      const spread = fidelity.spread || {};
      const reversion = (faithfulness && faithfulness.reversion) || [];
      const range = (pair, format) => (Array.isArray(pair) && pair.length === 2
        ? `${shown(pair[0], format)} – ${shown(pair[1], format)}` : "–");
      const columns = [["rmse", "RMSE", fixed(4)], ["top1", "top-1", percent], ["top10", "top-10", percent],
                       ["mean_cosine", "mean cosine", fixed(4)]];
      const seedRows = seeds.map((s) => [shown(s.seed), ...columns.map(([k, , f]) => shown(s[k], f))]);
      if (seeds.length && Object.keys(spread).length) {
        seedRows.push(["range", ...columns.map(([k, , f]) => range(spread[k], f))]);
      }
      return this.section("Faithfulness",
        el("h3", {text: "Fidelity of the unified space, per seed"}),
        el("p", {class: "muted", text:
          "How well the projection reproduces the base model's own embedding, for the space " +
          "built with several seeds."}),
        seedRows.length
          ? dataTable(["seed", ...columns.map(([, h]) => h)], seedRows,
                      {cls: "data-table numeric", rowProps: (i) => ({class: i === seeds.length ? "summary" : null})})
          : note("No fidelity results."),
        el("h3", {text: "Reverting important vs random evolutions"}),
        el("p", {class: "muted", text:
          "Drop of the classes' top-1 accuracy when the most important bin of evolutions is " +
          "reverted, against random neurons of the same number; ratio = top-bin drop / random drop."}),
        reversion.length
          ? dataTable(["run", "epochs", "classes", "split", "top-bin drop", "random drop", "ratio",
                       "ratio per class (mean ± std, min – max)", "held-out ratio"],
                      reversion.map((r) => this.reversionRow(r)),
                      {cls: "data-table numeric", testid: "evaluation-reversion"})
          : note("No importance was computed, so nothing was reverted " +
                 "(`conceptevo importance`, then evaluate again)."),
        this.rankers(faithfulness && faithfulness.rankers));
    },

    /** Our ranking against the simple rankers: per layer, the drop when its most important
     * bin is reverted (hover a cell for every bin), and how often its bins are monotone. */
    rankers(table) {
      const head = el("h3", {text: "Importance against simple rankers"});
      if (!table || !table.order) {
        return el("div", {}, head, note("Not compared: no stored importance " +
                                         "(`conceptevo importance`, then evaluate again)."));
      }
      const pts = (d) => shown(d, (v) => `${(100 * v).toFixed(1)} pts`);
      const rows = table.order.map((name) => {
        const r = table.rankers[name];
        const cells = table.layers.map((layer) => {
          const e = r.per_layer[layer];
          if (!e) return "–";
          const bins = e.bin_drops.map((d) => pts(d)).join(", ");
          const mono = e.monotone_share === undefined ? "" : `; monotone in ${percent(e.monotone_share)} of cases`;
          const wins = e.ours_top_bin_higher === undefined || name === "ours" ? ""
            : `; our top bin hurts more in ${percent(e.ours_top_bin_higher)}`;
          return el("span", {title: `bins: ${bins}${mono}${wins}`, text: pts(e.top_bin_drop)});
        });
        return [el("span", {title: name, text: r.title}), ...cells, pts(r.top_bin_drop),
                r.monotone_share === null || r.monotone_share === undefined ? "–" : percent(r.monotone_share)];
      });
      return el("div", {},
        head,
        el("p", {class: "muted", text:
          `Top-1 drop when each ranker's most important of ${table.bins} bins of a layer is ` +
          `reverted to the earlier checkpoint, mean over ${table.n_cases} class × epoch-pair ` +
          `cases (${table.split} images); monotone: the bins hurt less and less, from the ` +
          "most important to the least (hover a cell for every bin)."}),
        dataTable(["ranker", ...table.layers, "mean", "monotone"], rows,
                  {cls: "data-table numeric", testid: "evaluation-rankers",
                   rowProps: (i) => ({class: table.order[i] === "ours" ? "ours" : null})}),
        Object.keys(table.skipped || {}).length
          ? el("ul", {class: "muted"}, Object.entries(table.skipped).map(([what, why]) =>
              el("li", {text: `skipped ${what}: ${why}`})))
          : null);
    },

    reversionRow(r) {
      const drop = (v) => shown(v, (d) => `${(100 * d).toFixed(1)} pts`);
      const ratio = (v) => shown(v, (q) => `${formatNumber(q, 1)}×`);
      const c = r.ratio_per_class;
      const h = r.heldout;
      return [r.run, `${r.from} → ${r.to}`, shown(r.n_classes), r.split || "–",
              drop(r.top_bin_drop), drop(r.random_drop), ratio(r.ratio),
              c ? `${ratio(c.mean)} ± ${shown(c.std, fixed(1))} (${ratio(c.min)} – ${ratio(c.max)})` : "–",
              h ? `${ratio(h.ratio)} (${drop(h.top_bin_drop)} vs ${drop(h.random_drop)})` : "–"];
    },
  };

  const VIEW_RENDERERS = {
    space: () => spaceView.render(),
    class: () => classView.render(),
    training: () => trainingView.render(),
    compare: () => compareView.render(),
    evaluation: () => evaluationView.render(),
  };

  // ----------------------------------------------------------------------- header
  function renderHeader() {
    const study = store.study;
    $("#study-name").textContent = study.name;
    const base = study.base;
    $("#base-model").textContent = !base ? "" : base.kind === "run"
      ? `base: ${base.run}, epoch ${base.epoch}`
      : `base: ${base.arch || "external model"}${base.checkpoint ? ` (${base.checkpoint})` : ""}`;
    const f = study.fidelity || {};
    const figures = [
      ["mean cosine", f.mean_cosine, (v) => v.toFixed(4),
       "mean cosine between each base neuron's embedding and its projection"],
      ["top-1", f.top1, percent, "share of base neurons whose projection is nearest to their own embedding"],
      ["top-10", f.top10, percent, "... among the 10 nearest"],
    ].filter(([, value]) => Number.isFinite(value));
    fill($("#fidelity"),
      ...(figures.length ? [el("span", {class: "fidelity-title", text: "fidelity"})] : []),
      ...figures.map(([name, value, format, title]) =>
        el("div", {title}, el("dt", {text: name}), el("dd", {text: format(value)}))));
    const live = $("#live");
    live.hidden = false;
    live.textContent = REPORT_MODE ? "report" : "live";
    live.classList.toggle("report", REPORT_MODE);
  }

  // ----------------------------------------------------------------------- live refresh
  let knownVersion = null;

  /** Server mode: ask for the workspace version every POLL_INTERVAL_MS; refresh on change. */
  async function pollVersion() {
    try {
      const {version} = await getJSON("/api/version");
      if (version !== knownVersion) await refreshWorkspace();
      knownVersion = version;
      $("#live").classList.remove("stale");
      $("#live").title = "The page refreshes itself when the workspace changes";
    } catch (err) {
      $("#live").classList.add("stale");
      $("#live").title = `Live refresh paused: ${err.message}`;
    }
    setTimeout(pollVersion, POLL_INTERVAL_MS);
  }

  /** New study and metrics, every cache dropped, the selection kept (and extended to new
   * runs and epochs when it covered all of them). */
  async function refreshWorkspace() {
    const [study, base] = await Promise.all([getJSON("/api/study"), getJSON("/api/base")]);
    const oldRuns = runNames();
    const followLast = state.epoch === last(allEpochs()) && !state.playing;
    const hadAllRuns = oldRuns.every((r) => state.runs.includes(r));
    store.study = study;
    store.base = toBase(base);
    store.generation++;
    store.points.clear();
    store.failed.clear();
    store.requests.clear();
    store.metrics = undefined;
    store.hasLabels = false;
    const runs = runNames();
    state.runs = hadAllRuns ? runs.slice() : state.runs.filter((r) => runs.includes(r));
    state.compareRuns = state.compareRuns.filter((r) => runs.includes(r));
    if (!state.compareRuns.length) state.compareRuns = runs.slice(0, MAX_COMPARE);
    state.epoch = followLast ? last(allEpochs()) : nearestEpoch(state.epoch);
    const p = state.pinned;
    if (p && !(runInfo(p.run) && runInfo(p.run).epochs.includes(p.epoch))) pin(null);
    renderHeader();
    invalidate();
  }

  function toBase(payload) {
    if (!payload) return null;
    const base = {x: toFloats(payload.x), y: toFloats(payload.y)};
    base.count = base.x.filter((v, i) => Number.isFinite(v) && Number.isFinite(base.y[i])).length;
    return base;
  }

  // ----------------------------------------------------------------------------- start
  function bindPage() {
    tooltip.node = $("#tooltip");
    for (const button of document.querySelectorAll(".tabs [data-view]")) {
      button.addEventListener("click", () => {
        state.view = button.dataset.view;
        if (!MAP_VIEWS.has(state.view) && state.playing) setPlaying(false);
        tooltip.show(null);
        invalidate();
      });
    }
    $("#banner-close").addEventListener("click", () => { $("#banner").hidden = true; });
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && state.pinned) pin(null);
    });
    mapControls.bind();
    classView.bind();
  }

  async function start() {
    bindPage();
    try {
      const [version, study, base] = await Promise.all([
        REPORT_MODE ? null : getJSON("/api/version").then((v) => v.version, () => null),
        getJSON("/api/study"),
        getJSON("/api/base").catch((err) => {
          showBanner(`Base map: ${err.message}`);
          return null;
        }),
      ]);
      knownVersion = version;
      store.study = study;
      store.base = toBase(base);
      readUrl();
      renderHeader();
      spaceView.init();
      render();
      if (!REPORT_MODE) setTimeout(pollVersion, POLL_INTERVAL_MS);
    } catch (err) {
      showBanner(`Cannot load the study: ${err.message}`);
      markRendered();
    }
  }

  start();
})();
