"""The importance stage: which concept evolutions of a run matter for a class, verified by
reversion, stored in ``importance/<run>/c<class>/from_<t>_to_<t2>.npz`` (read back with
:func:`conceptevo.workspace.artifacts.load_importance`).

Each file holds, for one run, class and epoch pair: the importance score, mean sensitivity
and within-layer rank of every neuron, the class images used, and the reversion table (one
row per reverted set and split: layer, set, split, top-1, top-5).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from .. import distributed
from ..config import StudyConfig
from ..data.classes import check_class_order, class_order_message
from ..data.probe import ProbeSet
from ..errors import CheckpointError, ConfigError, NonFiniteActivationError
from ..evolution.importance import (
    ReversionPlan,
    combine_sensitivity,
    reversion_counts,
    sensitivity_sums,
)
from ..models.adapter import ModelAdapter
from ..models.checkpoints import Checkpoint, find_checkpoints
from ..progress import progress_bar
from ..runs import pass_is_current, probe_classes, run_model, stimuli_key
from ..workspace import Workspace
from ..workspace.artifacts import (  # noqa: F401 (part of this stage's API)
    SPLITS,
    Reversion,
    importance_path,
    load_importance,
    save_importance,
    stored_importance,
)
from .context import Context, cache_key, first_image, open_model, up_to_date

log = logging.getLogger("conceptevo")


# ------------------------------------------------------------------------ resolution
def resolve_class(probe: ProbeSet, value: str | int) -> int:
    """A class index from a name or an index (a string of digits is an index only when it is
    not also a class name)."""
    classes = list(probe.classes)
    text = str(value)
    if text in classes:
        return classes.index(text)
    if text.lstrip("-").isdigit():
        index = int(text)
        if 0 <= index < len(classes):
            return index
        raise ConfigError(f"class index {index} is out of range: the probe set has "
                          f"{len(classes)} classes (0..{len(classes) - 1})")
    import difflib

    close = difflib.get_close_matches(text, classes, n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else \
        f"; classes: {', '.join(classes[:12])}{' ...' if len(classes) > 12 else ''}"
    raise ConfigError(f"no class {text!r} in the probe set{hint}")


def resolve_pair(checkpoints: list[Checkpoint], run: str, t: int | None, t2: int | None
                 ) -> tuple[int, int]:
    """The epoch pair: both given, or one of them with its neighbour, or the last two."""
    epochs = [c.epoch for c in checkpoints]
    for e in (t, t2):
        if e is not None and e not in epochs:
            raise CheckpointError(f"run {run!r} has no checkpoint for epoch {e}; its epochs "
                                  f"are {epochs}")
    if len(epochs) < 2:
        raise CheckpointError(f"run {run!r} has a single checkpoint (epoch {epochs[0]}); "
                              "importance compares two epochs")
    if t is None and t2 is None:
        t, t2 = epochs[-2], epochs[-1]
    elif t2 is None:
        i = epochs.index(t)
        if i + 1 >= len(epochs):
            raise ConfigError(f"epoch {t} is the last of run {run!r}; give --to")
        t2 = epochs[i + 1]
    elif t is None:
        i = epochs.index(t2)
        if i == 0:
            raise ConfigError(f"epoch {t2} is the first of run {run!r}; give --from")
        t = epochs[i - 1]
    if t == t2:
        raise ConfigError(f"--from and --to are both epoch {t}; importance compares two "
                          "different epochs")
    return t, t2


def class_images(probe: ProbeSet, class_index: int, limit: int | None, seed: int,
                 what: str) -> np.ndarray:
    ids = probe.class_ids(class_index)
    if ids.size == 0:
        raise ConfigError(f"class {probe.classes[class_index]!r} has no image in the {what} "
                          "set; add some or choose another class")
    if limit is not None and ids.size > limit:
        rng = np.random.default_rng([seed, class_index])
        ids = np.sort(rng.choice(ids, limit, replace=False))
    return ids


def check_class_order_for(ctx: Context, probe: ProbeSet, run: str, epoch: int | None = None,
                          per_class: int = 20) -> dict | None:
    """The probe accuracy of ``run``'s checkpoint ``epoch`` (default its last), logged, with a
    warning when it is near chance or the class order probably differs from the model's
    output order (:func:`conceptevo.data.classes.check_class_order`). The predictions come
    from the checkpoint's stored stimulus pass when it is up to date, else from a forward pass
    over up to ``per_class`` probe images of each class."""
    cfg, ws, device = ctx.cfg, ctx.ws, ctx.device
    rm = run_model(cfg, run, device)
    ckpt = rm.checkpoints[-1] if epoch is None else \
        next((c for c in rm.checkpoints if c.epoch == epoch), rm.checkpoints[-1])
    meta = ws.stimuli_meta(run, ckpt.epoch)
    labels, predicted = probe.labels, None
    if pass_is_current(meta, stimuli_key(cfg, probe, rm, ckpt)):
        predicted = ws.load_stimuli(run, ckpt.epoch).predicted
    if predicted is None or len(predicted) != len(probe):
        rng = np.random.default_rng(ctx.seed)
        ids = np.sort(np.concatenate([
            rng.permutation(probe.class_ids(c))[:per_class] for c in range(len(probe.classes))]))
        rm.load(ckpt.epoch, cfg.trust_checkpoints)
        parts = []
        with torch.no_grad():
            for x, _ in probe.batches(cfg.stimuli.batch_size, device, ids=ids):
                logits = rm.adapter.logits(x.contiguous(memory_format=torch.channels_last))
                top = logits.argmax(1)
                top[~torch.isfinite(logits).all(1)] = -1
                parts.append(top.cpu().numpy())
        labels, predicted = probe.labels[ids], np.concatenate(parts)
    check = check_class_order(labels, predicted, probe.classes)
    if check is None:
        return None
    what = f"run {run!r} epoch {ckpt.epoch}"
    log.info("%s: probe accuracy %.1f%% (chance %.1f%%, %d images)", what,
             100 * check.accuracy, 100 * check.chance, check.n_images)
    message = class_order_message(check, what, probe_classes(cfg)[1])
    if message:
        log.warning("warning: %s", message)
    return {"run": run, "epoch": ckpt.epoch, **check.to_dict(), "message": message}


# ------------------------------------------------------------------------------ stage
def _key(cfg: StudyConfig, ckpts: dict[int, Checkpoint], t: int, t2: int, class_index: int,
         train_ids: np.ndarray, probe: ProbeSet, heldout: ProbeSet | None) -> str:
    files = [(str(ckpts[e].path.resolve()), ckpts[e].path.stat().st_size,
              ckpts[e].path.stat().st_mtime_ns) for e in (t, t2)]
    ic = cfg.importance
    return cache_key(files=files, ids=train_ids.tolist(), probe=probe.info.get("fingerprint"),
                     heldout=heldout.info.get("fingerprint") if heldout else None,
                     bins=ic.bins, draws=ic.random_draws, seed=cfg.seed,
                     # the default ranking leaves the key (and stored results) as before
                     **({} if ic.ranking == "fraction" else {"ranking": ic.ranking}),
                     **{"class": class_index}, **cfg.model.neuron_key())


def open_pair(cfg: StudyConfig, arch: str, kwargs: dict,
              checkpoints: tuple[Checkpoint, Checkpoint], probe: ProbeSet, device
              ) -> tuple[ModelAdapter, ModelAdapter]:
    """The adapters of M^t and M^t' (``checkpoints``): each model built, its checkpoint loaded
    (``weights_only`` unless the study trusts its checkpoints), channels-last in eval mode on
    ``device``, and described on the first probe image."""
    example = first_image(probe, device)
    a_t, a_t2 = (open_model(cfg, arch, kwargs, ckpt.path, device, example=example)
                 for ckpt in checkpoints)
    return a_t, a_t2


def ensure_importance(ctx: Context, probe: ProbeSet, heldout: ProbeSet | None, run: str,
                      classes: list[int], pairs: list[tuple[int | None, int | None]]
                      ) -> list[dict]:
    """Importance and reversion of ``run`` for every class of ``classes`` and epoch pair of
    ``pairs`` (either end may be None: see :func:`resolve_pair`); returns one summary per
    (class, pair).

    Under torchrun the classes are shared out (:func:`_importance_pair`): whole classes, one
    per process, then the images of the last classes in blocks of whole batches, whose
    per-batch sensitivity sums are added in batch order on every process (the result is the
    single process's, bit for bit, and every process needs it for the reversion plan) and
    whose reversion hit counts are summed on rank 0. Rank 0 writes.
    """
    cfg, ws, device = ctx.cfg, ctx.ws, ctx.device
    world = distributed.current()
    rc = cfg.run(run)
    arch, kwargs = cfg.arch_of(rc)
    ckpts = {c.epoch: c for c in find_checkpoints(cfg.resolve(rc.checkpoints), run)}
    resolved = [resolve_pair(list(ckpts.values()), run, t, t2) for t, t2 in pairs]
    ic = cfg.importance
    if heldout is None:
        log.warning("no [heldout] set in the config: reversion is measured on the probe "
                    "(training) images only")
    if world.enabled:
        log.info("importance of run %s: classes and their images shared out among %s", run,
                 world.describe())
    stored = []  # (class, t, t2) of every summary, in the order they are returned
    for t, t2 in resolved:
        a_t, a_t2 = open_pair(cfg, arch, kwargs, (ckpts[t], ckpts[t2]), probe, device)
        beyond = ", ".join(probe.classes[c] for c in classes if c >= a_t.n_outputs)
        if beyond:
            raise ConfigError(
                f"the probe set has {len(probe.classes)} classes but {arch} (run {run!r}) has "
                f"{a_t.n_outputs} outputs: class(es) {beyond} have no logit. Check [model] "
                "kwargs (num_classes) and [probe] classes")
        items = {}
        for c in classes:
            train_ids = class_images(probe, c, ic.images, cfg.seed, "probe")
            held_ids = class_images(heldout, c, ic.images, cfg.seed, "held-out") \
                if heldout is not None else None
            key = _key(cfg, ckpts, t, t2, c, train_ids, probe, heldout)
            items[c] = (c, train_ids, held_ids, key, importance_path(ws, run, c, t, t2))
        # the classes to compute: rank 0's list, on every process
        todo_classes = world.broadcast([c for c, (*_, key, path) in items.items()
                                        if not up_to_date(ws, path, key)])
        todo = [items[c] for c in todo_classes]
        stored += [(c, t, t2) for c in classes if c not in todo_classes]
        if not todo:
            continue
        try:
            stored += _importance_pair(ctx, probe, heldout, run, t, t2, a_t, a_t2, todo,
                                       world)
        except NonFiniteActivationError as e:
            raise NonFiniteActivationError(f"run {run!r}, epochs {t} -> {t2}: {e}") from None
    world.barrier()  # rank 0 has written every file: every process can read them
    return [_summary(ws, run, c, t, t2, probe) for c, t, t2 in stored]


def _importance_pair(ctx: Context, probe: ProbeSet, heldout: ProbeSet | None, run: str,
                     t: int, t2: int, a_t: ModelAdapter, a_t2: ModelAdapter, todo: list,
                     world: distributed.Context) -> list[tuple[int, int, int]]:
    """Compute and (rank 0) store the importance of ``todo`` [(class, train ids, held-out
    ids, key, path)] for one epoch pair, shared out among the processes of ``ctx``: whole
    classes, one per process, while at least one per process is left; then the class images
    of the last ones, in blocks of whole batches. Returns (class, t, t2) of each, in order."""
    cfg, ws, device = ctx.cfg, ctx.ws, ctx.device
    ic = cfg.importance
    stored: list[tuple[int, int, int]] = []
    if a_t.layers_ is None:  # a process may get no image: describe the layers anyway
        x = next(class_batches(probe, todo[0][1][:1], 1, device))[0]
        a_t.describe(x)
        a_t2.describe(x)
    w = world.world_size
    whole = len(todo) - len(todo) % w

    def my_ids(ids: np.ndarray | None) -> np.ndarray | None:
        if ids is None:
            return None
        block = world.shard(-(-len(ids) // ic.batch_size))
        return ids[block.start * ic.batch_size:block.stop * ic.batch_size]

    def size(tr, h) -> int:
        return len(tr) * 2 + (len(h) if h is not None else 0)

    n_img = sum(size(*todo[i + world.rank][1:3]) for i in range(0, whole, w)) + \
        sum(size(my_ids(tr), my_ids(h)) for _, tr, h, _, _ in todo[whole:])

    def one_class(c, train_ids, held_ids, gather_sums, gather_counts, bar):
        """The importance and reversion rows of class c over these images; the gather
        functions combine the shares of the processes (identity for a whole class)."""
        sums = sensitivity_sums(a_t, a_t2, class_batches(probe, train_ids, ic.batch_size,
                                                    device), c, device, bar.update)
        # every process's batches, in batch order (the blocks are contiguous)
        result = combine_sensitivity(a_t.layers_,
                                     [b for part in gather_sums(sums) for b in part],
                                     ic.ranking)
        plan = ReversionPlan.build(result, ic.bins, ic.random_draws, seed=cfg.seed + c)
        rows = []
        for split, source, ids in (("train", probe, train_ids),
                                   ("heldout", heldout, held_ids)):
            if source is None:
                continue
            counts = reversion_counts(a_t, a_t2, plan,
                                      class_batches(source, ids, ic.batch_size, device), c,
                                      device, progress=bar.update)
            parts = gather_counts(counts)
            if parts is None:  # not rank 0
                continue
            n = sum(p[2] for p in parts)
            top1 = sum(p[0] for p in parts) / max(n, 1)
            top5 = sum(p[1] for p in parts) / max(n, 1)
            for (layer, name, _), h1, h5 in zip(plan.rows, top1, top5):
                rows.append((layer, _set_label(name), split, h1, h5))
        return result, rows

    def save(item, result, rows) -> None:
        c, train_ids, held_ids, key, _ = item
        stored.append((c, t, t2))
        if not world.is_main:
            return
        meta = {"key": key, "run": run, "class": c, "class_name": probe.classes[c],
                "from_epoch": t, "to_epoch": t2, "ranking": ic.ranking,
                "n_train": int(len(train_ids)),
                "n_heldout": int(len(held_ids)) if held_ids is not None else 0}
        layer, sets, splits, top1, top5 = (np.array(col) for col in zip(*rows))
        save_importance(ws, run, c, t, t2, result, Reversion(layer, sets, splits, top1, top5),
                        meta)

    def alone(x):
        return [x]

    with progress_bar(n_img, f"importance {run} {t}->{t2}", "img") as bar:
        for start in range(0, whole, w):
            c, train_ids, held_ids, _, _ = todo[start + world.rank]
            out = one_class(c, train_ids, held_ids, alone, alone, bar)
            for item, (result, rows) in zip(todo[start:start + w],
                                            world.gather(out) or [(None, None)] * w):
                save(item, result, rows)
        for item in todo[whole:]:
            c, train_ids, held_ids, _, _ = item
            save(item, *one_class(c, my_ids(train_ids), my_ids(held_ids),
                                  world.all_gather, world.gather, bar))
    return stored


def _set_label(name: str) -> str:
    return "random" if name.startswith("random") else name


def class_batches(probe: ProbeSet, ids: np.ndarray, batch_size: int, device):
    """(images channels-last on ``device``, ids) of the probe images ``ids``, in batches."""
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        yield probe.tensor(chunk, device).contiguous(memory_format=torch.channels_last), chunk


def _summary(ws: Workspace, run: str, c: int, t: int, t2: int, probe: ProbeSet) -> dict:
    result, rev = load_importance(ws, run, c, t, t2)
    return {"run": run, "class": c, "class_name": probe.classes[c], "from": t, "to": t2,
            "train": rev.summary("train"), "heldout": rev.summary("heldout"),
            "result": result, "reversion": rev}


#: a random reversion drop at or below this is no drop: the mean of accuracy drops that
#: cancel out leaves float rounding (1e-19), far below the smallest real drop (one image of
#: one draw of one class: 1 / (images x draws x classes), about 1e-5 at most sizes)
NO_DROP = 1e-9


def reversion_ratio(top: float, random: float) -> float | None:
    """Top-bin drop / random drop; None when random reverts did not hurt (a drop of zero or
    below, up to rounding: :data:`NO_DROP`): such a ratio says nothing."""
    return float(top / random) if random > NO_DROP else None


def verification_table(summaries: list[dict], split: str = "train") -> tuple[str, dict]:
    """Mean top-1 drops over classes, per epoch pair: the demo's and the CLI's summary."""
    by_pair: dict[tuple[int, int], list[dict]] = {}
    for s in summaries:
        if s[split]:
            by_pair.setdefault((s["from"], s["to"]), []).append(s[split])
    lines = [f"reversion check ({split} images): mean drop of class top-1 accuracy when "
             "reverting one layer's channels to the earlier epoch",
             f"{'epochs':>10} {'classes':>8} {'accuracy':>9} {'top bin':>8} {'other bins':>11} "
             f"{'random':>14} {'ratio':>6}"]
    figures = {}
    for (t, t2), rows in sorted(by_pair.items()):
        acc = np.mean([r["accuracy"] for r in rows])
        top = np.mean([r["top_bin_drop"] for r in rows])
        other = np.nanmean([r["other_bins_drop"] for r in rows])
        rand = np.mean([r["random_drop"] for r in rows])
        spread = np.mean([r["random_drop_std"] for r in rows])
        # a ratio to a random drop of zero or below (random reverts did not hurt) says nothing
        ratio = reversion_ratio(top, rand)
        figures[f"{t}->{t2}"] = {"top_bin_drop": float(top), "random_drop": float(rand),
                                 "ratio": ratio, "accuracy": float(acc)}
        ratio_text = f"{ratio:>6.1f}" if ratio is not None else f"{'n/a':>6}"
        lines.append(f"{f'{t}->{t2}':>10} {len(rows):>8} {acc:>9.1%} {top:>8.1%} {other:>11.1%} "
                     f"{rand:>7.1%} +-{spread:>4.1%} {ratio_text}")
    return "\n".join(lines), figures
