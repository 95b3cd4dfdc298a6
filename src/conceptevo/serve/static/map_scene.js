/* ConceptEvo dashboard, map_scene.js: what a map shows: the scenes (colour buckets of the loaded
 * checkpoints, cached), the pinned neuron's trajectory and the tooltip.
 * Uses constants.js, data.js, dom.js, state.js and map.js (extentOf).
 * (Load order and how the files share names: constants.js.)
 */
"use strict";

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
      if (points.label) {
        const colourOf = Uint16Array.from(points.concepts, (name) => position.get(name) || 0);
        for (let i = 0; i < points.n; i++) {
          const l = points.label[i];
          index[i] = l >= 0 && l < colourOf.length ? colourOf[l] : 0;
        }
      }
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
  const counts = new Map();   // in the order the labels first appear (it breaks ties)
  for (const points of pointSets) {
    if (!points.label) continue;
    const m = points.concepts.length;
    const per = new Int32Array(m);
    const first = new Int32Array(m);
    for (let i = 0; i < points.n; i++) {
      const l = points.label[i];
      if (l < 0 || l >= m) continue;
      if (per[l]++ === 0) first[l] = i;
    }
    const seen = [...per.keys()].filter((l) => per[l] > 0).sort((a, b) => first[a] - first[b]);
    for (const l of seen) counts.set(points.concepts[l], (counts.get(points.concepts[l]) || 0) + per[l]);
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
