"""A small generated sample of 'recyclables' photos, so the demo and tutorials run with no data and no network.

Each class is drawn procedurally with Pillow (shape, colour, texture, background and pose vary per
image, seeded): bottles of clear or green glass, sheets of printed paper, corrugated cardboard
boxes, brightly coloured plastic bottles, shiny metal cans, and crumpled mixed trash. It exercises
the whole pipeline; accuracy on it says nothing about real photos.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SAMPLE_CLASSES = ("cardboard", "glass", "metal", "paper", "plastic", "trash")


def _bottle(draw, rng, width, height, body, highlight):
    cx = width * rng.uniform(0.35, 0.65)
    bw, top = width * rng.uniform(0.18, 0.3), height * rng.uniform(0.15, 0.3)
    draw.rounded_rectangle([cx - bw, top + height * 0.15, cx + bw, height * 0.9], radius=int(bw * 0.5), fill=body)
    draw.rectangle([cx - bw * 0.35, top, cx + bw * 0.35, top + height * 0.17], fill=body)
    draw.rectangle([cx - bw * 0.55, top + height * 0.3, cx - bw * 0.3, height * 0.8], fill=highlight)


def _draw(label: str, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    height, width = size
    background = tuple(int(v) for v in rng.integers(150, 235, 3))
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    jitter = lambda c, s=25: tuple(int(np.clip(v + rng.integers(-s, s), 0, 255)) for v in c)  # noqa: E731
    if label == "glass":
        _bottle(draw, rng, width, height, jitter((70, 140, 90) if rng.random() < 0.5 else (185, 215, 210)),
                jitter((235, 245, 240), 10))
    elif label == "plastic":
        _bottle(draw, rng, width, height, jitter([(220, 40, 40), (40, 90, 220), (240, 200, 30)][rng.integers(3)]),
                jitter((250, 250, 250), 5))
    elif label == "metal":
        x0, x1 = width * rng.uniform(0.2, 0.35), width * rng.uniform(0.65, 0.8)
        y0, y1 = height * rng.uniform(0.2, 0.35), height * rng.uniform(0.7, 0.85)
        for i in range(int(x1 - x0)):
            shade = int(110 + 120 * np.sin(np.pi * i / (x1 - x0)) ** 4)
            draw.line([x0 + i, y0, x0 + i, y1], fill=(shade, shade, shade + 10))
        draw.ellipse([x0, y0 - 12, x1, y0 + 12], fill=jitter((200, 200, 205), 10))
    elif label == "paper":
        x0, y0 = width * rng.uniform(0.1, 0.25), height * rng.uniform(0.1, 0.25)
        draw.rectangle([x0, y0, width * 0.85, height * 0.85], fill=jitter((248, 248, 245), 5))
        for y in np.arange(y0 + 20, height * 0.82, rng.uniform(10, 16)):
            draw.line([x0 + 15, y, width * rng.uniform(0.55, 0.8), y], fill=(60, 60, 70), width=2)
    elif label == "cardboard":
        x0, y0 = width * rng.uniform(0.1, 0.25), height * rng.uniform(0.15, 0.3)
        draw.rectangle([x0, y0, width * 0.88, height * 0.88], fill=jitter((170, 120, 70)))
        for x in np.arange(x0, width * 0.88, 7):
            draw.line([x, y0, x, height * 0.88], fill=(140, 95, 50), width=2)
    else:  # trash: crumpled mixed scraps
        for _ in range(int(rng.integers(6, 14))):
            cx, cy, r = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height, rng.uniform(15, 60)
            points = [(cx + r * np.cos(a) * rng.uniform(0.5, 1.3), cy + r * np.sin(a) * rng.uniform(0.5, 1.3))
                      for a in np.linspace(0, 2 * np.pi, 7)]
            draw.polygon(points, fill=tuple(int(v) for v in rng.integers(30, 220, 3)))
    image = image.rotate(float(rng.uniform(-12, 12)), fillcolor=background)
    noisy = np.asarray(image, np.float32) + rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))


def write_sample(folder: str | Path, *, per_class: int = 15, size: tuple[int, int] = (512, 384), seed: int = 0) -> Path:
    """Write ``per_class`` JPEGs per class under ``folder/<class>/`` (skips files that exist); returns the folder."""
    folder = Path(folder)
    for index, label in enumerate(SAMPLE_CLASSES):
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = folder / label / f"{label}{i:03d}.jpg"
            if not path.exists():
                _draw(label, np.random.default_rng([seed, index, i]), size).save(path, quality=90)
    return folder
