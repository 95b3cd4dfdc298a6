"""Distributed execution on PyTorch's own engine: ``torchrun`` and ``torch.distributed``.

``torchrun --nproc_per_node=N -m conceptevo build --config study.toml`` (also ``importance``
and ``stimuli``) starts N copies of the command. Each one finds its place in the environment
torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``),
computes its share of the work and sends its partial results to rank 0, which merges them
exactly and alone writes the workspace (docs/scaling.md). Without torchrun, or with a world
of one process, nothing here does anything: a single process behaves as it always did.

The pipeline talks to one object, the process's :class:`Context` (:func:`current`):

* ``ctx.shard(n)``: the contiguous block of ``range(n)`` this rank handles;
* ``ctx.gather(obj)`` / ``ctx.all_gather(obj)`` / ``ctx.broadcast(obj)``: picklable objects,
  listed in rank order;
* ``ctx.barrier()``, and ``with ctx.main_first():`` (rank 0 runs the block, then the others:
  for a step that writes what the others then read);

and :func:`session` sets it up from the environment and tears it down. Algorithm modules do
not import this one: the pipeline gives them their shard and merges what they return.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

log = logging.getLogger("conceptevo")

#: Seconds a rank waits for the others (e.g. at the barrier while rank 0 builds the space)
#: before torch.distributed gives up; override with CONCEPTEVO_DIST_TIMEOUT.
DEFAULT_TIMEOUT_S = 6 * 3600


def env_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the environment torchrun sets; (0, 1, 0) when it
    is not set."""

    def get(name: str, default: int) -> int:
        value = os.environ.get(name, "")
        try:
            return int(value) if value.strip() else default
        except ValueError:
            raise RuntimeError(f"environment variable {name}={value!r} is not an integer; "
                               "is this process started by torchrun?") from None

    world = get("WORLD_SIZE", 1)
    rank = get("RANK", 0)
    local = get("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise RuntimeError(f"inconsistent torchrun environment: RANK={rank}, "
                           f"WORLD_SIZE={world}")
    return rank, world, local


@dataclass
class Context:
    """Where this process stands: its rank among ``world_size`` processes.

    The default (rank 0 of 1) is a single process: every method is then a no-op or the
    identity, so the pipeline calls them unconditionally.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    _group: object = field(default=None, repr=False)  # the gloo group of object collectives

    @property
    def enabled(self) -> bool:
        """True when there are several processes."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes the workspace."""
        return self.rank == 0

    def shard(self, n: int, rank: int | None = None) -> range:
        """The contiguous block of ``range(n)`` of ``rank`` (default: this one). Blocks differ
        in size by at most one; the first ranks get the larger ones."""
        r = self.rank if rank is None else rank
        w = self.world_size
        return range(-(-n * r // w), -(-n * (r + 1) // w))

    # ---------------------------------------------------------------- collectives
    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier(group=self._group)

    def gather(self, obj) -> list | None:
        """Every rank's ``obj`` (picklable), in rank order, on rank 0; None elsewhere."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0, group=self._group)
        return out

    def all_gather(self, obj) -> list:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self._group)
        return out

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (what the others pass is ignored)."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self._group)
        return box[0]

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block while the others wait; then the others run it. For a step
        that writes the workspace when its result is missing and reads it otherwise: rank 0
        writes it, the others find it written."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def describe(self) -> str:
        if not self.enabled:
            return "1 process"
        return f"{self.world_size} processes ({self.backend})"


_current = Context()


def current() -> Context:
    """This process's context (a single process unless inside :func:`session`)."""
    return _current


def is_main_process() -> bool:
    """True unless this is a non-zero rank of torchrun (read from the environment, so it is
    right before :func:`session` too: the progress bars ask it)."""
    if _current.enabled:
        return _current.is_main
    try:
        return env_world()[0] == 0
    except RuntimeError:
        return True


def _timeout() -> timedelta:
    text = os.environ.get("CONCEPTEVO_DIST_TIMEOUT", "")
    try:
        seconds = float(text) if text.strip() else DEFAULT_TIMEOUT_S
    except ValueError:
        raise RuntimeError(f"CONCEPTEVO_DIST_TIMEOUT={text!r} is not a number of seconds"
                           ) from None
    return timedelta(seconds=seconds)


@contextmanager
def session(device: str = "auto") -> Iterator[Context]:
    """Join the process group torchrun describes in the environment, for the duration of the
    block; a plain single process gets a context of one and no process group.

    ``device`` is the study's device setting: on CUDA (``"auto"`` with a GPU, or ``"cuda"``)
    the backend is NCCL and each rank uses ``cuda:LOCAL_RANK``; otherwise gloo. Objects
    (partial results) always travel over a gloo group, since they are CPU data.
    """
    global _current
    rank, world, local = env_world()
    if world == 1 or _current.enabled:
        yield _current
        return
    import torch
    import torch.distributed as dist

    use_cuda = device != "cpu" and torch.cuda.is_available() and \
        torch.device(device if device != "auto" else "cuda").type == "cuda"
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend, timeout=_timeout())
    level = log.level
    try:
        group = dist.new_group(backend="gloo", timeout=_timeout()) if backend == "nccl" \
            else None
        _current = Context(rank, world, local, backend, group)
        if rank != 0:  # one voice: the other ranks only report problems
            log.setLevel(max(log.getEffectiveLevel(), logging.WARNING))
        log.info("distributed: %d processes (torchrun, backend %s%s); rank 0 writes the "
                 "workspace", world, backend, ", one GPU per process" if use_cuda else "")
        yield _current
        _current.barrier()
    finally:
        _current = Context()
        log.setLevel(level)
        dist.destroy_process_group()


def device_for(device):
    """The device of this rank: a CUDA device without an index becomes ``cuda:LOCAL_RANK``
    inside a distributed session; anything else is returned unchanged."""
    import torch

    device = torch.device(device)
    if _current.enabled and device.type == "cuda" and device.index is None:
        return torch.device("cuda", _current.local_rank)
    return device
