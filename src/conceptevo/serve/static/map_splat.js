/* ConceptEvo dashboard, map_splat.js: the map's renderer for large scenes (PointSplat): every
 * point written as a small square straight into the pixels of an offscreen canvas, far faster
 * than a canvas path per point (a million points in tens of milliseconds, where fillRect takes
 * over a second), and that image moved and scaled while the map is dragged or zoomed.
 * Uses constants.js.
 * (Load order and how the files share names: constants.js.)
 */
"use strict";

// ------------------------------------------------------------------------- colours
const rgbaCache = new Map();
let colorContext = null;

/** [r, g, b, a] (0..255) of any CSS colour the canvas accepts (the canvas normalises it to
 * "#rrggbb" or "rgba(r, g, b, a)"). */
function cssRgba(color) {
  let rgba = rgbaCache.get(color);
  if (rgba) return rgba;
  if (!colorContext) colorContext = document.createElement("canvas").getContext("2d");
  colorContext.fillStyle = "#000";
  colorContext.fillStyle = color;
  const norm = colorContext.fillStyle;
  if (norm.startsWith("#")) {
    rgba = [1, 3, 5].map((i) => parseInt(norm.slice(i, i + 2), 16)).concat(255);
  } else {
    const parts = norm.slice(norm.indexOf("(") + 1, -1).split(",").map(Number);
    rgba = [parts[0], parts[1], parts[2], Math.round(255 * (parts[3] ?? 1))];
  }
  rgbaCache.set(color, rgba);
  return rgba;
}

// ------------------------------------------------------------------------ the splat
/** Pixels of one map, drawn point by point into an ImageData, and the transform they were
 * drawn with (to move the image while a new one is due). */
class PointSplat {
  constructor() {
    this.canvas = document.createElement("canvas");
    this.ctx = this.canvas.getContext("2d");
    this.image = null;
    this.bytes = null;    // the image's RGBA bytes
    this.words = null;    // the same pixels, one 32-bit word each
    this.drawn = null;    // {s, ox, oy} in device pixels of the last render, or null
  }

  resize(width, height) {
    if (this.canvas.width === width && this.canvas.height === height && this.image) return;
    this.canvas.width = width;
    this.canvas.height = height;
    this.image = this.ctx.createImageData(width, height);
    this.bytes = this.image.data;
    this.words = new Uint32Array(this.bytes.buffer);
    this.drawn = null;
  }

  /** Draw a scene: the base, then each set's (colour, dead) buckets in order, later points
   * on top. t: the world -> CSS pixel transform; r: the point radius in CSS pixels;
   * background: [r, g, b] of the map behind the canvas. */
  render(scene, t, dpr, r, background) {
    this.words.fill(0);
    const dev = {s: t.s * dpr, ox: t.ox * dpr, oy: t.oy * dpr};
    const size = Math.max(1, Math.round(2 * r * dpr));
    if (scene.base) {   // underneath everything: opaque, its colour mixed with the background
      const [r0, g0, b0, a0] = cssRgba(BASE_COLOR);
      const f = a0 / 255;
      const rgba = [r0, g0, b0].map((c, i) => Math.round(c * f + background[i] * (1 - f))).concat(255);
      this.points(scene.base.x, scene.base.y, null, 0, scene.base.x.length, dev,
                  {size: Math.max(1, size - 1), rgba, alpha: 1, hollow: false});
    }
    for (const set of scene.sets) {
      for (let bucket = 0; bucket + 1 < set.starts.length; bucket++) {
        if (set.starts[bucket] === set.starts[bucket + 1]) continue;
        this.points(set.points.x, set.points.y, set.order, set.starts[bucket], set.starts[bucket + 1],
                    dev, {size, rgba: cssRgba(set.palette[bucket >> 1]), alpha: set.alpha,
                          hollow: (bucket & 1) === 1});
      }
    }
    this.ctx.putImageData(this.image, 0, 0);
    this.drawn = dev;
  }

  /** Points order[from..to) (from..to when order is null) as size x size squares; opaque
   * colours overwrite, translucent ones blend over what is there; hollow: the outline only
   * (when a square has an inside). A square wholly inside the image takes the fast loop. */
  points(x, y, order, from, to, dev, {size, rgba, alpha, hollow}) {
    const W = this.canvas.width;
    const H = this.canvas.height;
    const a = (rgba[3] / 255) * alpha;
    const simple = a >= 0.85 && !(hollow && size >= 3);
    const word = new Uint32Array(Uint8ClampedArray.from([rgba[0], rgba[1], rgba[2], 255]).buffer)[0];
    const half = size / 2;
    const {s, ox, oy} = dev;
    const words = this.words;
    for (let k = from; k < to; k++) {
      const i = order ? order[k] : k;
      const left = x[i] * s + ox - half;
      const top = -y[i] * s + oy - half;
      if (simple && left >= 0 && left < W - size && top >= 0 && top < H - size) {
        let o = (top | 0) * W + (left | 0);
        for (let row = 0; row < size; row++, o += W) {
          for (let px = 0; px < size; px++) words[o + px] = word;
        }
      } else if (left > -size && left < W && top > -size && top < H) {   // NaN: neither
        this.square(Math.floor(left), Math.floor(top), size, {word, rgba, a, hollow});
      }
    }
  }

  /** One square at (left, top), clipped to the image: the slow path. */
  square(left, top, size, {word, rgba, a, hollow}) {
    const W = this.canvas.width;
    const ring = hollow && size >= 3;
    const x1 = Math.min(W, left + size);
    const y1 = Math.min(this.canvas.height, top + size);
    for (let py = Math.max(0, top); py < y1; py++) {
      const edgeRow = py === top || py === top + size - 1;
      for (let px = Math.max(0, left); px < x1; px++) {
        if (ring && !edgeRow && px !== left && px !== left + size - 1) continue;
        if (a >= 0.85) this.words[py * W + px] = word;
        else this.blend(4 * (py * W + px), rgba, a);
      }
    }
  }

  /** The colour rgba at opacity a over the pixel at byte o (straight alpha). */
  blend(o, rgba, a) {
    const bytes = this.bytes;
    const below = bytes[o + 3] / 255;
    if (below === 0) {
      bytes[o] = rgba[0];
      bytes[o + 1] = rgba[1];
      bytes[o + 2] = rgba[2];
      bytes[o + 3] = 255 * a;
      return;
    }
    const keep = below * (1 - a);
    const out = a + keep;
    bytes[o] = (rgba[0] * a + bytes[o] * keep) / out;
    bytes[o + 1] = (rgba[1] * a + bytes[o + 1] * keep) / out;
    bytes[o + 2] = (rgba[2] * a + bytes[o + 2] * keep) / out;
    bytes[o + 3] = 255 * out;
  }

  /** Copy the last render onto ctx (in device pixels), moved and scaled from the transform
   * it was drawn with to t: a preview while the camera moves. False when there is none. */
  blit(ctx, t, dpr) {
    if (!this.drawn) return false;
    const k = (t.s * dpr) / this.drawn.s;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.imageSmoothingEnabled = k < 1;
    ctx.drawImage(this.canvas, t.ox * dpr - this.drawn.ox * k, t.oy * dpr - this.drawn.oy * k,
                  this.canvas.width * k, this.canvas.height * k);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    return true;
  }
}
