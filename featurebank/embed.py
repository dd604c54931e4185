"""The one "embed these images" path: decode → backbone → stored dtype and pooled vectors.

Extraction, predict and the audit all call it, so a photo gets exactly the numbers the cache
would hold for it. ``Embedder`` wraps a backbone's feature function with the cache's augmentation
(``hflip-mean``: the mean of the image's and its mirror image's maps), the cast to the stored
dtype and the pooled side data (avg and max; the stage vectors when the cache stores them). A
feature function that can do those steps on its device itself (``embed(images, dtype)``, see
torch_backbones.py) is used that way, so only the stored bytes come back to the host. Which
backbones can give stage vectors is checked where the manifest is made (``resolve_manifest``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from featurebank.backbones import Backbone, get_backbone
from featurebank.cache import POOLED, STAGES, pooled_vectors
from featurebank.errors import InvalidArgument
from featurebank.images import decoded_batches

AUGMENTS = ("none", "hflip-mean")
T = TypeVar("T")


@dataclass
class Embedded:
    """One batch's features: maps in the stored dtype (None when only pooled vectors are kept) and pooled float32."""

    maps: np.ndarray | None
    pooled: dict[str, np.ndarray]


class Embedder:
    """uint8 (n, H, W, 3) → Embedded, as the cache described by ``manifest`` stores it."""

    def __init__(self, function: Callable, *, dtype: str, augment: str = "none", keep_maps: bool = True,
                 stages: bool = False):
        if augment not in AUGMENTS:
            raise InvalidArgument(f"augment must be one of {', '.join(AUGMENTS)}; received {augment!r}")
        self.function = function
        self.dtype = np.dtype(dtype)
        self.augment = augment
        self.keep_maps = keep_maps
        self.stages = stages

    @classmethod
    def for_manifest(cls, manifest: dict, *, weights: str, batch_size: int,
                     spec: Backbone | None = None) -> Embedder:
        spec = spec or get_backbone(manifest["backbone"])
        function = spec.build(weights, tuple(manifest["input_size"]), batch_size)
        return cls(function, dtype=manifest["dtype"], augment=manifest.get("augment", "none"),
                   keep_maps=manifest.get("store", "maps") == "maps", stages=bool(manifest.get("stages")))

    def _maps(self, images: np.ndarray):
        if self.stages:
            return self.function.embed(images, self.dtype, stages=True)
        if hasattr(self.function, "embed") and self.augment == "none":
            return self.function.embed(images, self.dtype)  # (stored maps, pooled) computed on the device
        maps = np.asarray(self.function(images), dtype=np.float32)
        if self.augment == "hflip-mean":
            maps = (maps + np.asarray(self.function(np.ascontiguousarray(images[:, :, ::-1])), np.float32)) / 2
        return maps.astype(self.dtype), pooled_vectors(maps)

    def __call__(self, images: np.ndarray) -> Embedded:
        maps, pooled = self._maps(images)
        names = (*POOLED, STAGES) if self.stages else POOLED
        return Embedded(maps if self.keep_maps else None, {p: pooled[p] for p in names})



def embed_files(items: Iterable[T], path_of: Callable[[T], str | Path], embedder: Embedder, *,
                input_size: tuple[int, int], batch_size: int, workers: int | None = None,
                failures: list | None = None) -> Iterator[tuple[list[T], Embedded]]:
    """Decode ``items``' files on the decoding pool and embed them batch by batch.

    Unreadable files go to ``failures`` as (item, reason), exactly as extraction reports them.
    """
    for batch, images in decoded_batches(items, path_of, input_size, batch_size=batch_size, workers=workers,
                                         failures=failures):
        yield batch, embedder(images)
