"""Throughput of the concept world: in-memory generation and the ImageFolder writer.

Run on one core (numpy's element-wise work is single-threaded; the variables below also keep
BLAS and OpenMP pools, if any, to one thread):

    .venv/bin/python benchmarks/bench_concept_world.py
    .venv/bin/python benchmarks/bench_concept_world.py --n 20000 --image-size 96

Prints images per second for ``ConceptWorld.generate`` (best of ``--repeats`` runs) and for
``ConceptWorld.write_image_folder`` (PNG encoding, atomic renames and the compressed
annotation file included) into a temporary directory.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import platform
import tempfile
import time

import numpy as np

from conceptevo.data.concept_world import ConceptWorld


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5120, help="images per generation run")
    parser.add_argument("--n-write", type=int, default=2048, help="images written to disk")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    world = ConceptWorld(image_size=args.image_size, seed=0)
    world.generate(world.chunk_size)                        # warm up caches and imports
    seconds = []
    for repeat in range(args.repeats):
        start = time.perf_counter()
        world.generate(args.n, split="train", start=repeat * args.n)
        seconds.append(time.perf_counter() - start)
    best = min(seconds)
    print(f"numpy {np.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.image_size}x{args.image_size}")
    print(f"generate:           {args.n / best:8.0f} images/s "
          f"(best of {args.repeats}: {args.n} images in {best:.2f} s; "
          f"median {args.n / np.median(seconds):.0f} images/s)")

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        world.write_image_folder(os.path.join(tmp, "concept-world"), args.n_write)
        elapsed = time.perf_counter() - start
        size = sum(os.path.getsize(os.path.join(d, f))
                   for d, _, files in os.walk(tmp) for f in files)
        start = time.perf_counter()
        world.write_image_folder(os.path.join(tmp, "concept-world"), args.n_write)
        rerun = time.perf_counter() - start
    print(f"write_image_folder: {args.n_write / elapsed:8.0f} images/s "
          f"({args.n_write} images in {elapsed:.2f} s, {size / 2**20:.1f} MiB on disk; "
          f"re-run on the complete tree {1000 * rerun:.1f} ms)")


if __name__ == "__main__":
    main()
