"""The HDF5 feature cache's files: the manifest and key, atomic writes, and immutable shard files.

Layout under the cache folder, for a cache key ``K`` (sha256 of the manifest) of backbone ``B``::

    B-K12.h5            index: the current scan's rows and where each row's features are (featurebank/index.py)
    B-K12.shards/       manifest.json and shard files

A shard is self-describing and immutable: ``features`` (n, h, w, c) one image per chunk (absent
when only pooled vectors are stored), ``pooled_avg`` and ``pooled_max`` (n, c) float32, and the
``sha256``, ``paths``, ``labels`` and ``split`` of its images with the ``classes`` they index.
It is built in memory (a buffer each writer reuses, shard after shard) and written under a temporary
name, fsynced and renamed into place (featurebank/files.py), so a crash loses only the shard in
flight and committing a shard costs the same at any cache size.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import h5py
import numpy as np

from featurebank.array_pool import ZSTD_LEVEL, zstd_frames
from featurebank.errors import CacheError, InvalidArgument
from featurebank.files import HOST, MemoryFile, atomic_h5
from featurebank.images import lower_thread_priority

FORMAT_VERSION = 1  # of the shards and manifest; part of every cache key
COMPRESSIONS = ("none", "lzf", "gzip", "zstd")
DTYPES = ("float16", "float32")
PIXEL_DECODERS = ("pillow", "nvjpeg")  # whose pixels a cache holds (the manifest's "decoder"; absent: pillow)
COMPUTE_DTYPES = ("float32", "bfloat16")  # the backbone's arithmetic; bfloat16: mixed precision (float32 weights)
STORES = ("maps", "pooled")  # maps: feature maps + pooled vectors; pooled: pooled vectors only
POOLED = ("avg", "max")  # pooled side data stored beside every map, as datasets pooled_<name>
STAGES = "stages"  # optional pooled side data (extract --stages): avg-pooled outputs of the backbone's stages
STR_DTYPE = h5py.string_dtype("utf-8")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def library_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def make_manifest(
    *, backbone: str, weights: str, input_size: tuple[int, int], preprocessing: str, layer: str,
    dtype: str, library: str, store: str = "maps", augment: str = "none", stages: tuple[tuple[str, int], ...] = (),
    compute_dtype: str = "float32", decoder: str = "pillow", decoder_library: str | None = None,
) -> dict:
    """Everything that determines the stored numbers; its hash is the cache key.

    ``store``, ``augment``, ``stages`` ((layer, channels) of each stage whose avg-pooled output
    is stored), ``compute_dtype`` (the backbone's arithmetic: bfloat16 maps differ from float32
    ones by 1-10%, far more than float16 storage rounds, so the two are never mixed in one cache)
    and ``decoder`` (whose pixels: Pillow's, or nvJPEG's on a GPU, a few levels apart; one of
    PIXEL_DECODERS, with the versions of torch and of ``decoder_library``, the package whose
    decoder it is: gpu_decoding.JPEG_LIBRARIES) enter the manifest only when they differ from the
    defaults, so caches made before they existed keep their keys.
    """
    manifest = {
        "format": FORMAT_VERSION,
        "backbone": backbone,
        "weights": weights,
        "input_size": [int(input_size[0]), int(input_size[1])],
        "resize": "EXIF orientation applied, RGB, bilinear resize to input_size (aspect ratio not kept)",
        "preprocessing": preprocessing,
        "layer": layer,
        "dtype": dtype,
        "versions": {library: library_version(library), "pillow": library_version("pillow")},
    }
    if store != "maps":
        manifest["store"] = store
    if augment != "none":
        manifest["augment"] = augment
    if stages:
        manifest["stages"] = [[str(layer), int(channels)] for layer, channels in stages]
    if compute_dtype != "float32":
        manifest["compute_dtype"] = compute_dtype
    if decoder not in PIXEL_DECODERS:
        raise InvalidArgument(f"decoder must be one of {', '.join(PIXEL_DECODERS)}; received {decoder!r}")
    if decoder != "pillow":
        manifest["decoder"] = decoder
        if decoder_library is None:
            raise InvalidArgument(f"decoder {decoder!r} needs the name of the library that decodes (decoder_library)")
        manifest["versions"].update({name: library_version(name) for name in ("torch", decoder_library)})
    return manifest


def stage_width(manifest: dict) -> int:
    """Length of a cache's stored stage vector (0 when it stores none)."""
    return sum(int(channels) for _, channels in manifest.get("stages", ()))


def cache_key(manifest: dict) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def compression_options(compression: str) -> dict:
    if compression == "none":
        return {}
    if compression == "lzf":
        return {"compression": "lzf", "shuffle": True}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    if compression == "zstd":
        import hdf5plugin

        return dict(hdf5plugin.Zstd(clevel=ZSTD_LEVEL))
    raise InvalidArgument(f"compression must be one of {', '.join(COMPRESSIONS)}; received {compression!r}")


