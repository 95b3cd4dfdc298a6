"""The evaluation's comparison of the importance ranking with simple rankers, on the stored
importance: every ranker's channels of each bin reverted to the earlier epoch, the drop of
class accuracy per bin (:mod:`conceptevo.evaluate.rankers` tabulates it)."""

from __future__ import annotations

import logging

import numpy as np

from ..evaluate.rankers import ranker_table, stored_drops
from ..evolution.importance import ReversionPlan, reversion_counts
from ..evolution.rankers import image_ranker_scores, ranker_ranks, ranker_sets, weight_change
from ..models.checkpoints import find_checkpoints
from ..progress import progress_bar
from ..workspace.artifacts import load_importance, stored_importance
from .context import Context
from .importance import class_batches, open_pair

log = logging.getLogger("conceptevo")


def compare_rankers(ctx: Context, max_classes: int | None = None) -> dict | None:
    """The ranker table over the stored importance (None when there is none); up to
    ``max_classes`` classes per (run, epoch pair), default ``[evaluation] ranker_classes``."""
    cfg, ws, device = ctx.cfg, ctx.ws, ctx.device
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
                base, stored = stored_drops(rev, a_t.layers_, bins)
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
