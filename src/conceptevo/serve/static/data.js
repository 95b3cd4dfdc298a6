/* ConceptEvo dashboard, data.js: data access (EMBED/REPORT_MODE, ApiError, getJSON, patch URLs)
 * and the store of loaded data with its loaders and study look-ups.
 * Uses constants.js; its functions also call dom.js ($, last) and state.js (invalidate).
 * (Load order and how the files share names: constants.js.)
 */
"use strict";

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
