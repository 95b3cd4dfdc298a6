"""``[stimuli] amp``: the stimulus pass's forward under autocast (bfloat16 on the CPU) ranks
and stores float32 activations close to the float32 pass, and is part of the pass's key."""

from __future__ import annotations

import numpy as np
import torch
from conftest import TinyVGG, randomise, write_study

from conceptevo.config import load_config
from conceptevo.models.adapter import ModelAdapter
from conceptevo.stimuli import amp_dtype, compute_stimuli


def test_a_mixed_precision_pass_is_close_to_the_float32_one():
    torch.manual_seed(0)
    adapter = ModelAdapter(randomise(TinyVGG(width=16), 0))
    x = torch.randn(96, 3, 16, 16)

    def batches():
        for s in range(0, 96, 32):
            yield x[s:s + 32], torch.arange(s, s + 32)

    full = compute_stimuli(adapter, batches(), 96, k_stimuli=8, k_responsive=5).result()
    mixed = compute_stimuli(adapter, batches(), 96, k_stimuli=8, k_responsive=5,
                            amp=True).result()
    assert amp_dtype(torch.device("cpu")) == torch.bfloat16
    assert mixed.stimuli_act.dtype == np.float32
    shared = (full.stimuli[:, :, None] == mixed.stimuli[:, None, :]).any(2).mean()
    assert shared > 0.8
    span = np.abs(full.act_max).max()
    assert np.abs(full.act_max - mixed.act_max).max() < 0.05 * span
    assert not np.array_equal(full.stimuli_act, mixed.stimuli_act)  # it did run in bfloat16


def test_amp_is_part_of_the_stimuli_key(tmp_path, image_folder, vgg_checkpoints):
    from conceptevo.runs import run_model, stimuli_key

    cfg_path = write_study(tmp_path, image_folder, str(vgg_checkpoints / "epoch_{epoch}.pt"))
    plain = load_config(cfg_path)
    cfg_path.write_text(cfg_path.read_text().replace("[stimuli]", "[stimuli]\namp = true"))
    amp = load_config(cfg_path)

    class Probe:  # what the key reads of the probe set
        info = {"fingerprint": "p"}

    rm = run_model(plain, "a", "cpu")
    ckpt = rm.checkpoints[0]
    assert stimuli_key(plain, Probe(), rm, ckpt) != stimuli_key(amp, Probe(), rm, ckpt)
