"""The audit's numbers, in one run: near-duplicate threshold on TrashNet, audit time, and search at 200,000 vectors.

    python bench/audit.py --cache CACHE [--data ../shared/datasets/trashnet] [--backbone efficientnet-lite0]
                          [--copies 60] [--synthetic 200000]
    python bench/audit.py --pixel-statistics [--data ...] [--repeats 3]

``--pixel-statistics`` (no cache needed) times only the audit's first pass over the pixels:
``photo_statistics`` over every image of --data with no store, --repeats times (img/s). Run it with
``PYTHONPATH`` at another checkout to compare that checkout's library.

1. Thresholds: for --copies TrashNet photos, a JPEG re-encode at quality 70 and a 90% resize are
   embedded exactly as extract would (featurebank.embed), and their grey thumbnails computed as the
   audit does; prints each copy's feature cosine and thumbnail correlation to its original (must be
   found) next to each cached photo's most similar *other* photo (must mostly not be flagged), and
   how many distinct pairs pass both default thresholds.
2. The whole `featurebank audit` on the cache, timed (warm: quality statistics cached).
3. Near-duplicate search (featurebank.similarity.near_pairs) on --synthetic random pooled vectors
   of 1280 dimensions with planted copies: seconds and peak resident memory.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from common import TRASHNET, machine
from PIL import Image

import featurebank
from classifiers.audit import audit
from classifiers.options import FEATURE_THRESHOLD, PIXEL_THRESHOLD
from featurebank.embed import Embedder
from featurebank.images import load_image
from featurebank.similarity import near_pairs, nearest_neighbour_distance


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def copies_similarity(cache: Path, backbone: str, data: Path, count: int) -> None:
    from featurebank.quality import photo_statistics, thumbnail_similarity

    fs = featurebank.load(cache, backbone, pooling="avg")
    manifest = {**fs.manifest, "store": "pooled"}
    embedder = Embedder.for_manifest(manifest, weights="imagenet", batch_size=8)
    size = tuple(manifest["input_size"])
    rows = np.linspace(0, len(fs) - 1, count).astype(int)
    _, thumbnails = photo_statistics([data / p for p in fs.paths], fs.sha256, cache_dir=Path(fs.cache_file).parent)
    vectors = unit(fs.X)
    with tempfile.TemporaryDirectory() as folder:
        variants = {"JPEG quality 70": [], "resized to 90%": []}
        for row in rows:
            with Image.open(data / fs.paths[row]) as image:
                image = image.convert("RGB")
                path = Path(folder) / f"{row}-q70.jpg"
                image.save(path, quality=70)
                variants["JPEG quality 70"].append(path)
                path = Path(folder) / f"{row}-90.jpg"
                image.resize((int(image.width * 0.9), int(image.height * 0.9)), Image.BILINEAR).save(path, quality=95)
                variants["resized to 90%"].append(path)
        for name, paths in variants.items():
            pixels = np.stack([load_image(p, size) for p in paths])
            copies = np.concatenate([embedder(pixels[i : i + 8]).pooled["avg"] for i in range(0, len(pixels), 8)])
            cosine = np.sum(unit(copies) * vectors[rows], axis=1)
            _, copy_thumbs = photo_statistics(paths, [f"{i:064x}" for i in range(len(paths))])
            pixel = np.array([thumbnail_similarity(a, thumbnails[r]) for a, r in zip(copy_thumbs, rows)])
            print(f"{name} ({count} photos): feature cosine to the original min {cosine.min():.3f}, median "
                  f"{np.median(cosine):.3f}; thumbnail correlation min {pixel.min():.4f}")
    nearest = 1 - nearest_neighbour_distance(vectors, 1)
    print("most similar other photo's feature cosine, percentiles 50/90/99: "
          + " / ".join(f"{np.percentile(nearest, q):.3f}" for q in (50, 90, 99)))
    candidates = [(i, j) for i, j, _ in near_pairs(vectors, FEATURE_THRESHOLD) if fs.sha256[i] != fs.sha256[j]]
    pixel = np.array([thumbnail_similarity(thumbnails[i], thumbnails[j]) for i, j in candidates])
    print(f"distinct pairs with feature cosine ≥ {FEATURE_THRESHOLD}: {len(candidates)}; of these, thumbnail "
          f"correlation ≥ {PIXEL_THRESHOLD}: {(pixel >= PIXEL_THRESHOLD).sum()} (reported as near-duplicates)")


def synthetic_search(count: int, dims: int = 1280) -> None:
    rng = np.random.default_rng(0)
    vectors = np.abs(rng.normal(size=(count, dims)).astype(np.float32)) ** 3  # sparse-ish, non-negative like ReLU maps
    planted = rng.choice(count, 100, replace=False)
    vectors[planted[50:]] = vectors[planted[:50]] * rng.normal(1, 0.01, (50, dims)).astype(np.float32)
    vectors = unit(vectors)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    pairs = near_pairs(vectors, FEATURE_THRESHOLD)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    found = {(min(i, j), max(i, j)) for i, j, _ in pairs}
    expected = {(min(a, b), max(a, b)) for a, b in zip(planted[:50], planted[50:])}
    print(f"near-duplicate search over {count:,} vectors of {dims}: {seconds:.1f} s, peak RSS {peak / 1024:.0f} MiB "
          f"({(peak - before) / 1024:.0f} MiB above the vectors' {vectors.nbytes / 2**20:.0f} MiB); planted pairs "
          f"found {len(found & expected)}/50, other pairs {len(found - expected)}")


def pixel_statistics_speed(data: Path, repeats: int) -> None:
    from featurebank.quality import photo_statistics
    from featurebank.scan import scan_folder

    scan = scan_folder(data)  # the images and content hashes a cache of --data records (not timed)
    paths, digests = [data / relpath for relpath in scan.relpaths], scan.sha256s
    print(f"library: {Path(featurebank.__file__).parent}")
    for _ in range(repeats):
        started = time.perf_counter()
        stats, _ = photo_statistics(paths, digests)
        seconds = time.perf_counter() - started
        print(f"pixel statistics of {len(paths)} images, no store: {seconds:.2f} s, {len(paths) / seconds:.0f} img/s "
              f"({int(np.isnan(stats).any(axis=1).sum())} unreadable)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path)
    parser.add_argument("--pixel-statistics", action="store_true", help="time only the pixel statistics (no cache)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=TRASHNET)
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--copies", type=int, default=60)
    parser.add_argument("--synthetic", type=int, default=200_000)
    args = parser.parse_args()
    if args.cache is None and not args.pixel_statistics:
        parser.error("--cache is required, except with --pixel-statistics")
    print(f"Machine: {machine()}")
    if args.pixel_statistics:
        pixel_statistics_speed(args.data, args.repeats)
        return
    copies_similarity(args.cache, args.backbone, args.data, args.copies)
    audit(args.cache, args.backbone)  # warms the quality statistics, as a second audit finds them
    started = time.perf_counter()
    result = audit(args.cache, args.backbone)
    print(f"featurebank audit (warm): {time.perf_counter() - started:.1f} s; findings {result['summary']}; "
          f"step seconds {result['timings']}")
    synthetic_search(args.synthetic)


if __name__ == "__main__":
    main()
