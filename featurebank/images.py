"""Image decoding: file → uint8 RGB array of exactly the backbone's input size (H, W, 3)."""

from __future__ import annotations

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
    return image.convert("RGB")


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


def decode_many(paths, size: tuple[int, int], *, workers: int = 4):
    """Decode many files in parallel; returns (uint8 array of the good ones, their indices, [(path, reason)])."""
    from concurrent.futures import ThreadPoolExecutor

    def attempt(path):
        try:
            return load_image(path, size), None
        except ImageDecodeError as exc:
            return None, str(exc)
        except OSError as exc:
            return None, f"cannot read file: {exc.strerror or exc}"

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(attempt, paths))
    kept = [i for i, (image, _) in enumerate(results) if image is not None]
    failures = [(str(paths[i]), reason) for i, (_, reason) in enumerate(results) if reason is not None]
    images = np.stack([results[i][0] for i in kept]) if kept else np.zeros((0, *size, 3), np.uint8)
    return images, np.array(kept, dtype=np.int64), failures
