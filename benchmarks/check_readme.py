"""The README's Performance table, formatted from benchmarks/results/run.json, and its check.

    python benchmarks/check_readme.py            # exit 1 if the README's table differs
    python benchmarks/check_readme.py --write    # rewrite the table (and run.json's copy)
    python benchmarks/check_readme.py --print    # print the rows

:func:`rows` turns the results of ``benchmarks/run.py`` into the rows of the table (run.py
stores them in run.json under ``readme``). The check reads the README's section
"## Performance", takes the table between the two markers below, and fails unless

* its rows are exactly the rows formatted from run.json's results (and those stored in its
  ``readme`` block), and
* every number written in the section, outside code spans and links, is one of the numbers
  of those rows or of run.json's ``meta`` or ``ratios`` (with their targets), so that prose
  cannot quote a figure that the file does not hold.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_JSON = ROOT / "benchmarks" / "results" / "run.json"
README = ROOT / "README.md"
BEGIN = "<!-- performance table: generated from benchmarks/results/run.json by " \
        "benchmarks/check_readme.py --write -->"
END = "<!-- end of the performance table -->"
MODEL_ORDER = ("vgg16", "resnet18", "small_vgg")


# ------------------------------------------------------------------------------ formatting
def n(x: float, digits: int = 0) -> str:
    """``x`` with ``digits`` decimals and thousands separators."""
    return f"{x:,.{digits}f}"


def sec(x: float) -> str:
    """A time in seconds, at a precision that fits it."""
    if x >= 100:
        return n(x)
    if x >= 10:
        return n(x, 1)
    if x >= 1 or x == 0:
        return n(x, 2)
    return f"{x:.2g}"


def sci(x: float) -> str:
    return f"{x:.1e}"


def _models(rows: list[dict]) -> list[str]:
    seen = {r["model"] for r in rows}
    return [m for m in MODEL_ORDER if m in seen] + sorted(seen - set(MODEL_ORDER))


def _by(rows: list[dict], model: str, layout: str | None = None) -> dict | None:
    for r in rows:
        if r["model"] == model and (layout is None or r.get("layout") == layout):
            return r
    return None


def _run_row(doc: dict) -> list[str]:
    meta = doc["meta"]
    text = (f"{meta['mode']} mode, started {meta['started'][:10]}, {meta['cpu_count']} CPU "
            f"cores, torch {meta['torch']}; load average {meta['load_average_at_start'][0]} "
            f"at the start, {meta['load_average_at_end'][0]} at the end; {n(meta['total_s'])} s")
    if meta.get("updated_from"):
        again = sorted(k for k, v in meta.get("sections", {}).items()
                       if v.get("started", "")[:19] >= meta["started"][:19])
        text += (f" (sections {', '.join(again)} re-measured then; the others from the run of "
                 f"{meta['updated_from']['started'][:10]})")
    return ["run (benchmarks/run.py)", text]


def rows(doc: dict) -> list[list[str]]:
    """The README's Performance table: [figure, value] rows from run.py's output ``doc``."""
    res = doc["results"]
    out = [_run_row(doc)]

    e2e = res.get("end_to_end", {})
    if "stages" in e2e:
        st = e2e["stages"]
        done = [(k, v) for k, v in st.items() if "seconds" in v]
        out.append(["demo end to end, by stage (s)",
                    ", ".join(f"{k} {sec(v['seconds']) if v['seconds'] < 1 else n(v['seconds'])}"
                              for k, v in done) + f": **{n(e2e['total_s'])} s**"])
        imports = min(v["rss_after_imports_mb"] for _, v in done)
        out.append(["peak memory by stage (RSS, MB)",
                    ", ".join(f"{k} {n(v['peak_rss_mb'])}" for k, v in done
                              if k in ("training", "stimuli", "space", "importance",
                                       "evaluation")) + f" (imports alone: {n(imports)})"])
        sc = res.get("scaling", {}).get("probe_images")
        text = (f"{n(e2e['stimuli_images_per_s'])} images/s in the demo "
                f"({st['stimuli']['checkpoints']} checkpoints x "
                f"{n(st['stimuli']['probe_images'])} images, activations recorded)")
        if sc:
            text += f", {n(sc['images_per_s_from_slope'])} images/s from the scaling slope"
        out.append(["stimulus pass throughput (small_vgg, 64x64)", text])

    srows = res.get("stimuli", {}).get("rows", [])
    if srows:
        reps = srows[0]["repeats"] if "repeats" in srows[0] else "?"
        size = f"{srows[0]['images']} images of 64x64, batch {srows[0]['batch_size']}"

        def per_layout(key: str) -> str:
            parts = []
            for layout in ("contiguous", "channels_last"):
                vals = [f"{m} {_by(srows, m, layout)[key]:.2f}" for m in _models(srows)
                        if _by(srows, m, layout) and key in _by(srows, m, layout)]
                if vals:
                    parts.append(f"{layout.replace('_', '-')}: {', '.join(vals)}")
            return "; ".join(parts)

        out.append([f"stimulus pass / bare forward ({size}; median of {reps} interleaved "
                    "repeats)", per_layout("ratio")])
        if any("vs_reference" in r for r in srows):
            out.append(["the reference's stimulus pass / ours, same layout (> 1: ours faster; "
                        "it computes less: no responsive neurons, locations, statistics or "
                        "classifier)", per_layout("vs_reference")])
            out.append(["the reference's two passes (stimuli, then responsive neurons) / ours",
                        per_layout("vs_reference_both_passes")])

    vrows = res.get("stimuli_vit", {}).get("rows", [])
    if vrows:
        out.append([f"stimulus pass / bare forward, vision transformers (MLP hidden layers, "
                    f"tokens reduced over the patch tokens; 64x64, batch "
                    f"{vrows[0]['batch_size']}; median of {vrows[0]['repeats']} interleaved "
                    "repeats)",
                    ", ".join(f"{r['model']} **{r['ratio']:.2f}** ({n(r['images'])} images, "
                              f"{n(r['neurons'])} neurons, {n(r['images_per_s'])} images/s)"
                              for r in vrows) + " (target <= 1.3)"])
        profiles = res["stimuli_vit"].get("profiles", [])
        if profiles:
            out.append(["transformer stimulus pass in steps, best of "
                        f"{profiles[0]['repeats']} (bare forward; with hooks that do nothing; "
                        "with the token reduction; the whole pass with its top-k bookkeeping); "
                        "differences of a few percent are this machine's noise",
                        "; ".join(f"{p['model']} {p['bare_s']:.3f} s, {p['hooks_s']:.3f} s, "
                                  f"{p['reduce_s']:.3f} s, {p['ours_s']:.3f} s"
                                  for p in profiles)])

    mem = res.get("memory", {})
    if "peak_ratio" in mem:
        lo, hi = mem["rows"][0], mem["rows"][-1]
        out.append([f"recorded stimulus pass, peak RSS ({mem['model']} random init, "
                    f"{n(mem['neurons'])} neurons, {mem['image_size']}x{mem['image_size']}, "
                    "a fresh process per size)",
                    f"{n(lo['images'])} images {n(lo['peak_rss_mb'])} MB, {n(hi['images'])} "
                    f"images {n(hi['peak_rss_mb'])} MB: **{mem['peak_ratio']:.3f}x** (target "
                    f"<= 1.2); {mem['marginal_bytes_per_neuron_image']:.2f} bytes per neuron "
                    "and image at the margin"])

    mon = res.get("monitor", {}).get("rows", [])
    if mon:
        out.append([f"monitor snapshot / bare forward ({n(mon[0]['images'])} images)",
                    ", ".join(f"{r['model']} {r['ratio']:.2f}" for r in mon)])

    irows = res.get("importance", {}).get("rows", [])
    if irows:
        ms = _models(irows)
        size = f"{irows[0]['images']} images of 64x64"
        out.append([f"batched importance vs our per-image loop ({size})",
                    ", ".join(f"{m} {_by(irows, m)['speedup']:.1f}x" for m in ms)])
        if all("speedup_vs_reference" in _by(irows, m) for m in ms):
            r0 = irows[0]
            out.append([f"batched importance vs the reference's algorithm ({size}; its "
                        f"per-image loop timed on {r0['reference_images_timed']} images of its "
                        f"batch of {r0['reference_batch']}, scaled)",
                        ", ".join(f"{m} **{_by(irows, m)['speedup_vs_reference']:,.0f}x** "
                                  f"({sec(_by(irows, m)['reference_s'])} s vs "
                                  f"{sec(_by(irows, m)['batched_s'])} s)" for m in ms)
                        + "".join(f"; {m} as the reference runs it, on every layer of its list "
                                  f"({n(r['reference_every_layer_neurons'])} maps' channels, "
                                  f"ReLU and pooling included: more work than ours): "
                                  f"{r['speedup_vs_reference_every_layer']:,.0f}x"
                                  for m in ms for r in [_by(irows, m)]
                                  if "speedup_vs_reference_every_layer" in r)])
            agree = all(_by(irows, m)["results_agree"] for m in ms)
            out.append(["importance: agreement",
                        f"with our per-image loop {'to 1e-5 in float64' if agree else 'NOT'} "
                        f"({', '.join(ms)}); same sign as the reference: " + ", ".join(
                            f"{m} {_by(irows, m)['sign_agreement_with_reference']:.4f}"
                            for m in ms) + " (its VGG16 conv maps are overwritten by the "
                        "in-place ReLU: post-ReLU; ours are pre-ReLU)"])
        ratio = {m: _by(irows, m)["batched_peak_rss_mb"] / _by(irows, m)["naive_peak_rss_mb"]
                 for m in ms}
        out.append(["importance: peak RSS, batched / per-image loop",
                    ", ".join(f"{m} {ratio[m]:.2f}" for m in ms)])

    sp = res.get("space", {})
    ne = sp.get("neuron_embedding")
    if ne:
        text = (f"{sec(ne['ours_s'])} s (1 thread) vs the reference's per-pair loop "
                f"{sec(ne['reference_s'])} s: **{ne['speedup']:.1f}x**")
        if "speedup_range_over_seeds" in ne and ne["seeds"] > 1:
            lo_, hi_ = ne["speedup_range_over_seeds"]
            text += f" ({lo_:.1f}-{hi_:.1f}x over {ne['seeds']} seeds)"
        text += (f"; loss {ne['ours_loss']:.4f} vs {ne['reference_loss']:.4f} "
                 f"({ne['reference_epochs_run']} reference epochs)")
        out.append([f"neuron embedding, {n(sp['neurons'])} neurons, 20 epochs "
                    f"({n(ne['pairs_per_epoch'])} pairs/epoch)", text])
    th = sp.get("neuron_embedding_threads")
    if th:
        parts = []
        for r in th["rows"]:
            parts.append(f"{r['cpu_bound_processes_alongside']} busy: "
                         f"{sec(r['process_threads_20_epochs_s'])} s with "
                         f"{th['process_threads']} threads, "
                         f"{sec(r['one_thread_20_epochs_s'])} s with 1 "
                         f"({r['speedup_one_thread_vs_reference']:.1f}x the reference's "
                         f"{sec(r['reference_20_epochs_s'])} s)")
        out.append([f"neuron embedding per 20 epochs with N CPU-bound processes alongside "
                    f"(median of {th['repeats']}; {th['process_threads']} threads: before, "
                    "1: now)", "; ".join(parts)])
    ie = sp.get("image_embedding")
    if ie and "speedup_to_reference_stop" in ie:
        lo_, hi_ = ie["speedup_to_reference_stop_range"]
        out.append(["image embedding vs the reference's gradient descent, to its own stop "
                    "(RMSE < 0.01)",
                    f"it needs {n(ie['reference_iterations_to_stop'])} iterations x "
                    f"{sec(ie['reference_s_per_iteration'])} s = {n(ie['reference_s_to_stop'])} "
                    f"s, reaching RMSE {ie['reference_rmse_at_stop']:.4f}; ours "
                    f"{sec(ie['ours_s'])} s at RMSE {sci(ie['ours_rmse'])}: "
                    f"**{n(ie['speedup_to_reference_stop'])}x** ({n(lo_)}-{n(hi_)}x over "
                    f"{ie['rounds_timed']} rounds)"])
        lo_, hi_ = ie["speedup_at_our_rmse_range"]
        reached = ie["reference_reaches_our_rmse"]
        out.append(["image embedding vs the reference's gradient descent, at our RMSE",
                    (f"it reaches RMSE {sci(ie['reference_rmse_at_our_rmse'])} after "
                     f"{n(ie['reference_iterations_to_our_rmse'])} iterations = "
                     if reached else
                     f"it stalls at RMSE {sci(ie['reference_best_rmse'])} after "
                     f"{n(ie['reference_iterations_run'])} iterations = ")
                    + f"{n(ie['reference_s_to_our_rmse'])} s: "
                    f"**{n(ie['speedup_at_our_rmse'])}x** ({n(lo_)}-{n(hi_)}x)"])
    stages = sp.get("stages_s")
    if stages:
        c = sp["checkpoints"]
        out.append([f"space, other stages ({n(sp['probe_images'])} probe images, {c} "
                    "checkpoints)",
                    f"indirect embedding {sec(stages['indirect_embedding'])} s, projection "
                    f"{sec(stages[f'projection_{c}'])} s, UMAP fit {sec(stages['map_fit'])} s, "
                    f"transform {sec(stages[f'map_transform_{c}'])} s; whole space "
                    f"{sec(sp['whole_space_s'])} s ({sec(sp['whole_space_with_compile_s'])} s "
                    "with umap-learn's one-off compilation)"])
    aw = sp.get("activation_weighted")
    if aw:
        out.append(["activation-weighted projection (the default)",
                    f"image embedding of {n(sp['probe_images'])} images "
                    f"{sec(aw['image_embedding_s'])} s, projection "
                    f"{sec(aw['projection_per_checkpoint_s'])} s per checkpoint, "
                    f"{n(aw['stored_mb_per_checkpoint'])} MB stored per checkpoint"])

    ev = e2e.get("stages", {}).get("evaluation", {}).get("alignment")
    if ev:
        base = {k: v for k, v in ev.items() if k != "unified"}
        best = max(base, key=lambda k: base[k]["auc"])
        u = ev["unified"]
        out.append(["alignment study on the demo (ROC AUC, 95% CI)",
                    f"unified space {u['auc']:.3f} [{u['ci95'][0]:.3f}, {u['ci95'][1]:.3f}], "
                    f"best baseline ({best}) {base[best]['auc']:.3f} "
                    f"[{base[best]['ci95'][0]:.3f}, {base[best]['ci95'][1]:.3f}]"])

    sc = res.get("scaling", {})
    labels = {"probe_images": "time vs probe images", "checkpoints": "time vs checkpoints",
              "neurons_bookkeeping": "time vs neurons, stimulus bookkeeping",
              "neurons_space": "time vs base neurons, whole space"}
    for key, label in labels.items():
        if key in sc:
            r = sc[key]
            out.append([f"{label} ({', '.join(n(x) for x in r['sizes'])})",
                        ", ".join(sec(x) for x in r["seconds"])
                        + f" s: R^2 of a line {r['fit']['r2']:.3f}"])

    dist = res.get("distributed", {})
    if "stimuli_s" in dist:
        out.append([f"torchrun, {dist['processes']} gloo processes vs 1 process (all threads)",
                    f"{dist['stimuli_speedup_vs_1_process_all_threads']:.2f}x stimuli, "
                    f"{dist['importance_speedup_vs_1_process_all_threads']:.2f}x importance"])

    diag = res.get("diagnosis", {})
    if "expected_flag_raised" in diag:
        ok = sum(diag["expected_flag_raised"][r] and diag["no_other_flag"][r]
                 for r in diag["expected"])
        out.append(["diagnosis on the demo", f"{ok}/{len(diag['expected'])} regimes flagged "
                                             "as expected"])
    return out


# ---------------------------------------------------------------------------------- check
def table(body: list[list[str]]) -> str:
    lines = ["| figure | value |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in body]
    return "\n".join(lines)


def section(readme: str) -> tuple[int, int]:
    """Start and end offsets of the README's "## Performance" section."""
    start = readme.index("\n## Performance\n") + 1
    nxt = readme.find("\n## ", start + 5)
    return start, (nxt + 1 if nxt >= 0 else len(readme))


