"""SIFT descriptors on featurebank's array pool against a pool of the SIFT track's own, as it had until 2026-11-29.

    python bench/sift_pool.py [--data DIR] [--limit N] [--image-size 512x384] [--repeats 2]

Decodes the photos once (the one decoding pool), then times ``BagOfVisualWordsSVM.describe`` (the
array pool, every usable core) and the same descriptors on a ``ThreadPoolExecutor(usable_cores())``
made for the call, alternated. Prints one JSON line: the median seconds of each way, every run,
and whether the two gave identical descriptors.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
from common import TRASHNET, alternated_medians, machine, subset_folder

from classifiers.svm import BagOfVisualWordsSVM, sift_descriptors
from featurebank.backbones import input_size_from_text
from featurebank.decoding import decoded_batches
from featurebank.scan import scan_folder
from featurebank.sizing import usable_cores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=TRASHNET)
    parser.add_argument("--limit", type=int, default=None, help="use about N photos (spread over classes)")
    parser.add_argument("--image-size", default="512x384", help="HxW the photos are decoded at, as train-svm does")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    size = input_size_from_text(args.image_size)
    paths = [s.path for s in scan_folder(subset_folder(args.data, args.limit)).samples]
    images = [np.array(image) for _, batch in decoded_batches(paths, lambda p: p, size, batch_size=32,
                                                              workers=usable_cores(), failures=[])
              for image in batch]
    model = BagOfVisualWordsSVM()
    one = partial(sift_descriptors, max_keypoints=model.max_keypoints, root=model.hellinger)
    described = {}

    def one_run(way: str) -> dict:
        started = time.perf_counter()
        if way == "array-pool":
            described[way] = model.describe(images)
        else:
            with ThreadPoolExecutor(usable_cores()) as pool:
                described[way] = list(pool.map(one, images))
        return {"seconds": time.perf_counter() - started}

    medians, runs = alternated_medians(("own-pool", "array-pool"), args.repeats, one_run)
    identical = all(np.array_equal(a, b) for a, b in zip(described["own-pool"], described["array-pool"]))
    print(json.dumps({"machine": machine(), "photos": len(images), "image_size": list(size),
                      "seconds": {way: round(m["seconds"], 2) for way, m in medians.items()},
                      "runs": {way: [round(r["seconds"], 2) for r in rs] for way, rs in runs.items()},
                      "identical": identical}))


if __name__ == "__main__":
    main()
