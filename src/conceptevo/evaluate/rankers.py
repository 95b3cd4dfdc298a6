"""Importance against simple rankers, on the stored importance of a study: the table.

:func:`conceptevo.stages.evaluation_rankers.compare_rankers` measures it: for each stored
(run, epoch pair) and up to ``[evaluation] ranker_classes`` of its classes, the neurons are
ranked by each ranker of :mod:`conceptevo.evolution.rankers` on the class images the
importance was computed on, and each layer's bins of each ranking are reverted to the
earlier checkpoint (the importance stage's plan). Ours and random come from the stored
reversion of those images. The table: per ranker and layer, the mean top-1 drop of every bin
(over the classes and pairs), the share of (class, pair) cases whose bins are monotone, and
how often our top bin hurts more than the ranker's.
"""

from __future__ import annotations

import logging

import numpy as np

from ..evolution.rankers import TITLES, bin_profile

log = logging.getLogger("conceptevo")


def stored_drops(rev, layers, bins: int) -> tuple[float, dict[str, np.ndarray]]:
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
