"""Image decoding: file → uint8 RGB array of exactly the input size (H, W, 3). The pool that runs it: decoding.py."""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# A 4000×3000 photo is 12 MP; allow large camera images but stop decompression bombs.
Image.MAX_IMAGE_PIXELS = 200_000_000


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


HELPER_NICE = 10  # the OS priority of the engine's helpers: decoding threads and processes, compression, the writer


def lower_thread_priority() -> None:
    """Let the calling helper thread yield the CPU to the engine's own work (Linux: per-thread nice HELPER_NICE).

    On a CPU, decoding and writing compete with the backbone's compute threads, and a descheduled
    compute thread stalls a whole operation; next to a GPU, they compete with the engine's thread,
    which launches the backbone's work and hands batches on. Nice only orders who runs first: a
    helper still gets every cycle nobody else wants, and the decode window keeps it ahead.
    Threads and processes started by the calling thread inherit its priority.
    """
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HELPER_NICE)


def decode_failure(exc: Exception) -> str:
    """The reason shown for a file that could not be decoded."""
    if isinstance(exc, ImageDecodeError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"cannot read file: {exc.strerror or exc}"
    raise exc
