"""``featurebank.load()``: cached features as numpy (eagerly, or lazily for caches bigger than RAM)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featurebank.cache import cache_key, describe_os_error, stage_width
from featurebank.errors import AmbiguousCacheError, CacheError, InvalidArgument
from featurebank.index_view import IndexView, find_indexes, read_view
from featurebank.rows import POOLINGS, VECTOR_POOLINGS, LazyFeatures, ShardReader, uses_stages
from featurebank.splits import SPLIT_NAMES, balanced_subset

__all__ = ["POOLINGS", "VECTOR_POOLINGS", "FeatureSet", "LazyFeatures", "describe_index", "find_cache", "load",
           "read_exclusions"]


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
        "augment": manifest.get("augment", "none"), "stage_width": stage_width(manifest), "images": len(view.paths),
        "compute_dtype": manifest.get("compute_dtype", "float32"), "decoder": manifest.get("decoder", "pillow"),
        "classes": view.classes,
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
    stages: bool = False,
    compute_dtype: str | None = None,
    decoder: str | None = None,
) -> Path:
    """The one index in ``cache`` that matches; a clear error when none or several do.

    ``stages``: only caches that store stage vectors (``extract --stages``) match.
    """
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
        if compute_dtype and info["compute_dtype"] != compute_dtype:
            continue
        if decoder and info["decoder"] != decoder:
            continue
        if not key and info["augment"] != (augment or "none"):  # augmented caches are asked for by name
            continue
        if stages and not key and not info["stage_width"]:  # a cache named by key is checked by load()
            continue
        candidates.append(info)
    if not candidates:
        wanted = ", ".join(f"{k}={v}" for k, v in [("backbone", backbone), ("weights", weights), ("dtype", dtype),
                                                     ("key", key), ("input_size", input_size), ("augment", augment),
                                                     ("compute_dtype", compute_dtype), ("decoder", decoder),
                                                     ("stage vectors", "stored (extract --stages)" if stages else None)]
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
            f"input_size={'x'.join(map(str, c['input_size']))} augment={c['augment']} "
            f"compute_dtype={c['compute_dtype']} decoder={c['decoder']} "
            f"stages={'yes' if c['stage_width'] else 'no'} images={c['images']}"
            for c in candidates
        )
        raise AmbiguousCacheError(
            f"{cache}: {len(candidates)} caches match backbone={backbone}: {lines}. "
            "Pick one with weights=..., dtype=..., input_size=..., augment=..., compute_dtype=..., decoder=... or key=... "
            "(CLI: --weights, --dtype, --key, or the index file itself as --cache; or name the backbone as "
            "backbone:augment)"
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
    compute_dtype: str | None = None,
    decoder: str | None = None,
    lazy: bool = False,
) -> FeatureSet:
    """Load cached features as numpy.

    Parameters
    ----------
    cache : folder holding the caches (``featurebank extract --cache``), or one index ``.h5`` file.
    backbone : which backbone's cache; ``weights``, ``dtype``, ``input_size``, ``compute_dtype``
        ('float32' or 'bfloat16', extract --compute-dtype), ``decoder`` ('pillow' or 'nvjpeg', whose
        pixels: extract --decoder nvjpeg) or ``key`` pick among several caches of the same backbone.
    split : 'train', 'val' or 'test' to keep only that split; None keeps all images.
    pooling : None for the stored (N, h, w, c) maps, 'avg' or 'max' for (N, c), 'flatten' for (N, h*w*c);
        'stages' for the stored stage vectors (a cache made with ``extract --stages``), and
        'avg+max', 'avg+stages', 'avg+max+stages' for those side by side.
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
                           compute_dtype=compute_dtype, balanced=balanced, exclude=exclude)
    if split is not None and split not in SPLIT_NAMES:
        raise InvalidArgument(f"split must be None or one of {', '.join(SPLIT_NAMES)}; received {split!r}")
    if pooling is not None and pooling not in POOLINGS:
        raise InvalidArgument(f"pooling must be None or one of {', '.join(POOLINGS)}; received {pooling!r}")
    wants_stages = uses_stages(pooling)
    path = Path(cache).expanduser()
    if path.suffix != ".h5":
        path = find_cache(path, backbone, weights=weights, dtype=dtype, key=key, input_size=input_size, augment=augment,
                          stages=wants_stages, compute_dtype=compute_dtype, decoder=decoder)
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
    if manifest.get("store", "maps") == "pooled" and pooling not in VECTOR_POOLINGS:
        raise CacheError(f"{path}: this cache stores pooled vectors only (extract --store pooled); ask for "
                         "pooling='avg' or 'max'")
    if wants_stages and not stage_width(manifest):
        raise CacheError(f"{path}: this cache stores no stage vectors; extract again with --stages, or ask for "
                         "pooling='avg', 'max' or 'avg+max'")
    if not shape:
        shape = (1, 1, _channels(view))
    features = LazyFeatures(view.shard_dir, view.shards, view.shard[rows], view.row[rows], pooling, shape,
                            stage_width=stage_width(manifest))
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
                weights: str | None = None, dtype: str | None = None, compute_dtype: str | None = None,
                balanced: int | None = None,
                exclude=None) -> FeatureSet:
    """Features of several backbones side by side (``load(backbone="a+b")``), joined by content hash.

    Rows follow the first backbone's cache; an image that another cache lacks is left out and
    reported in ``missing`` (backbone → paths), never dropped silently. Maps of different backbones
    rarely share a shape, so ``pooling`` must be one of the vector poolings ('avg', 'avg+stages', ...).
    """
    if pooling not in VECTOR_POOLINGS:
        raise InvalidArgument(f"joined backbones need one of the poolings {', '.join(VECTOR_POOLINGS)}; "
                              f"received {pooling!r}")
    parts = [load(cache, name, split, pooling, weights=weights, dtype=dtype, compute_dtype=compute_dtype,
                  balanced=balanced, exclude=exclude)
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
