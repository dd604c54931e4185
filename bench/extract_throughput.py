"""Extraction throughput vs the backbone alone, and the no-op re-run, measured in one run.

    python bench/extract_throughput.py [--data DIR] [--limit N] [--backbone resnet50] [--batch-size 16]
                                       [--compression none,zstd] [--repeats 2]

Prints: backbone-only forward throughput on pre-decoded uint8 tensors, cold (model build and
first-call compilation included, as extract pays them) and warm (later passes); full
`featurebank.extract` throughput (decode + forward + HDF5 write, everything included) into a fresh
cache; their ratios; and the wall time of a re-run with nothing new as a fraction of the first run.
With ``--repeats``, extractions and backbone passes alternate (see ``measure_all``), so that the
slow drift of a shared machine's speed does not favour either side.
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
                compressions: list[str], cache: Path | None = None, repeats: int = 1) -> list[dict]:
    """Backbone passes and full extractions in alternation, so that drift of the machine's speed cancels.

    After a cold and a warm backbone pass, each repeat runs one extraction per compression (in
    reverse order on odd repeats) and then the backbone again: with ``repeats=2`` and two
    compressions, B N Z B Z N B. Each side's mean position in time is then the same, so a linear
    drift of the machine's speed affects both sides of each ratio alike. The backbone's rate is
    that of all its warm passes together; each extraction's, that of all its runs together.
    """
    spec = get_backbone(backbone)
    samples = scan_folder(data).samples
    # 1. Backbone alone on pre-decoded images: a cold pass (model build and first-call compilation
    #    included, as extract pays them) and then a warm pass over the same images.
    images = np.stack([load_image(s.path, spec.input_size) for s in samples])

    def one_pass(function, pixels: np.ndarray) -> float:
        started = time.perf_counter()
        for start in range(0, len(pixels), batch_size):
            function(pixels[start : start + batch_size])
        return time.perf_counter() - started

    started = time.perf_counter()
    function = spec.build(weights, spec.input_size, batch_size)
    one_pass(function, images)
    cold_seconds = time.perf_counter() - started
    backbone_seconds = [one_pass(function, images)]
    # 2. Whole extractions into an empty cache, each followed by the same command again (nothing new).
    keep = cache is not None
    cache = cache or Path(tempfile.mkdtemp(prefix="featurebank-bench-"))
    runs: dict[str, list] = {c: [] for c in compressions}
    for repeat in range(repeats):
        for compression in compressions if repeat % 2 == 0 else compressions[::-1]:
            options = dict(backbone=spec.name, cache=cache, weights=weights, batch_size=batch_size, dtype=dtype,
                           compression=compression)
            first = featurebank.extract(data, **options, rebuild=True)
            again = featurebank.extract(data, **options)
            shard_bytes = sum(p.stat().st_size for p in cache.glob(f"{spec.name}-*.shards/*.h5"))
            runs[compression].append((first, again, shard_bytes))
        backbone_seconds.append(one_pass(function, images))
    del images, function
    backbone_rate = len(samples) * len(backbone_seconds) / sum(backbone_seconds)
    cold_rate = len(samples) / cold_seconds
    if not keep:
        shutil.rmtree(cache, ignore_errors=True)
    figures = []
    for compression, done in runs.items():
        new = sum(first.new for first, _, _ in done)
        seconds = sum(first.seconds for first, _, _ in done)
        build = sum(first.build_seconds for first, _, _ in done)
        extract_rate = new / seconds
        steady_rate = new / (seconds - build)
        first, again, shard_bytes = done[-1]
        figures.append({
            "backbone": spec.name, "images": len(samples), "new": first.new, "batch_size": batch_size,
            "dtype": dtype, "compression": compression, "repeats": repeats, "backbone_img_s": backbone_rate,
            "backbone_img_s_passes": [len(samples) / s for s in backbone_seconds], "backbone_cold_img_s": cold_rate,
            "extract_img_s": extract_rate, "extract_img_s_runs": [f.new / f.seconds for f, _, _ in done],
            "extract_seconds": seconds / len(done), "build_seconds": build / len(done),
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
    parser.add_argument("--repeats", type=int, default=1,
                        help="extractions per compression, alternating with backbone passes (B N Z B Z N B for 2)")
    parser.add_argument("--report-json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    data = subset_folder(args.data, args.limit)
    print(f"machine: {machine()}")
    print(f"data: {args.data} (limit {args.limit})  backbone: {args.backbone}  batch: {args.batch_size}  "
          f"dtype: {args.dtype}  compression: {args.compression}")
    results = measure_all(data, backbone=args.backbone, weights=args.weights, batch_size=args.batch_size,
                          dtype=args.dtype, compressions=args.compression.split(","), cache=args.cache,
                          repeats=args.repeats)
    f = results[0]
    print(f"images: {f['images']} ({f['new']} distinct)")
    print(f"backbone only:  {f['backbone_img_s']:8.2f} img/s warm (its warm passes in order: "
          + ", ".join(f"{v:.2f}" for v in f["backbone_img_s_passes"])
          + f"), {f['backbone_cold_img_s']:.2f} img/s cold (model build and first-call compilation included)")
    for f in results:
        print(f"extract, {f['dtype']} + {f['compression']}: {f['extract_img_s']:8.2f} img/s (runs: "
              + ", ".join(f"{v:.2f}" for v in f["extract_img_s_runs"]) + f"; {f['extract_seconds']:.1f} s,"
              f" model build {f['build_seconds']:.1f} s included); ratio {f['ratio']:.3f} vs warm, "
              f"{f['ratio_cold']:.3f} vs cold; no-op re-run {f['noop_fraction']:.4f} of the first; "
              f"{f['mb_per_image']:.3f} MB per image")
    print(json.dumps(results))
    if args.report_json:
        args.report_json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
