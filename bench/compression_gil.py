"""zstd beside a Python-heavy engine thread: per-row tasks against one call per batch, on the same cores.

    python bench/compression_gil.py [--seconds 5] [--repeats 3] [--size 32]

The engine thread (``common.launching_engine``) runs PyTorch's eager forward of EfficientNet-Lite0
(random weights) on tiny images with one torch thread, so it spends its time launching operators
from Python, as it does next to a GPU. Beside it a writer thread compresses batches of 128 float16 maps shaped and
as sparse as pretrained Lite0's (16×12×1280, ~6% non-zero) on an array pool of one thread, so
the two threads have a core each and compete for the GIL only. Three ways, alternated so that
drift cancels:
  none     the writer idle: the engine thread alone
  per-row  each row a task of its own on the pool (featurebank.array_pool.zstd_frames_row_by_row), as featurebank
           compressed before 2026-11-28 and still does where zstandard lacks the batch call
  batch    featurebank.array_pool.zstd_frames: the batch in one multi_compress_to_buffer call
and prints the engine thread's forwards/s and the writer's compressed batches/s (medians), each
against the engine thread alone and against per-row.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable

import numpy as np
from common import alternated_medians, launching_engine

from featurebank import array_pool

MODES = ("none", "per-row", "batch")


def sparse_maps(rows: int = 128, shape: tuple[int, ...] = (16, 12, 1280), nonzero: float = 0.06) -> np.ndarray:
    rng = np.random.default_rng(0)
    values = np.maximum(rng.standard_normal((rows, *shape)), 0) * (rng.random((rows, *shape)) < nonzero)
    return np.ascontiguousarray(values.astype(np.float16).reshape(rows, -1))


def one_run(mode: str, engine: Callable[[float], float], maps: np.ndarray, seconds: float) -> dict:
    stop, batches = threading.Event(), [0]
    compress = {"per-row": array_pool.zstd_frames_row_by_row, "batch": array_pool.zstd_frames}.get(mode)

    def writer() -> None:
        while compress is not None and not stop.is_set():
            compress(maps)
            batches[0] += 1

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    started = time.perf_counter()
    forwards_per_s = engine(seconds)
    compressed = batches[0] / (time.perf_counter() - started)
    stop.set()
    thread.join()
    return {"forwards_per_s": forwards_per_s, "batches_per_s": compressed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=32, help="image side: small, so launching dominates the forward")
    parser.add_argument("--threads", type=int, default=1, help="compression threads (1: a core each, no CPU contention on 2 cores)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    array_pool.configure_array_pool(args.threads)
    engine = launching_engine(args.size)
    maps = sparse_maps()
    assert [bytes(f) for f in array_pool.zstd_frames(maps)] == array_pool.zstd_frames_row_by_row(maps)  # the same frames
    figures, runs = alternated_medians(MODES, args.repeats, lambda mode: one_run(mode, engine, maps, args.seconds))
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
