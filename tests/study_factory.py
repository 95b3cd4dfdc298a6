"""Small studies and workspaces for the reliability tests (not a test module).

* :func:`tiny_study`: images, TinyVGG checkpoints and a study config whose ``conceptevo build``
  takes seconds (a tiny probe set, a 4-d space trained for 3 epochs);
* :func:`served_workspace`: a workspace the dashboard can serve, written directly (no space
  training, no UMAP), whose projections hold a version number in every value so that a reader
  can tell one complete version from a mix (:func:`write_version`).
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from conftest import TinyVGG, randomise, write_image_folder, write_study

from conceptevo.data.probe import load_image_folder
from conceptevo.models.adapter import ModelAdapter
from conceptevo.patches import cached_receptive_fields
from conceptevo.stimuli import compute_stimuli
from conceptevo.workspace import Workspace

SPACE = """
[space]
dim = 4
epochs = 3
umap_neighbors = 5
"""
EPOCHS = (0, 1)
PAD = 64 * 1024  # float32 values per projection file besides the real arrays (256 KB)


def tiny_study(root: Path, n_checkpoints: int = 4, workspaces: tuple[str, ...] = ("study",)
               ) -> list[Path]:
    """Images and checkpoints under ``root``, and one config per name in ``workspaces``
    (``root/<name>/study.toml``, workspace ``root/<name>/ws``) all reading them."""
    images = write_image_folder(root / "images")
    ckpt = root / "ckpt"
    ckpt.mkdir()
    for epoch in range(n_checkpoints):
        torch.save(randomise(TinyVGG(), epoch).state_dict(), ckpt / f"epoch_{epoch}.pt")
    configs = []
    for name in workspaces:
        (root / name).mkdir()
        path = write_study(root / name, images, (ckpt / "epoch_{epoch}.pt").as_posix())
        path.write_text(path.read_text() + SPACE)
        configs.append(path)
    return configs


def stimuli_of(probe, seed: int, run: str = "a", epoch: int = 0):
    model = randomise(TinyVGG(), seed).eval()
    return compute_stimuli(ModelAdapter(model), probe.batches(8), len(probe), k_stimuli=4,
                           k_responsive=5).result({"run": run, "epoch": epoch,
                                                   "key": f"seed-{seed}"})


def served_workspace(root: Path, arch: str = "conftest:build_tiny_vgg",
                     store_fields: bool = True) -> Workspace:
    """Run ``a`` with epochs 0 and 1 (TinyVGG weights of seeds 0 and 1), projections at
    version 0, a map, and a study.json naming ``arch``; with ``store_fields``, the receptive
    fields that ``conceptevo build`` stores."""
    probe = load_image_folder(write_image_folder(root.parent / f"{root.name}-images"), 16,
                              mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    ws = Workspace(root, create=True)
    ws.save_probe(probe)
    ws.save_study({"runs": [{"name": "a", "checkpoints": "ckpt"}],
                   "model": {"arch": arch, "kwargs": {}}})
    for epoch in EPOCHS:
        ws.save_stimuli("a", epoch, stimuli_of(probe, epoch, epoch=epoch))
    n = ws.load_stimuli("a", 0).n_neurons
    ws.save_arrays(ws.space_path("map.npz"), {"key": "map"},
                   coords=np.zeros((n, 2), dtype=np.float32))
    write_version(ws, 0)
    if store_fields:
        cached_receptive_fields(ws, arch, {}, None, (16, 16), allow_code=True)
    return ws


def write_version(ws: Workspace, version: int) -> None:
    """Every projection of run ``a`` rewritten with ``version`` in all of its values."""
    n = ws.load_stimuli("a", 0).n_neurons
    for epoch in EPOCHS:
        v = np.float32(version)
        ws.save_arrays(ws.projection_path("a", epoch), {"key": f"v{version}", "version": version},
                       embedding=np.full((n, 4), v), coords=np.full((n, 2), v),
                       dead=np.zeros(n, dtype=bool), pad=np.full(PAD, v))


def check_version(arrays: dict) -> int:
    """The version of a projection read back; fails unless every value holds the same one."""
    v = arrays["pad"][0]
    for name in ("embedding", "coords", "pad"):
        assert (arrays[name] == v).all(), f"{name} mixes versions"
    return int(v)


@contextmanager
def running(root: Path, **options):
    """The uvicorn server exactly as ``serve(root, **options)`` configures it, in a thread on
    a free port of ``options["host"]`` (127.0.0.1): yields (port, captured uvicorn options)."""
    import uvicorn

    from conceptevo.serve.app import serve

    captured = {}
    with mock.patch.object(uvicorn, "run", lambda app, **kw: captured.update(kw, app=app)):
        serve(root, port=0, **options)
    app = captured.pop("app")
    sock = socket.socket(socket.AF_INET)
    sock.bind((captured["host"], 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, **{k: v for k, v in captured.items()
                                    if k not in ("host", "port")})
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.02)
        yield port, captured
    finally:
        server.should_exit = True
        thread.join(30)
