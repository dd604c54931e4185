"""A first scan's hashing on one thread against several: the fixed cost every run over new files pays first.

    python bench/hashing.py [--data ../shared/datasets/trashnet] [--workers 1,2,4] [--repeats 3]
                            [--distinct 10000 --data-dir DIR] [--sizes 2048,8192,32768 --files 4000]
                            [--fresh-buffers]

Scans --data with a fresh hash memo (so every file is read and hashed, as in a first extraction)
with ``scan_folder(hash_workers=W)`` for each W, the ways alternated ``--repeats`` times, after
one untimed scan that brings the files into the page cache (what a run over files just copied
or written sees; a cold disk would add its own reads). ``--distinct N`` scans N distinct JPEGs
re-encoded from TrashNet instead (``gpu_extract.py``'s set: 10,000 of them is what the GPU runs
hash in their plan phase). ``--sizes`` scans, for each size in bytes, a folder of --files files
of random bytes behind a JPEG signature instead: where threads start to pay (``featurebank.scan``'s
HASH_THREADS_FROM_BYTES). Checks that every way gives the same hashes, formats and skipped files,
and prints one JSON line per folder: files/s and MB/s per way (medians), each way over one thread.
``--fresh-buffers`` reads each file as ``hash_file`` did before its threads reused a buffer (a
fresh 1 MiB buffer per read): the probe behind that change.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from common import TRASHNET, alternated_medians

import featurebank.scan
from featurebank.scan import scan_folder
from featurebank.sizing import usable_cores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=TRASHNET)
    parser.add_argument("--workers", default="1,2,4", help="hashing threads, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--distinct", type=int, default=0, help="scan this many re-encoded JPEGs instead")
    parser.add_argument("--data-dir", type=Path, help="where --distinct's JPEGs go (kept, and reused)")
    parser.add_argument("--sizes", help="bytes per file, comma-separated: synthetic folders instead of --data")
    parser.add_argument("--files", type=int, default=4000, help="files per --sizes folder")
    parser.add_argument("--fresh-buffers", action="store_true", help="read as hash_file did before buffer reuse")
    args = parser.parse_args()
    if args.fresh_buffers:
        featurebank.scan.hash_file = hash_file_with_fresh_buffers
    ways = tuple(args.workers.split(","))
    if args.sizes:
        for size in map(int, args.sizes.split(",")):
            print(json.dumps({"bytes_per_file": size, **compare(synthetic_folder(size, args.files), ways, args.repeats)}))
        return
    data = args.data
    if args.distinct:
        from gpu_extract import make_distinct_jpegs

        data = args.data_dir or Path(tempfile.mkdtemp(prefix="featurebank-hashing-"))
        make_distinct_jpegs(args.data, data, args.distinct)
    print(json.dumps(compare(data, ways, args.repeats)))


def hash_file_with_fresh_buffers(path) -> tuple[str, bytes]:
    """``featurebank.scan.hash_file`` as it was before 2026-11-28's fifth session: a new 1 MiB buffer per read."""
    digest, header = hashlib.sha256(), b""
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            header = header or chunk[:16]
            digest.update(chunk)
    return digest.hexdigest(), header


def synthetic_folder(size: int, files: int) -> Path:
    """A class folder of ``files`` distinct files of ``size`` random bytes that start as a JPEG does."""
    rng = np.random.default_rng(size)
    root = Path(tempfile.mkdtemp(prefix=f"featurebank-hashing-{size}-"))
    (root / "a").mkdir()
    for i in range(files):
        (root / "a" / f"{i:06d}.jpg").write_bytes(b"\xff\xd8\xff" + rng.bytes(size - 3))
    return root


def compare(data: Path, ways: tuple[str, ...], repeats: int) -> dict:
    """``scan_folder`` of ``data`` with a fresh memo per run, each way of ``ways`` (hashing threads), alternated."""
    reference = scan_folder(data)  # no memo: every file read, which fills the page cache
    files = len(reference.sha256s)
    megabytes = sum(Path(reference.root, r).stat().st_size for r in reference.relpaths) / 1e6

    def one_run(way: str) -> dict:
        with tempfile.TemporaryDirectory(prefix="featurebank-memo-") as memo:  # fresh: a first scan's hashing
            started = time.perf_counter()
            scan = scan_folder(data, memo_dir=memo, hash_workers=int(way))
            seconds = time.perf_counter() - started
        same = (scan.sha256s, scan.formats, scan.skipped) == (reference.sha256s, reference.formats, reference.skipped)
        return {"seconds": seconds, "files_s": files / seconds, "mb_s": megabytes / seconds, "same": float(same)}

    medians, runs = alternated_medians(ways, repeats, one_run)
    one = medians[ways[0]]["seconds"]
    return {
        "data": str(data), "files": files, "megabytes": round(megabytes, 1), "cores": usable_cores(),
        "repeats": repeats,
        "ways": {w: {"seconds": round(m["seconds"], 3), "files_s": round(m["files_s"]), "mb_s": round(m["mb_s"]),
                     f"speed_vs_{ways[0]}": round(one / m["seconds"], 2),
                     "runs_seconds": [round(r["seconds"], 3) for r in runs[w]]} for w, m in medians.items()},
        "same_results": all(r["same"] == 1.0 for rs in runs.values() for r in rs),
    }


if __name__ == "__main__":
    main()
