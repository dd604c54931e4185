"""How far an accelerator's features are from the CPU's, for the same photos, backbone and settings.

    python bench/device_vs_cpu.py [--backbone resnet50] [--weights none] [--compute-dtype float32] [--images 16]

The cache key records the backbone, weights, settings and library versions, not the device, so
a cache may hold rows of both: a GPU's float32 features must stay within float16 rounding of a
CPU's. On NVIDIA GPUs the libraries run float32 convolutions as TF32 by default, which did not
(H200, 2026-11-28), so the engine runs them in IEEE float32; ``--tf32`` lets the device use TF32
again, to compare. This script embeds ``--images``
TrashNet photos through the embed path (``Embedder.for_manifest``, as extraction does) on the
default device, then again in a child process that sees no accelerator (``JAX_PLATFORMS=cpu``,
``CUDA_VISIBLE_DEVICES=''``), and prints the relative L2 distance of the maps and of the avg-pooled
vectors, the share of float16 map values that differ, and the share that differ by more than one
float16 step (the rounding of two float32 values a hair apart differs by one). On a machine without an accelerator both
sides are the CPU and every figure is 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import TRASHNET, allow_tf32, relative_l2, spread_photos

HERE = Path(__file__).resolve()


def beyond_one_float16_step(maps: np.ndarray, reference: np.ndarray) -> float:
    """The share of float16 values farther from the reference's than one float16 step (the larger one's spacing)."""
    larger = np.maximum(np.abs(maps), np.abs(reference)).astype(np.float16)
    gap = np.abs(maps.astype(np.float32) - reference.astype(np.float32))
    return float(np.mean(gap > np.spacing(larger).astype(np.float32)))


def embed(args) -> dict[str, np.ndarray]:
    from featurebank.backbones import get_backbone
    from featurebank.decoding import decode_many
    from featurebank.embed import Embedder
    from featurebank.extraction import resolve_manifest
    from featurebank.sizing import accelerator

    spec = get_backbone(args.backbone)
    images, _, _ = decode_many(spread_photos(args.source, args.images), spec.input_size)
    manifest = resolve_manifest(spec, weights=args.weights, input_size=spec.input_size, dtype="float16",
                                compute_dtype=args.compute_dtype)
    embedded = Embedder.for_manifest(manifest, weights=args.weights, batch_size=len(images), spec=spec)(images)
    return {"maps": embedded.maps, "avg": embedded.pooled["avg"],
            "device": np.array(accelerator(spec.library) or "cpu")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--compute-dtype", default="float32")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--source", default=str(TRASHNET))
    parser.add_argument("--save", default=None, help=argparse.SUPPRESS)  # the child's output file
    parser.add_argument("--tf32", action="store_true",
                        help="on the device, float32 convolutions as TF32, the libraries' default, not the engine's "
                             "IEEE float32 (bench/common.py)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.save:
        np.savez(args.save, **embed(args))
        return
    if args.tf32:
        allow_tf32()
    here = embed(args)
    with tempfile.TemporaryDirectory() as folder:
        saved = Path(folder) / "cpu.npz"
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
        options = ["--backbone", args.backbone, "--weights", args.weights, "--compute-dtype", args.compute_dtype,
                   "--images", str(args.images), "--source", args.source, "--save", str(saved)]
        subprocess.run([sys.executable, str(HERE), *options], env=env, check=True)
        cpu = dict(np.load(saved))
    figures = {
        "backbone": args.backbone, "weights": args.weights, "compute_dtype": args.compute_dtype,
        "images": len(here["avg"]), "device": str(here["device"]), "reference": str(cpu["device"]),
        "tf32": args.tf32,
        "maps_relative_l2": relative_l2(here["maps"], cpu["maps"]),
        "avg_relative_l2": relative_l2(here["avg"], cpu["avg"]),
        "float16_values_differing": float(np.mean(here["maps"] != cpu["maps"])),
        "float16_values_beyond_one_step": beyond_one_float16_step(here["maps"], cpu["maps"]),
    }
    probe = ", TF32 allowed" if args.tf32 else ""
    print(f"{args.backbone} ({args.weights}, {args.compute_dtype}{probe}) on {figures['device']} against "
          f"{figures['reference']}: maps {figures['maps_relative_l2']:.5f}, avg vectors "
          f"{figures['avg_relative_l2']:.5f} relative L2; {figures['float16_values_differing']:.1%} of the float16 "
          f"map values differ, {figures['float16_values_beyond_one_step']:.2%} by more than one float16 step")
    print(json.dumps(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
