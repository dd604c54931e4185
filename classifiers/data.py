"""Train/val/test features from a featurebank cache, loaded into memory or streamed when they would not fit."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

import featurebank
from featurebank.errors import CacheError
from featurebank.load import VECTOR_POOLINGS
from featurebank.rows import uses_stages
from featurebank.splits import SPLIT_NAMES


@dataclass
class SplitData:
    """Features and labels of each split of one cache, plus where they came from."""

    splits: dict  # name → (X, y)
    classes: list[str]
    key: str
    cache_file: str
    manifest: dict
    attrs: dict
    feature_pooling: str | None  # vector pooling applied when loading ('avg', 'avg+stages', ...) or None (maps kept)
    streamed: bool


def memory_budget() -> int:
    """Half of the memory available now (page cache counts as available): the limit before streaming from disk."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError):
        return 4 << 30


def load_splits(cache="cache", backbone: str = "resnet50", *, pooling: str = "flatten", balanced: int | None = None,
                weights: str | None = None, dtype: str | None = None, key: str | None = None,
                stream: bool | None = None, exclude=None) -> SplitData:
    """Features of the cache's stored train/val/test splits; vector poolings ('avg', 'avg+stages', ...) at load time.

    ``stream=None`` streams from HDF5 only when the features would take more than ``memory_budget()``.
    """
    load_pooling = pooling if pooling in VECTOR_POOLINGS else None
    path = featurebank.find_cache(cache, backbone, weights=weights, dtype=dtype, key=key,
                                  stages=uses_stages(load_pooling)) \
        if not str(cache).endswith(".h5") else cache
    everything = featurebank.load(path, pooling=load_pooling, balanced=balanced, exclude=exclude, lazy=True)
    if stream is None:
        stream = everything.X.shape[0] * int(np.prod(everything.X.shape[1:])) * 4 > memory_budget()
    by_split = {name: np.flatnonzero(everything.split == name) for name in SPLIT_NAMES}
    for name, positions in by_split.items():
        if len(positions) == 0:
            raise CacheError(
                f"{path}: the {name!r} split has no images ({len(everything)} images in the cache, split "
                f"{everything.attrs.get('split_fractions')}); extract more images or choose other --split fractions"
            )
    # In memory, the splits are consecutive slices of one aligned table read in a single pass over the shards
    # (each shard is scattered over every split, so reading split by split read each shard three times).
    table = None if stream else np.asarray(everything.X.subset(np.concatenate(list(by_split.values()))))
    splits, start = {}, 0
    for name, positions in by_split.items():
        X = everything.X.subset(positions) if table is None else table[start:start + len(positions)]
        splits[name] = (X, everything.y[positions])
        start += len(positions)
    everything.X.close()
    return SplitData(splits=splits, classes=everything.classes, key=everything.key, cache_file=str(path),
                     manifest=everything.manifest, attrs=everything.attrs, feature_pooling=load_pooling,
                     streamed=bool(stream))


@dataclass
class SplitImages:
    """Image paths and labels of each stored split of a cache (for models trained on pixels)."""

    splits: dict  # name → (list of absolute paths, labels)
    classes: list[str]
    data_root: str
    key: str
    cache_file: str


def load_split_images(cache="cache", backbone: str = "resnet50", *, data=None, balanced: int | None = None,
                      weights: str | None = None, dtype: str | None = None, key: str | None = None,
                      exclude=None) -> SplitImages:
    """The images behind a cache's splits, found under ``data`` (default: the folder recorded at extraction)."""
    from pathlib import Path

    path = featurebank.find_cache(cache, backbone, weights=weights, dtype=dtype, key=key) \
        if not str(cache).endswith(".h5") else cache
    # The rows' paths, labels and splits; the pooled side data is the cheapest read (any cache has it).
    info = featurebank.load(path, balanced=balanced, exclude=exclude, pooling="avg")
    root = Path(data or info.attrs.get("data_root", ""))
    if not root.is_dir():
        raise CacheError(f"{root}: image folder of cache {Path(path).name} not found; pass it with --data DIR")
    splits = {}
    for name in SPLIT_NAMES:
        chosen = info.split == name
        if not chosen.any():
            raise CacheError(f"{path}: the {name!r} split has no images; extract more images or choose other --split fractions")
        splits[name] = ([root / p for p in info.paths[chosen]], info.y[chosen])
    return SplitImages(splits=splits, classes=info.classes, data_root=str(root), key=info.key, cache_file=str(path))
