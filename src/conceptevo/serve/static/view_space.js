/* ConceptEvo dashboard, view_space.js: the Space view and the pinned neuron panel.
 * Uses data.js, dom.js, state.js, map.js and map_controls.js; compareView (view_compare.js) when
 * a pin changes.
 * (Load order and how the files share names: constants.js.)
 */
"use strict";

// ------------------------------------------------------------------------- Space view
const spaceView = {
  camera: new Camera(),
  panel: null,
  pickerKey: null,

  init() {
    this.panel = new MapPanel($("#space-map"), {
      testid: "space-canvas",
      camera: this.camera,
      onHover: (hit, event) => tooltip.show(hit, event),
      onPick: (hit) => pin(hit),
      drawOverlay: drawTrajectory,
    });
  },

  render() {
    mapControls.mount("space");
    const key = `${store.generation}|${state.runs}`;
    if (key !== this.pickerKey) {
      this.pickerKey = key;
      renderRunPicker($("#space-runs"), state.runs, (runs) => {
        state.runs = runs;
        invalidate();
      });
    }
    mapControls.sync();
    const scene = sceneOf(state.runs);
    mapComplete = !scene.missing;
    mapControls.loading(!mapComplete);
    if (scene.missing) {
      requestPoints(scene.missing);   // the previous frame stays up meanwhile
      return;
    }
    if (!this.camera.bounds) this.camera.fit(sceneBounds([scene]));
    this.panel.setScene(scene);
    this.panel.draw();
    state.drawnPoints = scene.count;
    state.drawnBase = scene.baseCount;
    renderLegend([scene], state.runs);
    pinnedPanel.render();
    prefetchAround(state.runs);
    markRendered();
  },
};

// ---------------------------------------------------------------------- pinned neuron
function pin(target) {
  state.pinned = target;
  state.trajectory = [];
  redrawOverlays();
  invalidate();
}

function redrawOverlays() {
  if (spaceView.panel) spaceView.panel.requestDraw();
  for (const {panel} of compareView.panels) panel.requestDraw();
}

/** A neuron's positions at every epoch of its run, from the checkpoints' points (used when
 * a report does not include the neuron's details). */
async function trajectoryFromPoints(run, neuron) {
  const epochs = runInfo(run).epochs;
  const all = await Promise.all(epochs.map((e) => loadPoints(run, e).catch(() => null)));
  return all.filter(Boolean)
    .map((points) => ({epoch: points.epoch, x: points.x[neuron], y: points.y[neuron]}))
    .filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
}

