"""Accuracy with pretrained EfficientNet-Lite0 features on TrashNet (5-fold CV), and what storage choices cost.

    python bench/lite0_accuracy.py [--data DIR] [--cache DIR] [--folds 5]

1. Extracts efficientnet-lite0 features (packaged ImageNet weights, no network) into the cache.
2. 5-fold stratified cross-validation over all images and over the study's balanced subset
   (127 per class): a dense head on avg-pooled features (Adam, early stopping on a 15% inner
   validation split) and an RBF SVM (C, gamma by inner 3-fold CV).
3. Storage: bytes per image and single-thread write speed of float32 / float16 with no, lzf, gzip
   and zstd compression, and the accuracy change float16 causes (compression is lossless, checked).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from common import TRASHNET, machine, subset_folder
from sklearn.model_selection import StratifiedKFold, train_test_split

import featurebank
from classifiers import DenseHead
from classifiers.svm import FeatureSVM
from featurebank.cache import ShardWriter
from featurebank.splits import balanced_subset


def cross_validate(X: np.ndarray, y: np.ndarray, *, folds: int, seed: int) -> dict:
    """Mean ± std test accuracy over stratified folds for the pooled dense head and the SVM."""
    scores = {"head": [], "svm": []}
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(X, y):
        fit, val = train_test_split(train, test_size=0.15, stratify=y[train], random_state=seed)
        head = DenseHead(optimizer="adam", seed=seed).fit(X[fit], y[fit], validation_data=(X[val], y[val]))
        scores["head"].append(head.score(X[test], y[test]))
        scores["svm"].append(FeatureSVM(cv=3, seed=seed).fit(X[train], y[train]).score(X[test], y[test]))
    return {name: (float(np.mean(v)), float(np.std(v))) for name, v in scores.items()}


def storage_table(maps: np.ndarray) -> list[dict]:
    """Write all feature maps with each dtype/compression into a shard; bytes per image, write img/s, lossless?"""
    rows = []
    digests = [f"{i:064x}" for i in range(len(maps))]
    for dtype, compression in [("float32", "none"), ("float16", "none"), ("float16", "lzf"), ("float16", "gzip"),
                               ("float16", "zstd"), ("float32", "zstd")]:
        folder = Path(tempfile.mkdtemp(prefix="featurebank-storage-"))
        writer = ShardWriter(folder, feature_shape=maps.shape[1:], dtype=dtype, compression=compression,
                             shard_size=len(maps), key="bench")
        started = time.perf_counter()
        for start in range(0, len(maps), 64):
            writer.write(maps[start : start + 64], digests[start : start + 64], digests[start : start + 64])
        writer.close()
        seconds = time.perf_counter() - started
        shard = next(folder.glob("*.h5"))
        import h5py

        with h5py.File(shard, "r") as fh:
            lossless = bool(np.array_equal(fh["features"][:50], maps[:50].astype(dtype)))
        size = shard.stat().st_size
        rows.append({"dtype": dtype, "compression": compression, "bytes_per_image": size / len(maps),
                     "fraction_of_float32": size / maps.astype(np.float32).nbytes,
                     "write_img_s_one_thread": len(maps) / seconds, "lossless_vs_dtype": lossless})
        shard.unlink()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=TRASHNET)
    parser.add_argument("--cache", type=Path, default=Path("bench/out/cache-lite0"))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="use about N images (smoke tests)")
    parser.add_argument("--per-class", type=int, default=127, help="balanced subset size (the study: 127)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    report = featurebank.extract(subset_folder(args.data, args.limit), backbone="efficientnet-lite0", cache=args.cache,
                                 weights="imagenet", dtype="float32", compression="none")
    print(f"extract: {report.new} new, {report.cached} cached in {report.seconds:.1f} s "
          f"({report.images_per_s:.2f} img/s)")
    fb = featurebank.load(cache=args.cache, backbone="efficientnet-lite0", dtype="float32", lazy=True)
    maps = np.asarray(fb.X)
    X, y = maps.mean(axis=(1, 2)), fb.y
    print(f"features: {maps.shape}, {np.mean(maps == 0):.3f} of values are zero")
    results = {"images": len(y), "zero_fraction": float(np.mean(maps == 0))}
    balanced = balanced_subset(fb.sha256, y, args.per_class, seed=0)
    for name, mask in [("all images", np.ones(len(y), bool)), (f"balanced {args.per_class}/class", balanced)]:
        scores = cross_validate(X[mask], y[mask], folds=args.folds, seed=args.seed)
        results[name] = scores
        print(f"{name} ({mask.sum()} images), {args.folds}-fold CV: pooled dense head "
              f"{scores['head'][0]:.4f} ± {scores['head'][1]:.4f}; SVM {scores['svm'][0]:.4f} ± {scores['svm'][1]:.4f}")
    half = maps.astype(np.float16).astype(np.float32).mean(axis=(1, 2))
    scores = cross_validate(half, y, folds=args.folds, seed=args.seed)
    results["float16, all images"] = scores
    print(f"float16 features, all images: head {scores['head'][0]:.4f} ± {scores['head'][1]:.4f}; "
          f"SVM {scores['svm'][0]:.4f} ± {scores['svm'][1]:.4f}")
    results["storage"] = storage_table(maps)
    for row in results["storage"]:
        print(f"{row['dtype']:>8} {row['compression']:>5}: {row['bytes_per_image'] / 1e3:8.1f} kB/image "
              f"({100 * row['fraction_of_float32']:5.1f}% of float32), write {row['write_img_s_one_thread']:7.1f} img/s "
              f"on one thread, lossless: {row['lossless_vs_dtype']}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
