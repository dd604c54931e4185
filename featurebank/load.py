"""``featurebank.load()``: cached features as numpy (eagerly, or lazily for caches bigger than RAM)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featurebank.cache import find_indexes, open_index
from featurebank.errors import AmbiguousCacheError, CacheError, InvalidArgument
from featurebank.splits import SPLIT_NAMES, balanced_subset

POOLINGS = ("flatten", "avg", "max")
_BLOCK = 64  # rows read from HDF5 at a time when pooling or filtering


def pool_features(block: np.ndarray, pooling: str | None) -> np.ndarray:
    """Pool a (n, h, w, c) block over space ('avg', 'max'), flatten it ('flatten'), or keep it (None); float32."""
    block = np.asarray(block, dtype=np.float32)
    if pooling is None:
        return block
    if pooling == "avg":
        return block.mean(axis=(1, 2))
    if pooling == "max":
        return block.max(axis=(1, 2))
    if pooling == "flatten":
        return block.reshape(len(block), -1)
    raise InvalidArgument(f"pooling must be None or one of {', '.join(POOLINGS)}; received {pooling!r}")


class LazyFeatures:
    """Array-like view of cached features: index it to read rows from HDF5 as float32 numpy.

    Supports ``len()``, ``shape``, ``x[i]``, ``x[a:b]`` and ``x[index_array]``; nothing is read until indexed.
    """

    def __init__(self, index_path: str, rows: np.ndarray, pooling: str | None):
        self.index_path = index_path
        self.rows = np.asarray(rows, dtype=np.int64)
        self.pooling = pooling
        self._file = None
        with open_index(index_path) as fh:
            stored_shape = fh["features"].shape[1:]
        probe = pool_features(np.zeros((1, *stored_shape), np.float32), pooling)
        self.shape = (len(self.rows), *probe.shape[1:])
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, positions) -> LazyFeatures:
        """A view of some of these rows (positions into this view), sharing nothing open."""
        view = object.__new__(LazyFeatures)
        view.__dict__.update(self.__getstate__())
        view.rows = self.rows[np.asarray(positions, dtype=np.int64)]
        view.shape = (len(view.rows), *self.shape[1:])
        return view

    def _dataset(self):
        if self._file is None:
            self._file = open_index(self.index_path)
        return self._file["features"]

    def read_rows(self, positions: np.ndarray) -> np.ndarray:
        """Features of the given positions (into this view), in that order."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) == 0:
            return np.zeros((0, *self.shape[1:]), np.float32)
        stored = self.rows[positions]
        order = np.argsort(stored, kind="stable")
        unique, inverse = np.unique(stored[order], return_inverse=True)
        dataset = self._dataset()
        if unique[-1] - unique[0] + 1 == len(unique):
            block = dataset[unique[0] : unique[-1] + 1]
        else:
            block = dataset[unique.tolist()]
        block = pool_features(block, self.pooling)[inverse]
        out = np.empty_like(block)
        out[order] = block
        return out

    def __getitem__(self, item) -> np.ndarray:
        if isinstance(item, (int, np.integer)):
            return self.read_rows(np.array([int(item)]))[0]
        return self.read_rows(np.arange(len(self))[item])

    def __array__(self, dtype=None, copy=None):
        out = np.empty(self.shape, np.float32)
        for start in range(0, len(self), _BLOCK):
            out[start : start + _BLOCK] = self.read_rows(np.arange(start, min(start + _BLOCK, len(self))))
        return out if dtype is None else out.astype(dtype)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getstate__(self):
        return {**self.__dict__, "_file": None}


@dataclass
class FeatureSet:
    """Cached features with their labels and provenance. ``X`` is numpy, or LazyFeatures with ``lazy=True``."""

    X: np.ndarray | LazyFeatures
    y: np.ndarray
    classes: list[str]
    paths: np.ndarray
    split: np.ndarray
    sha256: np.ndarray
    manifest: dict
    key: str
    cache_file: str
    pooling: str | None
    attrs: dict

    def __len__(self) -> int:
        return len(self.y)

    def batches(self, batch_size: int = 256):
        """Yield (X, y) numpy batches in order; memory stays bounded by one batch."""
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            xs = self.X.read_rows(np.arange(start, stop)) if isinstance(self.X, LazyFeatures) else self.X[start:stop]
            yield xs, self.y[start:stop]

    def __repr__(self) -> str:
        return (f"FeatureSet({len(self)} images, X{tuple(self.X.shape)}, {len(self.classes)} classes, "
                f"backbone={self.manifest['backbone']!r}, key={self.key[:12]!r}, pooling={self.pooling!r})")


def describe_index(path: Path) -> dict:
    """Key fields and size of one cache, for listing and for choosing between caches."""
    with open_index(path) as fh:
        manifest = json.loads(fh.attrs["manifest"])
        images = fh["labels"].shape[0]
        feature_shape = tuple(int(v) for v in fh.attrs.get("feature_shape", ()))
        classes = [str(c) for c in fh.attrs["classes"]]
        key = str(fh.attrs["key"])
    shard_dir = path.with_suffix(".shards")
    shard_bytes = sum(p.stat().st_size for p in shard_dir.glob("*.h5")) if shard_dir.is_dir() else 0
    return {
        "cache_file": str(path), "key": key, "backbone": manifest["backbone"], "weights": manifest["weights"],
        "dtype": manifest["dtype"], "input_size": manifest["input_size"], "feature_shape": feature_shape,
        "images": images, "classes": classes, "bytes": path.stat().st_size + shard_bytes,
        "versions": manifest.get("versions", {}),
    }


