/* ConceptEvo dashboard, view_training.js: the Training view (training curves, the diagnosis and its
 * concept metrics).
 * Uses data.js, dom.js, state.js and charts.js.
 * (Load order and how the files share names: constants.js.)
 */
"use strict";

// ---------------------------------------------------------------------- Training view
const TRAINING_FIELDS = new Set(["epoch", "train_acc", "val_acc", "train_loss", "val_loss", "lr",
                                 "finite", "n_train"]);
const CURVE_FIELDS = ["train_acc", "val_acc", "train_loss", "val_loss", "lr"];

/** The diagnosis's concept metrics (docs/monitor.md) in the order they are charted: chart
 * title and y-axis title. Every one is a count or a fraction (its axis starts at 0). */
const CONCEPT_METRICS = {
  probe_acc: ["Probe accuracy", "top-1 accuracy (probe set)"],
  turnover: ["turnover", "1 − Jaccard (stimuli)"],
  speed: ["speed", "× base spread"],
  dead: ["dead", "fraction of neurons"],
  degenerate: ["degenerate", "fraction of neurons"],
  distinct_stimuli: ["distinct_stimuli", "fraction of images"],
  diversity: ["diversity", "× base spread"],
  nonfinite: ["nonfinite", "NaN/inf activations"],
};

/** valueAxis's kind for a metric, from its name: losses may turn logarithmic; the concept
 * metrics, accuracies, counts and fractions start at 0 (counts with whole-number ticks). */
function metricKind(name) {
  if (/loss/i.test(name)) return "loss";
  if (name === "nonfinite" || /(^|_)(count|n|num)(_|$)/i.test(name)) return "count";
  if (hasOwn(CONCEPT_METRICS, name) ||
      /(^|_)(acc|accuracy|frac|fraction|share|rate|ratio|lr)(_|$)/i.test(name)) return "zero";
  return "linear";
}

const trainingView = {
  renderedKey: null,

  render() {
    const body = $("#training-body");
    if (store.metrics === undefined) {
      const generation = store.generation;
      store.metrics = null;
      fill(body, note("loading…"));
      cachedJSON("/api/metrics").then((metrics) => {
        if (generation === store.generation) store.metrics = metrics;
      }, (err) => {
        fill(body, note(err.message, "note error"));
        markRendered();
      }).then(invalidate);
      return;
    }
    const key = `${store.generation}|${Boolean(store.metrics)}`;
    if (key === this.renderedKey || !store.metrics) return;
    this.renderedKey = key;
    fill(body, ...this.content(store.metrics));
    markRendered();
  },

  /** The run legend (whenever a chart is drawn), the training curves or a note saying how to
   * give them, then the diagnosis. Runs in the study's order. */
  content(metrics) {
    const diagnosis = metrics.diagnosis && metrics.diagnosis.runs ? metrics.diagnosis : null;
    const curves = trainingCurves(metrics);
    const trained = [...curves.keys()];
    const extras = extraMetricNames(curves);
    const diagnosed = diagnosisSection(diagnosis, new Set(extras));
    const runs = inStudyOrder([...trained, ...diagnosed.runs]);
    const out = [];
    if (runs.length) out.push(this.legend(runs, trained.length > 0));
    if (trained.length) {
      const series = (field, dash) => trained.map((r) => ({
        name: `${r} ${field}`, run: r, color: runColor(r), dash,
        points: curves.get(r).map((row) => ({x: row.epoch, y: row[field]}))}));
      const flags = diagnosisFlags(diagnosis);
      out.push(el("div", {class: "charts"},
        lineChart({title: "Accuracy", yLabel: "top-1 accuracy", axis: {domain: [0, 1]}, flags,
                   metric: "accuracy", series: [...series("train_acc"), ...series("val_acc", "5 4")]}),
        lineChart({title: "Loss", yLabel: "cross-entropy", axis: {kind: "loss"}, metric: "loss",
                   series: [...series("train_loss"), ...series("val_loss", "5 4")]}),
        lineChart({title: "Learning rate", yLabel: "lr", axis: {kind: "zero"}, metric: "lr",
                   series: series("lr")}),
        ...extras.map((name) => lineChart({title: name, axis: {kind: metricKind(name)}, metric: name,
                                           series: series(name)}))));
    }
    if (!trained.length) out.push(this.noCurves(runs.length > 0));
    out.push(...diagnosed.nodes);
    return out;
  },

  legend(runs, curves) {
    return el("div", {class: "legend training-legend", "data-testid": "training-legend"},
      runs.map((r) => el("span", {class: "legend-item", "data-run": r}, swatch(runColor(r)), r)),
      curves ? [el("span", {class: "legend-item muted"}, el("span", {class: "line-key"}), "train"),
                el("span", {class: "legend-item muted"}, el("span", {class: "line-key dashed"}), "validation")]
             : null);
  },

  /** No accuracy or loss was given: how to give them. */
  noCurves(diagnosed) {
    return el("p", {class: "note", "data-testid": "no-training-metrics"},
      diagnosed ? "No training accuracy or loss was given for these runs; the concept metrics " +
                  "below come from their checkpoints alone. To chart them, name each run's " +
                  "training log (a CSV with an epoch column) in the study config: "
                : "No training metrics or diagnosis are stored in this workspace. To chart a " +
                  "run's accuracy and loss, name its training log (a CSV with an epoch column) " +
                  "in the study config: ",
      el("code", {text: '[[runs]] metrics = "log.csv"'}), ".");
  },
};

