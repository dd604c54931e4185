"""``featurebank.load()``: cached features as numpy (eagerly, or lazily for caches bigger than RAM)."""

from __future__ import annotations

import mmap
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from featurebank.cache import (
    POOLED,
    ShardDamaged,
    cache_key,
    describe_os_error,
    in_parallel,
    open_shard,
    pooled_vectors,
)
from featurebank.errors import AmbiguousCacheError, CacheError, InvalidArgument
from featurebank.index_view import IndexView, find_indexes, read_view
from featurebank.splits import SPLIT_NAMES, balanced_subset

POOLINGS = ("flatten", "avg", "max", "avg+max")
ARRAY_ALIGNMENT = 64  # bytes: what TensorFlow needs to use a numpy array's memory without copying it (DLPack)


def aligned_empty(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """An uninitialised C-contiguous array in an anonymous memory map of its own: page-aligned.

    Why not ``np.empty``: numpy only promises 16-byte alignment, and frameworks wrap 64-byte-aligned
    memory as a tensor without a copy (the study's Flatten head: gigabytes of maps). And numpy
    advises large arrays for transparent huge pages, whose first touch can wait on memory
    compaction: filling 4 GiB took 5.5–7.7 s that way on the 2-core machine, 2.6–2.8 s in a plain
    mapping (BENCHMARKS.md).
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes == 0:
        return np.empty(shape, dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE), dtype).reshape(shape)


def pool_features(block: np.ndarray, pooling: str | None) -> np.ndarray:
    """Pool a (n, h, w, c) block over space ('avg', 'max', 'avg+max' concatenated), flatten it, or keep it (None)."""
    block = np.asarray(block, dtype=np.float32)
    if pooling is None:
        return block
    if pooling in POOLED:
        return pooled_vectors(block)[pooling]
    if pooling == "avg+max":
        vectors = pooled_vectors(block)
        return np.concatenate([vectors["avg"], vectors["max"]], axis=1)
    if pooling == "flatten":
        return block.reshape(len(block), -1)
    raise InvalidArgument(f"pooling must be None or one of {', '.join(POOLINGS)}; received {pooling!r}")


class ShardReader:
    """Reads rows of one cache's shards, keeping a few of them open; missing or broken shards raise CacheError.

    Features are never filled in for a shard that cannot be read: the error names the shard.
    """

    MAX_OPEN = 32

    def __init__(self, shard_dir: Path):
        self.shard_dir = Path(shard_dir)
        self._open: OrderedDict[str, object] = OrderedDict()
        self._scratch: np.ndarray | None = None

    def file(self, name: str):
        if name in self._open:
            self._open.move_to_end(name)
            return self._open[name]
        path = self.shard_dir / name
        try:
            fh = open_shard(path)
        except ShardDamaged as exc:
            raise CacheError(f"{path}: shard is damaged ({exc}); run `featurebank extract` on the same data to set "
                             "it aside and recompute its images") from None
        self._open[name] = fh
        if len(self._open) > self.MAX_OPEN:
            self._open.popitem(last=False)[1].close()
        return fh

    def read(self, name: str, dataset: str, rows: np.ndarray) -> np.ndarray:
        """Rows (sorted, unique) of ``dataset`` in shard ``name``."""
        block, index = self.read_span(name, dataset, rows)
        return block if len(index) == len(block) else block[index]

    def read_span(self, name: str, dataset: str, rows: np.ndarray, *, scratch: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
        """A block of stored rows that holds ``rows`` (sorted, unique), and where each of them is in it.

        Dense requests are one contiguous read; sparse ones one read per run of consecutive rows
        (h5py's list indexing is far slower on chunked data). The block keeps the stored dtype.
        With ``scratch``, a dense block is read into a buffer that the next scratch read reuses (so
        use it before reading again): loading every map of a cache then touches fresh memory once,
        for its destination, not twice.
        """
        fh = self.file(name)
        if dataset not in fh:
            raise CacheError(f"{self.shard_dir / name}: this cache stores pooled vectors only (extract --store "
                             "pooled); ask for pooling='avg' or 'max', or extract again with --store maps")
        data = fh[dataset]
        try:
            if len(rows) == 0:
                return data[0:0], np.zeros(0, np.int64)
            first, span = int(rows[0]), int(rows[-1]) - int(rows[0]) + 1
            if span <= 2 * len(rows):
                if not scratch:
                    return data[first : first + span], rows - first
                block = self._scratch_block(span, data.shape[1:], data.dtype)
                data.read_direct(block, np.s_[first : first + span])
                return block, rows - first
            runs = np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1)
            return np.concatenate([data[int(run[0]) : int(run[-1]) + 1] for run in runs]), np.arange(len(rows))
        except OSError as exc:
            raise CacheError(f"{self.shard_dir / name}: cannot read shard: {describe_os_error(exc)}") from None

    def _scratch_block(self, rows: int, row_shape: tuple[int, ...], dtype) -> np.ndarray:
        needed = rows * int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if self._scratch is None or self._scratch.nbytes < needed:
            self._scratch = aligned_empty((needed,), np.uint8)
        return self._scratch[:needed].view(dtype).reshape(rows, *row_shape)

    def close(self) -> None:
        self._scratch = None
        while self._open:
            self._open.popitem()[1].close()


def _copy_rows(out: np.ndarray, block: np.ndarray, pairs: list[tuple[int, int]]) -> None:
    for target, source in pairs:
        out[target] = block[source]


class LazyFeatures:
    """Array-like view of cached features: index it to read rows from the shards as float32 numpy.

    Supports ``len()``, ``shape``, ``x[i]``, ``x[a:b]`` and ``x[index_array]``; nothing is read until
    indexed. Pooling 'avg'/'max' reads the stored pooled vectors, never the maps.
    """

    def __init__(self, shard_dir: str | os.PathLike, shards: list[str], shard: np.ndarray, row: np.ndarray,
                 pooling: str | None, feature_shape: tuple[int, ...]):
        self.shard_dir = str(shard_dir)
        self.shards = list(shards)
        self.shard = np.asarray(shard, dtype=np.int32)
        self.row = np.asarray(row, dtype=np.int64)
        self.pooling = pooling
        self._reader: ShardReader | None = None
        probe = pool_features(np.zeros((1, *feature_shape), np.float32), pooling)
        self.shape = (len(self.row), *probe.shape[1:])
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return len(self.row)

    def subset(self, positions) -> LazyFeatures:
        """A view of some of these rows (positions into this view), sharing nothing open."""
        view = object.__new__(LazyFeatures)
        view.__dict__.update(self.__getstate__())
        positions = np.asarray(positions, dtype=np.int64)
        view.shard, view.row = self.shard[positions], self.row[positions]
        view.shape = (len(view.row), *self.shape[1:])
        return view

    def read_rows(self, positions, *, out: np.ndarray | None = None) -> np.ndarray:
        """Features of the given positions (into this view), in that order (into ``out`` if given).

        Each shard's rows are read in one sweep and converted to float32 as they are copied into
        place: one pass over the data, whatever the stored dtype.
        """
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty((len(positions), *self.shape[1:]), np.float32) if out is None else out
        if len(positions) == 0:
            return out
        if self._reader is None:
            self._reader = ShardReader(Path(self.shard_dir))
        pooled = [f"pooled_{p}" for p in (self.pooling or "").split("+") if p in POOLED]
        shards = self.shard[positions]
        order = np.argsort(shards, kind="stable")
        for group in np.split(order, np.flatnonzero(np.diff(shards[order])) + 1):
            rows = self.row[positions[group]]
            unique, inverse = np.unique(rows, return_inverse=True)
            name = self.shards[shards[group[0]]]
            if pooled:  # the stored pooled vectors: the maps are never read
                block = np.concatenate([self._reader.read(name, d, unique) for d in pooled], axis=1)
            elif self.pooling is None:  # whole maps: each row copied (and cast to float32) once, straight into place
                block, index = self._reader.read_span(name, "features", unique, scratch=True)
                in_parallel(partial(_copy_rows, out, block), list(zip(group.tolist(), index[inverse].tolist())))
                continue
            else:
                block = pool_features(self._reader.read(name, "features", unique), self.pooling)
            out[group] = block[inverse]
        return out

    def __getitem__(self, item) -> np.ndarray:
        if isinstance(item, (int, np.integer)):
            return self.read_rows(np.array([int(item)]))[0]
        return self.read_rows(np.arange(len(self))[item])

    def __array__(self, dtype=None, copy=None):
        out = self.read_rows(np.arange(len(self)), out=aligned_empty(self.shape, np.float32))
        return out if dtype is None else out.astype(dtype)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __getstate__(self):
        return {**self.__dict__, "_reader": None}


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
    missing: dict = field(default_factory=dict)  # joined caches: backbone → paths it lacks (left out of X)

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
    view = read_view(path)
    shard_dir = view.shard_dir
    shard_bytes = sum(e.stat().st_size for e in os.scandir(shard_dir) if e.name.endswith(".h5") and e.name[0] != ".") \
        if shard_dir.is_dir() else 0
    manifest = view.manifest
    return {
        "cache_file": str(path), "key": cache_key(manifest), "backbone": manifest["backbone"],
        "weights": manifest["weights"], "dtype": manifest["dtype"], "input_size": manifest["input_size"],
        "feature_shape": feature_shape_of(view), "store": manifest.get("store", "maps"),
        "augment": manifest.get("augment", "none"), "images": len(view.paths), "classes": view.classes,
        "bytes": (path.stat().st_size if path.exists() else 0) + shard_bytes, "versions": manifest.get("versions", {}),
    }


def feature_shape_of(view: IndexView) -> tuple[int, ...]:
    """Shape of one stored map, read from a shard's attributes (empty for caches of pooled vectors only)."""
    if "feature_shape" in view.attrs:
        return tuple(int(v) for v in view.attrs["feature_shape"])
    if not view.shards:
        return ()
    reader = ShardReader(view.shard_dir)
    try:
        return tuple(int(v) for v in reader.file(view.shards[0]).attrs.get("feature_shape", ()))
    finally:
        reader.close()


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
    augment: str | None = None,
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
        if not key and info["augment"] != (augment or "none"):  # augmented caches are asked for by name
            continue
        candidates.append(info)
    if not candidates:
        wanted = ", ".join(f"{k}={v}" for k, v in [("backbone", backbone), ("weights", weights), ("dtype", dtype),
                                                     ("key", key), ("input_size", input_size), ("augment", augment)]
                           if v)
        present = [f"{p.name}" for p in find_indexes(cache)]
        raise CacheError(
            f"{cache}: no feature cache matches {wanted or 'the request'}"
            + (f" (present: {', '.join(present)})" if present else " (the folder has no caches)")
            + "; create one with `featurebank extract --data DIR`"
        )
    if len(candidates) > 1:
        lines = "; ".join(
            f"{Path(c['cache_file']).name}: weights={c['weights'][:20]} dtype={c['dtype']} "
            f"input_size={'x'.join(map(str, c['input_size']))} augment={c['augment']} images={c['images']}"
            for c in candidates
        )
        raise AmbiguousCacheError(
            f"{cache}: {len(candidates)} caches match backbone={backbone}: {lines}. "
            "Pick one with weights=..., dtype=..., input_size=..., augment=... or key=... (CLI: --weights, --dtype, "
            "--key; or name the backbone as backbone:augment)"
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
    exclude: str | os.PathLike | None = None,
    augment: str | None = None,
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
    exclude : an exclusion list (``featurebank audit --write-exclude``): images whose content hash
        it lists are left out. No file is deleted or moved.
    lazy : return ``X`` as a LazyFeatures view that reads from disk when indexed.

    Examples
    --------
    >>> fb = featurebank.load(backbone="resnet50", split="train", pooling="avg")  # doctest: +SKIP
    >>> fb.X.shape, fb.y.shape  # doctest: +SKIP
    ((534, 2048), (534,))
    """
    if backbone and ":" in backbone and "+" not in backbone:  # 'efficientnet-lite0:hflip-mean'
        backbone, augment = backbone.split(":", 1)
    if backbone and "+" in backbone:
        return load_joined(cache, backbone.split("+"), split=split, pooling=pooling, weights=weights, dtype=dtype,
                           balanced=balanced, exclude=exclude)
    if split is not None and split not in SPLIT_NAMES:
        raise InvalidArgument(f"split must be None or one of {', '.join(SPLIT_NAMES)}; received {split!r}")
    pool_features(np.zeros((1, 1, 1, 1), np.float32), pooling)  # validates pooling
    path = Path(cache).expanduser()
    if path.suffix != ".h5":
        path = find_cache(path, backbone, weights=weights, dtype=dtype, key=key, input_size=input_size, augment=augment)
    view = read_view(path)
    labels, paths, digests, splits, attrs = view.labels, view.paths, view.sha256, view.split, view.attrs
    classes, manifest = view.classes, view.manifest
    keep = np.ones(len(labels), dtype=bool)
    if split is not None:
        keep &= splits == split
    if exclude is not None:
        keep &= ~np.isin(digests, list(read_exclusions(exclude)))
    if balanced is not None:
        keep &= balanced_subset(digests, labels, balanced, seed=int(attrs.get("split_seed", 0)))
    rows = np.flatnonzero(keep)
    shape = feature_shape_of(view)
    if manifest.get("store", "maps") == "pooled" and pooling not in (*POOLED, "avg+max"):
        raise CacheError(f"{path}: this cache stores pooled vectors only (extract --store pooled); ask for "
                         "pooling='avg' or 'max'")
    if not shape:
        shape = (1, 1, _channels(view))
    features = LazyFeatures(view.shard_dir, view.shards, view.shard[rows], view.row[rows], pooling, shape)
    X = features if lazy else np.asarray(features)
    if not lazy:
        features.close()
    return FeatureSet(
        X=X, y=labels[rows], classes=classes, paths=paths[rows], split=splits[rows], sha256=digests[rows],
        manifest=manifest, key=cache_key(manifest), cache_file=str(path), pooling=pooling, attrs=attrs,
    )


def _channels(view: IndexView) -> int:
    reader = ShardReader(view.shard_dir)
    try:
        return int(reader.file(view.shards[0])["pooled_avg"].shape[1]) if view.shards else 0
    finally:
        reader.close()


def load_joined(cache, backbones: list[str], *, split: str | None = None, pooling: str | None = "avg",
                weights: str | None = None, dtype: str | None = None, balanced: int | None = None,
                exclude=None) -> FeatureSet:
    """Features of several backbones side by side (``load(backbone="a+b")``), joined by content hash.

    Rows follow the first backbone's cache; an image that another cache lacks is left out and
    reported in ``missing`` (backbone → paths), never dropped silently. Maps of different backbones
    rarely share a shape, so ``pooling`` must pool ('avg', 'max' or 'avg+max').
    """
    if pooling not in (*POOLED, "avg+max"):
        raise InvalidArgument(f"joined backbones need pooling 'avg', 'max' or 'avg+max'; received {pooling!r}")
    parts = [load(cache, name, split, pooling, weights=weights, dtype=dtype, balanced=balanced, exclude=exclude)
             for name in backbones]
    first = parts[0]
    keep = np.ones(len(first), dtype=bool)
    missing: dict[str, list[str]] = {}
    positions = []
    for name, part in zip(backbones, parts):
        where = {digest: i for i, digest in enumerate(part.sha256)}
        found = np.array([where.get(d, -1) for d in first.sha256], dtype=np.int64)
        absent = found < 0
        if absent.any():
            missing[name] = first.paths[absent].tolist()
        keep &= ~absent
        positions.append(found)
    for name, part in zip(backbones[1:], parts[1:]):
        extra = set(part.sha256) - set(first.sha256)
        if extra:
            missing[backbones[0]] = sorted(part.paths[np.isin(part.sha256, list(extra))].tolist())
    X = np.concatenate([part.X[found[keep]] for part, found in zip(parts, positions)], axis=1)
    return FeatureSet(X=X, y=first.y[keep], classes=first.classes, paths=first.paths[keep], split=first.split[keep],
                      sha256=first.sha256[keep], manifest={"backbone": "+".join(backbones),
                                                           "parts": [p.manifest for p in parts]},
                      key="+".join(p.key[:12] for p in parts), cache_file=";".join(p.cache_file for p in parts),
                      pooling=pooling, attrs=first.attrs, missing=missing)


def read_exclusions(path: str | os.PathLike) -> dict[str, str]:
    """sha256 → reason from an exclusion list: one image per line, its content hash, a tab, the reason; '#' comments."""
    found: dict[str, str] = {}
    try:
        lines = Path(path).expanduser().read_text().splitlines()
    except OSError as exc:
        raise InvalidArgument(f"{path}: cannot read the exclusion list: {describe_os_error(exc)}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        digest, _, reason = line.partition("\t")
        digest = digest.strip().lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise InvalidArgument(f"{path}:{number}: expected a sha256 (64 hex digits) then a tab and a reason; "
                                  f"received {line[:80]!r}")
        found[digest] = reason.strip()
    return found
