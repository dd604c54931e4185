"""Shared fixtures: small real image folders written with Pillow, and caches extracted from them once per session."""

from __future__ import annotations

import importlib.metadata
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


def skip_unless_installed(distribution: str, reason: str = "") -> None:
    """Skip the test unless ``distribution`` is installed: asked of its metadata, not imported. Importing
    torchvision or Triton in this process, where the tests load TensorFlow, kills it (both bring their
    own LLVM; featurebank.gpu_decoding.import_jpeg_library imports them safely), and after that
    function marked Triton missing for the process, importlib would say it is not installed."""
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(reason or f"{distribution} is not installed")


def nice_of(pid: int, thread: int | None = None) -> int:
    """A process's (or one of its threads') nice value, as the kernel has it (field 19 of /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])

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


def check_run_folder(run_dir: Path) -> dict:
    """A run folder is complete and consistent: figures decode, the model file matches its recorded hash,
    metrics agree with their own confusion matrix, and the history covers the epochs run."""
    import json

    from featurebank.scan import file_sha256

    run_dir = Path(run_dir)
    config = json.loads((run_dir / "run.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert file_sha256(run_dir / config["model_file"]) == config["model_sha256"] == metrics["model_sha256"]
    confusion = np.array(metrics["confusion_matrix"])
    assert confusion.sum() == metrics["test_images"] == config["split_sizes"]["test"]
    assert metrics["test_accuracy"] == np.trace(confusion) / confusion.sum()
    with Image.open(run_dir / "confusion.png") as figure:
        assert min(figure.size) > 100
    if (run_dir / "history.json").exists():
        history = json.loads((run_dir / "history.json").read_text())
        assert len(history["loss"]) == metrics["epochs_run"] >= metrics["best_epoch"] >= 1
        with Image.open(run_dir / "curves.png") as figure:
            assert min(figure.size) > 100
    return metrics
