/* ConceptEvo dashboard, state.js: the view state, its URL (read and write), the rendering loop
 * (invalidate, render) and the banner.
 * Uses constants.js, data.js and dom.js; render() calls VIEW_RENDERERS (main.js).
 * (Load order and how the files share names: constants.js.)
 */
"use strict";

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
  hover: {count: 0, ms: null, handlerMs: null, frameMs: null},  // the last pointermove's
                         // hover: event -> state and tooltip updated, its handler, -> ring drawn
  mapDraw: null,         // the last map render: {how: paths | splat | preview, ms, points}
  mapDraws: [],          // the last MAP_DRAWS_KEPT of them
  loadMs: null,          // navigation start -> first render of the initial view
};

let resolveReady;
const ready = new Promise((resolve) => { resolveReady = resolve; });

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
