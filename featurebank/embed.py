"""The one "embed these images" path: decode → backbone → stored dtype and pooled vectors.

Extraction, predict and the audit all call it, so a photo gets exactly the numbers the cache
would hold for it. ``Embedder`` wraps a backbone's feature function with the cache's augmentation
(``hflip-mean``: the mean of the image's and its mirror image's maps), the cast to the stored
dtype and the pooled side data (avg and max; the stage vectors when the cache stores them). A
feature function that can do those steps on its device itself (``submit(images, dtype)``, see
torch_backbones.py and KerasFeatureFunction) is used that way, so only the stored bytes come back
to the host, and ``embed_files`` keeps one batch in flight on the device while the previous one
is copied out (``in_flight``). Which backbones can give stage vectors is checked where the
manifest is made (``resolve_manifest``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from featurebank.backbones import Backbone, get_backbone
from featurebank.cache import pooled_vectors
from featurebank.decoding import decoded_batches
from featurebank.device import Pending, on_host
from featurebank.errors import InvalidArgument

if TYPE_CHECKING:
    import torch

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
        function = spec.build(weights, tuple(manifest["input_size"]), batch_size,
                              manifest.get("compute_dtype", "float32"))
        return cls(function, dtype=manifest["dtype"], augment=manifest.get("augment", "none"),
                   keep_maps=manifest.get("store", "maps") == "maps", stages=bool(manifest.get("stages")))

    def submit(self, images: np.ndarray | torch.Tensor) -> Pending:
        """Start embedding ``images``: a Pending of their Embedded (the device may still be computing it).

        A feature function that can cast and pool on its device (``submit``, see torch_backbones.py and
        KerasFeatureFunction) does, and is not asked for the maps when the cache keeps only vectors.
        ``images`` is uint8 (n, H, W, 3) numpy, or a torch tensor that nvJPEG left on the GPU: a
        function that takes such batches (``takes_device_batches``) gets it as it is, the others a
        copy on the host.
        """
        function = self.function
        if self.stages or (hasattr(function, "submit") and self.augment == "none"):
            options = {"stages": True} if self.stages else {}
            if not getattr(function, "takes_device_batches", False):
                images = on_host(images)
            started = function.submit(images, self.dtype, maps=self.keep_maps, **options)
            return Pending(lambda: Embedded(*started.result()), ready=started.ready)
        images = on_host(images)
        maps = np.asarray(function(images), dtype=np.float32)
        if self.augment == "hflip-mean":
            maps = (maps + np.asarray(function(np.ascontiguousarray(images[:, :, ::-1])), np.float32)) / 2
        return Pending.done(Embedded(maps.astype(self.dtype) if self.keep_maps else None, pooled_vectors(maps)))

    def __call__(self, images: np.ndarray) -> Embedded:
        return self.submit(images).result()

    def warm_up(self, batch_size: int, input_size: tuple[int, int]) -> None:
        """Embed one batch of black images of the run's shape and drop it: the first call's one-off costs, paid now.

        At its first call for a batch shape a JIT backend traces its step and compiles it (or loads
        it from the compilation cache), and a GPU library sets up its kernels: seconds on a GPU
        where the forward pass itself takes milliseconds. Some of them belong to the calling thread
        (PyTorch's cuDNN handles and execution plans), so it is called on the thread that submits
        the batches: next to a GPU, extraction calls it while another thread starts the decoding
        pool and decodes the first batch.
        """
        self.submit(np.zeros((batch_size, *input_size, 3), np.uint8)).result()


def in_flight(batches: Iterable[tuple[T, np.ndarray]], submit: Callable[[np.ndarray], Pending]
              ) -> Iterator[tuple[T, object]]:
    """(key, result) for each (key, images) of ``batches``, keeping one unfinished batch in flight.

    Batch k+1 is submitted before batch k's result is waited for, so a device computes while the
    host copies out, hands on and decodes; a batch that is ready at once is handed on at once.
    """
    waiting: tuple[T, Pending] | None = None
    for key, images in batches:
        started = submit(images)
        if waiting is not None:
            yield waiting[0], waiting[1].result()
            waiting = None
        if started.ready:
            yield key, started.result()
        else:
            waiting = (key, started)
    if waiting is not None:
        yield waiting[0], waiting[1].result()


def embed_files(items: Iterable[T], path_of: Callable[[T], str | Path], embedder: Embedder, *,
                input_size: tuple[int, int], batch_size: int, workers: int | None = None,
                failures: list | None = None, decoder: str = "threads", priority: str = "low"
                ) -> Iterator[tuple[list[T], Embedded]]:
    """Decode ``items``' files on the decoding pool (``decoder``: threads or processes) and embed them batch by batch.

    Unreadable files go to ``failures`` as (item, reason), exactly as extraction reports them.
    ``priority='low'`` lets the decoders yield the CPU to a backbone that runs on it.
    """
    yield from in_flight(decoded_batches(items, path_of, input_size, batch_size=batch_size, workers=workers,
                                         failures=failures, decoder=decoder, priority=priority), embedder.submit)
