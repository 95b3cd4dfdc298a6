"""Importance against simple rankers, on the stored importance of a study.

For each stored (run, epoch pair) and up to ``[evaluation] ranker_classes`` of its classes,
the neurons are ranked by each ranker of :mod:`conceptevo.evolution.rankers` on the class
images the importance was computed on, and each layer's bins of each ranking are reverted to
the earlier checkpoint (the importance stage's plan). Ours and random come from the stored
reversion of those images. The table: per ranker and layer, the mean top-1 drop of every bin
(over the classes and pairs), the share of (class, pair) cases whose bins are monotone, and
how often our top bin hurts more than the ranker's.
"""

from __future__ import annotations

import logging

import numpy as np

from ..config import StudyConfig
from ..evolution.importance import ReversionPlan, reversion_counts
from ..evolution.rankers import (
    TITLES,
    bin_profile,
    image_ranker_scores,
    ranker_ranks,
    ranker_sets,
    weight_change,
)
from ..progress import progress_bar
from ..workspace import Workspace

log = logging.getLogger("conceptevo")


def _stored_drops(rev, layers, bins: int) -> tuple[float, dict[str, np.ndarray]]:
    """The stored train-split reversion: base accuracy, and per layer name ours' drops per
    bin [bins] and the random draws' mean drop."""
    sel = rev.split == "train"
    base = float(rev.top1[sel & (rev.set == "none")][0])
    ours, rand = {}, {}
    for li, info in enumerate(layers):
        at = sel & (rev.layer == li)
        ours[info.name] = np.array([base - float(rev.top1[at & (rev.set == str(b))][0])
                                    for b in range(bins)])
        r = rev.top1[at & (rev.set == "random")]
        rand[info.name] = np.array([base - float(r.mean())]) if r.size else np.array([np.nan])
    return base, {"ours": ours, "random": rand}


def compare_rankers(cfg: StudyConfig, ws: Workspace, max_classes: int | None = None
                    ) -> dict | None:
    """The ranker table over the stored importance (None when there is none)."""
    from ..evolution.stage import class_batches, load_importance, open_pair, stored_importance
    from ..models.checkpoints import find_checkpoints
    from ..runs import resolve_device

    limit = cfg.evaluation.ranker_classes if max_classes is None else max_classes
    if limit == 0:
        return None
    # each stored importance file, read once: (run, t, t2) -> [(class, result, reversion)]
    groups: dict[tuple[str, int, int], list] = {}
    for run, c, t, t2 in stored_importance(ws):
        group = groups.setdefault((run, t, t2), [])
        if len(group) < limit:
            group.append((c, *load_importance(ws, run, c, t, t2)))
    if not groups:
        return None
    probe = ws.load_probe()
    device = resolve_device(cfg.device)
    ic = cfg.importance
    cases = []  # one per (run, class, pair): per ranker, per layer, drops per bin
    skipped: dict[str, str] = {}
    layer_names: list[str] = []
    n_img = sum(len(result.image_ids) for group in groups.values() for _, result, _ in group)
    with progress_bar(n_img, "evaluation: importance vs simple rankers", "img") as bar:
        for (run, t, t2), group in groups.items():
            rc = cfg.run(run)
            arch, kwargs = cfg.arch_of(rc)
            ckpts = {c.epoch: c for c in find_checkpoints(cfg.resolve(rc.checkpoints), run)}
            if t not in ckpts or t2 not in ckpts:
                log.warning("importance of run %s %d->%d: its checkpoints are gone; left out "
                            "of the ranker comparison", run, t, t2)
                continue
            a_t, a_t2 = open_pair(cfg, arch, kwargs, (ckpts[t], ckpts[t2]), probe, device)
            weights, why = weight_change(a_t, a_t2)
            skipped.update({f"weight on {k}": v for k, v in why.items()})
            layer_names = [li.name for li in a_t.layers_]
            for c, result, rev in group:
                ids = result.image_ids

                def batches(ids=ids):
                    return class_batches(probe, ids, ic.batch_size, device)

                scores = image_ranker_scores(a_t, a_t2, batches(), c, device)
                # ours is the stored ranking; its other score is the first simple ranker
                ranking = result.meta.get("ranking", "fraction")
                other = {"magnitude": result.mean_sensitivity} if ranking == "fraction" \
                    else {"fraction": result.score}
                scores = {**other, "change": scores["change"],
                          "weight": weights, "taylor": scores["taylor"],
                          "activation": scores["activation"]}
                # as many bins as the stored reversion has (the config may have changed since)
                bins = len({str(s) for s in rev.set if str(s).isdigit()})
                sets = ranker_sets(a_t.layers_, ranker_ranks(a_t.layers_, scores), bins)
                plan = ReversionPlan([(-1, "none", np.zeros(0, dtype=np.int64))]
                                     + [(li, f"{name}:{b}", ch) for li, name, b, ch in sets])
                hits1, _, n = reversion_counts(a_t, a_t2, plan, batches(), c, device)
                bar.update(len(ids))
                top1 = hits1 / max(n, 1)
                base, stored = _stored_drops(rev, a_t.layers_, bins)
                drops = {name: {} for name in scores}
                for (li, name, b, _), acc in zip(sets, top1[1:]):
                    drops[name].setdefault(layer_names[li], np.zeros(bins))[b] = \
                        top1[0] - acc
                cases.append({"run": run, "class": c, "from": t, "to": t2,
                              "ranking": ranking,
                              "accuracy": float(top1[0]),
                              "base_matches_stored": bool(abs(top1[0] - base) < 1e-12),
                              "drops": {"ours": stored["ours"], **drops,
                                        "random": stored["random"]}})
    if not cases:
        return None
    return ranker_table(cases, layer_names, bins, skipped)


