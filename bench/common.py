"""Helpers shared by the benchmark scripts: dataset location, subsets, machine description."""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

TRASHNET = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "trashnet"


def subset_folder(data: Path, limit: int | None) -> Path:
    """``data`` itself, or a temporary class-per-folder tree of symlinks to about ``limit`` images, spread over classes."""
    if not limit:
        return data
    classes = sorted(p for p in data.iterdir() if p.is_dir())
    per_class = max(1, limit // len(classes))
    root = Path(tempfile.mkdtemp(prefix="featurebank-subset-"))
    for folder in classes:
        (root / folder.name).mkdir()
        for image in sorted(folder.iterdir())[:per_class]:
            (root / folder.name / image.name).symlink_to(image.resolve())
    return root


def spread_photos(source: str | Path, count: int) -> list[Path]:
    """``count`` JPEGs of a class-per-folder tree, every n-th in sorted order, so that every class is among them."""
    every = sorted(Path(source).glob("*/*.jpg"))
    return every[:: max(1, len(every) // count)][:count]


def relative_l2(value, reference) -> float:
    """‖value − reference‖ / ‖reference‖, in float32: how far one set of features is from another."""
    import numpy as np

    value, reference = np.asarray(value, np.float32), np.asarray(reference, np.float32)
    return float(np.linalg.norm(value - reference) / np.linalg.norm(reference))


def pixel_difference(ours, theirs) -> dict:
    """How far two uint8 image arrays are apart: largest and mean difference in levels, share of values that differ."""
    import numpy as np

    difference = np.abs(np.asarray(ours, np.int16) - np.asarray(theirs, np.int16))
    return {"max_levels": int(difference.max()), "mean_levels": float(difference.mean()),
            "share_of_values_differing": float((difference > 0).mean())}


def in_series_img_s(figures: dict) -> float:
    """1 / (1/forward + 1/decode + 1/write) of gpu_extract.py's figures: the rate if its three stages ran one after
    another, not side by side (an extraction near it overlaps nothing)."""
    return 1 / sum(1 / figures[k] for k in ("forward_img_s", "decode_img_s", "write_img_s"))


def machine() -> str:
    import keras

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"keras {keras.__version__} ({keras.backend.backend()} backend)")


def launching_engine(size: int = 32) -> Callable[[float], float]:
    """A CPU's stand-in for the engine's thread next to a GPU: ``run(seconds)`` → forwards/s.

    PyTorch's eager forward of EfficientNet-Lite0 (random weights) on a batch of 4 tiny images with
    one torch thread, through the engine's embed path: its time goes to launching operators from
    Python, as the engine's thread spends it next to a GPU. Sets this process to one torch thread.
    """
    import numpy as np
    import torch

    from featurebank.backbones import get_backbone
    from featurebank.embed import Embedder

    torch.set_num_threads(1)
    embed = Embedder(get_backbone("efficientnet-lite0").build("none", (size, size), 4), dtype="float16")
    pixels = np.zeros((4, size, size, 3), np.uint8)
    embed(pixels)

    def run(seconds: float) -> float:
        started, forwards = time.perf_counter(), 0
        while time.perf_counter() - started < seconds:
            embed(pixels)
            forwards += 1
        return forwards / (time.perf_counter() - started)

    return run


def alternated_medians(ways: tuple[str, ...], repeats: int, one_run: Callable[[str], dict]) -> tuple[dict, dict]:
    """``one_run(way)`` ``repeats`` times per way, the ways alternated so that drift cancels: (medians, every run).

    The medians are per way and per figure of ``one_run``'s dict.
    """
    runs: dict[str, list[dict]] = {way: [] for way in ways}
    for _ in range(repeats):
        for way in ways:
            runs[way].append(one_run(way))
    medians = {way: {key: statistics.median(r[key] for r in results) for key in results[0]}
               for way, results in runs.items()}
    return medians, runs


def allow_tf32(allowed: bool = True) -> None:
    """Let the engine's float32 backbones run as TF32 on NVIDIA GPUs, the libraries' default there: a probe.

    The engine runs float32 in IEEE float32 (``featurebank.device.float32_arithmetic``), because
    TF32 moved an H200's features beyond float16 rounding of a CPU's (BENCHMARKS.md). This measures
    in the same run what that costs against TF32; ``allowed=False`` gives the engine's way back.
    For this process; on a CPU it changes nothing.
    """
    import contextlib

    from featurebank import device, keras_function, torch_backbones

    def libraries_default(backend: str, compute_dtype: str) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    arithmetic = libraries_default if allowed else device.float32_arithmetic
    keras_function.float32_arithmetic = torch_backbones.float32_arithmetic = arithmetic


def skip_warm_up(skipped: bool = True) -> None:
    """Extraction without its warm-up of the first call next to a GPU (``Embedder.warm_up`` a no-op): a probe.

    Next to a GPU the engine pays the first call's tracing, compilation and set-up on its own thread
    while the decoding pool starts and decodes the first batch on another
    (``featurebank.pipeline.first_batch_beside_warm_up``); this measures in the same run what that
    overlap buys. For this process; ``skipped=False`` gives it back.
    """
    from featurebank.embed import Embedder

    _ENGINE_WARM_UP.setdefault("method", Embedder.warm_up)
    Embedder.warm_up = (lambda self, batch_size, input_size: None) if skipped else _ENGINE_WARM_UP["method"]


def helpers_at_normal_priority(normal: bool = True) -> None:
    """Extraction with its decoders and compression threads at the process's own priority, not nice 10: a probe.

    The engine lowers them on every device (``featurebank.extraction.HELPERS_PRIORITY``); next to a
    GPU it did not before 2026-11-28's third session. This measures that choice in the same run on
    the GPU. For this process; ``normal=False`` gives the engine's choice back.
    """
    from featurebank import extraction

    extraction.HELPERS_PRIORITY = "normal" if normal else "low"


_ENGINE_WARM_UP: dict = {}  # Embedder.warm_up as the engine has it, kept by skip_warm_up
