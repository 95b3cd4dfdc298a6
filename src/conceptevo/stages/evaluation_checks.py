"""The evaluation's annotation-free checks (a) and (b), on a study's model: the space must
find every neuron of a channel-permuted copy of the base checkpoint at its original's place,
and must not move a neuron whose outgoing weights are rescaled to compensate
(:mod:`conceptevo.evaluate.invariance` builds the copies)."""

from __future__ import annotations

import numpy as np
from torch import nn

from ..data.probe import ProbeSet
from ..evaluate.invariance import (
    channel_flows,
    nearest_recovery,
    permuted_copy,
    rescaled_copy,
    rescaling_blocker,
    same_function,
)
from ..models.adapter import ModelAdapter
from ..progress import progress_bar
from ..runs import run_model
from ..space.image_embedding import ActivationWeights
from ..space.unified import BaseSpace, project_result
from ..stimuli import compute_stimuli
from .context import Context
from .stimuli import base_descriptor


def invariance_checks(ctx: Context, probe: ProbeSet, space: BaseSpace,
                      min_recovery: float = 0.99, max_shift: float = 1e-4) -> dict:
    """Both checks on the space's base checkpoint (or, for an external base model, the last
    checkpoint of the first run): ``{"checkpoint", "permuted_copy", "rescaled_copy"}``, each
    check with its figures and ``passed``, or ``skipped`` (why)."""
    cfg, ws, device = ctx.cfg, ctx.ws, ctx.device
    desc = base_descriptor(cfg)
    run = desc["run"] if desc["kind"] == "run" else cfg.runs[0].name
    rm = run_model(cfg, run, device)
    epoch = desc["epoch"] if desc["kind"] == "run" else rm.checkpoints[-1].epoch
    model = rm.load(epoch, cfg.trust_checkpoints)
    record = space.needs_activations

    def place(m: nn.Module, what: str):
        """(stimuli, positions as stored, positions from the unrounded activations)."""
        adapter = ModelAdapter(m, **cfg.model.adapter_options())
        with progress_bar(len(probe), f"invariance: {what}", "img") as bar:
            acc = compute_stimuli(
                adapter, probe.batches(cfg.stimuli.batch_size, device), len(probe),
                k_stimuli=cfg.stimuli.k_stimuli, k_responsive=cfg.stimuli.k_responsive,
                device=device, record_activations=record, spill_dir=ws.root,
                progress=bar.update)
        exact = acc.float_activations()
        result = acc.result()
        stored = project_result(result, space, str(device))
        if exact is None:  # (the stimuli projection: no rounding involved)
            return result, stored, stored
        e = np.asarray(space.image_embedding, dtype=np.float64)
        return result, stored, ActivationWeights(exact, space.temperature,
                                                 device=device).project(e)

    original, emb, emb_exact = place(model, f"{run} epoch {epoch}")
    out = {"checkpoint": {"run": run, "epoch": int(epoch)}}
    flows, why = channel_flows(model, [info.name for info in original.layers])
    x = probe.tensor(np.arange(min(len(probe), 64)), device)
    alive = ~original.dead
    offsets = {info.name: (info.offset, info.channels) for info in original.layers}
    spread_ = float(np.sqrt(((emb[alive] - emb[alive].mean(0)) ** 2).sum(1).mean()))

    def checked_copy(build, kind: str):
        """(copy, its channel mapping, entry): the entry holds the copy's logit difference,
        or why the check is skipped (copy None)."""
        blocker = why or (rescaling_blocker(model, flows) if kind == "rescaled" else None)
        if blocker is not None:
            return None, None, {"skipped": blocker}
        twin, mapping = build(model, flows, ctx.seed)
        diff = same_function(model, twin, x, cfg.model.output)
        if diff is None:
            return None, None, {"skipped": f"the {kind} copy does not compute the same logits "
                                           "(the layers are not a plain chain)"}
        return twin, mapping, {"logit_difference": diff}

    twin, perms, entry = checked_copy(permuted_copy, "permuted")
    if twin is not None:
        truth = np.arange(original.n_neurons)
        for name, perm in perms.items():
            start, n = offsets[name]
            truth[start:start + n] = start + perm
        _, twin_emb, _ = place(twin, "permuted copy")
        rows, hit = nearest_recovery(twin_emb, emb, truth, alive)
        per_layer = {}
        for info in original.layers:
            sel = (rows >= info.offset) & (rows < info.offset + info.channels)
            per_layer[info.name] = float(hit[sel].mean()) if sel.any() else None
        rate = float(hit.mean()) if hit.size else None
        entry.update(recovery=rate, n_neurons=int(hit.size), per_layer=per_layer,
                     threshold=min_recovery, passed=rate is not None and rate >= min_recovery)
    out["permuted_copy"] = entry

    twin, _, entry = checked_copy(rescaled_copy, "rescaled")
    if twin is not None:
        _, twin_stored, twin_exact = place(twin, "rescaled copy")

        def shift(a, b):
            d = np.linalg.norm(a[alive] - b[alive], axis=1) / max(spread_, 1e-30)
            return (float(d.max()), float(d.mean())) if d.size else (0.0, 0.0)

        worst, mean = shift(twin_exact, emb_exact)
        # max_shift_stored: the same through the activations as the workspace stores them
        # (float16, relative to each neuron's largest): rounding, not the method
        entry.update(max_shift=worst, mean_shift=mean,
                     max_shift_stored=shift(twin_stored, emb)[0], n_neurons=int(alive.sum()),
                     scale_range=[float(np.exp(-1)), float(np.exp(1))],
                     threshold=max_shift, passed=worst <= max_shift)
    out["rescaled_copy"] = entry
    return out
