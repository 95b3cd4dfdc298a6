/* ConceptEvo dashboard, main.js: VIEW_RENDERERS, the header, live refresh, start (bindPage,
 * the first render) and the test hooks (window.conceptevo). Loaded last: it starts the page.
 * Uses every earlier file.
 * (Load order and how the files share names: constants.js.)
 */
"use strict";

// ----------------------------------------------------------------------------- views
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
  const [study, base] = await Promise.all([getJSON("/api/study"), loadBase()]);
  const oldRuns = runNames();
  const followLast = state.epoch === last(allEpochs()) && !state.playing;
  const hadAllRuns = oldRuns.every((r) => state.runs.includes(r));
  store.study = study;
  store.base = base;
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
      loadBase().catch((err) => {
        showBanner(`Base map: ${err.message}`);
        return null;
      }),
    ]);
    knownVersion = version;
    store.study = study;
    store.base = base;
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

// ----------------------------------------------------------------------------- test hooks
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

start();