NUMBER = re.compile(r"(?<![\w.])[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")


def numbers(text: str) -> set[str]:
    """Number tokens of ``text`` (thousands separators removed)."""
    return {m.group(0).replace(",", "").lstrip("+") for m in NUMBER.finditer(text)}


def _prose(text: str) -> str:
    text = re.sub(r"`[^`]*`", " ", text)              # code spans
    text = re.sub(r"\]\([^)]*\)", "]", text)          # link targets
    return text


def check(readme_text: str, doc: dict) -> list[str]:
    """Problems found (empty: the README quotes run.json)."""
    problems = []
    want = rows(doc)
    stored = doc.get("readme")
    if stored != want:
        problems.append("run.json's readme block differs from the rows formatted from its "
                        "results (rerun benchmarks/run.py or --update)")
    start, end = section(readme_text)
    sec_text = readme_text[start:end]
    if BEGIN not in sec_text or END not in sec_text:
        return problems + ["the Performance section has no generated table (markers missing)"]
    got = sec_text[sec_text.index(BEGIN) + len(BEGIN):sec_text.index(END)].strip()
    if got != table(want):
        want_lines, got_lines = table(want).splitlines(), got.splitlines()
        for i in range(max(len(want_lines), len(got_lines))):
            a = want_lines[i] if i < len(want_lines) else "<missing>"
            b = got_lines[i] if i < len(got_lines) else "<missing>"
            if a != b:
                problems.append(f"table line {i + 1}: README has {b!r}, run.json gives {a!r}")
    allowed = (numbers(table(want)) | numbers(json.dumps(doc.get("meta", {})))
               | numbers(json.dumps(doc.get("ratios", {}))))
    outside = sec_text.replace(sec_text[sec_text.index(BEGIN):sec_text.index(END)], " ")
    stray = sorted(numbers(_prose(outside)) - allowed)
    if stray:
        problems.append(f"numbers in the Performance section that run.json does not hold: "
                        f"{', '.join(stray)}")
    return problems


