"""zstd beside a Python-heavy engine thread: per-row tasks against one call per batch, on the same cores.

    python bench/compression_gil.py [--seconds 5] [--repeats 3] [--size 32]

The engine thread runs PyTorch's eager forward of EfficientNet-Lite0 (random weights) on tiny
images with one torch thread, so it spends its time launching operators from Python, as it does
next to a GPU. Beside it a writer thread compresses batches of 128 float16 maps shaped and
as sparse as pretrained Lite0's (16×12×1280, ~6% non-zero) on an array pool of one thread, so
the two threads have a core each and compete for the GIL only. Three ways, alternated so that
drift cancels:
  none     the writer idle: the engine thread alone
  per-row  each row a task of its own on the pool (featurebank.cache.zstd_frames_row_by_row), as featurebank
           compressed before 2026-11-28 and still does where zstandard lacks the batch call
  batch    featurebank.cache.zstd_frames: the batch in one multi_compress_to_buffer call
and prints the engine thread's forwards/s and the writer's compressed batches/s (medians), each
against the engine thread alone and against per-row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import numpy as np

from featurebank import cache
from featurebank.backbones import get_backbone
from featurebank.embed import Embedder

MODES = ("none", "per-row", "batch")


def sparse_maps(rows: int = 128, shape: tuple[int, ...] = (16, 12, 1280), nonzero: float = 0.06) -> np.ndarray:
    rng = np.random.default_rng(0)
    values = np.maximum(rng.standard_normal((rows, *shape)), 0) * (rng.random((rows, *shape)) < nonzero)
    return np.ascontiguousarray(values.astype(np.float16).reshape(rows, -1))


def one_run(mode: str, embed: Embedder, pixels: np.ndarray, maps: np.ndarray, seconds: float) -> dict:
    stop, batches = threading.Event(), [0]
    compress = {"per-row": cache.zstd_frames_row_by_row, "batch": cache.zstd_frames}.get(mode)

    def writer() -> None:
        while not stop.is_set():
            if compress is None:
                time.sleep(0.01)
                continue
            compress(maps)
            batches[0] += 1

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    started, forwards = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        embed(pixels)
        forwards += 1
    elapsed = time.perf_counter() - started
    stop.set()
    thread.join()
    return {"forwards_per_s": forwards / elapsed, "batches_per_s": batches[0] / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=32, help="image side: small, so launching dominates the forward")
    parser.add_argument("--threads", type=int, default=1, help="compression threads (1: a core each, no CPU contention on 2 cores)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    cache.configure_array_pool(args.threads)
    embed = Embedder(get_backbone("efficientnet-lite0").build("none", (args.size, args.size), 4), dtype="float16")
    pixels = np.zeros((4, args.size, args.size, 3), np.uint8)
    maps = sparse_maps()
    assert [bytes(f) for f in cache.zstd_frames(maps)] == cache.zstd_frames_row_by_row(maps)  # the same frames
    embed(pixels)
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for _ in range(args.repeats):
        for mode in MODES:
            runs[mode].append(one_run(mode, embed, pixels, maps, args.seconds))
    figures = {mode: {key: statistics.median(r[key] for r in results) for key in results[0]}
               for mode, results in runs.items()}
    alone = figures["none"]["forwards_per_s"]
    for mode in MODES:
        f = figures[mode]
        print(f"{mode:8s} engine thread {f['forwards_per_s']:6.1f} forwards/s ({f['forwards_per_s'] / alone:.2f} of "
              f"alone), writer {f['batches_per_s']:5.1f} batches/s")
    row, batch = figures["per-row"], figures["batch"]
    print(f"batch against per-row: engine thread ×{batch['forwards_per_s'] / row['forwards_per_s']:.2f}, "
          f"writer ×{batch['batches_per_s'] / row['batches_per_s']:.2f}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"medians": figures, "runs": runs}, out, indent=2)


if __name__ == "__main__":
    main()
