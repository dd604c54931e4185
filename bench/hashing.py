"""A first scan's hashing on one thread against several: the fixed cost every run over new files pays first.

    python bench/hashing.py [--data ../shared/datasets/trashnet] [--workers 1,2,4] [--repeats 3]
                            [--distinct 10000 --data-dir DIR]

Scans --data with a fresh hash memo (so every file is read and hashed, as in a first extraction)
with ``scan_folder(hash_workers=W)`` for each W, the ways alternated ``--repeats`` times, after
one untimed scan that brings the files into the page cache (what a run over files just copied
or written sees; a cold disk would add its own reads). ``--distinct N`` scans N distinct JPEGs
re-encoded from TrashNet instead (``gpu_extract.py``'s set: 10,000 of them is what the GPU runs
hash in their plan phase). Checks that every way gives the same hashes, formats and skipped
files, and prints one JSON line: files/s and MB/s per way (medians), and each way over one thread.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import TRASHNET, alternated_medians

from featurebank.scan import scan_folder
from featurebank.sizing import usable_cores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=TRASHNET)
    parser.add_argument("--workers", default="1,2,4", help="hashing threads, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--distinct", type=int, default=0, help="scan this many re-encoded JPEGs instead")
    parser.add_argument("--data-dir", type=Path, help="where --distinct's JPEGs go (kept, and reused)")
    args = parser.parse_args()
    data = args.data
    if args.distinct:
        from gpu_extract import make_distinct_jpegs

        data = args.data_dir or Path(tempfile.mkdtemp(prefix="featurebank-hashing-"))
        make_distinct_jpegs(args.data, data, args.distinct)
    ways = tuple(args.workers.split(","))
    reference = scan_folder(data, memo_dir=tempfile.mkdtemp(prefix="featurebank-memo-"))  # fills the page cache
    files = len(reference.sha256s)
    megabytes = sum(Path(reference.root, r).stat().st_size for r in reference.relpaths) / 1e6

    def one_run(way: str) -> dict:
        memo = tempfile.mkdtemp(prefix="featurebank-memo-")
        started = time.perf_counter()
        scan = scan_folder(data, memo_dir=memo, hash_workers=int(way))
        seconds = time.perf_counter() - started
        same = (scan.sha256s, scan.formats, scan.skipped) == (reference.sha256s, reference.formats, reference.skipped)
        return {"seconds": seconds, "files_s": files / seconds, "mb_s": megabytes / seconds, "same": float(same)}

    medians, runs = alternated_medians(ways, args.repeats, one_run)
    one = medians[ways[0]]["seconds"]
    print(json.dumps({
        "data": str(data), "files": files, "megabytes": round(megabytes, 1), "cores": usable_cores(),
        "repeats": args.repeats,
        "ways": {w: {"seconds": round(m["seconds"], 3), "files_s": round(m["files_s"]), "mb_s": round(m["mb_s"]),
                     f"speed_vs_{ways[0]}": round(one / m["seconds"], 2),
                     "runs_seconds": [round(r["seconds"], 3) for r in runs[w]]} for w, m in medians.items()},
        "same_results": all(r["same"] == 1.0 for rs in runs.values() for r in rs),
    }))


if __name__ == "__main__":
    main()
