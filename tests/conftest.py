"""Shared fixtures: small real image folders written with Pillow, and caches extracted from them once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# The CLI, started from the running interpreter's environment (no activated virtualenv or PATH needed).
FEATUREBANK = [sys.executable, "-m", "cli"]
CLASSES = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]
TRASHNET = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "trashnet"
# Colours far apart, so that even random-weight features separate the classes.
PALETTE = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (220, 220, 40), (40, 220, 220), (220, 40, 220)]


def class_image(label: int, index: int, size=(64, 48), seed: int = 0) -> Image.Image:
    """A photo-like image whose class shows in its colour and stripe direction, with per-image noise."""
    rng = np.random.default_rng([seed, label, index])
    height, width = size
    base = np.array(PALETTE[label % len(PALETTE)], dtype=np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    stripes = np.sin((xx if label % 2 else yy) / (2 + label) * np.pi)[..., None] * 30
    noise = rng.normal(0, 20, (height, width, 3))
    return Image.fromarray(np.clip(base + stripes + noise, 0, 255).astype(np.uint8))


def make_dataset(root: Path, per_class: int, *, size=(64, 48), seed: int = 0, start: int = 0,
                 classes=CLASSES) -> list[Path]:
    """Write ``per_class`` JPEGs for each class under root/<class>/; returns the paths written."""
    written = []
    for label, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_class):
            path = folder / f"{name}{i}.jpg"
            class_image(label, i, size, seed).save(path, quality=92)
            written.append(path)
    return written


@pytest.fixture
def make_images():
    return make_dataset


@pytest.fixture(scope="session")
def small_cache(tmp_path_factory):
    """A cache of 180 images (30 per class) at 64x64 input with random ResNet50 weights: (2, 2, 2048) features."""
    import featurebank

    root = tmp_path_factory.mktemp("small")
    make_dataset(root / "data", 30)
    report = featurebank.extract(root / "data", cache=root / "cache", weights="none", input_size=(64, 64),
                                 batch_size=16)
    return {"data": root / "data", "cache": root / "cache", "report": report}


def trashnet_or_skip() -> Path:
    if not TRASHNET.is_dir():
        pytest.skip(f"{TRASHNET} is absent")
    return TRASHNET
