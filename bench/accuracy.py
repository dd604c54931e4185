"""Accuracy from frozen cached features on TrashNet: backbone × pooling × head (× flip), 5-fold CV, in one run.

    python bench/accuracy.py --cache CACHE [--data ../shared/datasets/trashnet] [--folds 5] [--write BENCHMARKS.md]

Needs the caches first (pooled vectors and stage vectors are enough):
    featurebank extract --backbone efficientnet-lite0 --store pooled --stages --data DATA --cache CACHE   (also
    lite1 and lite2; and efficientnet-lite0 --store pooled --augment hflip-mean for the flip rows)

Every row is `classifiers.evaluate.cross_validate` (the code behind `featurebank evaluate`): stratified
folds, each head tuned by inner CV on the training folds only. Each backbone's extraction cost per
image is measured here on 32 TrashNet photos (decode + forward + pooling, after one warm-up batch).
With --write, the table replaces the block between the accuracy markers in that file.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from common import TRASHNET, machine

import featurebank
from classifiers.evaluate import cross_validate
from featurebank.backbones import get_backbone
from featurebank.embed import Embedder
from featurebank.extraction import resolve_manifest
from featurebank.decoding import decode_many
from featurebank.rows import uses_stages
from featurebank.scan import scan_folder

ROWS = [  # (backbones joined by '+', pooling, head)
    ("efficientnet-lite0", "avg", "svm"), ("efficientnet-lite0", "avg+max", "svm"),
    ("efficientnet-lite0", "avg", "logreg"), ("efficientnet-lite1", "avg", "svm"),
    ("efficientnet-lite2", "avg", "svm"), ("efficientnet-lite0+efficientnet-lite1+efficientnet-lite2", "avg", "svm"),
    ("efficientnet-lite0:hflip-mean", "avg", "svm"),
    ("efficientnet-lite0:hflip-mean+efficientnet-lite1+efficientnet-lite2", "avg", "svm"),
    ("efficientnet-lite0", "avg+stages", "svm"), ("efficientnet-lite1", "avg+stages", "svm"),
    ("efficientnet-lite2", "avg+stages", "svm"),
    ("efficientnet-lite0+efficientnet-lite1+efficientnet-lite2", "avg+stages", "svm"),
    ("efficientnet-lite0+efficientnet-lite1+efficientnet-lite2", "stages", "svm"),
]
MARKERS = ("<!-- bench/accuracy.py:start -->", "<!-- bench/accuracy.py:end -->")


def seconds_per_image(name: str, data: Path, *, stages: bool) -> float:
    """Decode + forward + pooling per image on this machine, 32 photos after a warm-up batch of 8."""
    backbone, _, augment = name.partition(":")
    spec = get_backbone(backbone)
    manifest = resolve_manifest(spec, weights="imagenet", input_size=(512, 384), dtype="float16", store="pooled",
                                augment=augment or "none", stages=stages)
    embedder = Embedder.for_manifest(manifest, weights="imagenet", batch_size=8, spec=spec)
    paths = [s.path for s in scan_folder(data).samples[::60][:40]]
    embedder(decode_many(paths[:8], (512, 384))[0])
    started = time.perf_counter()
    for start in range(8, 40, 8):
        embedder(decode_many(paths[start : start + 8], (512, 384))[0])
    return (time.perf_counter() - started) / 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=TRASHNET)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--balanced", type=int, default=127)
    parser.add_argument("--only", type=int, nargs="*", help="row numbers to run (default: all)")
    parser.add_argument("--balanced-rows", type=int, nargs="*", help="rows also run on the balanced subset (default: all)")
    parser.add_argument("--write", type=Path, default=None, help="replace the marked table in this file")
    args = parser.parse_args()
    cost = {}
    lines = [f"Machine: {machine()}. {args.folds}-fold stratified CV on all TrashNet images; balanced = "
             f"{args.balanced} per class. Command: `python bench/accuracy.py --cache CACHE --write BENCHMARKS.md`.", "",
             "| # | backbone(s) | pooling | head | accuracy (all) | macro F1 | balanced accuracy | extraction s/img |",
             "|---|---|---|---|---|---|---|---|"]
    for number, (backbones, pooling, head) in enumerate(ROWS, start=1):
        if args.only and number not in args.only:
            continue
        stages = uses_stages(pooling)
        for name in backbones.split("+"):
            if (name, stages) not in cost:
                cost[name, stages] = seconds_per_image(name, args.data, stages=stages)
        started = time.perf_counter()
        full = cross_validate(featurebank.load(args.cache, backbones, pooling=pooling), head, folds=args.folds)
        few = None
        if args.balanced_rows is None or number in args.balanced_rows:
            few = cross_validate(featurebank.load(args.cache, backbones, pooling=pooling, balanced=args.balanced),
                                 head, folds=args.folds)
        balanced_text = (f"{100 * few['accuracy_mean']:.1f} ± {100 * few['accuracy_std']:.1f}" if few else "not run")
        line = (f"| {number} | {backbones.replace('efficientnet-', '')} | {pooling} | {head} | "
                f"{100 * full['accuracy_mean']:.1f} ± {100 * full['accuracy_std']:.1f} | "
                f"{100 * full['macro_f1_mean']:.1f} | "
                f"{balanced_text} | "
                f"{sum(cost[n, stages] for n in backbones.split('+')):.2f} |")
        lines.append(line)
        print(line, f"({time.perf_counter() - started:.0f} s)", flush=True)
    table = "\n".join(lines)
    print(table)
    if args.write:
        text = args.write.read_text()
        block = f"{MARKERS[0]}\n{table}\n{MARKERS[1]}"
        if MARKERS[0] in text:
            text = re.sub(re.escape(MARKERS[0]) + ".*?" + re.escape(MARKERS[1]), lambda _: block, text, flags=re.S)
        else:
            text += f"\n{block}\n"
        args.write.write_text(text)


if __name__ == "__main__":
    main()
