"""How much of decoding a photo holds Python's GIL: the figure behind decoding in processes next to a GPU.

    python bench/decode_gil.py [--source ../shared/datasets/trashnet] [--images 500] [--size 512x384]

Decodes --images photos on one thread with ``featurebank.images.load_image`` and times, around
it, the calls into Pillow's C code that release the GIL (the decoder's ``decode``, the encoder's
``encode`` behind ``np.asarray``, and ``resize`` where the size differs). What is left of each
photo's time holds the GIL: a pool of threads cannot decode faster than 1 / that, however many
cores it has, and it competes with the thread that feeds the accelerator. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import TRASHNET
from PIL import Image

from featurebank.images import load_image

released = [0.0]  # seconds spent in calls that release the GIL


class TimedCoder:
    """Wraps a Pillow decoder or encoder and adds the time of its C calls to ``released``."""

    def __init__(self, coder):
        self._coder = coder

    def __getattr__(self, name):
        return getattr(self._coder, name)

    def decode(self, data):
        started = time.perf_counter()
        try:
            return self._coder.decode(data)
        finally:
            released[0] += time.perf_counter() - started

    def encode(self, *args):
        started = time.perf_counter()
        try:
            return self._coder.encode(*args)
        finally:
            released[0] += time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=TRASHNET)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--size", default="512x384")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    files = sorted(args.source.rglob("*.jpg"))[: args.images]
    for path in files:
        path.read_bytes()  # from the page cache in both passes

    started = time.perf_counter()
    for path in files:
        load_image(path, size)
    plain = (time.perf_counter() - started) / len(files)

    get_decoder, get_encoder = Image._getdecoder, Image._getencoder
    Image._getdecoder = lambda *a, **k: TimedCoder(get_decoder(*a, **k))
    Image._getencoder = lambda *a, **k: TimedCoder(get_encoder(*a, **k))
    resize = Image.Image.resize

    def timed_resize(self, *a, **k):
        begun = time.perf_counter()
        try:
            return resize(self, *a, **k)
        finally:
            released[0] += time.perf_counter() - begun

    Image.Image.resize = timed_resize
    started = time.perf_counter()
    for path in files:
        load_image(path, size)
    total = (time.perf_counter() - started) / len(files)
    holding = total - released[0] / len(files)
    print(json.dumps({
        "images": len(files), "size": args.size, "ms_per_image": round(plain * 1e3, 3),
        "ms_per_image_timed": round(total * 1e3, 3), "ms_releasing_gil": round(released[0] / len(files) * 1e3, 3),
        "ms_holding_gil": round(holding * 1e3, 3), "gil_share": round(holding / total, 3),
        "threads_ceiling_img_s": round(1 / holding), "one_core_img_s": round(1 / plain),
    }))


if __name__ == "__main__":
    main()
