"""float32 against mixed bfloat16 compute (extract --compute-dtype): backbone speed and how far the features move.

    python bench/compute_dtype.py [--images 64] [--repeats 3] [--backbones resnet50,efficientnet-lite0]

For each backbone, on the same decoded TrashNet photos at the backbone's input size (512x384) and
the engine's batch: forward passes through the embed path (``Embedder``: backbone, float16 maps
and pooled vectors), float32 and bfloat16 alternated ``--repeats`` times so that the machine's
drift falls on both; then, on those photos, how far bfloat16's features are from float32's
(relative L2 of the maps and of the avg-pooled vectors, and the vectors' lowest cosine). ResNet50
runs with random weights (its ImageNet weights cannot download here), EfficientNet-Lite0 with its
pretrained ones. Whether the difference changes accuracy is a separate run (BENCHMARKS.md has the
commands: two caches, `featurebank evaluate` on each).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from common import TRASHNET, machine, relative_l2, spread_photos

from featurebank.backbones import get_backbone
from featurebank.decoding import decode_many
from featurebank.embed import Embedder
from featurebank.sizing import choose_sizes

WEIGHTS = {"resnet50": "none"}  # the rest: imagenet


def measure(backbone: str, photos: list, repeats: int) -> dict:
    spec = get_backbone(backbone)
    weights = WEIGHTS.get(backbone, "imagenet")
    batch = choose_sizes(spec.library, compression="none").batch_size
    images, _, _ = decode_many(photos, spec.input_size)
    batches = [images[i:i + batch] for i in range(0, len(images), batch)]
    embedders = {dtype: Embedder(spec.build(weights, spec.input_size, batch, dtype), dtype="float16")
                 for dtype in ("float32", "bfloat16")}
    outputs = {dtype: [embedder(b) for b in batches] for dtype, embedder in embedders.items()}  # warm-up, and kept
    seconds = {dtype: [] for dtype in embedders}
    for _ in range(repeats):
        for dtype, embedder in embedders.items():
            started = time.perf_counter()
            for b in batches:
                embedder(b)
            seconds[dtype].append(time.perf_counter() - started)
    maps = {d: np.concatenate([e.maps for e in out]).astype(np.float32) for d, out in outputs.items()}
    avg = {d: np.concatenate([e.pooled["avg"] for e in out]) for d, out in outputs.items()}
    cosine = (avg["bfloat16"] * avg["float32"]).sum(1) / np.linalg.norm(avg["bfloat16"], axis=1) / np.linalg.norm(
        avg["float32"], axis=1)
    rates = {d: [len(images) / s for s in seconds[d]] for d in seconds}
    return {
        "backbone": backbone, "weights": weights, "images": len(images), "batch": batch,
        "float32_img_s": rates["float32"], "bfloat16_img_s": rates["bfloat16"],
        "speedup": float(np.median(rates["bfloat16"]) / np.median(rates["float32"])),
        "maps_relative_l2": relative_l2(maps["bfloat16"], maps["float32"]),
        "avg_relative_l2": relative_l2(avg["bfloat16"], avg["float32"]),
        "avg_lowest_cosine": float(cosine.min()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="TrashNet photos (every n-th, across the classes)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backbones", default="resnet50,efficientnet-lite0")
    parser.add_argument("--source", default=str(TRASHNET))
    args = parser.parse_args()
    photos = spread_photos(args.source, args.images)
    print(json.dumps({"machine": machine()}))
    for backbone in args.backbones.split(","):
        row = measure(backbone, photos, args.repeats)
        print(f"{backbone}: float32 {' '.join(f'{r:.2f}' for r in row['float32_img_s'])} img/s, bfloat16 "
              f"{' '.join(f'{r:.2f}' for r in row['bfloat16_img_s'])} img/s (x{row['speedup']:.2f}); bfloat16 vs "
              f"float32: maps {row['maps_relative_l2']:.4f}, avg vectors {row['avg_relative_l2']:.4f} relative L2, "
              f"lowest cosine {row['avg_lowest_cosine']:.5f}")
        print(json.dumps(row))


if __name__ == "__main__":
    main()