/** Each run's per-epoch training metrics (a Map, runs in the study's order): its metrics
 * file's rows, or, for a run without one, the recorded fields its diagnosis rows repeat. */
function trainingCurves(metrics) {
  const recorded = metrics.runs || {};
  const diagnosed = (metrics.diagnosis && metrics.diagnosis.runs) || {};
  const fromDiagnosis = (rows) => rows
    .map((row) => Object.fromEntries(Object.entries(row).filter(([k, v]) =>
      TRAINING_FIELDS.has(k) && typeof v === "number")))
    .filter((row) => CURVE_FIELDS.some((k) => hasOwn(row, k)));
  const curves = new Map();
  for (const run of inStudyOrder([...Object.keys(recorded), ...Object.keys(diagnosed)])) {
    const rows = recorded[run] && recorded[run].length ? recorded[run]
                                                        : fromDiagnosis(diagnosed[run]?.metrics || []);
    if (rows.length) curves.set(run, rows);
  }
  return curves;
}

/** Numeric per-epoch fields other than the standard ones (a custom logger may add some). */
function extraMetricNames(curves) {
  const names = new Set();
  for (const rows of curves.values()) {
    for (const row of rows) for (const k of Object.keys(row)) if (!TRAINING_FIELDS.has(k)) names.add(k);
  }
  return [...names].sort();
}

/** The diagnosis's runs in the study's order: [[run, {metrics, flags}]]. */
const diagnosedRuns = (diagnosis) => (diagnosis && diagnosis.runs
  ? inStudyOrder(Object.keys(diagnosis.runs)).map((run) => [run, diagnosis.runs[run]]) : []);

function diagnosisFlags(diagnosis) {
  return diagnosedRuns(diagnosis).flatMap(([run, d]) => (d.flags || []).map((f) => ({
    x: f.epoch, color: runColor(run), text: `${run}, epoch ${f.epoch}: ${f.rule}: ${f.message}`})));
}

/** The concept evidence of the flags that name neurons (a shortcut flag: the neurons that
 * detect the concept the class relies on), as their top patches at the flag's epoch. */
function flagEvidence(runs) {
  return runs.flatMap(([run, d]) => (d.flags || [])
    .filter((f) => f.evidence && Array.isArray(f.evidence.neurons) && f.evidence.neurons.length)
    .map((f) => el("div", {class: "flag-evidence", "data-testid": "flag-evidence"}, [
      el("p", {class: "note", text: `${run}, epoch ${f.epoch}, ${f.rule}: the neurons whose ` +
               `stimuli show '${f.evidence.concept}' (top patches)`}),
      el("div", {class: "evidence-strip"}, f.evidence.neurons.slice(0, 6).map((n) =>
        el("span", {class: "patch-frame", title: `neuron ${n}`},
           patchImage(patchUrl(run, f.epoch, n), {alt: `${run} neuron ${n}, epoch ${f.epoch}`})))),
    ])));
}

/** The diagnosis: one chart per metric (a line per run, flags marked; the concept metrics in
 * their documented order, probe accuracy first) and the flags. `charted`: recorded metrics
 * the training charts show already. Returns {runs, nodes}. */
function diagnosisSection(diagnosis, charted = new Set()) {
  const runs = diagnosedRuns(diagnosis);
  if (!runs.length) return {runs: [], nodes: []};
  // Diagnosis rows repeat the training metrics, charted above already.
  const names = new Set(runs.flatMap(([, d]) => (d.metrics || []).flatMap((row) =>
    Object.keys(row).filter((k) => !TRAINING_FIELDS.has(k) && !charted.has(k) &&
                                   typeof row[k] === "number"))));
  const ordered = [...Object.keys(CONCEPT_METRICS).filter((k) => names.has(k)),
                   ...[...names].filter((k) => !hasOwn(CONCEPT_METRICS, k)).sort()];
  const flags = diagnosisFlags(diagnosis);
  const charts = ordered.map((name) => {
    const [title, yLabel] = CONCEPT_METRICS[name] || [name, null];
    return lineChart({
      title, yLabel, flags, metric: name,
      axis: name === "probe_acc" ? {domain: [0, 1]} : {kind: metricKind(name)},
      series: runs.map(([run, d]) => ({name: run, run, color: runColor(run),
                                       points: (d.metrics || []).map((row) => ({x: row.epoch, y: row[name]}))}))});
  });
  const rows = runs.flatMap(([run, d]) => (d.flags || []).map((f) =>
    [[swatch(runColor(run)), run], f.epoch, f.rule, f.message]));
  return {
    runs: runs.map(([run]) => run),
    nodes: [
      el("h2", {class: "section-title", text: "Diagnosis"}),
      el("div", {class: "charts", "data-testid": "diagnosis-charts"}, charts),
      rows.length ? dataTable(["run", "epoch", "rule", "message"], rows, {cls: "flags", testid: "diagnosis-flags"})
                  : note("No run was flagged."),
      ...flagEvidence(runs),
    ],
  };
}
