"""Image decoding: file → uint8 RGB array of exactly the input size (H, W, 3), and the one decoding pool."""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps

from featurebank.sizing import default_decode_workers

# A 4000×3000 photo is 12 MP; allow large camera images but stop decompression bombs.
Image.MAX_IMAGE_PIXELS = 200_000_000
T = TypeVar("T")


class ImageDecodeError(Exception):
    """An image file could not be decoded; the message is the reason shown to the user."""


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparent pixels become white, 16-bit values are scaled."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image if image.mode == "RGB" else image.convert("RGB")


EXIF_ORIENTATION = 0x0112  # 1 (or absent): stored upright


def load_image(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """Decode ``path`` to a (height, width, 3) uint8 array of ``size`` = (height, width).

    The EXIF orientation is applied first, then the image is converted to RGB and resized to exactly
    ``size`` with bilinear filtering (aspect ratio is not kept, as Keras'
    ``image_dataset_from_directory`` does). Raises ImageDecodeError with a short reason.
    """
    height, width = size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                if image.format == "JPEG":
                    # Let libjpeg decode at reduced scale when the target is much smaller.
                    image.draft("RGB", (width, height))
                image.load()
                if image.getexif().get(EXIF_ORIENTATION, 1) != 1:  # no copy for the photos already upright
                    image = ImageOps.exif_transpose(image)
                image = _to_rgb(image)
                if image.size != (width, height):
                    image = image.resize((width, height), Image.BILINEAR)
                return np.asarray(image, dtype=np.uint8)
    except Image.DecompressionBombError:
        raise ImageDecodeError("image is too large to decode safely (over 200 megapixels)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason.lower():
            reason = "truncated or corrupt image data"
        raise ImageDecodeError(f"cannot decode image: {reason}") from None


def lower_thread_priority() -> None:
    """Let the calling helper thread yield the CPU to the forward pass (Linux: per-thread nice 10).

    On a machine with few cores, decoding and writing compete with the backbone's compute threads,
    and a descheduled compute thread stalls a whole operation. The decode window keeps the helpers
    ahead all the same: decoding needs a few percent of one core at CPU backbone speeds.
    """
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def decode_failure(exc: Exception) -> str:
    """The reason shown for a file that could not be decoded."""
    if isinstance(exc, ImageDecodeError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"cannot read file: {exc.strerror or exc}"
    raise exc


def decoded_batches(items: Iterable[T], path_of: Callable[[T], str | Path], size: tuple[int, int], *,
                    batch_size: int, workers: int | None = None, failures: list | None = None,
                    priority: str = "low") -> Iterator[tuple[list[T], np.ndarray]]:
    """The one decoding pool: yield (items, uint8 (n, H, W, 3)) batches, decoding a bounded window ahead.

    ``items`` may be a lazy iterable (extraction feeds claimed work as it goes). Files that fail
    to decode are appended to ``failures`` as (item, reason) and left out; without ``failures``
    the first failure raises ImageDecodeError. ``priority='low'`` runs the threads at nice 10, for
    when they share a small CPU with a backbone.
    """
    window = batch_size * 3
    initializer = lower_thread_priority if priority == "low" else None
    with ThreadPoolExecutor(max_workers=workers or default_decode_workers(), thread_name_prefix="featurebank-decode",
                            initializer=initializer) as pool:
        pending: deque = deque()
        source = iter(items)
        batch_items: list[T] = []
        batch_images: list[np.ndarray] = []

        def fill() -> None:
            while len(pending) < window:
                item = next(source, None)
                if item is None:
                    return
                pending.append((item, pool.submit(load_image, path_of(item), size)))

        fill()
        while pending:
            item, future = pending.popleft()
            fill()
            try:
                batch_images.append(future.result())
                batch_items.append(item)
            except (ImageDecodeError, OSError) as exc:
                if failures is None:
                    raise ImageDecodeError(f"{path_of(item)}: {decode_failure(exc)}") from None
                failures.append((item, decode_failure(exc)))
            if len(batch_items) == batch_size or (not pending and batch_items):
                yield batch_items, np.stack(batch_images)
                batch_items, batch_images = [], []


def decode_many(paths, size: tuple[int, int], *, workers: int | None = None):
    """Decode many files; returns (uint8 array of the good ones, their indices, [(path, reason)])."""
    failures: list = []
    images, kept = [], []
    for indices, batch in decoded_batches(range(len(paths)), lambda i: paths[i], size, batch_size=64,
                                          workers=workers, failures=failures, priority="normal"):
        images.append(batch)
        kept.extend(indices)
    stacked = np.concatenate(images) if images else np.zeros((0, *size, 3), np.uint8)
    return stacked, np.array(kept, dtype=np.int64), [(str(paths[i]), reason) for i, reason in failures]
