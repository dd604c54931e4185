"""CPU time per photo of featurebank's decoding (Pillow) against simplejpeg, and whether their pixels agree.

    pip install simplejpeg   # not a featurebank dependency
    python bench/jpeg_decoders.py [--source DIR] [--every 8]

Decodes every ``--every``-th JPEG under DIR (TrashNet by default) at its stored size, three passes
each, and prints the best pass's CPU ms per photo: ``load_image`` from the file, simplejpeg from
bytes already read, and simplejpeg with the read; then how many photos decode to identical pixels.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from common import TRASHNET

from featurebank.images import load_image


def cpu_ms_per_photo(decode, count: int, passes: int = 3) -> float:
    best = float("inf")
    for _ in range(passes):
        started = time.process_time()
        for index in range(count):
            decode(index)
        best = min(best, time.process_time() - started)
    return best / count * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=TRASHNET)
    parser.add_argument("--every", type=int, default=8)
    args = parser.parse_args()
    try:
        import simplejpeg
    except ImportError:
        sys.exit("this comparison needs simplejpeg: pip install simplejpeg")
    files = sorted(args.source.rglob("*.jpg"))[:: args.every]
    raw = [path.read_bytes() for path in files]
    sizes = [simplejpeg.decode_jpeg_header(data)[:2] for data in raw]
    print(f"{len(files)} photos from {args.source}")
    print(f"load_image: {cpu_ms_per_photo(lambda i: load_image(files[i], sizes[i]), len(files)):.2f} ms")
    print(f"simplejpeg: {cpu_ms_per_photo(lambda i: simplejpeg.decode_jpeg(raw[i], colorspace='RGB'), len(files)):.2f} ms")
    print("simplejpeg with the read: "
          f"{cpu_ms_per_photo(lambda i: simplejpeg.decode_jpeg(files[i].read_bytes(), colorspace='RGB'), len(files)):.2f} ms")
    same = sum(np.array_equal(load_image(path, shape), simplejpeg.decode_jpeg(data, colorspace="RGB"))
               for path, shape, data in zip(files, sizes, raw))
    print(f"identical pixels: {same} of {len(files)}")


if __name__ == "__main__":
    main()
