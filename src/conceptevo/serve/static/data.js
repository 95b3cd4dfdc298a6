/* ConceptEvo dashboard, data.js: data access (EMBED/REPORT_MODE, ApiError, getJSON, the binary
 * payloads: decodeArrays, getArrays; patch URLs)
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

/** The server's response to a GET of `path` (asked again, twice at most, while it answers
 * 503 with Retry-After: the workspace is being rewritten by a build or a live run). Throws
 * ApiError with the server's message ({"error": ...}) when it is not ok. */
async function serverResponse(path, accept) {
  let response;
  for (let attempt = 0; ; attempt++) {
    try {
      response = await fetch(path, {headers: {Accept: accept}});
    } catch (err) {
      throw new ApiError(`cannot reach the server (${err.message})`);
    }
    const retry = Number(response.headers.get("Retry-After"));
    if (response.status !== 503 || !(retry >= 0) || attempt >= 2) break;
    await new Promise((resolve) => setTimeout(resolve, 1000 * Math.min(retry, 5)));
  }
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    const message = body && body.error ? body.error : `${response.status} ${response.statusText}`;
    throw new ApiError(message, {status: response.status});
  }
  return response;
}

/** The payload at an API path, from the report or the server. Throws ApiError with the
 * server's message ({"error": ...}) or "not included in this report". */
async function getJSON(path) {
  if (REPORT_MODE) {
    const payload = embedded(EMBED.api, path);
    if (payload === undefined) throw new ApiError("not included in this report", {missing: true});
    return payload;
  }
  const response = await serverResponse(path, "application/json");
  return response.json().catch(() => null);
}

// Binary payloads (?format=binary, server mode only): "CEVB", a uint32 header length, a JSON
// header, then typed arrays at 8-byte aligned offsets (conceptevo/serve/binary.py).
const ARRAY_TYPES = {float32: Float32Array, int32: Int32Array, int16: Int16Array,
                     uint16: Uint16Array, uint32: Uint32Array, uint8: Uint8Array};
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** {header, arrays: {name: typed array}} of a binary payload: views of `buffer` itself (no
 * copy) on a little-endian machine, copies read through a DataView otherwise. */
function decodeArrays(buffer) {
  const view = new DataView(buffer);
  const magic = String.fromCharCode(...new Uint8Array(buffer, 0, Math.min(4, buffer.byteLength)));
  if (magic !== "CEVB") throw new ApiError("the server sent no binary payload");
  const length = view.getUint32(4, true);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 8, length)));
  const arrays = {};
  for (const [name, {dtype, offset, length: n}] of Object.entries(header.arrays)) {
    const Type = ARRAY_TYPES[dtype];
    if (!Type || offset + n * Type.BYTES_PER_ELEMENT > buffer.byteLength) {
      throw new ApiError(`binary payload: bad array ${name}`);
    }
    if (LITTLE_ENDIAN) {
      arrays[name] = new Type(buffer, offset, n);
      continue;
    }
    const getter = `get${Type.name.replace("Array", "")}`;
    const out = new Type(n);
    for (let i = 0; i < n; i++) out[i] = view[getter](offset + i * Type.BYTES_PER_ELEMENT, true);
    arrays[name] = out;
  }
  delete header.arrays;
  return {header, arrays};
}

/** The binary payload at an API path (server mode only), decoded by decodeArrays. */
async function getArrays(path) {
  const response = await serverResponse(path, "application/octet-stream");
  return decodeArrays(await response.arrayBuffer());
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

/** load(path) then transform, once per path per generation (failures are forgotten, to be
 * retried). A path is always read with the same transform. */
function cachedJSON(path, transform = (payload) => payload, load = getJSON) {
  let pending = store.requests.get(path);
  if (!pending) {
    pending = load(path).then(transform);
    store.requests.set(path, pending);
    pending.catch(() => {
      if (store.requests.get(path) === pending) store.requests.delete(path);
    });
  }
  return pending;
}

function toFloats(values) {
  const out = new Float32Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = values[i] ?? NaN;  // null: not placed
  return out;
}

const pointsKey = (run, epoch) => `${run}/${epoch}`;

/** One checkpoint's neurons in typed arrays; neuron i is index i. With concept labels,
 * `concepts` (names), `label` (per neuron an index into concepts, -1: none) and `labelIou`
 * (its best concept's IoU); all three null when the checkpoint has no labels. From the JSON
 * payload (a report) or the binary one ({header, arrays}: the server). */
function toPoints(payload, run, epoch) {
  const binary = payload.arrays !== undefined;
  const a = binary ? payload.arrays : null;
  const concepts = binary ? payload.header.concepts : payload.concepts;
  const labelled = Array.isArray(concepts) && (binary ? !!a.label : Array.isArray(payload.label));
  if (labelled) store.hasLabels = true;
  const n = binary ? payload.header.n : payload.x.length;
  return {
    run, epoch, n,
    x: binary ? a.x : toFloats(payload.x), y: binary ? a.y : toFloats(payload.y),
    dead: binary ? a.dead : Uint8Array.from(payload.dead || []),
    layer: binary ? a.layer : Uint16Array.from(payload.layer || []),
    concepts: labelled ? concepts : null,
    label: !labelled ? null : binary ? a.label : Int32Array.from(payload.label, (i) => i ?? -1),
    labelIou: !labelled ? null : binary ? a.label_iou : toFloats(payload.label_iou || []),
  };
}

/** A neuron's concept label (a name), or null. */
const labelOf = (points, neuron) =>
  (points.label && points.label[neuron] >= 0 ? points.concepts[points.label[neuron]] ?? null : null);

function loadPoints(run, epoch) {
  const key = pointsKey(run, epoch);
  const generation = store.generation;
  const current = () => generation === store.generation;  // not refreshed meanwhile
  const path = apiPath("points", run, epoch);
  // the server sends typed arrays (?format=binary); a report embeds the JSON payload
  return cachedJSON(REPORT_MODE ? path : `${path}?format=binary`, (payload) => {
    const points = toPoints(payload, run, epoch);
    if (current()) store.points.set(key, points);
    return points;
  }, REPORT_MODE ? getJSON : getArrays).catch((err) => {
    if (current()) store.failed.set(key, err.message);
    throw err;
  });
}

/** The base map ({x, y: Float32Array, count: placed points}), binary from the server. */
async function loadBase() {
  const payload = REPORT_MODE ? await getJSON("/api/base") : await getArrays("/api/base?format=binary");
  const base = REPORT_MODE ? {x: toFloats(payload.x), y: toFloats(payload.y)}
                           : {x: payload.arrays.x, y: payload.arrays.y};
  let count = 0;
  for (let i = 0; i < base.x.length; i++) {
    if (Number.isFinite(base.x[i]) && Number.isFinite(base.y[i])) count++;
  }
  base.count = count;
  return base;
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
    concept: points && points.label ? {label: labelOf(points, neuron), iou: points.labelIou[neuron]}
                                    : null,
  };
}
