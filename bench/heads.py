"""Training the study's head on cached features vs the study's way (features recomputed every session).

    python bench/heads.py --cache CACHE --extract-report bench/out/extract_resnet50.json [--pooling flatten]

Times one head per optimizer (sgd, adam, rmsprop) on the cache's train/val/test splits, and compares
each with what the study paid per session: the feature extraction of the same images (measured by
bench/extract_throughput.py on this machine, in the report given) plus the same head training.
Without --extract-report, the extraction is measured here first (``--data``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from common import TRASHNET, machine

import featurebank
from classifiers.jobs import train_head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--extract-report", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=TRASHNET)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--pooling", default="flatten")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    print(f"machine: {machine()}")

    if args.extract_report:
        report = json.loads(args.extract_report.read_text())
        extract_seconds, cache = report["extract_seconds"], Path(args.cache or report["cache"])
        print(f"extraction (from {args.extract_report}): {extract_seconds:.1f} s for {report['images']} images")
    else:
        cache = args.cache or Path(tempfile.mkdtemp(prefix="featurebank-heads-"))
        extraction = featurebank.extract(args.data, backbone=args.backbone, cache=cache, weights=args.weights)
        extract_seconds = extraction.seconds
        print(f"extraction (measured now): {extract_seconds:.1f} s for {extraction.images} images")

    runs = Path(tempfile.mkdtemp(prefix="featurebank-heads-runs-"))
    rows = []
    for optimizer in ("sgd", "adam", "rmsprop"):
        started = time.perf_counter()
        result = train_head(cache, args.backbone, optimizer=optimizer, pooling=args.pooling, repeats=args.repeats,
                            runs_dir=runs)
        seconds = time.perf_counter() - started
        accuracy = result.get("test_accuracy", result.get("test_accuracy_mean"))
        rows.append({"optimizer": optimizer, "head_seconds": seconds, "study_way_seconds": extract_seconds + seconds,
                     "speedup": (extract_seconds + seconds) / seconds, "test_accuracy": accuracy})
        print(f"{optimizer:8s} head on the cache: {seconds:7.1f} s   study's way (extract + head): "
              f"{extract_seconds + seconds:7.1f} s   ratio {rows[-1]['speedup']:6.1f}x   test accuracy {accuracy:.3f}")
    print(json.dumps({"pooling": args.pooling, "extract_seconds": extract_seconds, "rows": rows}))
    shutil.rmtree(runs, ignore_errors=True)


if __name__ == "__main__":
    main()
