"""Thung & Yang's SIFT bag-of-words SVM on a cache's stored splits, with and without RootSIFT/Hellinger.

    python bench/sift_baseline.py --cache CACHE --splits-from efficientnet-lite0 [--image-size 512x384]
                                  [--keypoints 500] [--vocabularies 200 500]

Decodes the splits' images once, computes SIFT once per descriptor setting
(``BagOfVisualWordsSVM.describe``), then fits one model per vocabulary size on train + val
(``fit_descriptors``, C and gamma by 5-fold CV, as ``featurebank train-svm --features classic``
does) and prints the test accuracy of each, one JSON line per row.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from classifiers.data import load_split_images
from classifiers.jobs import _decode_splits
from classifiers.svm import BagOfVisualWordsSVM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("cache"))
    parser.add_argument("--splits-from", default="resnet50", help="backbone of the cache whose splits are used")
    parser.add_argument("--image-size", default="512x384")
    parser.add_argument("--keypoints", type=int, default=500)
    parser.add_argument("--vocabularies", type=int, nargs="+", default=[200, 500])
    args = parser.parse_args()
    size = tuple(int(v) for v in args.image_size.split("x"))
    images = load_split_images(args.cache, args.splits_from)
    splits, _ = _decode_splits(images, size)
    X_fit = np.concatenate([splits["train"][0], splits["val"][0]])
    y_fit = np.concatenate([splits["train"][1], splits["val"][1]])
    X_test, y_test = splits["test"]
    classes = list(range(len(images.classes)))
    for hellinger in (False, True):
        describer = BagOfVisualWordsSVM(hellinger=hellinger, max_keypoints=args.keypoints)
        started = time.perf_counter()
        fit_descriptors, test_descriptors = describer.describe(X_fit), describer.describe(X_test)
        describe_seconds = time.perf_counter() - started
        for vocabulary in args.vocabularies:
            started = time.perf_counter()
            model = BagOfVisualWordsSVM(hellinger=hellinger, max_keypoints=args.keypoints, vocabulary_size=vocabulary)
            model.fit_descriptors(fit_descriptors, y_fit, classes=classes)
            accuracy = float((model.predict_proba_descriptors(test_descriptors).argmax(1) == y_test).mean())
            print(json.dumps({"image_size": list(size), "hellinger": hellinger, "keypoints": args.keypoints,
                              "vocabulary": vocabulary, "test_images": len(y_test), "test_accuracy": round(accuracy, 4),
                              "describe_s": round(describe_seconds, 1),
                              "fit_s": round(time.perf_counter() - started, 1), "best": model.best_params_}),
                  flush=True)


if __name__ == "__main__":
    main()
