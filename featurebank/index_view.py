"""Reading a cache key's index: the consolidated rows joined with the shards committed since.

Readers (``load()``, ``info``) see the index file's rows plus the rows of every committed shard it
does not list yet (a path's newest row wins), so during an extraction they see every committed
row and never a partial one. The writer side (consolidation, what is stored) is in index.py.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from featurebank.cache import ShardDamaged, cache_key, describe_os_error, open_shard
from featurebank.errors import CacheError

INDEX_FORMAT = 2


@dataclass
class IndexView:
    """The rows a reader sees: the index plus any committed shard it does not list yet."""

    index_path: Path
    paths: np.ndarray
    labels: np.ndarray
    sha256: np.ndarray
    split: np.ndarray
    shard: np.ndarray  # int32 position in ``shards``
    row: np.ndarray
    shards: list[str]
    classes: list[str]
    attrs: dict
    manifest: dict

    @property
    def shard_dir(self) -> Path:
        return self.index_path.with_suffix(".shards")


def _read_manifest(shard_dir: Path) -> dict:
    try:
        manifest = json.loads((shard_dir / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise CacheError(f"{shard_dir}: no readable manifest.json ({exc}); not a featurebank cache") from None
    manifest.pop("key", None)
    return manifest


def shard_names(shard_dir: Path) -> list[str]:
    """Committed shard files in a shard folder (a listing only: no file is opened or stat'ed)."""
    with contextlib.suppress(FileNotFoundError):
        return [e.name for e in os.scandir(shard_dir) if e.name.endswith(".h5") and not e.name.startswith(".")]
    return []


def shard_files(shard_dir: Path) -> dict[str, os.stat_result]:
    """Committed shard files with their stat results (to check the ones the index lists are unchanged)."""
    return {name: (shard_dir / name).stat() for name in shard_names(shard_dir)}


def read_base(index_path: Path) -> h5py.File | None:
    """The consolidated index opened read-only, None if absent; a clear CacheError if damaged or too old."""
    if not index_path.exists():
        return None
    try:
        fh = h5py.File(index_path, "r")
    except OSError as exc:
        raise CacheError(
            f"{index_path}: not a readable featurebank cache index ({describe_os_error(exc)}); run `featurebank "
            "extract` again to rebuild it from its shards, or `featurebank extract --rebuild` to start over") from None
    if int(fh.attrs.get("index_format", 1)) != INDEX_FORMAT or "shards" not in fh:
        fh.close()
        raise CacheError(f"{index_path}: index written by an older featurebank; run `featurebank extract` on the "
                         "same data to rebuild it from its shards (nothing is recomputed)")
    return fh


def read_view(index_path: str | os.PathLike) -> IndexView:
    """Rows of the cache whose index is ``index_path``: consolidated rows, overridden by newer shards' rows."""
    index_path = Path(index_path)
    shard_dir = index_path.with_suffix(".shards")
    base = read_base(index_path)
    if base is None and not shard_dir.is_dir():
        raise CacheError(f"{index_path}: no such feature cache")
    columns: dict[str, list] = {"paths": [], "labels": [], "sha256": [], "split": [], "shard": [], "row": []}
    shards: list[str] = []
    classes: list[str] = []
    attrs: dict = {}
    if base is not None:
        with base:
            try:
                shards = list(base["shards"].asstr()[...])
                columns = {"paths": base["paths"].asstr()[...], "labels": base["labels"][...],
                           "sha256": base["sha256"][...].astype("U64"), "split": base["split"][...].astype("U5"),
                           "shard": base["shard"][...], "row": base["row"][...]}
                classes = json.loads(base.attrs["classes"])
                attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in base.attrs.items()}
                manifest = json.loads(base.attrs["manifest"])
            except (KeyError, ValueError, OSError) as exc:
                raise CacheError(f"{index_path}: not a readable featurebank cache index ({exc}); run `featurebank "
                                 "extract` again to rebuild it from its shards") from None
    else:
        manifest = _read_manifest(shard_dir)
        attrs = {"key": cache_key(manifest), "manifest": json.dumps(manifest, sort_keys=True)}
    known = set(shards)
    newer = sorted(name for name in shard_names(shard_dir) if name not in known)
    if newer:
        columns, classes = _join_newer_shards(shard_dir, newer, columns, shards, classes)
    return IndexView(index_path=index_path, classes=classes, attrs=attrs, manifest=manifest, shards=shards,
                     paths=np.asarray(columns["paths"], dtype=object), labels=np.asarray(columns["labels"], np.int64),
                     sha256=np.asarray(columns["sha256"], dtype="U64"), split=np.asarray(columns["split"], dtype="U5"),
                     shard=np.asarray(columns["shard"], np.int32), row=np.asarray(columns["row"], np.int64))


def _join_newer_shards(shard_dir: Path, names: list[str], columns: dict, shards: list[str], classes: list[str]):
    """Add the rows of committed shards the index does not list yet; a path's newest row wins."""
    position = {path: i for i, path in enumerate(columns["paths"])}
    columns = {k: list(v) for k, v in columns.items()}
    for name in names:
        try:
            with open_shard(shard_dir / name) as fh:
                if "labels" not in fh:
                    continue  # a shard from an older featurebank: listed after the next extract
                shard_classes = json.loads(fh.attrs["classes"])
                rows = zip(fh["paths"].asstr()[...], fh["labels"][...], fh["sha256"][...].astype("U64"),
                           fh["split"][...].astype("U5"))
                rows = list(rows)
        except (ShardDamaged, CacheError):
            continue  # reported and quarantined by the next extract; a reader just does not see it
        if any(c not in classes for c in shard_classes):  # labels are positions: remap those gathered so far
            grown = sorted({*classes, *shard_classes})
            remap = [grown.index(c) for c in classes]
            columns["labels"] = [remap[label] for label in columns["labels"]]
            classes = grown
        shards.append(name)
        for row, (path, label, digest, split) in enumerate(rows):
            values = (path, classes.index(shard_classes[label]), digest, split, len(shards) - 1, row)
            if path in position:
                for key, value in zip(columns, values):
                    columns[key][position[path]] = value
            else:
                position[path] = len(columns["paths"])
                for key, value in zip(columns, values):
                    columns[key].append(value)
    return columns, classes


def find_indexes(cache_dir: str | os.PathLike) -> list[Path]:
    """Index paths of the caches in a folder: every index file, and every shard folder not yet indexed."""
    folder = Path(cache_dir).expanduser()
    if not folder.is_dir():
        return []
    found = {p for p in folder.glob("*.h5") if not p.name.startswith(".")}
    found |= {p.with_suffix(".h5") for p in folder.glob("*.shards") if (p / "manifest.json").is_file()
              and shard_names(p)}
    return sorted(found)
