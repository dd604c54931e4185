"""The study's Table 1 grid from a warm cache vs the study's way (ResNet50 features recomputed per head row).

    python bench/table1.py --cache CACHE --extract-report bench/out/extract_resnet50.json \\
        [--image-size 64x48] [--repeats 1] [--out bench/out/table1]

Runs `featurebank experiments --grid seed-table1` (resumable) and prints its wall time next to the
study's way: the same grid plus one feature extraction per head row, with the extraction time
measured on this machine by bench/extract_throughput.py (the report given).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import machine

from classifiers.experiments import GRIDS, run_grid
from featurebank.backbones import input_size_from_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--extract-report", type=Path, required=True)
    parser.add_argument("--grid", default="seed-table1")
    parser.add_argument("--image-size", default="64x48")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/out/table1"))
    args = parser.parse_args()
    report = json.loads(args.extract_report.read_text())
    print(f"machine: {machine()}")
    started = time.perf_counter()
    result = run_grid(args.grid, cache=args.cache, repeats=args.repeats, image_size=input_size_from_text(args.image_size),
                      out_dir=args.out, progress=print)
    seconds = time.perf_counter() - started
    row_seconds = sum(float(r["seconds"]) for r in result["rows"])
    heads = sum(1 for r in GRIDS[args.grid] if r.job == "head") * args.repeats
    study_way = row_seconds + heads * report["extract_seconds"]
    print(Path(result["results_md"]).read_text())
    print(f"grid from the warm cache: {row_seconds:.0f} s of training ({seconds:.0f} s wall, rows resumed included)")
    print(f"study's way: + {heads} extractions x {report['extract_seconds']:.0f} s = {study_way:.0f} s "
          f"({study_way / row_seconds:.1f}x)")
    print(json.dumps({"grid_seconds": row_seconds, "study_way_seconds": study_way,
                      "ratio": study_way / row_seconds, "head_rows": heads}))


if __name__ == "__main__":
    main()
