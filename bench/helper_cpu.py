"""CPU time per image of extraction's helpers, which on a small CPU is taken from the backbone.

    python bench/helper_cpu.py [--data DIR] [--images 160] [--shape 16,12,2048] [--shards 4]

Measures, on this machine and the featurebank it imports (run it with PYTHONPATH pointing at
another checkout to compare versions):

- decode: ``load_image`` on the photos of DIR (TrashNet by default) at the shape's input size;
- write: ``ShardWriter`` storing float16 maps of the given shape (a ResNet50 map at 512x384 by
  default), batch 16, shard 256, uncompressed and with zstd: the first shard (fresh memory) and
  the later ones (steady state) separately, user and system CPU each.

CPU time, not wall time, because on 2 cores every helper CPU second is a second the backbone's
threads do not get; it is also far steadier than wall time on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from common import TRASHNET

from featurebank.array_pool import configure_array_pool
from featurebank.cache import ShardWriter
from featurebank.images import load_image
from featurebank.scan import scan_folder

BATCH, SHARD = 16, 256


def cpu_seconds() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def per_image(before: tuple[float, float], count: int) -> dict:
    user, system = (after - start for after, start in zip(cpu_seconds(), before))
    return {"user_ms": 1e3 * user / count, "system_ms": 1e3 * system / count, "cpu_ms": 1e3 * (user + system) / count}


def measure_decode(data: Path, images: int, size: tuple[int, int]) -> dict:
    paths = [s.path for s in scan_folder(data).samples][:images]
    before = cpu_seconds()
    for path in paths:
        load_image(path, size)
    return {"images": len(paths), **per_image(before, len(paths))}


def measure_write(folder: Path, shape: tuple[int, ...], compression: str, shards: int) -> dict:
    configure_array_pool(2, low_priority=False)
    maps = np.random.default_rng(0).standard_normal((BATCH, *shape)).astype(np.float16)
    pooled = {p: np.zeros((BATCH, shape[-1]), np.float32) for p in ("avg", "max")}
    writer = ShardWriter(folder, feature_shape=shape, dtype="float16", compression=compression, shard_size=SHARD,
                         key="bench", classes=["a"])
    figures = {}
    for shard in range(shards):
        before, started = cpu_seconds(), time.perf_counter()
        for batch in range(SHARD // BATCH):
            digests = [f"{shard:06d}{batch:06d}{i:052d}" for i in range(BATCH)]
            writer.write(maps, pooled, digests, ["x.jpg"] * BATCH, [0] * BATCH, ["train"] * BATCH)
        figures.setdefault("shards", []).append({**per_image(before, SHARD),
                                                 "wall_ms": 1e3 * (time.perf_counter() - started) / SHARD})
    writer.close()
    later = figures["shards"][1:] or figures["shards"]
    figures["first_cpu_ms"] = figures["shards"][0]["cpu_ms"]
    figures["steady_cpu_ms"] = float(np.median([s["cpu_ms"] for s in later]))
    figures["steady_wall_ms"] = float(np.median([s["wall_ms"] for s in later]))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=TRASHNET)
    parser.add_argument("--images", type=int, default=160, help="photos to decode")
    parser.add_argument("--shape", default="16,12,2048", help="map shape (h,w,c); input size is 32x that")
    parser.add_argument("--shards", type=int, default=4, help="shards of 256 maps to write per compression")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    report = {"shape": list(shape), "decode": measure_decode(args.data, args.images, (shape[0] * 32, shape[1] * 32))}
    with tempfile.TemporaryDirectory(prefix="featurebank-helper-cpu-") as folder:
        for compression in ("none", "zstd"):
            (Path(folder) / compression).mkdir()
            report[f"write_{compression}"] = measure_write(Path(folder) / compression, shape, compression, args.shards)
    print(f"decode: {report['decode']['cpu_ms']:.2f} ms of CPU per photo ({report['decode']['images']} photos)")
    for compression in ("none", "zstd"):
        w = report[f"write_{compression}"]
        print(f"write, float16 + {compression}: {w['first_cpu_ms']:.2f} ms of CPU per map in the first shard, "
              f"{w['steady_cpu_ms']:.2f} ms in later ones ({w['steady_wall_ms']:.2f} ms wall)")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
