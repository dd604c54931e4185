"""Which stage vectors help: 5-fold SVM accuracy of the head's avg vector plus the last k stages' vectors.

    python bench/stage_ablation.py --cache CACHE [--backbone efficientnet-lite0] [--last 0 1 3 5 7] [--folds 5]

Needs a cache made with `featurebank extract --backbone B --stages` (`--store pooled` is enough). The stage
vectors are sliced out of the stored `pooled_stages` by the channels the manifest lists, so every
row reads the same cache and no backbone runs. Each row is `classifiers.evaluate.cross_validate`
with the `svm` head, the code behind `featurebank evaluate`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

import featurebank
from classifiers.evaluate import cross_validate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--last", type=int, nargs="*", default=[0, 1, 3, 5, 7],
                        help="rows: the avg vector plus the last k stages (0: avg alone)")
    parser.add_argument("--stages-alone", action="store_true", help="also a row of all stage vectors without avg")
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    fs = featurebank.load(args.cache, args.backbone, pooling="avg+stages")
    stages = fs.manifest["stages"]
    channels = fs.X.shape[1] - sum(c for _, c in stages)
    bounds = np.cumsum([channels] + [c for _, c in stages])  # column where each stage's vector ends
    rows = [(f"avg + last {k} stage{'s' * (k != 1)}" if k else "avg",
             np.r_[0:channels, bounds[len(stages) - k]:bounds[-1]]) for k in args.last]
    if args.stages_alone:
        rows.append(("all stages, no avg", np.r_[channels:bounds[-1]]))
    print(f"{args.backbone}: {len(fs)} images; stages {[layer for layer, _ in stages]}")
    print("| features | width | accuracy | macro F1 |\n|---|---|---|---|")
    for label, columns in rows:
        started = time.perf_counter()
        result = cross_validate(SimpleNamespace(X=fs.X[:, columns], y=fs.y, classes=fs.classes), "svm",
                                folds=args.folds)
        print(f"| {label} | {len(columns)} | {100 * result['accuracy_mean']:.1f} ± {100 * result['accuracy_std']:.1f} "
              f"| {100 * result['macro_f1_mean']:.1f} |  ({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
