"""float32 against mixed bfloat16 compute (extract --compute-dtype): backbone speed and how far the features move.

    python bench/compute_dtype.py [--images 64] [--repeats 3] [--backbones resnet50,efficientnet-lite0] [--tf32]

For each backbone, on the same decoded TrashNet photos at the backbone's input size (512x384) and
the engine's batch: forward passes through the embed path (``Embedder``: backbone, float16 maps
and pooled vectors), float32 and bfloat16 alternated ``--repeats`` times so that the machine's
drift falls on both; then, on those photos, how far bfloat16's features are from float32's
(relative L2 of the maps and of the avg-pooled vectors, and the vectors' lowest cosine). ResNet50
runs with random weights (its ImageNet weights cannot download here), EfficientNet-Lite0 with its
pretrained ones. Whether the difference changes accuracy is a separate run (BENCHMARKS.md has the
commands: two caches, `featurebank evaluate` on each). ``--tf32`` adds a third arithmetic: float32
as the libraries run it by default, TF32 on NVIDIA GPUs (``common.allow_tf32``), against the
engine's IEEE float32: its speed, and how far its features move (on a CPU: nowhere).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from common import TRASHNET, allow_tf32, machine, relative_l2, spread_photos

from featurebank.backbones import get_backbone
from featurebank.decoding import decode_many
from featurebank.embed import Embedder
from featurebank.sizing import choose_sizes

WEIGHTS = {"resnet50": "none"}  # the rest: imagenet


def measure(backbone: str, photos: list, repeats: int, tf32: bool = False) -> dict:
    spec = get_backbone(backbone)
    weights = WEIGHTS.get(backbone, "imagenet")
    batch = choose_sizes(spec.library, compression="none").batch_size
    images, _, _ = decode_many(photos, spec.input_size)
    batches = [images[i:i + batch] for i in range(0, len(images), batch)]
    arithmetics = ("float32", "bfloat16", "tf32") if tf32 else ("float32", "bfloat16")
    embedders = {a: Embedder(spec.build(weights, spec.input_size, batch, "float32" if a == "tf32" else a),
                             dtype="float16") for a in arithmetics}

    def embed_all(arithmetic: str) -> list:
        allow_tf32(arithmetic == "tf32")
        return [embedders[arithmetic](b) for b in batches]

    outputs = {a: embed_all(a) for a in arithmetics}  # warm-up, and kept
    seconds = {a: [] for a in arithmetics}
    for _ in range(repeats):
        for arithmetic in arithmetics:
            started = time.perf_counter()
            embed_all(arithmetic)
            seconds[arithmetic].append(time.perf_counter() - started)
    allow_tf32(False)
    maps = {a: np.concatenate([e.maps for e in out]).astype(np.float32) for a, out in outputs.items()}
    avg = {a: np.concatenate([e.pooled["avg"] for e in out]) for a, out in outputs.items()}
    rates = {a: [len(images) / s for s in seconds[a]] for a in seconds}
    row = {"backbone": backbone, "weights": weights, "images": len(images), "batch": batch}
    for arithmetic in arithmetics[1:]:
        cosine = (avg[arithmetic] * avg["float32"]).sum(1) / np.linalg.norm(avg[arithmetic], axis=1) / np.linalg.norm(
            avg["float32"], axis=1)
        prefix = "" if arithmetic == "bfloat16" else f"{arithmetic}_"  # bfloat16's keys as they were
        row.update({
            f"{prefix}speedup": float(np.median(rates[arithmetic]) / np.median(rates["float32"])),
            f"{prefix}maps_relative_l2": relative_l2(maps[arithmetic], maps["float32"]),
            f"{prefix}avg_relative_l2": relative_l2(avg[arithmetic], avg["float32"]),
            f"{prefix}avg_lowest_cosine": float(cosine.min()),
        })
    return {**row, **{f"{a}_img_s": rates[a] for a in arithmetics}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="TrashNet photos (every n-th, across the classes)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backbones", default="resnet50,efficientnet-lite0")
    parser.add_argument("--source", default=str(TRASHNET))
    parser.add_argument("--tf32", action="store_true",
                        help="also float32 as the libraries run it by default (TF32 on NVIDIA GPUs), against IEEE")
    args = parser.parse_args()
    photos = spread_photos(args.source, args.images)
    print(json.dumps({"machine": machine()}))
    for backbone in args.backbones.split(","):
        row = measure(backbone, photos, args.repeats, args.tf32)
        print(f"{backbone}: float32 {' '.join(f'{r:.2f}' for r in row['float32_img_s'])} img/s, bfloat16 "
              f"{' '.join(f'{r:.2f}' for r in row['bfloat16_img_s'])} img/s (x{row['speedup']:.2f}); bfloat16 vs "
              f"float32: maps {row['maps_relative_l2']:.4f}, avg vectors {row['avg_relative_l2']:.4f} relative L2, "
              f"lowest cosine {row['avg_lowest_cosine']:.5f}")
        if args.tf32:
            print(f"{backbone}: TF32 allowed {' '.join(f'{r:.2f}' for r in row['tf32_img_s'])} img/s "
                  f"(x{row['tf32_speedup']:.2f} of IEEE float32); its maps {row['tf32_maps_relative_l2']:.5f}, "
                  f"avg vectors {row['tf32_avg_relative_l2']:.5f} relative L2 from IEEE float32's")
        print(json.dumps(row))


if __name__ == "__main__":
    main()