def pooled_vectors(maps: np.ndarray) -> dict[str, np.ndarray]:
    """The pooled side data of a (n, h, w, c) batch of maps: {'avg': (n, c), 'max': (n, c)} float32."""
    maps = np.asarray(maps, dtype=np.float32)
    return {"avg": maps.mean(axis=(1, 2)), "max": maps.max(axis=(1, 2))}


class ShardDamaged(Exception):
    """A shard's content is broken (not HDF5, truncated, rows missing): safe to quarantine and recompute."""


def open_shard(path: Path) -> h5py.File:
    """Open a shard read-only, telling damage (ShardDamaged) apart from trouble (CacheError).

    Damage is content that cannot be a shard. Trouble is anything that says nothing about the
    content: the file cannot be opened by the OS (permissions, too many open files, a vanished
    network mount) or HDF5 cannot lock it. Trouble is never a reason to quarantine a shard.
    """
    import hdf5plugin  # noqa: F401  (registers the zstd filter for compressed shards)

    try:
        with open(path, "rb") as raw:
            head = raw.read(8)
    except FileNotFoundError:
        raise CacheError(f"{path}: shard is missing; run `featurebank extract` on the same data to recompute "
                         "its images") from None
    except OSError as exc:
        raise CacheError(f"{path}: cannot read shard: {describe_os_error(exc)}") from None
    if head != _HDF5_SIGNATURE:
        raise ShardDamaged("not an HDF5 file")
    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        text = str(exc).lower()
        if "unable to lock" in text or (exc.errno in (errno.EACCES, errno.EPERM, errno.EMFILE, errno.ENFILE, errno.EAGAIN)):
            what = "HDF5 cannot lock it" if "unable to lock" in text else "cannot open it"
            raise CacheError(
                f"{path}: cannot open shard: {what} ({describe_os_error(exc)}); the file itself is intact (on network "
                "storage whose locking is broken, set HDF5_USE_FILE_LOCKING=FALSE)") from None
        raise ShardDamaged(str(exc).splitlines()[0][:200]) from None
    try:
        count = len(fh["sha256"])
        for name in ("paths", *(n for n in fh if n.startswith("pooled_")), *(["features"] if "features" in fh else [])):
            if fh[name].shape[0] != count:
                raise ShardDamaged(f"{name} has {fh[name].shape[0]} rows, sha256 has {count}")
    except KeyError as exc:
        fh.close()
        raise ShardDamaged(f"missing dataset ({exc})") from None
    except ShardDamaged:
        fh.close()
        raise
    return fh


