"""Extraction throughput vs the backbone alone, and the no-op re-run, measured in one run.

    python bench/extract_throughput.py [--data DIR] [--limit N] [--backbone resnet50] [--batch-size 16]

Prints: backbone-only forward throughput on pre-decoded uint8 tensors, cold (model build and
first-call compilation included, as extract pays them) and warm (second pass); full
`featurebank.extract` throughput (decode + forward + HDF5 write, everything included) into a fresh
cache; their ratios; and the wall time of a re-run with nothing new as a fraction of the first run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from common import TRASHNET, machine, subset_folder

import featurebank
from featurebank.backbones import get_backbone
from featurebank.images import load_image
from featurebank.scan import scan_folder


def measure(data: Path, *, backbone: str, weights: str, batch_size: int, dtype: str = "float32",
            compression: str = "none", cache: Path | None = None) -> dict:
    """Backbone-only and full-extract throughput on ``data``, and the no-op re-run, as a dict of figures."""
    return measure_all(data, backbone=backbone, weights=weights, batch_size=batch_size, dtype=dtype,
                       compressions=[compression], cache=cache)[0]


def measure_all(data: Path, *, backbone: str, weights: str, batch_size: int, dtype: str = "float32",
                compressions: list[str], cache: Path | None = None) -> list[dict]:
    """One backbone-only measurement, then one full extraction per compression, then the backbone again.

    The backbone's rate is the mean of the passes before and after the extractions, so slow drift of
    the machine affects both sides of each ratio alike.
    """
    spec = get_backbone(backbone)
    samples = scan_folder(data).samples
    # 1. Backbone alone on pre-decoded images: a cold pass (model build and first-call compilation
    #    included, as extract pays them) and then a warm pass over the same images.
    images = np.stack([load_image(s.path, spec.input_size) for s in samples])

    def one_pass(function, pixels: np.ndarray) -> None:
        for start in range(0, len(pixels), batch_size):
            function(pixels[start : start + batch_size])

    started = time.perf_counter()
    function = spec.build(weights, spec.input_size, batch_size)
    one_pass(function, images)
    cold_seconds = time.perf_counter() - started
    started = time.perf_counter()
    one_pass(function, images)
    backbone_seconds = [time.perf_counter() - started]
    # 2. The whole extraction into an empty cache, then 3. the same command again (nothing new).
    keep = cache is not None
    cache = cache or Path(tempfile.mkdtemp(prefix="featurebank-bench-"))
    runs = []
    for compression in compressions:
        options = dict(backbone=spec.name, cache=cache, weights=weights, batch_size=batch_size, dtype=dtype,
                       compression=compression)
        first = featurebank.extract(data, **options, rebuild=True)
        again = featurebank.extract(data, **options)
        shard_bytes = sum(p.stat().st_size for p in cache.glob(f"{spec.name}-*.shards/*.h5"))
        runs.append((compression, first, again, shard_bytes))
    started = time.perf_counter()
    one_pass(function, images)
    backbone_seconds.append(time.perf_counter() - started)
    del images, function
    backbone_rate = len(samples) / float(np.mean(backbone_seconds))
    cold_rate = len(samples) / cold_seconds
    if not keep:
        shutil.rmtree(cache, ignore_errors=True)
    figures = []
    for compression, first, again, shard_bytes in runs:
        extract_rate = first.new / first.seconds
        steady_rate = first.new / (first.seconds - first.build_seconds)
        figures.append({
            "backbone": spec.name, "images": len(samples), "new": first.new, "batch_size": batch_size,
            "dtype": dtype, "compression": compression, "backbone_img_s": backbone_rate,
            "backbone_img_s_passes": [len(samples) / s for s in backbone_seconds], "backbone_cold_img_s": cold_rate,
            "extract_img_s": extract_rate, "extract_seconds": first.seconds, "build_seconds": first.build_seconds,
            "ratio": extract_rate / backbone_rate, "ratio_cold": extract_rate / cold_rate,
            "ratio_excluding_build": steady_rate / backbone_rate, "noop_seconds": again.seconds,
            "noop_fraction": again.seconds / first.seconds, "mb_per_image": shard_bytes / max(first.new, 1) / 1e6,
            "cache": str(cache) if keep else None})
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=TRASHNET)
    parser.add_argument("--limit", type=int, default=None, help="use about N images (spread over classes)")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--weights", default="none", help="throughput does not depend on the weights' values")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--compression", default="none", help="one, or several separated by commas (none,zstd)")
    parser.add_argument("--cache", type=Path, default=None, help="cache folder to keep (default: a temporary one)")
    parser.add_argument("--report-json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    data = subset_folder(args.data, args.limit)
    print(f"machine: {machine()}")
    print(f"data: {args.data} (limit {args.limit})  backbone: {args.backbone}  batch: {args.batch_size}  "
          f"dtype: {args.dtype}  compression: {args.compression}")
    results = measure_all(data, backbone=args.backbone, weights=args.weights, batch_size=args.batch_size,
                          dtype=args.dtype, compressions=args.compression.split(","), cache=args.cache)
    f = results[0]
    print(f"images: {f['images']} ({f['new']} distinct)")
    print(f"backbone only:  {f['backbone_img_s']:8.2f} img/s warm (passes before and after the extractions: "
          + ", ".join(f"{v:.2f}" for v in f["backbone_img_s_passes"])
          + f"), {f['backbone_cold_img_s']:.2f} img/s cold (model build and first-call compilation included)")
    for f in results:
        print(f"extract, {f['dtype']} + {f['compression']}: {f['extract_img_s']:8.2f} img/s ({f['extract_seconds']:.1f} s,"
              f" model build {f['build_seconds']:.1f} s included); ratio {f['ratio']:.3f} vs warm, "
              f"{f['ratio_cold']:.3f} vs cold; no-op re-run {f['noop_fraction']:.4f} of the first; "
              f"{f['mb_per_image']:.3f} MB per image")
    print(json.dumps(results))
    if args.report_json:
        args.report_json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
