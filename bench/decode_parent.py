"""What the engine's process spends per image that decoding processes decode: the parent's CPU ms per image.

    python bench/decode_parent.py [--images 2000] [--workers 1] [--batch-size 128] [--repeats 3] [--chunks 32]

On an H200 with 16 cores, decoding alone topped out at ~3,600-4,000 img/s with 8 processes and with
15 alike (BENCHMARKS.md, "The GPU stage"): the parent, which then took loky's results and copied each
image out of the shared ring into its batch, was the limit there, and it did that work on the thread
that feeds the device. Batches are now views of the ring and tasks carry up to 32 files; this
measures what is left on any machine: the parent process's CPU time (all its threads: the caller's
and loky's) over the images decoded, with the workers' own CPU not counted. Lower is better; the
wall img/s is printed too (on 2 cores the decoders, not the parent, bound it). ``--chunks 8,16,32``
runs each repeat at each cap on the files per task (decoding.PROCESS_CHUNK), in turn: the parent's
cost per task is the slope of its cost per image against 1/files per task.
"""

from __future__ import annotations

import argparse
import time

from common import TRASHNET

from featurebank import decoding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--source", default=str(TRASHNET))
    parser.add_argument("--chunks", default=str(decoding.PROCESS_CHUNK), help="files per task, at most: N[,N...]")
    args = parser.parse_args()
    from pathlib import Path

    photos = sorted(Path(args.source).rglob("*.jpg"))
    files = [photos[i % len(photos)] for i in range(args.images)]
    for _ in range(args.repeats):
        for chunk in [int(c) for c in args.chunks.split(",")]:
            decoding.PROCESS_CHUNK = chunk
            cpu, wall = time.process_time(), time.perf_counter()
            count = sum(len(batch) for batch, _ in decoding.decoded_batches(
                files, lambda p: p, (512, 384), batch_size=args.batch_size, workers=args.workers,
                decoder="processes", priority="normal"))
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            print(f"{count} images, {args.workers} decoding processes, up to {chunk} files a task: parent CPU "
                  f"{1000 * cpu / count:.3f} ms per image, {count / wall:.0f} img/s wall")


if __name__ == "__main__":
    main()