class ShardWriter:
    """Appends batches to an in-memory shard and writes it out atomically every ``shard_size`` images.

    A full shard goes to disk (write, fsync, rename) on a committer thread while the next one fills
    a second buffer, so the disk's time and HDF5's overlap. ``write`` returns the (sha256, shard
    name, row) entries of any shard it completed; ``close`` commits the last, partial shard and
    returns once every shard is on disk, raising the first write-out that failed. ``maps`` may be
    None when only pooled vectors are stored.
    """

    def __init__(self, shard_dir: Path, *, feature_shape, dtype: str, compression: str, shard_size: int,
                 key: str, classes: list[str], store: str = "maps"):
        self.shard_dir = shard_dir
        self.feature_shape = tuple(feature_shape)
        self.dtype = np.dtype(dtype)
        self.options = compression_options(compression)
        self.compression = compression
        self.shard_size = shard_size
        self.key = key
        self.classes = list(classes)
        self.store = store
        self.run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{HOST}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.sequence = 0
        self._file: h5py.File | None = None  # the shard being filled, in ``self._memories[self._current]``
        map_bytes = int(np.prod(self.feature_shape, dtype=np.int64)) * self.dtype.itemsize if store == "maps" else 0
        # Shards skip the page cache (featurebank/files.py); a full shard's maps, uncompressed, plus room for the rest.
        # Two buffers: while one shard is written out to disk on the committer thread, the next fills the other.
        expected = shard_size * (map_bytes + (16 << 10)) + (1 << 20)
        self._memories = [MemoryFile(direct=True, expected_bytes=expected) for _ in range(2)]
        self._current = 0  # the buffer the next shard fills
        self._writing_out: dict[int, Future] = {}  # index of a buffer → the write-out of the shard it holds
        self._committer: ThreadPoolExecutor | None = None
        self._rows: dict[str, list] = {}
        self._pooled: dict[str, list] = {}  # name → float32 blocks: avg and max, and stages where stored

    def _open(self) -> None:
        self._wait_for(self._current)  # its previous shard must be on disk before it is reused
        self._file = self._memories[self._current].new_h5()
        if self.store == "maps":
            self._file.create_dataset(
                "features", shape=(0, *self.feature_shape), maxshape=(None, *self.feature_shape),
                dtype=self.dtype, chunks=(1, *self.feature_shape), **self.options,
            )
        self._rows = {"sha256": [], "paths": [], "labels": [], "split": []}
        self._pooled = {}

    def write(self, maps: np.ndarray | None, pooled: dict[str, np.ndarray], sha256s: list[str], relpaths: list[str],
              labels: list[int], splits: list[str]) -> list[tuple[str, str, int]]:
        committed: list[tuple[str, str, int]] = []
        offset, total = 0, len(sha256s)
        while offset < total:
            if self._file is None:
                self._open()
            n = len(self._rows["sha256"])
            take = min(self.shard_size - n, total - offset)
            part = slice(offset, offset + take)
            if maps is not None and self.store == "maps":
                ds = self._file["features"]
                ds.resize(n + take, axis=0)
                rows = np.ascontiguousarray(maps[part], dtype=self.dtype)
                if self.compression == "zstd":  # compressed on the pool's threads, one chunk (image) each
                    for row, frame in enumerate(zstd_frames(rows)):
                        ds.id.write_direct_chunk((n + row, *([0] * len(self.feature_shape))), frame)
                else:
                    ds[n : n + take] = rows
            for name, values in (("sha256", sha256s), ("paths", relpaths), ("labels", labels), ("split", splits)):
                self._rows[name].extend(values[part])
            for name, vectors in pooled.items():  # avg and max, and stages where the cache stores them
                self._pooled.setdefault(name, []).append(np.asarray(vectors[part], dtype=np.float32))
            offset += take
            if len(self._rows["sha256"]) >= self.shard_size:
                committed.extend(self._commit())
        return committed

    def close(self) -> list[tuple[str, str, int]]:
        """Commit the last shard; returns once every shard is on disk (raising the first write-out that failed)."""
        try:
            entries = self._commit() if self._file is not None else []
            for buffer in range(len(self._memories)):
                self._wait_for(buffer)
        finally:
            self._stop_committer()
        return entries

    def _wait_for(self, buffer: int) -> None:
        writing = self._writing_out.pop(buffer, None)
        if writing is not None:
            writing.result()  # a full disk or a failing write surfaces here, on the writer's thread

    def _stop_committer(self) -> None:
        if self._committer is not None:
            self._committer.shutdown(wait=True)
            self._committer = None

    def _commit(self) -> list[tuple[str, str, int]]:
        assert self._file is not None
        name = f"{self.run_id}-{self.sequence:05d}.h5"
        fh, self._file, rows, pooled = self._file, None, self._rows, self._pooled
        fh.create_dataset("sha256", data=np.array(rows["sha256"], dtype="S64"))
        fh.create_dataset("paths", data=rows["paths"], dtype=STR_DTYPE)
        fh.create_dataset("labels", data=np.array(rows["labels"], dtype=np.int64))
        fh.create_dataset("split", data=np.array(rows["split"], dtype="S5"))
        for pooling, parts in pooled.items():
            fh.create_dataset(f"pooled_{pooling}", data=np.concatenate(parts))
        fh.attrs["key"] = self.key
        fh.attrs["classes"] = json.dumps(self.classes)
        fh.attrs["feature_shape"] = list(self.feature_shape)
        fh.close()  # HDF5 is done with the buffer: its bytes are the shard's, and they go to disk off this thread
        if self._committer is None:
            self._committer = ThreadPoolExecutor(1, thread_name_prefix="featurebank-commit",
                                                 initializer=lower_thread_priority)
        buffer = self._current
        self._writing_out[buffer] = self._committer.submit(self._memories[buffer].write_out, self.shard_dir / name)
        self._current = 1 - buffer
        self.sequence += 1
        return [(digest, name, row) for row, digest in enumerate(rows["sha256"])]

    def abort(self) -> None:
        """Drop the shard in progress (used when extraction fails part-way); nothing of it is on disk.

        Full shards already handed to the committer are still written out: their features are good.
        """
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None
        for buffer in range(len(self._memories)):
            with contextlib.suppress(Exception):  # the run is failing already; its own error is the one to report
                self._wait_for(buffer)
        self._stop_committer()


def backfill_pooled(path: Path) -> None:
    """Give an older shard (maps only) its pooled side data, computed from its maps: a new file renamed over it."""
    with open_shard(path) as old, atomic_h5(path) as new:
        for name, item in old.items():
            old.copy(item, new, name=name)
        for key, value in old.attrs.items():
            new.attrs[key] = value
        maps = old["features"]
        vectors = {p: np.empty((maps.shape[0], maps.shape[-1]), np.float32) for p in POOLED}
        for start in range(0, maps.shape[0], 64):
            block = pooled_vectors(maps[start : start + 64])
            for pooling in POOLED:
                vectors[pooling][start : start + 64] = block[pooling]
        for pooling in POOLED:
            new.create_dataset(f"pooled_{pooling}", data=vectors[pooling])


def describe_os_error(exc: OSError) -> str:
    """A short reason for an OSError, including HDF5's, whose messages bury errno in a long line."""
    text = str(exc)
    code = exc.errno
    if code is None:
        for candidate in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EMFILE):
            if f"errno = {candidate}," in text:
                code = candidate
    if code is not None:
        return os.strerror(code).lower()
    return text.splitlines()[0][:200] if text else type(exc).__name__
