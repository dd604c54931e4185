"""Cache bookkeeping at scale: a million tiny images through the real engine and store, in one run.

    python bench/scale.py [--images 1000000] [--noop-images 100000] [--grow-base 50000] [--work DIR]

Uses the ``rgb-stats`` backbone (8 numbers per image, computed with numpy) so that the figures are
the cache's bookkeeping, not a network. Prints:
  1. shard commit time (shard write + everything a commit does) near 10k rows and near the end;
  2. bookkeeping seconds per 1,000 images of the big build: scanning and hashing, reading what is
     stored, claims, shard commits and the index, each timed where it runs;
  3. a no-op `extract` over ``--noop-images`` cached files (median of 3) as a share of their first extraction;
  4. `featurebank.load()` (pooled vectors and the stored (1, 1, 8) maps) and `featurebank info` at full size;
  5. adding 2,560 images to a cache of ``--grow-base`` images (each run from a copy of it) vs to an empty cache, from the CLI
     (three alternated runs each, medians; the files are past the hash memo's racy window).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

import featurebank
from featurebank import claims, extraction, index
from featurebank.cache import ShardWriter

CLASSES = 4
SIZE = "32x32"
TIMINGS: dict[str, list[float]] = defaultdict(list)
COMMITS: list[tuple[int, float]] = []  # (rows committed before, seconds)


def make_images(root: Path, count: int, *, start: int = 0) -> None:
    """``count`` distinct 8x8 PNGs in CLASSES class folders, 1,000 per sub-folder."""
    rng = np.random.default_rng(start)
    base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    for i in range(start, start + count):
        pixels = base.copy()
        pixels.reshape(-1)[:8] = np.frombuffer(i.to_bytes(8, "little"), np.uint8)  # distinct bytes per image
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG", compress_level=0)
        path = image_path(root, i)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer.getvalue())


def image_path(root: Path, i: int) -> Path:
    """Where ``make_images`` puts image ``i``: CLASSES class folders, 1,000 images per sub-folder."""
    return root / f"class{i % CLASSES}" / f"part{i // 1000:05d}" / f"img{i:07d}.png"


def remove_images(root: Path, count: int, *, start: int) -> None:
    """Delete the files ``make_images(root, count, start=start)`` wrote."""
    folders = set()
    for i in range(start, start + count):
        path = image_path(root, i)
        path.unlink()
        folders.add(path.parent)
    for folder in folders:
        if not any(folder.iterdir()):
            folder.rmdir()


def timed(owner, name: str, label: str) -> None:
    """Record the wall time of every call of ``owner.name`` under ``label``."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            TIMINGS[label].append(time.perf_counter() - started)

    setattr(owner, name, wrapper)


def instrument() -> None:
    timed(extraction, "scan_folder", "scan (hash memo or hashing)")
    timed(index.FeatureStore, "stored_state", "reading what is stored")
    timed(index.FeatureStore, "refresh", "reading shards other writers committed")
    timed(index.FeatureStore, "consolidate", "index consolidation (once per run)")
    timed(claims.WorkClaims, "claim", "claims")
    original = ShardWriter._commit
    committed = [0]

    def commit(self):
        started = time.perf_counter()
        entries = original(self)
        seconds = time.perf_counter() - started
        COMMITS.append((committed[0], seconds))
        TIMINGS["shard commits"].append(seconds)
        committed[0] += len(entries)
        return entries

    ShardWriter._commit = commit


def extract(data: Path, cache: Path) -> tuple[featurebank.ExtractReport, float]:
    started = time.perf_counter()
    report = featurebank.extract(data, backbone="rgb-stats", cache=cache, weights="none", input_size=(32, 32),
                                 batch_size=256, shard_size=256)
    return report, time.perf_counter() - started


def cli_extract(data: Path, cache: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cli", "extract", "--backbone", "rgb-stats", "--weights", "none",
                    "--input-size", SIZE, "--batch-size", "256", "--data", str(data), "--cache", str(cache), "--quiet"],
                   check=True)
    return time.perf_counter() - started


