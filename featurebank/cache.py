"""The HDF5 feature cache: immutable shard files plus one index file per cache key.

Layout under the cache folder, for a cache key ``K`` (sha256 of the manifest) of backbone ``B``::

    B-K12.h5            index: labels, paths, sha256, split, and ``features``, a virtual dataset over shards
    B-K12.shards/       manifest.json and shard files; each shard holds ``features`` and ``sha256``

Shards are the truth and are never modified: each is written under a temporary name and renamed
into place when complete, so a crash loses only the shard in flight. The index is derived (the
current scan's images that have features) and is replaced atomically the same way, so readers
never see a half-written file. Independent workers can write shards into the same folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import h5py
import numpy as np

from featurebank.errors import CacheError, InvalidArgument

FORMAT_VERSION = 1
COMPRESSIONS = ("none", "lzf", "gzip", "zstd")
_STR = h5py.string_dtype("utf-8")


def library_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def make_manifest(
    *, backbone: str, weights: str, input_size: tuple[int, int], preprocessing: str, layer: str,
    dtype: str, library: str,
) -> dict:
    """Everything that determines the stored numbers; its hash is the cache key."""
    return {
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


def cache_key(manifest: dict) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class IndexRow:
    """One image of the index: where its features are stored, and what the current scan says about it."""

    relpath: str
    label: int
    sha256: str
    split: str
    shard: str
    row: int


def in_memory_h5() -> h5py.File:
    """An HDF5 file that lives in memory until ``commit_h5`` writes it out (HDF5's core driver)."""
    return h5py.File(f"featurebank-{uuid.uuid4().hex}.h5", "w", driver="core", backing_store=False)


def commit_h5(fh: h5py.File, path: Path) -> None:
    """Write an in-memory HDF5 file to ``path`` atomically: temporary file, fsync, rename; then close it.

    HDF5 never touches the disk itself, so a full or failing disk surfaces as a plain OSError from
    ``write`` and can neither corrupt HDF5's state nor leave a partial file behind.
    """
    fh.flush()
    image = fh.id.get_file_image()
    fh.close()
    tmp = path.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        with open(tmp, "wb") as out:
            out.write(image)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_h5(path: Path):
    """Context manager: an h5py.File built in memory and committed to ``path`` atomically on success."""
    fh = in_memory_h5()
    try:
        yield fh
    except BaseException:
        fh.close()
        raise
    commit_h5(fh, path)


def compression_options(compression: str) -> dict:
    if compression == "none":
        return {}
    if compression == "lzf":
        return {"compression": "lzf", "shuffle": True}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    if compression == "zstd":
        import hdf5plugin

        return dict(hdf5plugin.Zstd(clevel=3))
    raise InvalidArgument(f"compression must be one of {', '.join(COMPRESSIONS)}; received {compression!r}")


class FeatureStore:
    """One cache key's shards and index inside a cache folder."""

    def __init__(self, cache_dir: str | os.PathLike, manifest: dict):
        self.cache_dir = Path(cache_dir).expanduser()
        self.manifest = manifest
        self.key = cache_key(manifest)
        self.name = f"{manifest['backbone']}-{self.key[:12]}"
        self.index_path = self.cache_dir / f"{self.name}.h5"
        self.shard_dir = self.cache_dir / f"{self.name}.shards"
        self._shard_shape_cache: dict[str, tuple[int, ...]] = {}  # shards never change once written

    # -- setup -------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Create the folders and manifest; fail with one clear message if the cache folder is not writable."""
        try:
            self.shard_dir.mkdir(parents=True, exist_ok=True)
            manifest_path = self.shard_dir / "manifest.json"
            if not manifest_path.exists():
                tmp = manifest_path.with_suffix(f".tmp-{os.getpid()}")
                tmp.write_text(json.dumps({"key": self.key, **self.manifest}, indent=2, sort_keys=True))
                os.replace(tmp, manifest_path)
            probe = self.shard_dir / f".write-test-{os.getpid()}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise CacheError(f"{self.cache_dir}: cannot write the cache folder: {describe_os_error(exc)}") from None
        self._remove_stale_temporaries()

    def remove(self) -> None:
        """Delete this key's index and shards (``extract --rebuild``)."""
        import shutil

        with contextlib.suppress(FileNotFoundError):
            self.index_path.unlink()
        shutil.rmtree(self.shard_dir, ignore_errors=True)

    def _remove_stale_temporaries(self) -> None:
        for folder in (self.shard_dir, self.cache_dir):
            for tmp in folder.glob(".tmp-*"):
                pid = tmp.name.split("-")[1]
                if pid.isdigit() and not _process_alive(int(pid)):
                    with contextlib.suppress(OSError):
                        tmp.unlink()

    # -- shards ------------------------------------------------------------------------------------------
    def shard_files(self) -> list[Path]:
        return sorted(p for p in self.shard_dir.glob("*.h5") if not p.name.startswith("."))

    def stored_rows(self, warn=None) -> dict[str, tuple[str, int]]:
        """sha256 → (shard file name, row) for every image with stored features.

        An unreadable shard (damaged by a disk fault, say) is moved aside as ``*.corrupt`` and its
        images are recomputed; ``warn`` is told about it.
        """
        found: dict[str, tuple[str, int]] = {}
        for shard in self.shard_files():
            try:
                with h5py.File(shard, "r") as fh:
                    digests = fh["sha256"].asstr()[...]
                    if fh["features"].shape[0] != len(digests):
                        raise OSError("row counts differ")
            except (OSError, KeyError) as exc:
                with contextlib.suppress(OSError):
                    shard.rename(shard.with_suffix(".corrupt"))
                if warn:
                    warn(f"{shard}: unreadable shard moved aside ({exc}); its images will be recomputed")
                continue
            for row, digest in enumerate(digests):
                found.setdefault(str(digest), (shard.name, row))
        return found

    def shard_writer(self, *, feature_shape: tuple[int, ...], compression: str, shard_size: int) -> ShardWriter:
        return ShardWriter(
            self.shard_dir, feature_shape=feature_shape, dtype=self.manifest["dtype"],
            compression=compression, shard_size=shard_size, key=self.key,
        )

    # -- index -------------------------------------------------------------------------------------------
    def write_index(self, rows: list[IndexRow], *, classes: list[str], attrs: dict) -> None:
        """Replace the index with ``rows`` (ordered by shard and row so the virtual dataset stays compact)."""
        rows = sorted(rows, key=lambda r: (r.shard, r.row))
        shapes = self._shard_shapes({r.shard for r in rows})
        feature_shape = next(iter(shapes.values()))[1:] if shapes else tuple(self.manifest.get("feature_shape", ()))
        layout = h5py.VirtualLayout((len(rows), *feature_shape), dtype=self.manifest["dtype"])
        for start, stop, shard, first in _contiguous_runs(rows):
            source = h5py.VirtualSource(f"{self.shard_dir.name}/{shard}", "features", shape=shapes[shard])
            layout[start:stop] = source[first : first + (stop - start)]
        with _locked(self.cache_dir / f".{self.name}.lock"), atomic_h5(self.index_path) as fh:
            fh.create_virtual_dataset("features", layout, fillvalue=np.nan)
            fh.create_dataset("labels", data=np.array([r.label for r in rows], dtype=np.int64))
            fh.create_dataset("paths", data=[r.relpath for r in rows], dtype=_STR)
            fh.create_dataset("sha256", data=np.array([r.sha256 for r in rows], dtype="S64"))
            fh.create_dataset("split", data=np.array([r.split for r in rows], dtype="S5"))
            fh.attrs["classes"] = np.array(classes, dtype=_STR)
            fh.attrs["key"] = self.key
            fh.attrs["manifest"] = json.dumps(self.manifest, sort_keys=True)
            for name in ("backbone", "weights", "dtype", "layer", "preprocessing"):
                fh.attrs[name] = self.manifest[name]
            fh.attrs["input_size"] = self.manifest["input_size"]
            fh.attrs["feature_shape"] = list(feature_shape)
            fh.attrs["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            for name, value in attrs.items():
                fh.attrs[name] = value if not isinstance(value, (dict, list)) else json.dumps(value)

    def _shard_shapes(self, names) -> dict[str, tuple[int, ...]]:
        for name in sorted(set(names) - set(self._shard_shape_cache)):
            with h5py.File(self.shard_dir / name, "r") as fh:
                self._shard_shape_cache[name] = fh["features"].shape
        return {name: self._shard_shape_cache[name] for name in names}


def _contiguous_runs(rows: list[IndexRow]):
    """(start, stop, shard, first_row) for each run of index rows that maps to consecutive rows of one shard."""
    start = 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or rows[i].shard != rows[start].shard or rows[i].row != rows[i - 1].row + 1:
            yield start, i, rows[start].shard, rows[start].row
            start = i


class ShardWriter:
    """Appends feature batches to an in-memory shard and writes it out atomically every ``shard_size`` images.

    ``write`` returns the (sha256, shard name, row) entries of any shard it completed; ``close``
    commits the last, partial shard.
    """

    def __init__(self, shard_dir: Path, *, feature_shape, dtype: str, compression: str, shard_size: int, key: str):
        self.shard_dir = shard_dir
        self.feature_shape = tuple(feature_shape)
        self.dtype = np.dtype(dtype)
        self.options = compression_options(compression)
        self.shard_size = shard_size
        self.key = key
        self.run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.sequence = 0
        self._file: h5py.File | None = None  # the shard being filled, in memory
        self._digests: list[str] = []

    def _open(self) -> None:
        self._file = in_memory_h5()
        self._file.create_dataset(
            "features", shape=(0, *self.feature_shape), maxshape=(None, *self.feature_shape),
            dtype=self.dtype, chunks=(1, *self.feature_shape), **self.options,
        )
        self._file.create_dataset("sha256", shape=(0,), maxshape=(None,), dtype="S64", chunks=(1024,))
        self._file.create_dataset("paths", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(1024,))
        self._file.attrs["key"] = self.key
        self._digests = []

    def write(self, features: np.ndarray, sha256s: list[str], relpaths: list[str]) -> list[tuple[str, str, int]]:
        committed: list[tuple[str, str, int]] = []
        offset = 0
        while offset < len(features):
            if self._file is None:
                self._open()
            room = self.shard_size - len(self._digests)
            take = min(room, len(features) - offset)
            ds_features, ds_sha, ds_paths = self._file["features"], self._file["sha256"], self._file["paths"]
            n = len(self._digests)
            for ds in (ds_features, ds_sha, ds_paths):
                ds.resize(n + take, axis=0)
            ds_features[n : n + take] = features[offset : offset + take].astype(self.dtype, copy=False)
            ds_sha[n : n + take] = np.array(sha256s[offset : offset + take], dtype="S64")
            ds_paths[n : n + take] = relpaths[offset : offset + take]
            self._digests.extend(sha256s[offset : offset + take])
            offset += take
            if len(self._digests) >= self.shard_size:
                committed.extend(self._commit())
        return committed

    def close(self) -> list[tuple[str, str, int]]:
        return self._commit() if self._file is not None else []

    def _commit(self) -> list[tuple[str, str, int]]:
        assert self._file is not None
        name = f"{self.run_id}-{self.sequence:05d}.h5"
        fh, self._file = self._file, None
        commit_h5(fh, self.shard_dir / name)
        entries = [(digest, name, row) for row, digest in enumerate(self._digests)]
        self._digests = []
        self.sequence += 1
        return entries

    def abort(self) -> None:
        """Drop the shard in progress (used when extraction fails part-way); nothing of it is on disk."""
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_os_error(exc: OSError) -> str:
    """A short reason for an OSError, including HDF5's, whose messages bury errno in a long line."""
    import errno as errno_names

    text = str(exc)
    code = exc.errno
    if code is None:
        for candidate in (errno_names.ENOSPC, errno_names.EROFS, errno_names.EACCES, errno_names.EDQUOT):
            if f"errno = {candidate}," in text:
                code = candidate
    if code is not None:
        return os.strerror(code).lower()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def find_indexes(cache_dir: str | os.PathLike) -> list[Path]:
    """Index files in a cache folder."""
    folder = Path(cache_dir).expanduser()
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.h5") if not p.name.startswith("."))


def open_index(path: str | os.PathLike) -> h5py.File:
    """Open an index read-only, turning HDF5's errors about damaged files into one clear CacheError."""
    import hdf5plugin  # noqa: F401  (registers the zstd filter for compressed shards)

    fh = None
    try:
        fh = h5py.File(path, "r")
        for name in ("features", "labels", "paths", "sha256", "split"):
            fh[name]
        json.loads(fh.attrs["manifest"])
        return fh
    except (OSError, KeyError, ValueError) as exc:
        if fh is not None:
            fh.close()
        raise CacheError(
            f"{path}: not a readable featurebank cache index ({exc}); run `featurebank extract` again to "
            "rebuild it from its shards, or `featurebank extract --rebuild` to start over"
        ) from None
