"""Distributed execution: ``torchrun --nproc_per_node=2 -m conceptevo build`` (and
``importance``) on gloo writes exactly the workspace a single process writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyVGG, randomise, write_image_folder, write_study

from conceptevo import distributed
from conceptevo.evolution.importance import combine_sensitivity, importance, sensitivity_sums
from conceptevo.models.adapter import ModelAdapter
from conceptevo.stimuli import StimulusAccumulator, merge_shards

TESTS = Path(__file__).resolve().parent
IMPORTANCE = ["--run", "a", "--all-classes", "--from", "1", "--to", "2"]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", CONCEPTEVO_PROGRESS="0")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH")) if p)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _start(args: list[str], log: Path, torchrun: bool) -> tuple[subprocess.Popen, Path]:
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] \
        if torchrun else []
    cmd = [sys.executable, *launcher, "-m", "conceptevo", *args]
    out = open(log, "w")  # noqa: SIM115 (closed by _wait)
    # a session of its own, so that a timeout ends torchrun's workers too
    proc = subprocess.Popen(cmd, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    proc.log_file = out
    return proc, log


def _wait(started: list[tuple[subprocess.Popen, Path]], timeout: float = 240) -> list[str]:
    texts = []
    for proc, log in started:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.log_file.close()
        text = log.read_text()
        assert proc.returncode == 0, f"{proc.args} failed ({proc.returncode}):\n{text[-3000:]}"
        texts.append(text)
    return texts


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """One study built twice, by one process and by torchrun with 2 gloo processes (both
    commands run at once), then its importance computed both ways. The study stores only the
    base checkpoint's activations (``store_activations = false``): the base checkpoint's pass
    is shared out by blocks of images (and records its activations, merged on rank 0), then
    of the other three, two whole passes run one per process and one is shared out, each
    projected at its end (on the process that ran it, or on rank 0 after the merge)."""
    root = tmp_path_factory.mktemp("dist")
    images = write_image_folder(root / "images", per_class=7, size=20)  # 21: odd
    heldout = write_image_folder(root / "heldout", per_class=5, size=20, seed=1)
    ckpt = root / "ckpt"
    ckpt.mkdir()
    for epoch in range(4):  # the base (epoch 3) shared out, then 2 whole passes, 1 shared out
        torch.save(randomise(TinyVGG(), epoch).state_dict(), ckpt / f"epoch_{epoch}.pt")
    text = write_study(root, images, (ckpt / "epoch_{epoch}.pt").as_posix()).read_text()
    text = text.replace("[stimuli]", "[stimuli]\nstore_activations = false")
    text += f"""
[heldout]
root = "{heldout.as_posix()}"

[importance]
batch_size = 2
bins = 2
random_draws = 2

