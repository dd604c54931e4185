"""`--decoder nvjpeg` against Pillow on every photo of a folder: its routing cost, and its pixels.

    python bench/nvjpeg_check.py [--source ../shared/datasets/trashnet] [--size 512x384] [--repeats 3]
                                 [--library torchcodec|torchvision]

Prints, per pass over every file: the µs per photo of reading it (one thread) and of walking its
JPEG markers (``gpu_decoding.nvjpeg_can_decode``), and how many route to nvJPEG. Then decodes every
file through the ``nvjpeg`` path and through threads (``decoded_batches``) and prints both img/s
and how far the pixels are apart (largest and mean difference in levels, share of values that
differ). With a CUDA GPU the nvjpeg path runs nvJPEG; without one it runs the library's CPU decoder
(libjpeg-turbo), whose pixels should equal Pillow's exactly: the check the tests make, on real photos.
``--library`` picks TorchCodec's decoder or torchvision's [the first that loads here].
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import TRASHNET, pixel_difference

from featurebank import gpu_decoding
from featurebank.decoding import decoded_batches
from featurebank.scan import scan_folder


def decode_all(paths: list, size: tuple[int, int], decoder: str, batch_size: int, workers: int):
    """(pixels of the files that decoded, in order; img/s; failures)."""
    failures: list = []
    started = time.perf_counter()
    pixels = [batch.copy() for _, batch in decoded_batches(paths, lambda p: p, size, batch_size=batch_size,
                                                           workers=workers, failures=failures, decoder=decoder)]
    return np.concatenate(pixels), len(paths) / (time.perf_counter() - started), failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=TRASHNET)
    parser.add_argument("--size", default="512x384", help="HxW")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--library", choices=gpu_decoding.JPEG_LIBRARIES, default=None)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    scan = scan_folder(args.source)
    paths = [str(scan.root / relpath) for relpath in scan.relpaths]
    library = gpu_decoding.import_jpeg_library((args.library,) if args.library else None)
    gpu_decoding.JPEG_LIBRARIES = (library.name,)
    if not library.torch.cuda.is_available():
        gpu_decoding.DEVICE = "cpu"
    figures: dict = {"photos": len(paths), "device": gpu_decoding.DEVICE, "library": library.name, "read_us": [],
                     "route_us": []}
    for _ in range(args.repeats):
        started = time.perf_counter()
        contents = [Path(p).read_bytes() for p in paths]
        figures["read_us"].append(round((time.perf_counter() - started) / len(paths) * 1e6, 1))
        started = time.perf_counter()
        figures["to_nvjpeg"] = sum(gpu_decoding.nvjpeg_can_decode(data) for data in contents)
        figures["route_us"].append(round((time.perf_counter() - started) / len(paths) * 1e6, 1))
    pillow, figures["threads_img_s"], pillow_failures = decode_all(paths, size, "threads", args.batch_size,
                                                                   args.workers)
    ours, figures["nvjpeg_img_s"], our_failures = decode_all(paths, size, "nvjpeg", args.batch_size, args.workers)
    assert [p for p, _ in our_failures] == [p for p, _ in pillow_failures], "the two skipped different files"
    figures.update(pixel_difference(ours, pillow), skipped=len(pillow_failures))
    figures["identical"] = figures["max_levels"] == 0
    print(f"{len(paths)} photos, {figures['to_nvjpeg']} to nvJPEG; read {figures['read_us']} µs, route "
          f"{figures['route_us']} µs a photo; nvjpeg path ({library.name}) on {figures['device']}: "
          f"{figures['nvjpeg_img_s']:.0f} img/s "
          f"against threads {figures['threads_img_s']:.0f}; identical pixels: {figures['identical']} (largest "
          f"difference {figures['max_levels']} levels, mean {figures['mean_levels']:.4f})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
