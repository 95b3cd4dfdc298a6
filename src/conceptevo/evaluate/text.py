"""What ``conceptevo evaluate`` prints: the text of an evaluation report (the JSON that
:func:`conceptevo.stages.evaluation.run_evaluation` writes), its headline and figures."""

from __future__ import annotations

from .invariance import checks_text
from .rankers import rankers_text


def headline(alignment: dict) -> str:
    """Ours and the best baseline, as mean [min, max over seeds] of the AUC, and whether ours
    wins with disjoint 95% intervals on every seed."""
    methods = alignment["methods"]
    ours = methods["unified"]
    if ours["mean"] is None:
        return f"unified space AUC undefined: {ours.get('undefined', 'undefined')}"
    n = len(alignment["seeds"])
    defined = [m for m in methods if m != "unified" and methods[m]["mean"] is not None]
    text = f"unified space AUC {spread_text(ours)}"
    if defined:
        b = max(defined, key=lambda m: methods[m]["mean"])
        text += f"; best baseline: {methods[b]['title']} {spread_text(methods[b])}"
    won = sum(alignment["beats_on_seed"])
    if alignment["beats_all_baselines"]:
        verdict = (f"ours beats every baseline with non-overlapping 95% intervals on every "
                   f"seed ({n})")
    else:
        lost = [methods[m]["title"] for m, w in alignment["wins"].items() if w < n]
        verdict = (f"ours does not beat every baseline with non-overlapping 95% intervals on "
                   f"every seed (on {won} of {n}; not on every seed against "
                   f"{', '.join(lost)})")
    return f"{text}; {verdict}"


def spread_text(result: dict) -> str:
    """"0.912 (0.905-0.920 over 3 seeds)", or the AUC alone for one seed."""
    aucs = [s["auc"] for s in result["per_seed"] if s["auc"] is not None]
    if len(result["per_seed"]) == 1:
        return auc_text(result)
    lo, hi = result["spread"]
    return f"{result['mean']:.3f} ({lo:.3f}-{hi:.3f} over {len(aucs)} seeds)"


def auc_text(result: dict) -> str:
    """"0.912 [0.901, 0.923]", or "n/a (why)" for an undefined AUC."""
    if result["auc"] is None:
        return f"n/a ({result.get('undefined', 'undefined')})"
    lo, hi = result["ci95"]
    return f"{result['auc']:.3f} [{lo:.3f}, {hi:.3f}]"


def evaluation_text(report: dict) -> str:
    """The figures as a table (the CLI's and the demo's output)."""
    lines = [f"skipped: {why}" for why in report.get("skipped") or []]
    if report["alignment"]:
        lines += _alignment_lines(report["alignment"], report["settings"],
                                  "concept alignment study", "same concept label")
        lab = report["labels"]
        lines.append(f"concept labels: {lab['n_labelled']} of {lab['n_pool']} alive neurons "
                     f"labelled (IoU >= {report['settings']['min_iou']})")
    classes = report.get("classes")
    if classes:
        share = report["settings"].get("class_share", 0.5)
        lines += _alignment_lines(classes, report["settings"], "class-level alignment study",
                                  f"same class holding >= {share:.0%} of both neurons' stimuli")
        lines.append(f"class-level study: unified space above chance on "
                     f"{classes['above_chance_on_seeds']} of {classes['n_seeds']} seeds: "
                     f"{'PASS' if classes['passed'] else 'FAIL'}")
    checks = report.get("checks") or {}
    if "permuted_copy" in checks:
        lines += checks_text(checks)
    agreement = checks.get("agreement") or {}
    if "per_layer" in agreement:
        lines.append(agreement_text(agreement))
    fid = report["faithfulness"]["fidelity"]
    sp = fid["spread"]
    lines.append(f"fidelity over {len(fid['seeds'])} seeds: top-1 {sp['top1'][0]:.1%}-"
                 f"{sp['top1'][1]:.1%}, top-10 {sp['top10'][0]:.1%}-{sp['top10'][1]:.1%}, "
                 f"mean cosine {sp['mean_cosine'][0]:.3f}-{sp['mean_cosine'][1]:.3f}")
    for r in report["faithfulness"]["reversion"]:
        ratio = f"{r['ratio']:.1f}" if r.get("ratio") is not None else "n/a"
        pc = r.get("ratio_per_class")
        extra = f" (per class {pc['mean']:.1f} +- {pc['std']:.1f})" if pc else ""
        lines.append(f"reversion {r['run']} {r['from']}->{r['to']}: top bin "
                     f"{r['top_bin_drop']:.1%} vs random {r['random_drop']:.1%}, ratio "
                     f"{ratio}{extra}")
    if report["faithfulness"].get("rankers"):
        lines += rankers_text(report["faithfulness"]["rankers"])
    lines.append(report["headline"])
    return "\n".join(lines)


def agreement_text(agreement: dict) -> str:
    per = agreement["per_layer"]
    cells = ", ".join(f"{name} {v['agreement']:.0%} (chance {v['chance']:.0%})"
                      for name, v in per.items())
    return (f"agreement with one-to-one correlation matching (nearest neighbour in the space "
            f"is the Hungarian match, {len(agreement['pairs'])} checkpoint pairs): {cells}: "
            f"{'PASS' if agreement['passed'] else 'FAIL'} (above chance on every layer, "
            f"p < {agreement['alpha']})")


def _alignment_lines(a: dict, settings: dict, title: str, positive: str) -> list[str]:
    n_seeds = len(a["seeds"])
    lines = [f"{title}: {a['methods']['unified']['n_queries']} query neurons over "
             f"{a['n_checkpoints']} checkpoints, {settings['neighbours']} nearest neighbours "
             f"from other checkpoints + 1 random neuron each; positive = {positive}; "
             f"{n_seeds} seed(s) of the space",
             f"{'method':<50} {'AUC':>6} {'95% CI':>16}" + ("   over seeds" if n_seeds > 1
                                                            else "")]
    for m in a["order"]:
        r = a["methods"][m]
        if r["auc"] is None:
            lines.append(f"{r['title']:<50} {'n/a':>6} ({r['undefined']})")
            continue
        line = f"{r['title']:<50} {r['auc']:>6.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"
        if n_seeds > 1 and r["spread"]:
            line += f"   {r['mean']:.3f} ({r['spread'][0]:.3f}-{r['spread'][1]:.3f})"
            if m != "unified":
                line += f", ours won {a['wins'][m]}/{n_seeds}"
        lines.append(line)
    return lines
