"""zstd levels on a cache's stored maps: CPU milliseconds per map and compressed size, one thread.

    python bench/zstd_levels.py --cache CACHE [--backbone resnet50] [--images 64] [--levels 1,3]

Reads the first ``--images`` stored maps of the cache (any dtype and compression: h5py decodes
them) and compresses each one as the extraction does (one zstd frame per image, one thread), at
each level, with and without a byte shuffle (the bytes of each float16 grouped by significance).
Prints milliseconds per map, kilobytes per map and the share of the raw bytes, as JSON too. The
extraction's level (``featurebank.array_pool.ZSTD_LEVEL``) was chosen from these figures (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers the zstd filter, for caches written with it)
import numpy as np
import zstandard

from featurebank.index_view import shard_names


def stored_maps(cache: Path, backbone: str, count: int) -> np.ndarray:
    """The first ``count`` maps stored for ``backbone`` in ``cache`` (across its shards)."""
    shard_dirs = sorted(cache.glob(f"{backbone}-*.shards"))
    if not shard_dirs:
        raise SystemExit(f"{cache}: no {backbone} cache here")
    rows = []
    for shard_dir in shard_dirs:
        for name in sorted(shard_names(shard_dir)):
            with h5py.File(shard_dir / name, "r") as fh:
                if "features" not in fh:
                    continue
                rows.append(fh["features"][: count - sum(len(r) for r in rows)])
            if sum(len(r) for r in rows) >= count:
                return np.concatenate(rows)
    if not rows:
        raise SystemExit(f"{cache}: the {backbone} cache stores no maps (--store pooled)")
    return np.concatenate(rows)


def shuffled(row: np.ndarray) -> bytes:
    """The row's bytes grouped by significance (HDF5's shuffle filter)."""
    return np.ascontiguousarray(row.view(np.uint8).reshape(-1, row.dtype.itemsize).T).tobytes()


def measure(maps: np.ndarray, level: int, shuffle: bool) -> dict:
    compressor = zstandard.ZstdCompressor(level=level)
    started = time.perf_counter()
    sizes = [len(compressor.compress(shuffled(row) if shuffle else row.tobytes())) for row in maps]
    seconds = time.perf_counter() - started
    return {"level": level, "shuffle": shuffle, "ms_per_map": 1000 * seconds / len(maps),
            "kb_per_map": float(np.mean(sizes)) / 1000, "share_of_raw": sum(sizes) / maps.nbytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--levels", default="1,3")
    args = parser.parse_args()
    maps = stored_maps(args.cache, args.backbone, args.images)
    print(f"{len(maps)} maps {maps.shape[1:]} {maps.dtype}, {100 * (maps == 0).mean():.1f}% zeros")
    rows = [measure(maps, int(level), shuffle) for level in args.levels.split(",") for shuffle in (False, True)]
    for row in rows:
        print(f"zstd level {row['level']:2d}{' + shuffle' if row['shuffle'] else '          '}: "
              f"{row['ms_per_map']:6.2f} ms per map, {row['kb_per_map']:7.1f} kB ({100 * row['share_of_raw']:.1f}%)")
    print(json.dumps({"maps": len(maps), "shape": list(maps.shape[1:]), "dtype": str(maps.dtype), "rows": rows}))


if __name__ == "__main__":
    main()
