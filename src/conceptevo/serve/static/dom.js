/* ConceptEvo dashboard, dom.js: DOM and formatting helpers ($, el, fill, svg, tables, patch
 * images) and the colours of runs, epochs, layers and bins.
 * Uses constants.js (palettes, ramps) and data.js (store, patchSrc, study look-ups).
 * (Load order and how the files share names: constants.js.)
 */
"use strict";

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
