"""What the engine's process spends per image that decoding processes decode: the parent's CPU ms per image.

    python bench/decode_parent.py [--images 2000] [--workers 1] [--batch-size 128] [--repeats 3]

On an H200 with 16 cores, decoding alone topped out at ~3,600-4,000 img/s with 8 processes and with
15 alike (BENCHMARKS.md, "The GPU stage"): the parent, which takes loky's results and copies each
image out of the shared ring into its batch, is the limit there, and it does that work on the thread
that feeds the device. This measures that cost on any machine: the parent process's CPU time (all its
threads: the caller's and loky's) over the images decoded, with the workers' own CPU not counted.
Lower is better; the wall img/s is printed too (on 2 cores the decoders, not the parent, bound it).
It also times the part of that cost no engine change can avoid while the parent copies: one image
copied out of a ring in /dev/shm into a batch, indexing the ring as a np.memmap and as a plain ndarray.
"""

from __future__ import annotations

import argparse
import time

from common import TRASHNET

from featurebank.decoding import decoded_batches


def ring_copy_us(batch_size: int, copies: int = 1536) -> dict[str, float]:
    """µs to copy one 512×384 image from a shared-memory ring of 3 batches into a batch, by the ring's type."""
    import os
    import tempfile

    import numpy as np

    shape = (3 * batch_size, 512, 384, 3)
    handle, path = tempfile.mkstemp(dir="/dev/shm")
    try:
        os.ftruncate(handle, int(np.prod(shape)))
        os.close(handle)
        ring = np.memmap(path, np.uint8, mode="r+", shape=shape)
        ring[:] = 1  # every page mapped, as after the decoders' first lap
        batch = np.zeros((batch_size, *shape[1:]), np.uint8)
        figures = {}
        for name, source in (("memmap", ring), ("ndarray", ring.view(np.ndarray))):
            started = time.perf_counter()
            for i in range(copies):
                batch[i % batch_size] = source[i % len(source)]
            figures[name] = 1e6 * (time.perf_counter() - started) / copies
        del ring, source
        return figures
    finally:
        os.unlink(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--source", default=str(TRASHNET))
    args = parser.parse_args()
    from pathlib import Path

    photos = sorted(Path(args.source).rglob("*.jpg"))
    files = [photos[i % len(photos)] for i in range(args.images)]
    for _ in range(args.repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        count = sum(len(batch) for batch, _ in decoded_batches(files, lambda p: p, (512, 384),
                                                               batch_size=args.batch_size, workers=args.workers,
                                                               decoder="processes", priority="normal"))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        print(f"{count} images, {args.workers} decoding processes: parent CPU {1000 * cpu / count:.3f} ms per image, "
              f"{count / wall:.0f} img/s wall")
    copy = ring_copy_us(args.batch_size)
    print(f"one image out of the ring into a batch: {copy['memmap']:.1f} µs indexing a np.memmap, "
          f"{copy['ndarray']:.1f} µs a plain ndarray")


if __name__ == "__main__":
    main()