def _weights_matches(requested: str, recorded: str) -> bool:
    if requested == recorded:
        return True
    if recorded.startswith("sha256:"):
        digest = recorded.split(":", 1)[1]
        if requested.startswith("sha256:"):
            return digest.startswith(requested.split(":", 1)[1])
        if Path(requested).expanduser().is_file():
            from featurebank.backbones import file_sha256

            return file_sha256(Path(requested).expanduser()) == digest
    return False


def find_cache(
    cache: str | os.PathLike = "cache",
    backbone: str | None = "resnet50",
    *,
    weights: str | None = None,
    dtype: str | None = None,
    key: str | None = None,
    input_size: tuple[int, int] | None = None,
) -> Path:
    """The one index in ``cache`` that matches; a clear error when none or several do."""
    candidates = []
    for path in find_indexes(cache):
        try:
            info = describe_index(path)
        except CacheError:
            continue
        if backbone and info["backbone"] != backbone:
            continue
        if key and not info["key"].startswith(key):
            continue
        if dtype and info["dtype"] != dtype:
            continue
        if weights and not _weights_matches(weights, info["weights"]):
            continue
        if input_size and tuple(info["input_size"]) != tuple(input_size):
            continue
        candidates.append(info)
    if not candidates:
        wanted = ", ".join(f"{k}={v}" for k, v in [("backbone", backbone), ("weights", weights), ("dtype", dtype),
                                                     ("key", key), ("input_size", input_size)] if v)
        present = [f"{p.name}" for p in find_indexes(cache)]
        raise CacheError(
            f"{cache}: no feature cache matches {wanted or 'the request'}"
            + (f" (present: {', '.join(present)})" if present else " (the folder has no caches)")
            + "; create one with `featurebank extract --data DIR`"
        )
    if len(candidates) > 1:
        lines = "; ".join(
            f"{Path(c['cache_file']).name}: weights={c['weights'][:20]} dtype={c['dtype']} "
            f"input_size={'x'.join(map(str, c['input_size']))} images={c['images']}"
            for c in candidates
        )
        raise AmbiguousCacheError(
            f"{cache}: {len(candidates)} caches match backbone={backbone}: {lines}. "
            "Pick one with weights=..., dtype=..., input_size=... or key=... (CLI: --weights, --dtype, --key)"
        )
    return Path(candidates[0]["cache_file"])


def load(
    cache: str | os.PathLike = "cache",
    backbone: str | None = "resnet50",
    split: str | None = None,
    pooling: str | None = None,
    *,
    weights: str | None = None,
    dtype: str | None = None,
    key: str | None = None,
    input_size: tuple[int, int] | None = None,
    balanced: int | None = None,
    lazy: bool = False,
) -> FeatureSet:
    """Load cached features as numpy.

    Parameters
    ----------
    cache : folder holding the caches (``featurebank extract --cache``), or one index ``.h5`` file.
    backbone : which backbone's cache; ``weights``, ``dtype``, ``input_size`` or ``key`` pick
        among several caches of the same backbone.
    split : 'train', 'val' or 'test' to keep only that split; None keeps all images.
    pooling : None for the stored (N, h, w, c) maps, 'avg' or 'max' for (N, c), 'flatten' for (N, h*w*c).
    balanced : keep this many images per class (chosen by content hash, as ``extract --balanced``).
    lazy : return ``X`` as a LazyFeatures view that reads from disk when indexed.

    Examples
    --------
    >>> fb = featurebank.load(backbone="resnet50", split="train", pooling="avg")  # doctest: +SKIP
    >>> fb.X.shape, fb.y.shape  # doctest: +SKIP
    ((534, 2048), (534,))
    """
    if split is not None and split not in SPLIT_NAMES:
        raise InvalidArgument(f"split must be None or one of {', '.join(SPLIT_NAMES)}; received {split!r}")
    pool_features(np.zeros((1, 1, 1, 1), np.float32), pooling)  # validates pooling
    path = Path(cache).expanduser()
    if not (path.is_file() and path.suffix == ".h5"):
        path = find_cache(path, backbone, weights=weights, dtype=dtype, key=key, input_size=input_size)
    with open_index(path) as fh:
        labels = fh["labels"][...]
        paths = fh["paths"].asstr()[...]
        digests = fh["sha256"].asstr()[...]
        splits = fh["split"].asstr()[...]
        classes = [str(c) for c in fh.attrs["classes"]]
        manifest = json.loads(fh.attrs["manifest"])
        attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in fh.attrs.items()}
    keep = np.ones(len(labels), dtype=bool)
    if split is not None:
        keep &= splits == split
    if balanced is not None:
        keep &= balanced_subset(digests, labels, balanced, seed=int(attrs.get("split_seed", 0)))
    rows = np.flatnonzero(keep)
    features = LazyFeatures(str(path), rows, pooling)
    X = features if lazy else np.asarray(features)
    if not lazy:
        features.close()
    return FeatureSet(
        X=X, y=labels[rows], classes=classes, paths=paths[rows], split=splits[rows], sha256=digests[rows],
        manifest=manifest, key=str(attrs["key"]), cache_file=str(path), pooling=pooling, attrs=attrs,
    )
