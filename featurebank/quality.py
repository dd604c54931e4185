"""Pixel statistics of photos: quality (too dark, overexposed, blurry, tiny, near-constant) and thumbnails.

Statistics and a 32×24 grey thumbnail are computed once per image content and kept in the cache
folder (``.quality-stats.npz``, keyed by sha256), so a second audit reads no pixels. Thumbnails
confirm near-duplicates: a re-encoded or resized copy keeps its thumbnail (correlation ≥ 0.999 on
TrashNet) while its deep features move more than those of distinct photos of similar objects.
"""

from __future__ import annotations

import contextlib
import io
from functools import partial
from pathlib import Path

import numpy as np

STATISTICS = ("width", "height", "brightness", "dark_fraction", "bright_fraction", "contrast", "sharpness")
ANALYSIS_SIZE = (256, 192)  # (height, width) the statistics are computed at, so they do not depend on resolution
THUMBNAIL_SIZE = (32, 24)  # (height, width) of the grey thumbnails
GREY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)  # RGB → brightness (ITU-R BT.601 luma)
PIXEL_BATCH = 32  # photos per batch from the decoding pool: 4.7 MB at ANALYSIS_SIZE
QUALITY_RULES = {
    "too dark": "mean brightness < 40 of 255, or over 70% of pixels below 30",
    "overexposed": "mean brightness > 225, or over 50% of pixels above 250",
    "blurry": "variance of the Laplacian < 15 (at 256×192, grey)",
    "tiny": "shorter side < 64 pixels",
    "near-constant": "standard deviation of brightness < 6",
}


def _statistics(pixels: np.ndarray, stored_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One photo's statistics and thumbnail, from its pixels at ANALYSIS_SIZE and its stored (width, height)."""
    from PIL import Image

    grey = pixels.astype(np.float32) @ GREY_WEIGHTS
    laplacian = grey[1:-1, :-2] + grey[1:-1, 2:]  # then in place, in the same order: the same bits, fewer arrays
    laplacian += grey[:-2, 1:-1]
    laplacian += grey[2:, 1:-1]
    laplacian -= 4 * grey[1:-1, 1:-1]
    stats = np.array([*stored_size, grey.mean(), np.count_nonzero(grey < 30) / grey.size,
                      np.count_nonzero(grey > 250) / grey.size, grey.std(), laplacian.var()], np.float32)
    thumbnail = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).resize(THUMBNAIL_SIZE[::-1], Image.BILINEAR)
    return stats, np.asarray(thumbnail, np.uint8).ravel()


def _stored_size(path: Path) -> tuple[int, int] | None:
    """(width, height) as the file stores them (its header only), or None if it cannot be read now."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def _measure(known: dict, paths: list[Path], sha256s, decoded: list[tuple[int, np.ndarray]]) -> None:
    """Put the statistics of decoded (position, pixels) pairs into ``known`` (on the array pool's threads)."""
    for i, pixels in decoded:
        stored_size = _stored_size(paths[i])
        if stored_size is not None:  # None: gone since it was decoded, so left NaN like an unreadable file
            known[str(sha256s[i])] = _statistics(pixels, stored_size)


def photo_statistics(paths: list[Path], sha256s, *, cache_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(n, len(STATISTICS)) statistics and (n, 32·24) uint8 thumbnails; NaN statistics where a file is unreadable.

    The photos not in the store are decoded by the one decoding pool (``decoded_batches``, at
    ANALYSIS_SIZE), as extraction and predict decode theirs, on every core: this thread only waits
    while the array pool measures each batch. A file that fails is left NaN, never fatal.
    """
    from featurebank.array_pool import in_parallel
    from featurebank.decoding import decoded_batches
    from featurebank.sizing import usable_cores

    size = THUMBNAIL_SIZE[0] * THUMBNAIL_SIZE[1]
    store = Path(cache_dir) / ".quality-stats.npz" if cache_dir else None
    known: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if store and store.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError), np.load(store) as saved:
            known = dict(zip(saved["sha256"].astype("U64").tolist(), zip(saved["stats"], saved["thumbnails"])))
    todo = [i for i, d in enumerate(sha256s) if str(d) not in known]
    unreadable: list = []  # (position, reason) of the files that did not decode: NaN below
    for positions, batch in decoded_batches(todo, lambda i: paths[i], ANALYSIS_SIZE, batch_size=PIXEL_BATCH,
                                            workers=usable_cores(), failures=unreadable, priority="normal"):
        in_parallel(partial(_measure, known, paths, sha256s), list(zip(positions, batch)))
    if store and todo:
        from featurebank.files import write_atomically

        buffer = io.BytesIO()
        np.savez(buffer, sha256=np.array(list(known), dtype="S64"),
                 stats=np.array([v[0] for v in known.values()], np.float32).reshape(-1, len(STATISTICS)),
                 thumbnails=np.array([v[1] for v in known.values()], np.uint8).reshape(-1, size))
        with contextlib.suppress(OSError):
            write_atomically(store, buffer.getvalue())
    missing = (np.full(len(STATISTICS), np.nan, np.float32), np.zeros(size, np.uint8))
    found = [known.get(str(d), missing) for d in sha256s]
    return np.array([f[0] for f in found]), np.array([f[1] for f in found])


def thumbnail_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two grey thumbnails (1.0: the same picture up to brightness and contrast)."""
    a, b = a.astype(np.float32) - a.mean(), b.astype(np.float32) - b.mean()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-6))


def issues_of(stats: np.ndarray) -> list[str]:
    """The quality rules one image's statistics break."""
    width, height, brightness, dark, bright, contrast, sharpness = stats.tolist()
    found = []
    if brightness < 40 or dark > 0.7:
        found.append("too dark")
    if brightness > 225 or bright > 0.5:
        found.append("overexposed")
    if contrast < 6 and not found:  # a black or white frame is reported as dark or overexposed
        found.append("near-constant")
    elif contrast >= 6 and sharpness < 15:
        found.append("blurry")
    if min(width, height) < 64:
        found.append("tiny")
    return found


def quality_issues(fs, stats: np.ndarray) -> list[dict]:
    findings = []
    for row, values in enumerate(stats):
        if not np.isfinite(values).all():
            continue
        for issue in issues_of(values):
            findings.append({"paths": [str(fs.paths[row])], "labels": [fs.classes[fs.y[row]]],
                             "sha256": str(fs.sha256[row]), "issue": issue,
                             **{name: round(float(v), 3) for name, v in zip(STATISTICS, values)}})
    return sorted(findings, key=lambda f: (f["issue"], f["paths"]))
