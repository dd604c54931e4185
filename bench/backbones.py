"""Extraction throughput of every backbone (img/s, and as a fraction of the backbone alone, warm and cold), one run.

    python bench/backbones.py [--limit 96] [--data DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

from common import TRASHNET, machine, subset_folder
from extract_throughput import measure

from featurebank.backbones import available_backbones


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=TRASHNET)
    parser.add_argument("--limit", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--only", nargs="*", default=None, help="measure only these backbones")
    args = parser.parse_args()
    data = subset_folder(args.data, args.limit)
    print(f"machine: {machine()}   images: about {args.limit} from {args.data}   weights: random (none) for "
          "Keras backbones, packaged ImageNet weights for efficientnet-lite0")
    print(f"{'backbone':<20}{'warm img/s':>11}{'cold img/s':>11}{'extract img/s':>14}{'vs warm':>9}{'vs cold':>9}"
          f"{'MB/img':>8}")
    rows = []
    for spec in available_backbones():
        if args.only and spec.name not in args.only:
            continue
        if spec.requires and importlib.util.find_spec("efficientnet_lite_pytorch") is None:
            print(f"{spec.name:<20} skipped: pip install -e '.[{spec.requires}]'")
            continue
        weights = "imagenet" if spec.requires else "none"
        f = measure(data, backbone=spec.name, weights=weights, batch_size=args.batch_size)
        rows.append(f)
        print(f"{spec.name:<20}{f['backbone_img_s']:>11.2f}{f['backbone_cold_img_s']:>11.2f}{f['extract_img_s']:>14.2f}"
              f"{f['ratio']:>9.3f}{f['ratio_cold']:>9.3f}{f['mb_per_image']:>8.3f}", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
