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


def measure(n: int = 5120, n_write: int = 2048, image_size: int = 64, repeats: int = 3
            ) -> dict:
    """Images per second of ``generate`` (best of ``repeats``) and of ``write_image_folder``."""
    world = ConceptWorld(image_size=image_size, seed=0)
    world.generate(world.chunk_size)                        # warm up caches and imports
    seconds = []
    for repeat in range(repeats):
        start = time.perf_counter()
        world.generate(n, split="train", start=repeat * n)
        seconds.append(time.perf_counter() - start)
    best = min(seconds)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        world.write_image_folder(os.path.join(tmp, "concept-world"), n_write)
        elapsed = time.perf_counter() - start
        size = sum(os.path.getsize(os.path.join(d, f))
                   for d, _, files in os.walk(tmp) for f in files)
        start = time.perf_counter()
        world.write_image_folder(os.path.join(tmp, "concept-world"), n_write)
        rerun = time.perf_counter() - start
    return {"image_size": image_size, "n_generate": n, "repeats": repeats,
            "generate_best_s": round(best, 3),
            "generate_images_per_s": round(n / best, 1),
            "generate_median_images_per_s": round(n / float(np.median(seconds)), 1),
            "n_write": n_write, "write_s": round(elapsed, 3),
            "write_images_per_s": round(n_write / elapsed, 1),
            "write_mib_on_disk": round(size / 2**20, 2),
            "rerun_complete_tree_ms": round(1000 * rerun, 1)}


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5120, help="images per generation run")
    parser.add_argument("--n-write", type=int, default=2048, help="images written to disk")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    r = measure(args.n, args.n_write, args.image_size, args.repeats)
    print(f"numpy {np.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.image_size}x{args.image_size}")
    print(f"generate:           {r['generate_images_per_s']:8.0f} images/s "
          f"(best of {args.repeats}: {args.n} images in {r['generate_best_s']:.2f} s; "
          f"median {r['generate_median_images_per_s']:.0f} images/s)")
    print(f"write_image_folder: {r['write_images_per_s']:8.0f} images/s "
          f"({args.n_write} images in {r['write_s']:.2f} s, {r['write_mib_on_disk']:.1f} MiB "
          f"on disk; re-run on the complete tree {r['rerun_complete_tree_ms']:.1f} ms)")
    return r


if __name__ == "__main__":
    main()
