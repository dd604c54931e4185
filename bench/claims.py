"""Claiming every bucket once: hard-link claims against O_EXCL-created claim files, through WorkClaims itself.

    python bench/claims.py [--folder DIR] [--repeats 5]

Each repeat opens a writer (lease and heartbeat) in a fresh sub-folder of ``--folder`` (default: a
temporary folder), claims all 256 buckets, and leaves (removing them), once with hard links (the
default) and once with the O_EXCL fallback that file systems without hard links get. Point
``--folder`` at a big cache (for example the grow cache of ``bench/scale.py --work DIR``) to see
how a crowded file system treats new inodes. Prints the median milliseconds of each and their ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from featurebank.claims import BUCKET_DIGITS, WorkClaims


def claim_all(folder: Path, *, hard_links: bool) -> float:
    """Seconds to claim every bucket in a fresh shard folder under ``folder``."""
    shard_dir = folder / f"claims-bench-{uuid.uuid4().hex[:8]}"
    shard_dir.mkdir()
    buckets = [f"{i:0{BUCKET_DIGITS}x}" for i in range(16**BUCKET_DIGITS)]
    try:
        with WorkClaims(shard_dir) as claims:
            claims._hard_links = hard_links
            started = time.perf_counter()
            assert all(claims.claim(bucket) for bucket in buckets)
            return time.perf_counter() - started
    finally:
        shutil.rmtree(shard_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="featurebank-claims-"))
    runs = {mode: [] for mode in ("hard_links", "o_excl")}
    for _ in range(args.repeats):  # alternated, so both see the same state of the machine
        runs["hard_links"].append(claim_all(folder, hard_links=True))
        runs["o_excl"].append(claim_all(folder, hard_links=False))
    ms = {mode: 1000 * float(np.median(values)) for mode, values in runs.items()}
    print(f"{16**BUCKET_DIGITS} claims in {folder}: hard links {ms['hard_links']:.2f} ms, O_EXCL files "
          f"{ms['o_excl']:.2f} ms (medians of {args.repeats}) = {ms['o_excl'] / ms['hard_links']:.1f}x")
    print(json.dumps({"folder": str(folder), "buckets": 16**BUCKET_DIGITS, "median_ms": ms}))
    if args.folder is None:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
