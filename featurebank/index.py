"""Writing a cache key's index: which images of the current scan have features, and in which shard row.

The index file (``B-K12.h5``) is consolidated once per extraction run, under a lock, from the scan
and the shards. While a run is going, every shard it commits is self-describing (sha256, paths,
labels, split), so readers join the index with the shards it does not list yet: a commit costs one
shard write whatever the size of the cache, and readers still see every committed row.

Index datasets: ``paths``, ``labels``, ``sha256``, ``split``, ``shard`` (into ``shards``) and
``row`` for the current scan's images; ``stored_sha256``/``stored_shard``/``stored_row`` for every
image any shard holds (so a run knows what is computed without opening every shard); ``shards``
with ``shard_bytes`` and ``shard_mtime_ns`` (a shard whose size or time changed is re-checked,
since shards never change). Attributes: classes, manifest, key, data_root, split settings, skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from featurebank.cache import (
    STR_DTYPE,
    ShardDamaged,
    ShardWriter,
    backfill_pooled,
    cache_key,
    describe_os_error,
    open_shard,
)
from featurebank.errors import CacheError
from featurebank.files import atomic_h5, remove_stale_temporaries, write_atomically
from featurebank.index_view import INDEX_FORMAT, read_base, shard_files, shard_names
from featurebank.stored_state import StoredState, sha256_column


class IndexRows(NamedTuple):
    """The scan's images as columns, in scan order: what an index is written from (splits are looked up or drawn)."""

    relpaths: list[str]
    labels: list[int]
    sha256s: list[str]


