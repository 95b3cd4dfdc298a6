/* ConceptEvo dashboard, view_evaluation.js: the Evaluation view (the alignment methods against the
 * baselines, the class-level check, their charts and tables).
 * Uses constants.js, data.js, dom.js, state.js and charts.js.
 * (Load order and how the files share names: constants.js.)
 */
"use strict";

// -------------------------------------------------------------------- Evaluation view
const OUR_METHOD = "unified";   // the alignment method of the unified space; others: baselines
const CONCEPT_STUDY = {
  title: "Do neighbours in the space share a concept?",
  testid: "evaluation-methods",
  charts: "",
  intro: "Query neurons are paired with candidate neurons of other runs and epochs; a candidate " +
         "is positive when it has the query's concept label. Each method scores the pairs by " +
         "similarity; its ROC AUC says how well the score finds the positives (0.5: chance). " +
         "Intervals: 95% bootstrap.",
  verdict: (a, seeds) => (typeof a.beats_all_baselines === "boolean" ? {
    good: a.beats_all_baselines,
    text: a.beats_all_baselines
      ? `The unified space beats every baseline${seeds > 1 ? ` on every seed (${seeds})` : ""}.`
      : `The unified space does not beat every baseline${seeds > 1
        ? ` on every seed (it does on ${(a.beats_on_seed || []).filter(Boolean).length} of ${seeds})` : ""}.`} : null),
};
const CLASS_STUDY = {
  title: "Class-level check: do neighbours share a class? (no masks needed)",
  testid: "evaluation-classes",
  charts: "classes-",
  intro: "A weak truth from the labels every study has: a neuron's label is the class that " +
         "holds at least half of its stimuli (deep, class-selective neurons get one). The same " +
         "study as above is scored with these labels.",
  verdict: (a) => (typeof a.passed === "boolean" ? {
    good: a.passed,
    text: `Unified space above chance (the 95% interval above 0.5) on ${shown(a.above_chance_on_seeds)} ` +
          `of ${shown(a.n_seeds)} seeds: ${a.passed ? "pass" : "FAIL"}.`} : null),
};