def write(readme_path: Path, doc: dict) -> None:
    text = readme_path.read_text(encoding="utf-8")
    start, end = section(text)
    sec_text = text[start:end]
    new = f"{BEGIN}\n{table(rows(doc))}\n{END}"
    if BEGIN in sec_text and END in sec_text:
        a, b = sec_text.index(BEGIN), sec_text.index(END) + len(END)
        sec_text = sec_text[:a] + new + sec_text[b:]
    else:
        raise SystemExit("add the two markers to the Performance section first:\n"
                         f"{BEGIN}\n{END}")
    readme_path.write_text(text[:start] + sec_text + text[end:], encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-json", default=str(RUN_JSON))
    ap.add_argument("--readme", default=str(README))
    ap.add_argument("--write", action="store_true", help="rewrite the README's table")
    ap.add_argument("--print", action="store_true", help="print the rows")
    args = ap.parse_args(argv)
    doc = json.loads(Path(args.run_json).read_text(encoding="utf-8"))
    if args.print:
        print(table(rows(doc)))
        return 0
    if args.write:
        # the stored rows too (formatting only: the results are not touched)
        doc["readme"] = rows(doc)
        Path(args.run_json).write_text(json.dumps(doc, indent=2, default=str) + "\n",
                                       encoding="utf-8")
        write(Path(args.readme), doc)
    problems = check(Path(args.readme).read_text(encoding="utf-8"), doc)
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print(f"README's Performance section quotes {args.run_json}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