def ranker_table(cases: list[dict], layer_names: list[str], bins: int,
                 skipped: dict[str, str]) -> dict:
    """Aggregate the cases: per ranker and layer, the mean drop per bin, the monotone share,
    and (against ours) the share of cases whose top bin hurts less than ours."""
    simple = list(dict.fromkeys(name for case in cases for name in case["drops"]
                                if name not in ("ours", "random")))
    order = ["ours", *simple, "random"]
    rankings = sorted({case.get("ranking", "fraction") for case in cases})
    rankers = {}
    for name in order:
        per_layer = {}
        for layer in layer_names:
            rows = [case["drops"][name][layer] for case in cases
                    if layer in case["drops"].get(name, {})]
            if not rows:
                continue
            rows = np.stack(rows)
            entry = {"bin_drops": rows.mean(0).tolist(), "top_bin_drop": float(rows[:, 0].mean()),
                     "n": len(rows)}
            if name != "random":
                entry["monotone_share"] = float(np.mean([bin_profile(r) for r in rows]))
                ours = np.stack([case["drops"]["ours"][layer] for case in cases
                                 if layer in case["drops"].get(name, {})])
                # how often our most important bin hurts more than this ranker's (ties: half)
                entry["ours_top_bin_higher"] = float(np.mean(
                    (ours[:, 0] > rows[:, 0]) + 0.5 * (ours[:, 0] == rows[:, 0])))
            per_layer[layer] = entry
        if not per_layer:
            continue
        monotone = [v["monotone_share"] for v in per_layer.values() if "monotone_share" in v]
        title = TITLES[name] if name != "ours" or rankings == ["fraction"] else \
            TITLES["ours_mean"] if rankings == ["mean"] else "The stored ranking (ours)"
        rankers[name] = {
            "title": title, "per_layer": per_layer,
            "top_bin_drop": float(np.mean([v["top_bin_drop"] for v in per_layer.values()])),
            "monotone_share": float(np.mean(monotone)) if monotone else None}
    return {"order": [n for n in order if n in rankers], "ranking": rankings,
            "layers": layer_names, "bins": bins,
            "n_cases": len(cases), "rankers": rankers, "skipped": skipped,
            "cases": [{k: v for k, v in case.items() if k != "drops"} for case in cases],
            "split": "train"}


def rankers_text(table: dict | None) -> list[str]:
    """The lines `conceptevo evaluate` prints for the ranker table."""
    if not table:
        return ["importance vs simple rankers: skipped (no stored importance: run "
                "`conceptevo importance` first)"]
    lines = [f"importance vs simple rankers ({table['n_cases']} class x epoch-pair cases, "
             f"{table['split']} images): mean top-1 drop of the most important bin, and the "
             "share of cases with monotone bins"]
    head = f"  {'ranker':<52}" + "".join(f"{name[-12:]:>14}" for name in table["layers"])
    lines.append(head + f"{'monotone':>10}")
    for name in table["order"]:
        r = table["rankers"][name]
        cells = "".join(f"{r['per_layer'][layer]['top_bin_drop']:>14.1%}"
                        if layer in r["per_layer"] else f"{'-':>14}"
                        for layer in table["layers"])
        mono = f"{r['monotone_share']:>10.0%}" if r["monotone_share"] is not None \
            else f"{'':>10}"
        lines.append(f"  {r['title'][:52]:<52}{cells}{mono}")
    for what, why in table["skipped"].items():
        lines.append(f"  skipped {what}: {why}")
    return lines