const pinnedPanel = {
  renderedKey: null,
  token: 0,

  /** Rebuild when the pinned neuron (or the workspace) changed; otherwise only move the
   * "current epoch" highlight of the strip. */
  render() {
    const node = $("#pinned");
    const p = state.pinned;
    node.hidden = !p;
    if (!p) {
      this.renderedKey = null;
      return;
    }
    const key = `${store.generation}|${p.run}|${p.epoch}|${p.neuron}`;
    if (key !== this.renderedKey) {
      this.renderedKey = key;
      this.build(p);
    }
    for (const item of node.querySelectorAll(".strip-item")) {
      item.classList.toggle("current", Number(item.dataset.epoch) === state.epoch);
    }
  },

  async build(p) {
    const token = ++this.token;
    const info = neuronInfo(p.run, p.epoch, p.neuron);
    const node = $("#pinned");
    fill(node, this.header(p), this.facts(info, null), note("loading…"));
    let detail = null;
    let problem = null;
    try {
      detail = await cachedJSON(apiPath("neuron", p.run, p.epoch, p.neuron));
    } catch (err) {
      problem = err;
      if (!err.missing) showBanner(`Neuron ${p.run}:${p.epoch}:${p.neuron}: ${err.message}`);
    }
    const trajectory = detail ? detail.trajectory : await trajectoryFromPoints(p.run, p.neuron);
    if (token !== this.token) return;   // another neuron was pinned meanwhile
    state.trajectory = trajectory;
    fill(node,
      this.header(p),
      this.facts(info, detail),
      el("h3", {text: `Patches at epoch ${p.epoch}`}),
      el("div", {class: "patch-frame"}, patchImage(patchUrl(p.run, p.epoch, p.neuron), {alt: "top patches"})),
      el("h3", {text: "Across epochs"}),
      this.strip(p),
      detail ? this.stimuliClasses(detail) : null,
      el("h3", {text: "Nearest neurons in other runs and epochs"}),
      detail ? this.neighbours(detail.neighbours)
             : note(problem && problem.missing ? "neighbours not in this report"
                                               : "neighbours unavailable"),
      detail && detail.skipped && detail.skipped.length ? note(
        `Left out: ${detail.skipped.map((s) => `${s.run} epoch ${s.epoch}`).join(", ")} ` +
        `(a damaged file: ${detail.skipped[0].error})`, "note error") : null);
    this.render();
    redrawOverlays();
  },

  header(p) {
    return el("div", {class: "pinned-head"},
              el("h2", {}, swatch(runColor(p.run)), `${p.run} · neuron ${p.neuron}`),
              el("button", {type: "button", class: "icon-button", "aria-label": "Unpin",
                            title: "Unpin (Esc)", text: "×", onclick: () => pin(null)}));
  },

  facts(info, detail) {
    const rows = [["pinned at", `epoch ${info.epoch}`], ["layer", info.layer],
                  ["channel", info.channel]];
    if (info.unit) rows.push(["neuron", info.unit]);
    const concept = detail ? detail.concept : info.concept;   // null: no labels here
    if (concept) {
      rows.push(["concept", conceptText(concept)]);
      if (concept.top && concept.top.length) {
        rows.push(["top concepts", concept.top.map(([name, iou]) => `${name} ${iou.toFixed(2)}`).join(", ")]);
      }
    }
    if (detail) {
      rows.push(["max activation", formatNumber(detail.act_max)],
                ["active on", percent(detail.frac_positive) + " of probe images"]);
    }
    if (detail ? detail.dead : info.dead) rows.push(["status", "dead (no positive activation)"]);
    return el("dl", {class: "facts"}, rows.flatMap(([k, v]) => [el("dt", {text: k}), el("dd", {text: String(v)})]));
  },

  /** One patch strip per epoch of the run; click one to move the slider there. */
  strip(p) {
    const items = runInfo(p.run).epochs.map((epoch) =>
      el("button", {type: "button", class: "strip-item", "data-epoch": epoch,
                    title: `show epoch ${epoch}`, onclick: () => setEpoch(epoch)},
         el("span", {class: "strip-epoch", text: `e${epoch}`}),
         el("span", {class: "patch-frame"},
            patchImage(patchUrl(p.run, epoch, p.neuron), {alt: `epoch ${epoch}`}))));
    return el("div", {class: "epoch-strip", "data-testid": "epoch-strip"}, items);
  },

  /** The classes of the neuron's top stimuli, most common first. */
  stimuliClasses(detail) {
    const counts = new Map();
    for (const c of detail.stimuli_class || []) counts.set(c, (counts.get(c) || 0) + 1);
    if (!counts.size) return null;
    const top = [...counts].sort((a, b) => b[1] - a[1]).slice(0, 4);
    return el("p", {class: "stimuli-classes"},
              el("span", {class: "muted", text: `top ${detail.stimuli.length} stimuli: `}),
              top.map(([c, n]) => `${c} (${n})`).join(", "));
  },

  neighbours(list) {
    if (!list.length) return note("no other runs or epochs to compare with");
    return el("ol", {class: "neighbours", "data-testid": "neighbours"},
      list.map((n) => el("li", {class: "neighbour"},
        el("button", {type: "button", title: "pin this neuron", onclick: () => pinNeighbour(n)},
           el("span", {class: "neighbour-meta"}, swatch(runColor(n.run)),
              el("span", {class: "neighbour-where"}, `${n.run} · e${n.epoch} · `,
                 layerName(n.layer), ` ch ${n.channel}`),
              el("span", {class: "similarity", text: `cos ${n.similarity.toFixed(2)}`})),
           el("span", {class: "patch-frame"},
              patchImage(patchUrl(n.run, n.epoch, n.neuron), {alt: `neighbour ${n.neuron}`}))))));
  },
};

/** Pin a neighbour and show it: its run becomes visible and the slider goes to its epoch. */
function pinNeighbour(n) {
  if (!state.runs.includes(n.run)) state.runs = runNames().filter((r) => r === n.run || state.runs.includes(r));
  state.epoch = n.epoch;
  pin({run: n.run, epoch: n.epoch, neuron: n.neuron});
}
