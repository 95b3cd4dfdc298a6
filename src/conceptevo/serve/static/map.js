/* ConceptEvo dashboard, map.js: the map: Camera, HitGrid and MapPanel (a canvas of points: canvas
 * paths for small scenes, PointSplat for large ones).
 * Uses constants.js, dom.js, state.js and map_splat.js; scenes and the tooltip: map_scene.js.
 * (Load order and how the files share names: constants.js.)
 */
"use strict";

// ------------------------------------------------------------------------------ the map
/** Where a map looks: a centre and zoom over fixed world bounds. Shared by the Compare
 * panels so they pan and zoom together. */
class Camera {
  constructor() {
    this.bounds = null;
    this.cx = 0;
    this.cy = 0;
    this.zoom = 1;
    this.movedAt = -Infinity;   // performance.now() of the last pan or zoom
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

  /** A pan or zoom by the user: large maps preview it (MapPanel.drawSplat). */
  moved() {
    this.movedAt = performance.now();
    this.changed();
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
    this.size = clamp(Math.ceil(Math.sqrt(n / 2)), 1, HIT_GRID_MAX);  // about 2 points per cell
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
  (count > 200000 ? 1 : count > 20000 ? 1.6 : count > 5000 ? 2.2 : 3) * clamp(Math.sqrt(zoom), 1, 2.5);

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
    this.splat = null;        // PointSplat of a large scene
    this.splatScene = null;   // the scene it last rendered
    this.splatAt = 0;         // when, and how long it took
    this.splatMs = 0;
    this.background = null;   // [r, g, b] behind the canvas (the base is mixed with it)
    this.settleTimer = 0;
    this.hoverStamp = null;   // timeStamp of a pointermove whose hover ring is not drawn yet
    camera.panels.add(this);
    this.resizeObserver = new ResizeObserver(() => this.requestDraw(true));
    this.resizeObserver.observe(host);
    this.listen();
  }

  destroy() {
    this.camera.panels.delete(this);
    this.resizeObserver.disconnect();
    cancelAnimationFrame(this.frame);
    clearTimeout(this.settleTimer);
  }

  setScene(scene) {
    if (scene === this.scene) return;
    this.scene = scene;
    this.index = null;
    this.setHot(-1, null);
    this.requestDraw(true);
    // the hover index of a large scene takes tens of milliseconds: built while idle, not on
    // the first hover
    idle(() => {
      if (this.scene === scene && !this.index && scene.count) this.buildIndex();
    });
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
    const started = performance.now();
    const t = this.transform();
    const r = pointRadius(scene.count, this.camera.zoom);
    const large = scene.count + scene.baseCount > SPLAT_POINTS_ABOVE;
    const how = large ? this.drawSplat(ctx, scene, t, r) : this.drawPaths(ctx, scene, t, r);
    state.mapDraw = {how, ms: Math.round(10 * (performance.now() - started)) / 10,
                     points: scene.count + scene.baseCount};
    state.mapDraws.push(state.mapDraw);
    if (state.mapDraws.length > MAP_DRAWS_KEPT) state.mapDraws.shift();
  }

  /** A large scene: rendered by PointSplat, or, while the camera moves and a render takes
   * longer than a frame, the last render moved and scaled (rendered again every
   * SPLAT_REFRESH_MS meanwhile, and once the camera has been still for SETTLE_MS). */
  drawSplat(ctx, scene, t, r) {
    if (!this.splat) this.splat = new PointSplat();
    this.splat.resize(this.canvas.width, this.canvas.height);
    const now = performance.now();
    const moving = now - this.camera.movedAt < SETTLE_MS;
    if (moving && this.splatScene === scene && this.splatMs > FRAME_BUDGET_MS &&
        now - this.splatAt < SPLAT_REFRESH_MS && this.splat.blit(ctx, t, this.dpr)) {
      clearTimeout(this.settleTimer);
      this.settleTimer = setTimeout(() => this.requestDraw(true), SETTLE_MS);
      return "preview";
    }
    if (!this.background) {
      const [red, green, blue, alpha] = cssRgba(getComputedStyle(this.host).backgroundColor);
      this.background = alpha ? [red, green, blue] : [255, 255, 255];
    }
    this.splat.render(scene, t, this.dpr, r, this.background);
    this.splat.blit(ctx, t, this.dpr);
    this.splatScene = scene;
    this.splatAt = performance.now();
    this.splatMs = this.splatAt - now;
    return "splat";
  }

  /** A small scene: one canvas path per (colour, dead) bucket, circles or squares. */
  drawPaths(ctx, scene, t, r) {
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
    return "paths";
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
    if (this.hoverStamp !== null) {   // the hover of a pointermove is on screen now
      state.hover.frameMs = Math.max(0, Math.round(10 * (performance.now() - this.hoverStamp)) / 10);
      this.hoverStamp = null;
    }
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
      this.camera.moved();
      return;
    }
    const handled = performance.now();
    const k = this.pickEvent(e);
    if (k === this.hot) tooltip.follow(e);
    else this.setHot(k, e);
    // hover timings (tests, benchmarks): event -> hovered state and tooltip updated (ms), the
    // pick alone, and (drawOverlay) event -> its hover ring drawn
    const done = performance.now();
    const hover = state.hover;
    hover.count++;
    hover.ms = Math.max(0, Math.round(10 * (done - e.timeStamp)) / 10);
    hover.handlerMs = Math.round(100 * (done - handled)) / 100;
    this.hoverStamp = e.timeStamp;
    this.requestDraw();
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
    this.camera.moved();
  }

  resetView() {
    if (!this.scene) return;
    this.camera.fit(sceneBounds([this.scene]));
  }
}

