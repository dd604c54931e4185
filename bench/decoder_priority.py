"""A Python-heavy engine thread beside decoding processes that want every core: decoders at nice 0 against nice 10.

    python bench/decoder_priority.py [--seconds 5] [--repeats 3] [--size 32] [--workers N] [--data DIR]

Next to a GPU, the engine's thread launches a PyTorch backbone's operators from Python, copies
batches in and out, and hands them on, while decoding processes take the other cores. On the H200
(2026-11-28) the Lite0 rows, where that thread does the most, ran their stages one after another
with 15 decoding processes at normal priority on 16 cores. This is the CPU's version of that
contention, on this machine's cores: the engine thread (``common.launching_engine``) runs
PyTorch's eager forward of EfficientNet-Lite0 (random weights) on tiny images with one torch
thread, so it spends its time launching operators, as it does next to a GPU, while a feeder thread drains the decoding pool
(``featurebank.decoding.decoded_batches``, processes, ``--workers`` of them: every core by default,
so that they alone could fill the machine) over TrashNet's photos again and again. Three ways,
alternated so that drift cancels:
  none     no decoding: the engine thread alone
  normal   the decoding processes at nice 0 (the engine's choice next to a GPU before 2026-11-28's third session)
  low      the decoding processes at nice 10 (``priority='low'``)
It prints the engine thread's forwards/s against its rate alone, and the decoders' img/s, per way (medians).
"""

from __future__ import annotations

import argparse
import itertools
import json
import threading
import time
from collections.abc import Callable

from common import TRASHNET, alternated_medians, launching_engine, spread_photos

from featurebank.backbones import get_backbone
from featurebank.decoding import decoded_batches
from featurebank.sizing import usable_cores

MODES = ("none", "normal", "low")


def one_run(mode: str, engine: Callable[[float], float], photos: list, workers: int, seconds: float,
            size: tuple[int, int]) -> dict:
    stop, decoded = threading.Event(), [0, 0.0]  # images after the pool's start, and when counting began
    failed: list[BaseException] = []

    def feeder() -> None:
        if mode == "none":
            return
        files = itertools.takewhile(lambda _: not stop.is_set(), itertools.cycle(photos))
        try:
            batches = decoded_batches(files, lambda p: p, size, batch_size=32, workers=workers,
                                      decoder="processes", priority=mode)
            for i, (done, _) in enumerate(batches):
                if i == 2:  # the pool has started and its window is full: count from here
                    decoded[1] = time.perf_counter()
                elif i > 2:
                    decoded[0] += len(done)
        except BaseException as exc:  # too little shared memory, a dead process: said on the main thread
            failed.append(exc)

    thread = threading.Thread(target=feeder, daemon=True)
    thread.start()
    while mode != "none" and not decoded[1]:
        if not thread.is_alive():  # the feeder failed before its pool filled: stop, do not wait forever
            raise SystemExit(f"decoding processes failed: {failed[0] if failed else 'ended early'}")
        time.sleep(0.01)
    forwards_per_s = engine(seconds)
    decode_img_s = decoded[0] / (time.perf_counter() - decoded[1]) if mode != "none" else 0.0
    stop.set()
    thread.join()
    return {"forwards_per_s": forwards_per_s, "decode_img_s": decode_img_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=32, help="the engine's image side: small, so launching dominates")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes [every core]")
    parser.add_argument("--data", default=str(TRASHNET))
    parser.add_argument("--photos", type=int, default=300)
    parser.add_argument("--decode-size", default=None, help="HxW the photos are decoded to [ResNet50's input size]")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    workers = args.workers or usable_cores()
    size = (tuple(int(v) for v in args.decode_size.split("x")) if args.decode_size
            else tuple(get_backbone("resnet50").input_size))
    photos = spread_photos(args.data, args.photos)
    engine = launching_engine(args.size)
    figures, runs = alternated_medians(MODES, args.repeats,
                                       lambda mode: one_run(mode, engine, photos, workers, args.seconds, size))
    alone = figures["none"]["forwards_per_s"]
    print(f"{usable_cores()} cores, {workers} decoding processes, {len(photos)} photos decoded to {size[0]}x{size[1]}")
    for mode in MODES:
        f = figures[mode]
        decoding = f", decoders {f['decode_img_s']:6.1f} img/s" if mode != "none" else ""
        print(f"{mode:7s} engine thread {f['forwards_per_s']:6.1f} forwards/s ({f['forwards_per_s'] / alone:.2f} of "
              f"alone){decoding}")
    low, normal = figures["low"], figures["normal"]
    print(f"decoders at nice 10 against nice 0: engine thread ×{low['forwards_per_s'] / normal['forwards_per_s']:.2f}, "
          f"decoders ×{low['decode_img_s'] / normal['decode_img_s']:.2f}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"cores": usable_cores(), "workers": workers, "medians": figures, "runs": runs}, out, indent=2)


if __name__ == "__main__":
    main()
