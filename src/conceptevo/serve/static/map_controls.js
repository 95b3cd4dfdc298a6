/* ConceptEvo dashboard, map_controls.js: the map controls shared by the Space and Compare views:
 * epoch slider, playing, "show earlier", colour-by, legends and the run picker.
 * Uses constants.js, data.js, dom.js and state.js; niceTicks from charts.js (at render time).
 * (Load order and how the files share names: constants.js.)
 */
"use strict";

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
