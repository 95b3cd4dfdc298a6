/* ConceptEvo dashboard, view_compare.js: the Compare view (runs side by side, one camera).
 * Uses constants.js, data.js, dom.js, state.js, map.js, map_controls.js and view_space.js.
 * (Load order and how the files share names: constants.js.)
 */
"use strict";

// ---------------------------------------------------------------------- Compare view
const compareView = {
  camera: new Camera(),
  panels: [],          // [{run, panel, caption}]
  pickerKey: null,

  render() {
    mapControls.mount("compare");
    const key = `${store.generation}|${state.compareRuns}`;
    if (key !== this.pickerKey) {
      this.pickerKey = key;
      renderRunPicker($("#compare-runs"), state.compareRuns, (runs) => {
        state.compareRuns = runs;
        invalidate();
      }, MAX_COMPARE);
    }
    mapControls.sync();
    this.syncPanels();
    const scenes = this.panels.map(({run}) => sceneOf([run]));
    const missing = scenes.flatMap((s) => s.missing || []);
    mapComplete = !missing.length;
    mapControls.loading(!mapComplete);
    if (missing.length) {
      requestPoints(missing);
      return;
    }
    if (!this.camera.bounds) this.camera.fit(sceneBounds(scenes));
    this.panels.forEach(({run, panel, caption}, i) => {
      panel.setScene(scenes[i]);
      panel.draw();
      fill(caption, swatch(runColor(run)), el("strong", {text: run}),
                              ` · epoch ${state.epoch} · ${liveCount(scenes[i])}`);
    });
    renderLegend(scenes, state.compareRuns);
    pinnedPanel.render();   // loads the pinned neuron's trajectory drawn here too
    prefetchAround(state.compareRuns);
    markRendered();
  },

  /** One figure per compared run (rebuilt only when the runs change). */
  syncPanels() {
    if (this.panels.map((p) => p.run).join("\n") === state.compareRuns.join("\n")) return;
    for (const {panel} of this.panels) panel.destroy();
    const host = $("#compare-panels");
    host.style.setProperty("--columns", Math.max(1, state.compareRuns.length));
    host.replaceChildren();
    this.panels = state.compareRuns.map((run) => {
      const map = el("div", {class: "map"});
      const caption = el("figcaption");
      host.append(el("figure", {class: "compare-panel"}, caption, map));
      const panel = new MapPanel(map, {
        testid: "compare-canvas",
        camera: this.camera,
        onHover: (hit, event) => tooltip.show(hit, event),
        onPick: (hit) => pin(hit),
        drawOverlay: (ctx, p) => {
          if (state.pinned && state.pinned.run === run) drawTrajectory(ctx, p);
        },
      });
      return {run, panel, caption};
    });
    if (!this.panels.length) host.append(note("Choose up to three runs to compare."));
  },
};

/** "425 live / 432" for a single-run scene at the slider's epoch. */
function liveCount(scene) {
  const current = scene.sets.filter((s) => !s.faded);
  const total = current.reduce((sum, s) => sum + s.points.n, 0);
  const dead = current.reduce((sum, s) => sum + s.points.dead.reduce((a, d) => a + d, 0), 0);
  return total ? `${total - dead} live / ${total} neurons` : "no checkpoint at this epoch";
}
