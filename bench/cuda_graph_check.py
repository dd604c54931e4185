"""A PyTorch backbone's batches replayed as CUDA graphs against run eagerly: the same numbers, and how fast.

    python bench/cuda_graph_check.py [--backbone efficientnet-lite0] [--weights imagenet]
        [--compute-dtype float32] [--batch-size 128] [--batches 16] [--repeats 2]

``TorchFeatureFunction`` replays full batches as a CUDA graph on CUDA (``featurebank.device.CudaGraphs``).
This script embeds two batches of photos (the photos, then their mirror images) both ways through
one feature function and compares maps (in float16, as stored) and pooled vectors bit for bit;
then it times the forward-only pass both ways, alternated, ``--batches`` batches a pass with one
batch in flight (``in_flight``, as extraction keeps it), each result let go as the next arrives.
The first graph pass includes capturing the graph. On a machine without CUDA there is no graph:
both passes run eagerly, and the script says so.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import TRASHNET, spread_photos

from featurebank.backbones import get_backbone
from featurebank.decoding import decode_many
from featurebank.embed import in_flight


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--compute-dtype", default="float32")
    parser.add_argument("--input-size", default=None, help="HxW [the backbone's]")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=16, help="batches in each timed pass")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes each way, alternated")
    parser.add_argument("--source", type=Path, default=TRASHNET)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    spec = get_backbone(args.backbone)
    if spec.library != "torch":
        parser.error(f"{args.backbone} is not a PyTorch backbone")
    size = tuple(int(v) for v in args.input_size.split("x")) if args.input_size else spec.input_size
    function = spec.build(args.weights, size, args.batch_size, args.compute_dtype)
    images, _, _ = decode_many(spread_photos(args.source, args.batch_size), size)
    if len(images) < args.batch_size:  # fewer photos than a batch: repeat them
        images = np.resize(images, (args.batch_size, *images.shape[1:]))
    pixels = [images, np.ascontiguousarray(images[:, :, ::-1])]

    def both(graphs: bool) -> list:
        function.cuda_graphs = graphs
        return [function.embed(batch, np.float16) for batch in pixels]

    def timed(graphs: bool) -> float:
        function.cuda_graphs = graphs
        started = time.perf_counter()
        for _ in in_flight(((i, pixels[i % 2]) for i in range(args.batches)),
                           lambda batch: function.submit(batch, np.float16)):
            pass
        return args.batches * args.batch_size / (time.perf_counter() - started)

    eager = both(False)
    started = time.perf_counter()
    replayed = both(True)  # captures the graph
    first_graph_seconds = time.perf_counter() - started
    identical = all(np.array_equal(r[0], e[0]) and all(np.array_equal(r[1][k], e[1][k]) for k in ("avg", "max"))
                    for r, e in zip(replayed, eager))
    largest = max(float(np.abs(r[0].astype(np.float32) - e[0].astype(np.float32)).max())
                  for r, e in zip(replayed, eager))
    passes: dict[str, list[float]] = {"eager": [], "graphs": []}
    for _ in range(args.repeats):
        passes["eager"].append(timed(False))
        passes["graphs"].append(timed(True))
    figures = {"backbone": args.backbone, "weights": args.weights, "compute_dtype": args.compute_dtype,
               "input_size": list(size), "batch_size": args.batch_size, "device": str(function.device),
               "graphs_used": bool(function.graphs), "identical": identical,
               "largest_map_difference": largest, "first_graph_batches_seconds": first_graph_seconds,
               "eager_img_s": passes["eager"], "graphs_img_s": passes["graphs"]}
    note = "" if figures["graphs_used"] else " (no CUDA here: both passes ran eagerly)"
    print(f"{args.backbone} ({args.weights}, {args.compute_dtype}) on {function.device}{note}: graphs == eager "
          f"bit for bit: {identical} (largest map difference {largest:g}); img/s eager "
          f"{', '.join(f'{v:.0f}' for v in passes['eager'])}, graphs {', '.join(f'{v:.0f}' for v in passes['graphs'])}")
    print(json.dumps(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
