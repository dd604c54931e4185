"""Extraction with its helper threads at nice 10 (the engine's), nice 19 or SCHED_IDLE, alternated with backbone passes.

    python bench/helper_priority.py [--data DIR] [--limit 160] [--compression none] [--repeats 4]
                                    [--modes nice10,idle,nice19] [--backbone resnet50]

On a small CPU the decoding, writing and compression threads take cores from the backbone, so the
engine runs them at low OS priority (``featurebank.images.lower_thread_priority``: nice 10). This
script swaps that function for each mode in turn and prints each mode's extraction rate (model
build excluded) over the backbone's, with extractions in alternating order between backbone
passes so that a drift of the machine's speed does not favour one mode. Linux only (SCHED_IDLE).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import TRASHNET, machine, subset_folder

import featurebank
from featurebank import array_pool, images
from featurebank.backbones import get_backbone
from featurebank.scan import scan_folder


def priority_setter(mode: str):
    """What ``lower_thread_priority`` does under ``mode``: nice10, nice19 or idle (SCHED_IDLE)."""
    def lower() -> None:
        with contextlib.suppress(AttributeError, OSError):
            if mode == "idle":
                os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
            else:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), int(mode.removeprefix("nice")))
    return lower


def use_mode(mode: str) -> None:
    """Every featurebank module that lowers a helper's priority does it ``mode``'s way from now on.

    Each module binds ``lower_thread_priority`` when it imports it, so each one is patched (decoding,
    the array pool, the shard writer's committer, the pipeline's writer thread, ...), found by name
    so that a module added or moved later is not missed.
    """
    lower = priority_setter(mode)
    for name, module in list(sys.modules.items()):
        if name.partition(".")[0] == "featurebank" and hasattr(module, "lower_thread_priority"):
            module.lower_thread_priority = lower
    array_pool.configure_array_pool(0)  # extraction resizes it at low priority: a fresh pool, made with ``lower``


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=TRASHNET)
    parser.add_argument("--limit", type=int, default=160)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--compression", default="none")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--modes", default="nice10,idle,nice19")
    args = parser.parse_args()
    modes = args.modes.split(",")
    data = subset_folder(args.data, args.limit)
    spec = get_backbone(args.backbone)
    pixels = np.stack([images.load_image(s.path, spec.input_size) for s in scan_folder(data).samples])
    function = spec.build("none", spec.input_size, 16)

    def backbone_rate() -> float:
        started = time.perf_counter()
        for start in range(0, len(pixels), 16):
            function(pixels[start : start + 16])
        return len(pixels) / (time.perf_counter() - started)

    backbone_rate()  # build and first call
    work = tempfile.mkdtemp(prefix="featurebank-priority-")
    rates: dict[str, list[float]] = {"backbone": [], **{m: [] for m in modes}}
    print(f"machine: {machine()}; {len(pixels)} images, {args.backbone}, float16 + {args.compression}")
    try:
        for repeat in range(args.repeats):
            rates["backbone"].append(backbone_rate())
            for mode in modes if repeat % 2 == 0 else modes[::-1]:
                use_mode(mode)
                report = featurebank.extract(data, backbone=spec.name, cache=work, weights="none", batch_size=16,
                                             dtype="float16", compression=args.compression, rebuild=True)
                rates[mode].append(report.new / (report.seconds - report.build_seconds))
            print(repeat, {k: round(v[-1], 3) for k, v in rates.items()}, flush=True)
        rates["backbone"].append(backbone_rate())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    backbone = float(np.mean(rates["backbone"]))
    for mode in modes:
        print(f"{mode}: extraction / backbone {np.mean(rates[mode]) / backbone:.3f}")
    print(json.dumps(rates))


if __name__ == "__main__":
    main()