const evaluationView = {
  renderedKey: null,

  render() {
    const key = String(store.generation);
    if (key === this.renderedKey) return;
    this.renderedKey = key;
    const body = $("#evaluation-body");
    if (store.study.has_evaluation === false) {   // no request that would only get a 404
      fill(body, this.howTo());
      markRendered();
      return;
    }
    fill(body, note("loading…"));
    cachedJSON("/api/evaluation").then((evaluation) => {
      if (key === this.renderedKey) fill(body, ...this.content(evaluation));
    }, (err) => {
      if (key !== this.renderedKey) return;
      fill(body, err.missing || err.status === 404 ? this.howTo() : note(err.message, "note error"));
    }).finally(markRendered);
  },

  howTo() {
    return el("div", {class: "empty", "data-testid": "evaluation-hint"},
      el("h2", {text: "No evaluation yet"}),
      el("p", {text: "The evaluation labels every neuron with a concept, from images with " +
                     "pixel-level concept masks, and measures whether neurons near each other in " +
                     "the unified space share their concept, against baselines. Compute it with " +
                     "(the argument is the workspace directory):"}),
      el("pre", {text: `conceptevo evaluate ${store.study.name}`}),
      el("p", {text: REPORT_MODE ? "Then build the report again."
                                 : "This page shows the result as soon as it is written."}));
  },

  content(evaluation) {
    return [this.head(evaluation), this.skipped(evaluation.skipped),
            this.alignment(evaluation.alignment), this.labels(evaluation.labels),
            evaluation.classes ? this.alignment(evaluation.classes, CLASS_STUDY) : null,
            this.checks(evaluation.checks), this.faithfulness(evaluation.faithfulness)];
  },

  skipped(reasons) {
    if (!Array.isArray(reasons) || !reasons.length) return null;
    return el("ul", {class: "muted", "data-testid": "evaluation-skipped"},
      reasons.map((why) => el("li", {text: `Skipped: ${why}`})));
  },

  /** The annotation-free checks: a pass/fail line each (or why it was skipped). */
  checks(checks) {
    const title = "Checks that need no annotations";
    if (!checks || (!checks.permuted_copy && !checks.rescaled_copy)) {
      if (!checks) return null;
      return this.section(title, checks.skipped ? note(`Skipped: ${checks.skipped}`) : null,
                          this.agreement(checks.agreement));
    }
    const at = checks.checkpoint ? ` (${checks.checkpoint.run}, epoch ${checks.checkpoint.epoch})` : "";
    const line = (check, name, figure) => {
      if (!check) return null;
      if (check.skipped) return el("p", {class: "muted", text: `${name}: skipped (${check.skipped})`});
      return el("p", {class: check.passed ? "verdict good" : "verdict bad",
                      text: `${name}${at}: ${check.passed ? "pass" : "FAIL"}, ${figure(check)}`});
    };
    return this.section(title,
      el("p", {class: "muted", text:
        "Copies of a checkpoint that compute exactly the same function, with the channels of " +
        "every probed layer shuffled, or rescaled by positive factors that the next layer " +
        "undoes, are projected into the space: a neuron should land on its original."}),
      el("div", {"data-testid": "evaluation-checks"},
        line(checks.permuted_copy, "Permuted copy", (c) =>
          `${shown(c.recovery, percent)} of ${shown(c.n_neurons)} alive neurons have their ` +
          `original as nearest neighbour (needs ${shown(c.threshold, percent)})`),
        line(checks.rescaled_copy, "Rescaled copy", (c) =>
          `largest shift ${shown(c.max_shift, (v) => v.toExponential(1))} of the neurons' ` +
          `spread (needs at most ${shown(c.threshold, (v) => v.toExponential(0))})`)),
      this.agreement(checks.agreement));
  },

  /** Check (c): the space's nearest neighbours against one-to-one correlation matching. */
  agreement(agreement) {
    if (!agreement) return null;
    if (agreement.skipped) return el("p", {class: "muted", text: `Agreement with matching: skipped (${agreement.skipped})`});
    const layers = Object.entries(agreement.per_layer || {});
    return el("div", {"data-testid": "evaluation-agreement"},
      el("p", {class: agreement.passed ? "verdict good" : "verdict bad", text:
        `Agreement with one-to-one correlation matching (${plural((agreement.pairs || []).length, "checkpoint pair")}): ` +
        `${agreement.passed ? "pass" : "FAIL"}, above chance on ` +
        `${layers.filter(([, v]) => v.above_chance).length} of ${layers.length} layers ` +
        `(binomial p < ${shown(agreement.alpha)})`}),
      el("p", {class: "muted", text:
        "The neurons of one layer of two checkpoints are matched one to one by the correlation " +
        "of their activations over the probe set (Hungarian algorithm); how often is a " +
        "neuron's nearest neighbour in the space, among that layer of the other checkpoint, " +
        "its match?"}),
      dataTable(["layer", "agreement", "chance", "neurons", "p-value", ""],
        layers.map(([name, v]) => [name, shown(v.agreement, percent), shown(v.chance, percent),
                                   shown(v.n), shown(v.p_value, (p) => p.toExponential(1)),
                                   scoreBar(Number.isFinite(v.agreement) ? v.agreement : 0)]),
        {cls: "data-table numeric"}));
  },

  section(title, ...children) {
    return el("section", {class: "eval-section"}, el("h2", {class: "section-title", text: title}),
              ...children);
  },

  head({headline, created, annotations, settings}) {
    const a = annotations || {};
    const s = settings || {};
    const facts = [
      created && `computed ${created.slice(0, 16).replace("T", " ")}`,
      Number.isFinite(a.n_images) && `${a.n_images} annotated images`,
      Array.isArray(a.concepts) && `${a.concepts.length} concepts`,
      Array.isArray(s.checkpoints) && plural(s.checkpoints.length, "labelled checkpoint"),
      Number.isFinite(s.queries_per_layer) && `${s.queries_per_layer} queries per layer`,
      Number.isFinite(s.neighbours) && `${s.neighbours} neighbours per query`,
      Number.isFinite(s.bootstrap) && `${s.bootstrap} bootstrap resamples`,
    ].filter(Boolean);
    return el("header", {class: "class-head"},
      el("h2", {text: "Evaluation"}),
      headline ? el("p", {class: "eval-headline", "data-testid": "evaluation-headline", text: headline}) : null,
      facts.length ? el("p", {class: "muted", text: facts.join(" · ")}) : null);
  },

  /** The alignment methods in their stored order, with a colour each. */
  methods(alignment) {
    const table = (alignment && alignment.methods) || {};
    const keys = [...new Set([...(alignment && alignment.order) || [], ...Object.keys(table)])];
    return keys.filter((key) => table[key]).map((key, i) => ({
      ...table[key], key, title: table[key].title || key, ours: key === OUR_METHOD,
      color: key === "random" ? RANDOM_COLOR : RUN_PALETTE[i % RUN_PALETTE.length]}));
  },

  /** An alignment study (the concept one, or ``CLASS_STUDY``): every method's AUC, with
   *  the spread over the space's seeds and how many seeds ours won, when there are several. */
  alignment(alignment, study = CONCEPT_STUDY) {
    const methods = this.methods(alignment);
    if (!methods.length) return this.section(study.title, note("This evaluation has no alignment results."));
    const seeds = Array.isArray(alignment.seeds) ? alignment.seeds.length : 1;
    const wins = alignment.wins || {};
    const verdict = study.verdict(alignment, seeds);
    const columns = ["method", "AUC", "95% CI"];
    if (seeds > 1) columns.push(`mean of ${seeds} seeds`, "min – max", "ours won");
    columns.push("queries", "candidates", "positive rate");
    const row = (m) => {
      const cells = [[swatch(m.color), m.title], shown(m.auc, fixed(3)), interval(m.ci95)];
      if (seeds > 1) {
        cells.push(shown(m.mean, fixed(3)),
                   Array.isArray(m.spread) ? `${shown(m.spread[0], fixed(3))} – ${shown(m.spread[1], fixed(3))}` : "–",
                   m.ours ? "" : `${shown(wins[m.key])} / ${seeds}`);
      }
      return [...cells, shown(m.n_queries), shown(m.n_candidates), shown(m.positive_rate, percent)];
    };
    return this.section(study.title,
      el("p", {class: "muted", text: study.intro + (seeds > 1
        ? ` The space is built with ${seeds} seeds; each seed draws its own queries. "Ours ` +
          "won\": seeds where the unified space's interval lies wholly above the method's." : "")}),
      verdict ? el("p", {class: verdict.good ? "verdict good" : "verdict bad", text: verdict.text,
                         "data-testid": `${study.testid}-verdict`}) : null,
      dataTable(columns, methods.map(row),
        {cls: "data-table numeric", testid: study.testid,
         rowProps: (i) => ({class: methods[i].ours ? "ours" : null})}),
      el("div", {class: "legend"}, methods.map((m) =>
        el("span", {class: "legend-item"}, swatch(m.color), `${m.title}: AUC ${shown(m.auc, fixed(2))}`))),
      el("div", {class: "charts"}, this.rocChart(methods, study.charts),
         this.depthChart(methods, alignment.depth_names || {}, study.charts)));
  },

  /** Every method's ROC curve, the chance diagonal underneath, ours drawn last (on top). */
  rocChart(methods, prefix = "") {
    const ticks = niceTicks(0, 1, 5);
    const {node, ctx, x, y} = canvasFrame({
      title: "ROC curves", xTicks: ticks, yTicks: ticks, xLabel: "false positive rate",
      yLabel: "true positive rate", width: 380, height: 360, testid: `${prefix}roc-canvas`});
    dashedLine(ctx, [x(0), y(0)], [x(1), y(1)]);
    ctx.lineJoin = "round";
    for (const m of [...methods].sort((a, b) => a.ours - b.ours)) {
      const fpr = (m.roc && m.roc.fpr) || [];
      const tpr = (m.roc && m.roc.tpr) || [];
      const curve = fpr.map((f, i) => [f, tpr[i]]).filter(([f, t]) => Number.isFinite(f) && Number.isFinite(t));
      if (curve.length < 2) continue;
      ctx.strokeStyle = m.color;
      ctx.lineWidth = m.ours ? 2.6 : 1.6;
      ctx.beginPath();
      curve.forEach(([f, t], i) => (i ? ctx.lineTo(x(f), y(t)) : ctx.moveTo(x(f), y(t))));
      ctx.stroke();
    }
    return node;
  },

  /** Each method's AUC per layer depth with its 95% interval, side by side per depth. */
  depthChart(methods, depthNames, prefix = "") {
    const depths = [...new Set(methods.flatMap((m) => Object.keys(m.by_depth || {})))]
      .sort((a, b) => Number(a) - Number(b));
    const cell = (m, d) => (m.by_depth || {})[d] || {};
    const values = methods.flatMap((m) => depths.flatMap((d) => [cell(m, d).auc, ...(cell(m, d).ci95 || [])]))
      .filter(Number.isFinite);
    if (!values.length) return null;
    const slot = 14;                                  // pixels between methods of one depth
    const group = methods.length * slot + 28;
    const width = Math.max(CHART.width, CHART.left + CHART.right + depths.length * group);
    const {node, ctx, x, y} = canvasFrame({
      title: "AUC by layer depth", yLabel: "AUC", xLabel: "layer depth", width,
      testid: `${prefix}auc-depth-canvas`, yTicks: niceTicks(Math.min(0.5, ...values), Math.max(0.5, ...values), 5),
      xTicks: {ticks: depths.map((_, i) => i), domain: [-0.5, depths.length - 0.5], step: 1},
      xTickText: (i) => (depthNames[depths[i]]
        ? shortLayer(depthNames[depths[i]], Object.values(depthNames)) : `depth ${depths[i]}`)});
    // The ticks may be short names: the full ones in the tooltip.
    node.title = depths.map((d) => `depth ${d}: ${depthNames[d] || "?"}`).join("\n");
    dashedLine(ctx, [x(-0.5), y(0.5)], [x(depths.length - 0.5), y(0.5)]);
    methods.forEach((m, k) => {
      const offset = (k - (methods.length - 1) / 2) * slot;
      depths.forEach((d, i) => {
        const {auc, ci95} = cell(m, d);
        if (!Number.isFinite(auc)) return;   // a depth with one kind of candidate has no AUC
        const cx = x(i) + offset;
        if (Array.isArray(ci95) && ci95.every(Number.isFinite)) {
          const [lo, hi] = ci95.map(y);
          ctx.strokeStyle = m.color;
          ctx.lineWidth = 1.2;
          ctx.beginPath();
          for (const [x1, y1, x2, y2] of [[cx, lo, cx, hi], [cx - 3, lo, cx + 3, lo], [cx - 3, hi, cx + 3, hi]]) {
            ctx.moveTo(x1, y1);
            ctx.lineTo(x2, y2);
          }
          ctx.stroke();
        }
        ctx.fillStyle = m.color;
        ctx.strokeStyle = "#fff";
        ctx.beginPath();
        ctx.arc(cx, y(auc), m.ours ? 4.5 : 3.5, 0, TAU);
        ctx.fill();
        ctx.stroke();
      });
    });
    return node;
  },

  labels(labels) {
    const title = "Concept labels";
    if (!labels) return this.section(title, note("This evaluation has no concept labels."));
    const byConcept = Object.entries(labels.by_concept || {}).sort((a, b) => b[1] - a[1]);
    const most = Math.max(1, ...byConcept.map(([, n]) => n));
    const byDepth = labels.by_depth || [];
    const share = (part, whole) => (whole > 0 ? ` (${percent(part / whole)})` : "");
    return this.section(title,
      el("p", {class: "muted", text:
        `${shown(labels.n_labelled)} of ${shown(labels.n_neurons)} neurons of the labelled ` +
        `checkpoints have a concept${share(labels.n_labelled, labels.n_neurons)}: the concept ` +
        "whose masks their strongest activations overlap most (IoU). Hover or pin a neuron in " +
        "the Space view to see its label."}),
      el("div", {class: "eval-tables"},
        byConcept.length
          ? dataTable(["concept", "neurons", ""], byConcept.map(([c, n]) => [c, n, scoreBar(n / most)]),
                      {cls: "data-table numeric", testid: "evaluation-concepts"}) : null,
        byDepth.length
          ? dataTable(["depth", "layer", "neurons", "labelled", "mean best IoU"], byDepth.map((r) =>
              [shown(r.depth), r.layer, shown(r.n), `${shown(r.labelled)}${share(r.labelled, r.n)}`,
               shown(r.mean_best_iou, fixed(3))]), {cls: "data-table numeric"}) : null));
  },

  faithfulness(faithfulness) {
    const fidelity = (faithfulness && faithfulness.fidelity) || {};
    const seeds = fidelity.seeds || [];
    const spread = fidelity.spread || {};
    const reversion = (faithfulness && faithfulness.reversion) || [];
    const range = (pair, format) => (Array.isArray(pair) && pair.length === 2
      ? `${shown(pair[0], format)} – ${shown(pair[1], format)}` : "–");
    const columns = [["rmse", "RMSE", fixed(4)], ["top1", "top-1", percent], ["top10", "top-10", percent],
                     ["mean_cosine", "mean cosine", fixed(4)]];
    const seedRows = seeds.map((s) => [shown(s.seed), ...columns.map(([k, , f]) => shown(s[k], f))]);
    if (seeds.length && Object.keys(spread).length) {
      seedRows.push(["range", ...columns.map(([k, , f]) => range(spread[k], f))]);
    }
    return this.section("Faithfulness",
      el("h3", {text: "Fidelity of the unified space, per seed"}),
      el("p", {class: "muted", text:
        "How well the projection reproduces the base model's own embedding, for the space " +
        "built with several seeds."}),
      seedRows.length
        ? dataTable(["seed", ...columns.map(([, h]) => h)], seedRows,
                    {cls: "data-table numeric", rowProps: (i) => ({class: i === seeds.length ? "summary" : null})})
        : note("No fidelity results."),
      el("h3", {text: "Reverting important vs random evolutions"}),
      el("p", {class: "muted", text:
        "Drop of the classes' top-1 accuracy when the most important bin of evolutions is " +
        "reverted, against random neurons of the same number; ratio = top-bin drop / random drop."}),
      reversion.length
        ? dataTable(["run", "epochs", "classes", "split", "top-bin drop", "random drop", "ratio",
                     "ratio per class (mean ± std, min – max)", "held-out ratio"],
                    reversion.map((r) => this.reversionRow(r)),
                    {cls: "data-table numeric", testid: "evaluation-reversion"})
        : note("No importance was computed, so nothing was reverted " +
               "(`conceptevo importance`, then evaluate again)."),
      this.rankers(faithfulness && faithfulness.rankers));
  },

  /** Our ranking against the simple rankers: per layer, the drop when its most important
   * bin is reverted (hover a cell for every bin), and how often its bins are monotone. */
  rankers(table) {
    const head = el("h3", {text: "Importance against simple rankers"});
    if (!table || !table.order) {
      return el("div", {}, head, note("Not compared: no stored importance " +
                                       "(`conceptevo importance`, then evaluate again)."));
    }
    const pts = (d) => shown(d, (v) => `${(100 * v).toFixed(1)} pts`);
    const rows = table.order.map((name) => {
      const r = table.rankers[name];
      const cells = table.layers.map((layer) => {
        const e = r.per_layer[layer];
        if (!e) return "–";
        const bins = e.bin_drops.map((d) => pts(d)).join(", ");
        const mono = e.monotone_share === undefined ? "" : `; monotone in ${percent(e.monotone_share)} of cases`;
        const wins = e.ours_top_bin_higher === undefined || name === "ours" ? ""
          : `; our top bin hurts more in ${percent(e.ours_top_bin_higher)}`;
        return el("span", {title: `bins: ${bins}${mono}${wins}`, text: pts(e.top_bin_drop)});
      });
      return [el("span", {title: name, text: r.title}), ...cells, pts(r.top_bin_drop),
              r.monotone_share === null || r.monotone_share === undefined ? "–" : percent(r.monotone_share)];
    });
    return el("div", {},
      head,
      el("p", {class: "muted", text:
        `Top-1 drop when each ranker's most important of ${table.bins} bins of a layer is ` +
        `reverted to the earlier checkpoint, mean over ${table.n_cases} class × epoch-pair ` +
        `cases (${table.split} images); monotone: the bins hurt less and less, from the ` +
        "most important to the least (hover a cell for every bin)."}),
      dataTable(["ranker", ...table.layers, "mean", "monotone"], rows,
                {cls: "data-table numeric", testid: "evaluation-rankers",
                 rowProps: (i) => ({class: table.order[i] === "ours" ? "ours" : null})}),
      Object.keys(table.skipped || {}).length
        ? el("ul", {class: "muted"}, Object.entries(table.skipped).map(([what, why]) =>
            el("li", {text: `skipped ${what}: ${why}`})))
        : null);
  },

  reversionRow(r) {
    const drop = (v) => shown(v, (d) => `${(100 * d).toFixed(1)} pts`);
    const ratio = (v) => shown(v, (q) => `${formatNumber(q, 1)}×`);
    const c = r.ratio_per_class;
    const h = r.heldout;
    return [r.run, `${r.from} → ${r.to}`, shown(r.n_classes), r.split || "–",
            drop(r.top_bin_drop), drop(r.random_drop), ratio(r.ratio),
            c ? `${ratio(c.mean)} ± ${shown(c.std, fixed(1))} (${ratio(c.min)} – ${ratio(c.max)})` : "–",
            h ? `${ratio(h.ratio)} (${drop(h.top_bin_drop)} vs ${drop(h.random_drop)})` : "–"];
  },
};
