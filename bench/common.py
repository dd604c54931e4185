"""Helpers shared by the benchmark scripts: dataset location, subsets, machine description."""

from __future__ import annotations

import os
import platform
import tempfile
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

    Next to a GPU the engine pays the first call's tracing, compilation and set-up on the build
    thread while the decoding pool starts (``featurebank.pipeline.LazyEmbedder``); this measures in
    the same run what that overlap buys. For this process; ``skipped=False`` gives it back.
    """
    from featurebank.embed import Embedder

    _ENGINE_WARM_UP.setdefault("method", Embedder.warm_up)
    Embedder.warm_up = (lambda self, batch_size, input_size: None) if skipped else _ENGINE_WARM_UP["method"]


_ENGINE_WARM_UP: dict = {}  # Embedder.warm_up as the engine has it, kept by skip_warm_up
