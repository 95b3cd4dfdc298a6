/* ConceptEvo dashboard, view_class.js: the Class view (importance of a class's neurons between two
 * epochs, its reversion chart).
 * Uses data.js, dom.js, state.js, charts.js and pin (view_space.js).
 * (Load order and how the files share names: constants.js.)
 */
"use strict";

// ------------------------------------------------------------------------- Class view
/** The stored importance entries, their runs in the study's order (the server lists them
 * by file path). */
function importanceEntries() {
  const order = inStudyOrder(store.study.importance.map((e) => e.run));
  return store.study.importance.map((e, i) => [e, i])
    .sort(([a, i], [b, j]) => order.indexOf(a.run) - order.indexOf(b.run) || i - j)
    .map(([e]) => e);
}

const classView = {
  renderedKey: null,

  render() {
    const entries = importanceEntries();
    const body = $("#class-body");
    if (!entries.length) {
      this.renderedKey = null;
      fill(body, this.howTo());
      this.syncSelects([]);
      markRendered();
      return;
    }
    const s = this.selection(entries);
    this.syncSelects(entries);
    const key = `${store.generation}|${s.run}|${s.class}|${s.from}|${s.to}`;
    if (key === this.renderedKey) return;
    this.renderedKey = key;
    fill(body, note("loading…"));
    cachedJSON(apiPath("importance", s.run, s.class, s.from, s.to)).then((payload) => {
      if (key === this.renderedKey) fill(body, ...this.content(payload));
    }, (err) => {
      if (key !== this.renderedKey) return;
      fill(body, note(err.missing ? "This class evolution is not included in this report."
                                  : err.message, "note error"));
    }).finally(markRendered);
  },

  howTo() {
    const run = runNames()[0];
    return el("div", {class: "empty"},
      el("h2", {text: "No class evolution computed yet"}),
      el("p", {text: "Which concept changes between two epochs matter for a class is computed " +
                     "per run, class and pair of epochs. For example:"}),
      el("pre", {text: `conceptevo importance --config study.toml --run ${run} --class 0`}),
      el("p", {text: REPORT_MODE ? "Then build the report again."
                                 : "This page shows the result as soon as it is written."}));
  },

  /** The shown entry: the state's when the study has it, else the first stored one. */
  selection(entries) {
    const s = state.importance;
    const same = (e) => s && e.run === s.run && e.class === s.class && e.from === s.from && e.to === s.to;
    if (!entries.some(same)) {
      if (s && s.run !== null) showBanner(`No importance stored for run ${s.run}, class ${s.class}, epochs ${s.from} → ${s.to}; showing the first stored one.`);
      const e = entries[0];
      state.importance = {run: e.run, class: e.class, from: e.from, to: e.to};
    }
    return state.importance;
  },

  /** Run, class and epoch-pair selects, each offering only what is stored. */
  syncSelects(entries) {
    const s = state.importance;
    const forRun = entries.filter((e) => s && e.run === s.run);
    const forClass = forRun.filter((e) => e.class === s.class);
    const offer = (select, options, current) => {
      fill(select, options.map(([value, text]) =>
        el("option", {value, text, selected: value === current})));
      select.disabled = options.length === 0;
    };
    const unique = (list) => [...new Map(list.map((o) => [o[0], o])).values()];
    offer($("#class-run"), unique(entries.map((e) => [e.run, e.run])), s && s.run);
    offer($("#class-class"), unique(forRun.map((e) => [String(e.class), e.class_name])),
          s && String(s.class));
    offer($("#class-pair"), unique(forClass.map((e) => [`${e.from}-${e.to}`, `${e.from} → ${e.to}`])),
          s && `${s.from}-${s.to}`);
  },

  /** A select changed: keep what still exists, else take the first stored option. */
  choose(change) {
    const entries = importanceEntries();
    const want = {...state.importance, ...change};
    const score = (e) => (e.run === want.run) * 4 + (e.class === want.class) * 2 +
                         (e.from === want.from && e.to === want.to);
    const best = entries.filter((e) => e.run === want.run)
      .sort((a, b) => score(b) - score(a))[0] || entries[0];
    state.importance = {run: best.run, class: best.class, from: best.from, to: best.to};
    invalidate();
  },

  bind() {
    $("#class-run").addEventListener("change", (e) => this.choose({run: e.target.value}));
    $("#class-class").addEventListener("change", (e) => this.choose({class: Number(e.target.value)}));
    $("#class-pair").addEventListener("change", (e) => {
      const [from, to] = e.target.value.split("-").map(Number);
      this.choose({from, to});
    });
  },

  content(payload) {
    return [
      el("header", {class: "class-head"},
         el("h2", {text: payload.class_name}),
         el("p", {class: "muted", text:
           `Run ${payload.run}, epoch ${payload.from} → ${payload.to}, ${payload.n_images} ` +
           "class images. Importance of a neuron's change = the fraction of those images whose " +
           "class score it raises (first-order estimate)."})),
      reversionFigure(payload.reversion),
      el("h2", {class: "section-title", text: "Most important evolutions per layer"}),
      ...payload.layers.map((layer) => this.layer(payload, layer)),
    ];
  },

  layer(payload, layer) {
    return el("section", {class: "layer-evolutions"},
      el("h3", {text: layer.name}),
      layer.top.length ? layer.top.map((ev) => this.evolution(payload, ev))
                       : note("no neuron of this layer changed"));
  },

  evolution(payload, ev) {
    const side = (epoch) => el("figure", {},
      el("span", {class: "patch-frame"},
         patchImage(patchUrl(payload.run, epoch, ev.neuron), {alt: `channel ${ev.channel}, epoch ${epoch}`})),
      el("figcaption", {text: `epoch ${epoch}`}));
    return el("article", {class: "evolution"},
      el("div", {class: "evo-meta"},
         el("strong", {text: `channel ${ev.channel}`}),
         el("span", {class: "score", title: "importance: fraction of class images helped"},
            scoreBar(ev.score),
            ev.score.toFixed(2)),
         el("button", {type: "button", class: "link-button", text: "show in space",
                       onclick: () => showInSpace(payload.run, payload.to, ev.neuron)})),
      side(payload.from), el("span", {class: "arrow", "aria-hidden": "true", text: "→"}), side(payload.to));
  },
};

function showInSpace(run, epoch, neuron) {
  if (!state.runs.includes(run)) state.runs = runNames().filter((r) => r === run || state.runs.includes(r));
  state.view = "space";
  state.epoch = epoch;
  pin({run, epoch, neuron});
}