[space]
dim = 4
epochs = 5
umap_neighbors = 5
"""
    configs = {}
    for name in ("single", "dist"):
        configs[name] = root / f"{name}.toml"
        configs[name].write_text(text.replace((root / "ws").as_posix(),
                                              (root / f"ws_{name}").as_posix()))
    logs = {}
    started = [_start(["build", "--config", str(configs["single"])], root / "single.log", False),
               _start(["build", "--config", str(configs["dist"])], root / "dist.log", True)]
    logs["build"] = _wait(started)
    # `--` before the command: torchrun's parser (Python 3.11) would take --run for an
    # abbreviation of its --run-path
    started = [_start(["importance", "--config", str(configs["single"]), *IMPORTANCE],
                      root / "single_imp.log", False),
               _start(["--", "importance", "--config", str(configs["dist"]), *IMPORTANCE],
                      root / "dist_imp.log", True)]
    logs["importance"] = _wait(started)
    return root / "ws_single", root / "ws_dist", logs


def _files(root: Path, pattern: str) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.glob(pattern) if p.is_file())


def _assert_same_arrays(a: Path, b: Path) -> None:
    with np.load(a, allow_pickle=False) as x, np.load(b, allow_pickle=False) as y:
        assert sorted(x.files) == sorted(y.files), a
        for key in x.files:
            assert x[key].dtype == y[key].dtype, (a, key)
            assert np.array_equal(x[key], y[key], equal_nan=x[key].dtype.kind == "f"), (a, key)


def test_torchrun_build_writes_the_single_process_workspace(builds):
    single, dist, logs = builds
    for pattern in ("stimuli/**/*.npz", "space/**/*.npz", "probe/*"):
        names = _files(single, pattern)
        assert names and names == _files(dist, pattern), pattern
        for rel in names:
            if rel.suffix == ".npz":
                _assert_same_arrays(single / rel, dist / rel)  # meta (with its key) included
            elif rel.name != "meta.json":
                assert (single / rel).read_bytes() == (dist / rel).read_bytes(), rel
    for name in ("fidelity.json",):
        assert json.loads((single / "space" / name).read_text()) == \
            json.loads((dist / "space" / name).read_text())
    assert _files(single, "figures/*") == _files(dist, "figures/*")
    assert not list(dist.rglob("*.tmp-*"))
    for epoch, kept in ((0, "projected"), (2, "projected"), (3, "activations")):
        with np.load(dist / "stimuli" / "a" / f"epoch_{epoch:04d}.npz") as f:
            assert kept in f.files and {"projected", "activations"} - {kept} - set(f.files)
    # one voice: rank 0 logs the world size and prints the summary once
    text = logs["build"][1]
    assert "distributed: 2 processes (torchrun, backend gloo)" in text
    assert "stimuli for 1 checkpoint(s) on cpu, 2 processes (gloo)" in text  # the base
    assert "stimuli for 3 checkpoint(s) on cpu, 2 processes (gloo)" in text
    assert text.count("workspace: ") == 1 and text.count("probe set: decoding") == 1


def test_torchrun_importance_is_the_single_process_importance(builds):
    single, dist, logs = builds
    names = _files(single, "importance/**/*.npz")
    assert len(names) == 3 and names == _files(dist, "importance/**/*.npz")
    for rel in names:
        _assert_same_arrays(single / rel, dist / rel)
    single_text, dist_text = logs["importance"]
    table = [line for line in single_text.splitlines() if line.startswith("  ")]
    assert table and all(line in dist_text for line in table)


def test_merge_shards_is_exact_with_ties_and_uneven_shards():
    """Shards of whole batches, merged, give the single pass's accumulator bit for bit."""
    from conceptevo.models.adapter import LayerInfo

    layers = [LayerInfo("a", "Conv2d", 7, 0, (3, 3)), LayerInfo("b", "Conv2d", 5, 7, (2, 2))]
    n, bs = 23, 4
    g = torch.Generator().manual_seed(0)
    # magnitudes over 30 decades: float64 sums of these depend on the order of addition
    acts = torch.randn(n, 12, generator=g) * 10.0 ** torch.randint(-15, 15, (n, 12), generator=g)
    acts[:, 3] = 1.0  # a neuron whose every image ties
    acts[::2, 5] = acts[1, 5]  # many ties at the top
    acts = acts.float()
    where = torch.randint(0, 4, (n, 12), generator=g)

    def run(ids: np.ndarray, record: bool) -> StimulusAccumulator:
        acc = StimulusAccumulator(layers, n, 6, 4, record_batches=record)
        for s in range(0, len(ids), bs):
            chunk = torch.from_numpy(ids[s:s + bs])
            acc.update(acts[chunk].clone(), where[chunk], chunk)
        return acc

    single_acc = run(np.arange(n), False)
    single = single_acc.result()
    batches = -(-n // bs)
    for world in (2, 3, 7, 8):  # 8 ranks for 6 batches: two shards are empty
        parts = []
        for rank in range(world):
            block = distributed.Context(rank, world).shard(batches)
            ids = np.arange(block.start * bs, min(block.stop * bs, n))
            parts.append(run(ids, True) if len(ids) else None)
        merged_acc = merge_shards(parts)
        # the float64 sums themselves, not only the float32 means stored from them
        assert torch.equal(single_acc.act_sum, merged_acc.act_sum), world
        merged = merged_acc.result()
        for name in merged.ARRAYS:
            assert np.array_equal(getattr(single, name), getattr(merged, name)), (world, name)


def test_shards_cover_the_range_in_order():
    for n in (0, 1, 5, 21):
        for world in (1, 2, 3, 8):
            blocks = [distributed.Context(r, world).shard(n) for r in range(world)]
            assert [i for b in blocks for i in b] == list(range(n))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_single_process_context_is_a_no_op():
    ctx = distributed.current()
    assert not ctx.enabled and ctx.is_main and ctx.world_size == 1
    assert ctx.gather(3) == [3] and ctx.all_gather(3) == [3] and ctx.broadcast(3) == 3
    assert ctx.shard(5) == range(5)
    with ctx.main_first():
        ctx.barrier()
    with distributed.session("cpu") as inner:  # no torchrun here: no process group
        assert inner is ctx
    assert str(distributed.device_for("cpu")) == "cpu"


def test_sharded_sensitivity_sums_combine_to_the_importance():
    m_t, m_t2 = randomise(TinyVGG(), 1).eval(), randomise(TinyVGG(), 2).eval()
    x = torch.randn(9, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    batches = [(x[s:s + 2], np.arange(s, min(s + 2, 9))) for s in range(0, 9, 2)]
    a_t, a_t2 = ModelAdapter(m_t), ModelAdapter(m_t2)
    ref = importance(a_t, a_t2, batches, 1)
    parts = [sensitivity_sums(a_t, a_t2, batches[:3], 1),
             sensitivity_sums(a_t, a_t2, batches[3:], 1)]
    got = combine_sensitivity(a_t.layers_, [b for p in parts for b in p])
    for name in ("score", "mean_sensitivity", "rank", "image_ids"):
        assert np.array_equal(getattr(ref, name), getattr(got, name)), name


def test_commands_that_do_not_share_their_work_refuse_torchrun(monkeypatch, tmp_path, capsys):
    from conceptevo.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(["diagnose", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "does not run under torchrun" in err and "build, stimuli, importance" in err
    assert not distributed.is_main_process()
    monkeypatch.setenv("RANK", "x")
    assert main(["diagnose", str(tmp_path)]) == 2
    assert "RANK='x' is not an integer" in capsys.readouterr().err
