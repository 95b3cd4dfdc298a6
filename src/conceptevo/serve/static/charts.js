/* ConceptEvo dashboard, charts.js: SVG charts (axes, ticks, chartFrame, line charts), the
 * reversion chart and canvas charts (canvasFrame: the same frame drawn on a canvas).
 * Uses constants.js and dom.js.
 * (Load order and how the files share names: constants.js.)
 */
"use strict";

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