class FeatureStore:
    """One cache key's shards and index inside a cache folder: what a writer uses."""

    def __init__(self, cache_dir: str | os.PathLike, manifest: dict):
        self.cache_dir = Path(cache_dir).expanduser()
        self.manifest = manifest
        self.key = cache_key(manifest)
        self.name = f"{manifest['backbone']}-{self.key[:12]}"
        self.index_path = self.cache_dir / f"{self.name}.h5"
        self.shard_dir = self.cache_dir / f"{self.name}.shards"

    def prepare(self) -> None:
        """Create the folders and manifest; fail with one clear message if the cache folder is not writable."""
        try:
            self.shard_dir.mkdir(parents=True, exist_ok=True)
            manifest_path = self.shard_dir / "manifest.json"
            if not manifest_path.exists():
                write_atomically(manifest_path, json.dumps({"key": self.key, **self.manifest}, indent=2,
                                                           sort_keys=True).encode())
            probe = self.shard_dir / f".write-test-{os.getpid()}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise CacheError(f"{self.cache_dir}: cannot write the cache folder: {describe_os_error(exc)}") from None
        remove_stale_temporaries(self.shard_dir, self.cache_dir)

    def remove(self) -> None:
        """Delete this key's index and shards (``extract --rebuild``)."""
        import shutil

        with contextlib.suppress(FileNotFoundError):
            self.index_path.unlink()
        shutil.rmtree(self.shard_dir, ignore_errors=True)

    def shard_writer(self, *, feature_shape, compression: str, shard_size: int, classes: list[str]) -> ShardWriter:
        return ShardWriter(self.shard_dir, feature_shape=feature_shape, dtype=self.manifest["dtype"],
                           compression=compression, shard_size=shard_size, key=self.key, classes=classes,
                           store=self.manifest.get("store", "maps"))

    # -- what is stored ----------------------------------------------------------------------------------
    def stored_state(self, warn=None, *, verify: bool = False) -> StoredState:
        """Every stored image, from the index and the shards it does not list; damaged shards set aside.

        Shards the index lists are opened only when their size or modification time changed (or
        with ``verify``), so a run's bookkeeping does not grow with the cache.
        """
        state = StoredState()
        on_disk = shard_files(self.shard_dir)
        base = None
        with contextlib.suppress(CacheError):
            base = read_base(self.index_path)
        if base is not None:
            with base:
                state.index_digest = base.attrs.get("content_digest")
                names = list(base["shards"].asstr()[...])
                recorded = dict(zip(names, zip(base["shard_bytes"][...].tolist(), base["shard_mtime_ns"][...].tolist())))
                stored = (base["stored_sha256"][...], base["stored_shard"][...], base["stored_row"][...])
                stored_split = base["stored_split"][...] if "stored_split" in base else None  # older indexes lack it
                state.index_split_settings = (int(base.attrs.get("split_seed", -1)),
                                              [float(v) for v in base.attrs.get("split_fractions", [])])
            intact = [name for name in names if name in on_disk and not verify
                      and (on_disk[name].st_size, on_disk[name].st_mtime_ns) == recorded[name]]
            state.set_indexed(*stored, names, intact, stored_split)
            state.shards = {name: recorded[name] for name in intact}
        self.refresh(state, warn)
        return state

    def index_is_current(self, inputs_digest: str, rows: int) -> bool:
        """Whether the index was written from these inputs (``inputs_digest``), holds all ``rows`` with
        features, and lists exactly the shards on disk, each unchanged: then a run has nothing to do.

        Reads the index's small datasets and one listing of the shard folder, never a shard.
        """
        try:
            base = read_base(self.index_path)
        except CacheError:
            return False
        if base is None:
            return False
        with base:
            if base.attrs.get("inputs_digest") != inputs_digest or base["paths"].shape[0] != rows:
                return False
            recorded = dict(zip(base["shards"].asstr()[...].tolist(),
                                zip(base["shard_bytes"][...].tolist(), base["shard_mtime_ns"][...].tolist())))
        on_disk = shard_files(self.shard_dir)
        return recorded.keys() == on_disk.keys() and all(
            (info.st_size, info.st_mtime_ns) == recorded[name] for name, info in on_disk.items())

    def refresh(self, state: StoredState, warn=None, *, forget_missing: bool = False) -> list[str]:
        """Add shards committed since ``state`` was read (by this or another writer); returns their names.

        With ``forget_missing``, shards no longer on disk (moved aside by another writer) are dropped
        from ``state`` with their rows.
        """
        added = []
        names = shard_names(self.shard_dir)
        if forget_missing and (gone := state.shards.keys() - set(names)):
            state.forget_shards(gone)
        for name in sorted(names):
            if name in state.shards:
                continue
            path = self.shard_dir / name
            try:
                info = path.stat()
                with open_shard(path) as fh:
                    digests = fh["sha256"][...].astype("U64").tolist()
                    needs_pooled = "pooled_avg" not in fh
                if needs_pooled:
                    backfill_pooled(path)
                    info = path.stat()
            except FileNotFoundError:
                continue  # replaced or moved aside by another writer since the listing
            except ShardDamaged as exc:
                with contextlib.suppress(OSError):
                    path.rename(path.with_suffix(".corrupt"))
                if warn:
                    warn(f"{path}: unreadable shard moved aside ({exc}); its images will be recomputed")
                continue
            state.add_shard(name, digests, (info.st_size, info.st_mtime_ns))
            added.append(name)
        return added

    # -- the index ---------------------------------------------------------------------------------------
    def consolidate(self, rows: IndexRows, *, split_of: Callable[[str], str], classes: list[str], attrs: dict,
                    warn=None, state: StoredState | None = None) -> int:
        """Write the index for the scan's ``rows`` (columns: relpath, label, sha256) that have features.

        Each row's split is the one the index recorded (``stored_split``, when ``state`` says the
        settings match) or ``split_of``'s draw: a run that adds images draws splits for those only.

        Runs under a lock, and first reads the shards committed since ``state`` (the writer's own
        and other writers'; all of what is stored when no state is given), so concurrent writers
        never lose each other's rows. Skips the write when nothing changed. Returns the number of
        indexed rows. Column-wise (see stored_state.py): this runs once per extraction over the whole scan.
        """
        with _locked(self.cache_dir / f".{self.name}.lock"):
            if state is None:
                state = self.stored_state(warn)
            else:
                self.refresh(state, warn, forget_missing=True)
                state.index_digest = self._index_digest()  # another writer may have rewritten it since
            names = sorted(state.shards)
            number = {name: i for i, name in enumerate(names)}
            found, shard, row, split = state.locate(rows.sha256s, number, split_of)
            if not found.all():  # images without features (they failed to decode) are not indexed
                keep = np.flatnonzero(found).tolist()
                rows = IndexRows(*([column[i] for i in keep] for column in rows))
                shard, row, split = shard[found], row[found], split[found]
            stored_sha256, stored_shard, stored_row, stored_split = state.all_rows(number, split_of)
            columns = {
                "paths": np.array(rows.relpaths, dtype=object),
                "labels": np.array(rows.labels, dtype=np.int64),
                "sha256": sha256_column(rows.sha256s),
                "split": split,
                "shard": shard,
                "row": row,
                "shards": np.array(names, dtype=object),
                "shard_bytes": np.array([state.shards[n][0] for n in names], dtype=np.int64),
                "shard_mtime_ns": np.array([state.shards[n][1] for n in names], dtype=np.int64),
                "stored_sha256": stored_sha256,  # by hash, whatever order the shards were read in
                "stored_shard": stored_shard,
                "stored_row": stored_row,
                "stored_split": stored_split,  # splits known for the next run (b'' where never drawn)
            }
            described = {**attrs, "classes": json.dumps(classes), "manifest": json.dumps(self.manifest, sort_keys=True),
                         "feature_shape": self._feature_shape(names)}
            digest = _content_digest(columns, described)
            if state.index_digest == digest:
                return len(row)  # the index already says exactly this
            with atomic_h5(self.index_path) as fh:
                for name, values in columns.items():
                    fh.create_dataset(name, data=values, dtype=STR_DTYPE if values.dtype == object else values.dtype)
                for name, value in described.items():
                    numeric = isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value)
                    fh.attrs[name] = value if numeric or not isinstance(value, (dict, list, tuple)) else json.dumps(value)
                fh.attrs["key"] = self.key
                fh.attrs["index_format"] = INDEX_FORMAT
                fh.attrs["content_digest"] = digest
                fh.attrs["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                for name in ("backbone", "weights", "dtype", "layer", "preprocessing"):
                    fh.attrs[name] = self.manifest[name]
                fh.attrs["input_size"] = self.manifest["input_size"]
                fh.attrs["store"] = self.manifest.get("store", "maps")
            return len(row)


    def _index_digest(self) -> str | None:
        """The content digest the index on disk records (None if there is no readable index)."""
        with contextlib.suppress(CacheError):
            base = read_base(self.index_path)
            if base is not None:
                with base:
                    return base.attrs.get("content_digest")
        return None

    def _feature_shape(self, names: list[str]) -> list[int]:
        """Shape of one stored map (empty when only pooled vectors are stored), from a shard's attributes."""
        for name in names[:1]:
            with contextlib.suppress(ShardDamaged, CacheError), open_shard(self.shard_dir / name) as fh:
                return [int(v) for v in fh.attrs.get("feature_shape", fh["features"].shape[1:] if "features" in fh else ())]
        return []


def inputs_digest(relpaths: list[str], labels: list[int], sha256s: list[str], attrs: dict) -> str:
    """Digest of what an index is written from: the scan's rows and the settings (splits follow from these)."""
    digest = hashlib.sha256(json.dumps(attrs, sort_keys=True, default=str).encode())
    digest.update("\0".join(relpaths).encode())
    digest.update(np.asarray(labels, np.int64).tobytes())
    digest.update("".join(sha256s).encode())
    return digest.hexdigest()


def _content_digest(columns: dict, attrs: dict) -> str:
    digest = hashlib.sha256(json.dumps(attrs, sort_keys=True, default=str).encode())
    for name in sorted(columns):
        values = columns[name]
        digest.update(name.encode())
        digest.update("\0".join(values.tolist()).encode() if values.dtype == object else values.tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
