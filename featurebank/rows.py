"""Reading rows of a cache's shards: ``LazyFeatures`` views, the shard reader behind them, and the
aligned memory they fill (which frameworks can use without a copy)."""

from __future__ import annotations

import os
from collections import OrderedDict
from functools import partial
from pathlib import Path

import numpy as np

from featurebank.array_pool import in_parallel
from featurebank.cache import STAGES, ShardDamaged, describe_os_error, open_shard
from featurebank.errors import CacheError, InvalidArgument
from featurebank.files import aligned_empty

POOLINGS = ("flatten", "avg", "max", "avg+max", "stages", "avg+stages", "avg+max+stages")
VECTOR_POOLINGS = POOLINGS[1:]  # read from the stored pooled side data, never from the maps
ARRAY_ALIGNMENT = 64  # bytes: what TensorFlow needs to use a numpy array's memory without copying it (DLPack)


def uses_stages(pooling: str | None) -> bool:
    """Whether a pooling reads the stored stage vectors (a cache made with ``extract --stages``)."""
    return pooling in VECTOR_POOLINGS and STAGES in pooling.split("+")


def stored_vectors(pooled: dict[str, np.ndarray], pooling: str) -> np.ndarray:
    """The vectors of a pooling such as 'avg+stages' from pooled side data ({name: (n, width)}), side by side."""
    return np.concatenate([np.asarray(pooled[name], np.float32) for name in pooling.split("+")], axis=1)


def row_shape(pooling: str | None, feature_shape: tuple[int, ...], stage_width: int = 0) -> tuple[int, ...]:
    """Shape of one image's features: its map (None), the map's cells flattened, or pooled vectors side by side."""
    if pooling is None:
        return tuple(feature_shape)
    if pooling == "flatten":
        return (int(np.prod(feature_shape, dtype=np.int64)),)
    if pooling in VECTOR_POOLINGS:
        return (sum(stage_width if name == STAGES else feature_shape[-1] for name in pooling.split("+")),)
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
    indexed. Vector poolings ('avg', 'avg+stages', ...) read the stored pooled vectors, never the maps.
    """

    def __init__(self, shard_dir: str | os.PathLike, shards: list[str], shard: np.ndarray, row: np.ndarray,
                 pooling: str | None, feature_shape: tuple[int, ...], stage_width: int = 0):
        self.shard_dir = str(shard_dir)
        self.shards = list(shards)
        self.shard = np.asarray(shard, dtype=np.int32)
        self.row = np.asarray(row, dtype=np.int64)
        self.pooling = pooling
        self._reader: ShardReader | None = None
        self.shape = (len(self.row), *row_shape(pooling, feature_shape, stage_width))
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
        pooled = [f"pooled_{p}" for p in self.pooling.split("+")] if self.pooling in VECTOR_POOLINGS else []
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
            else:  # flatten
                block = self._reader.read(name, "features", unique).reshape(len(unique), -1)
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