def near(rows: int) -> float:
    """Median commit seconds of the 20 commits closest to ``rows`` rows already in the cache."""
    closest = sorted(COMMITS, key=lambda c: abs(c[0] - rows))[:20]
    return float(np.median([s for _, s in closest]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--noop-images", type=int, default=100_000)
    parser.add_argument("--grow-base", type=int, default=50_000)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder [a temporary one, deleted after]")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="featurebank-scale-"))
    results: dict = {"images": args.images}
    try:
        # 3. no-op over cached files, vs their first extraction (measured before instrumenting anything).
        noop_data, noop_cache = work / "noop-data", work / "noop-cache"
        make_images(noop_data, args.noop_images, start=10_000_000)
        time.sleep(2.5)  # past the hash memo's racy window, as any real collection is
        first, first_seconds = extract(noop_data, noop_cache)
        noop_runs = [extract(noop_data, noop_cache)[1] for _ in range(3)]  # ~0.3 s each: median of 3 against noise
        noop_seconds = float(np.median(noop_runs))
        results["noop"] = {"images": first.images, "first_s": round(first_seconds, 2), "noop_s": round(noop_seconds, 3),
                           "share": round(noop_seconds / first_seconds, 4), "noop_runs_s": [round(v, 3) for v in noop_runs]}
        print(f"no-op extract over {first.images} cached files (median of 3): {noop_seconds:.2f} s = "
              f"{100 * noop_seconds / first_seconds:.2f}% of their first extraction ({first_seconds:.1f} s)", flush=True)

        # 5. adding 2,560 images to a cache of --grow-base images vs to an empty cache, from the CLI. Every
        # repeat starts from the same --grow-base cache (a copy of it) and adds its own 2,560 new files.
        grow_data, grow_base, grow_cache = work / "grow-data", work / "grow-base-cache", work / "grow-cache"
        make_images(grow_data, args.grow_base, start=20_000_000)
        time.sleep(2.5)  # past the memo's racy window: files younger than 2 s are hashed again on the next run
        cli_extract(grow_data, grow_base)
        empty_runs, full_runs = [], []
        for repeat in range(3):  # alternated, median of three: one run is ~1 s and the machine is not quiet
            fresh_data, fresh_cache = work / f"fresh-data-{repeat}", work / f"fresh-cache-{repeat}"
            first = 30_000_000 + 10_000 * repeat
            make_images(fresh_data, 2560, start=first)
            make_images(grow_data, 2560, start=first)
            shutil.rmtree(grow_cache, ignore_errors=True)
            shutil.copytree(grow_base, grow_cache)  # copy2 keeps the shards' times, so the index still matches them
            time.sleep(2.5)
            empty_runs.append(cli_extract(fresh_data, fresh_cache))
            full_runs.append(cli_extract(grow_data, grow_cache))
            remove_images(grow_data, 2560, start=first)
        empty_seconds, full_seconds = float(np.median(empty_runs)), float(np.median(full_runs))
        results["grow"] = {"base": args.grow_base, "into_empty_s": round(empty_seconds, 2),
                           "into_full_s": round(full_seconds, 2), "ratio": round(full_seconds / empty_seconds, 3),
                           "into_empty_runs_s": [round(v, 2) for v in empty_runs],
                           "into_full_runs_s": [round(v, 2) for v in full_runs]}
        print(f"adding 2,560 images from the CLI (median of 3): {full_seconds:.2f} s to a cache of {args.grow_base:,}"
              f" and more vs {empty_seconds:.2f} s to an empty one = {full_seconds / empty_seconds:.2f}x", flush=True)

        # 1, 2. the big build, with every piece of bookkeeping timed where it runs.
        big_data, big_cache = work / "big-data", work / "big-cache"
        started = time.perf_counter()
        make_images(big_data, args.images)
        print(f"wrote {args.images:,} files in {time.perf_counter() - started:.0f} s", flush=True)
        time.sleep(2.5)
        instrument()
        report, build_seconds = extract(big_data, big_cache)
        bookkeeping = {label: round(sum(values), 2) for label, values in TIMINGS.items()}
        total = sum(bookkeeping.values())
        early, late = near(10_000), near(report.images - 10_000)
        results["build"] = {"images": report.images, "seconds": round(build_seconds, 1),
                            "commit_s_at_10k": round(early, 5), "commit_s_at_end": round(late, 5),
                            "commit_ratio": round(late / early, 3), "bookkeeping_s": bookkeeping,
                            "bookkeeping_s_per_1000": round(1000 * total / report.images, 3)}
        print(f"built a cache of {report.images:,} images in {build_seconds:.0f} s", flush=True)
        print(f"shard commit: {1000 * early:.2f} ms near 10k rows, {1000 * late:.2f} ms near {report.images:,} rows "
              f"(ratio {late / early:.2f})")
        print(f"bookkeeping: {total:.1f} s = {1000 * total / report.images:.3f} s per 1,000 images: "
              + ", ".join(f"{k} {v:.1f} s" for k, v in bookkeeping.items()))

        # 4. load() and info at full size.
        for label, pooling in (("load(pooling='avg')", "avg"), ("load() of the stored maps", None)):
            started = time.perf_counter()
            loaded = featurebank.load(cache=big_cache, backbone="rgb-stats", pooling=pooling)
            seconds = time.perf_counter() - started
            results[label] = round(seconds, 2)
            print(f"{label} at {len(loaded):,} rows: {seconds:.2f} s, X {loaded.X.shape}")
        started = time.perf_counter()
        listing = subprocess.run([sys.executable, "-m", "cli", "info", "--cache", str(big_cache), "--json"],
                                 check=True, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        results["info_s"] = round(seconds, 2)
        print(f"featurebank info at {json.loads(listing.stdout)['caches'][0]['images']:,} rows: {seconds:.2f} s "
              "(process start included)")
        print(json.dumps(results))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
