"""Extraction throughput vs the backbone alone, and the no-op re-run, measured in one run.

    python bench/extract_throughput.py [--data DIR] [--limit N] [--backbone resnet50] [--batch-size 16]

Prints: backbone-only forward throughput on pre-decoded uint8 tensors (model already built), full
`featurebank.extract` throughput (decode + forward + HDF5 write, model build included) into a fresh
cache, their ratio, and the wall time of a re-run with nothing new as a fraction of the first run.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=TRASHNET)
    parser.add_argument("--limit", type=int, default=None, help="use about N images (spread over classes)")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--weights", default="none", help="throughput does not depend on the weights' values")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--compression", default="none")
    parser.add_argument("--cache", type=Path, default=None, help="cache folder (default: a temporary one)")
    args = parser.parse_args()

    data = subset_folder(args.data, args.limit)
    spec = get_backbone(args.backbone)
    samples = scan_folder(data).samples
    print(f"machine: {machine()}")
    print(f"images: {len(samples)} from {args.data}  backbone: {spec.name}  batch: {args.batch_size}  "
          f"dtype: {args.dtype}  compression: {args.compression}")

    # 1. Backbone alone: decode everything first, build the model, warm up, then time the forward passes.
    images = np.stack([load_image(s.path, spec.input_size) for s in samples])
    function = spec.build(args.weights, spec.input_size, args.batch_size)
    function(images[: args.batch_size])
    started = time.perf_counter()
    for start in range(0, len(images), args.batch_size):
        function(images[start : start + args.batch_size])
    backbone_seconds = time.perf_counter() - started
    backbone_rate = len(images) / backbone_seconds
    del images, function
    print(f"backbone only:  {backbone_rate:8.2f} img/s  ({backbone_seconds:.1f} s)")

    # 2. The whole extraction into an empty cache, then 3. the same command again (nothing new).
    cache = args.cache or Path(tempfile.mkdtemp(prefix="featurebank-bench-"))
    options = dict(backbone=spec.name, cache=cache, weights=args.weights, batch_size=args.batch_size,
                   dtype=args.dtype, compression=args.compression, rebuild=True)
    first = featurebank.extract(data, **options)
    extract_rate = first.new / first.seconds
    print(f"full extract:   {extract_rate:8.2f} img/s  ({first.seconds:.1f} s, {first.new} new, model build included)")
    steady_rate = first.new / (first.seconds - first.build_seconds)
    print(f"ratio extract / backbone: {extract_rate / backbone_rate:.3f}  "
          f"(excluding the {first.build_seconds:.1f} s model build: {steady_rate / backbone_rate:.3f})")
    again = featurebank.extract(data, **{**options, "rebuild": False})
    print(f"no-op re-run:   {again.seconds:.2f} s = {again.seconds / first.seconds:.4f} of the first run "
          f"({again.new} new, {again.cached} cached)")
    shard_bytes = sum(p.stat().st_size for p in cache.glob("*.shards/*.h5"))
    print(f"stored: {shard_bytes / first.new / 1e6:.3f} MB per image")
    print(json.dumps({"backbone_img_s": backbone_rate, "extract_img_s": extract_rate,
                      "ratio": extract_rate / backbone_rate, "ratio_excluding_build": steady_rate / backbone_rate,
                      "noop_fraction": again.seconds / first.seconds}))
    if args.cache is None:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
