"""The extraction engine: decode images on a thread pool, run the feature function, write shards from a thread.

Decoding, the forward pass and writing overlap: while the backbone runs batch *k*, worker threads
decode batch *k+1* (Pillow releases the GIL) and the writer thread stores batch *k-1*. Only images
whose content hash has no stored features are decoded at all, and the backbone is built only when
there is something to compute.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featurebank.backbones import (
    Backbone,
    FeatureFunction,
    get_backbone,
    weights_identity,
)
from featurebank.cache import FeatureStore, IndexRow, describe_os_error, make_manifest
from featurebank.errors import CacheError, InvalidArgument
from featurebank.images import ImageDecodeError, load_image
from featurebank.scan import Sample, Skipped, scan_folder
from featurebank.splits import DEFAULT_FRACTIONS, assign_splits, balanced_subset

DTYPES = ("float32", "float16")


@dataclass
class ExtractReport:
    """What one extraction run did."""

    cache_file: str
    backbone: str
    key: str
    images: int  # images in the index after this run
    new: int
    cached: int
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    classes: list[str] = field(default_factory=list)
    build_seconds: float = 0.0  # building the backbone (weights loading included), part of ``seconds``

    @property
    def images_per_s(self) -> float:
        return self.new / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "cache_file": self.cache_file, "backbone": self.backbone, "key": self.key, "images": self.images,
            "new": self.new, "cached": self.cached, "skipped": [s.as_dict() for s in self.skipped],
            "seconds": round(self.seconds, 3), "images_per_s": round(self.images_per_s, 2), "classes": self.classes,
            "build_seconds": round(self.build_seconds, 3),
        }


class Progress:
    """Progress callbacks; the CLI passes a tqdm-backed one, the library default is silent."""

    def start(self, total: int) -> None: ...
    def advance(self, count: int) -> None: ...
    def finish(self) -> None: ...


def resolve_manifest(backbone: Backbone, *, weights: str, input_size, dtype: str) -> dict:
    if dtype not in DTYPES:
        raise InvalidArgument(f"dtype must be one of {', '.join(DTYPES)}; received {dtype!r}")
    return make_manifest(
        backbone=backbone.name, weights=weights_identity(weights, backbone), input_size=input_size,
        preprocessing=backbone.preprocessing, layer=backbone.layer, dtype=dtype,
        library="torch" if backbone.requires else "keras",
    )


def extract(
    data: str | os.PathLike,
    *,
    backbone: str = "resnet50",
    cache: str | os.PathLike = "cache",
    weights: str = "imagenet",
    batch_size: int = 16,
    dtype: str = "float16",
    input_size: tuple[int, int] | None = None,
    split_seed: int = 0,
    split_fractions: Sequence[float] = DEFAULT_FRACTIONS,
    balanced: int | None = None,
    compression: str = "none",
    shard_size: int = 256,
    decode_workers: int | None = None,
    rebuild: bool = False,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
) -> ExtractReport:
    """Compute and store the features of every image under ``data`` that the cache does not have yet.

    Returns an ExtractReport; files that are not usable images are listed in ``report.skipped``
    with the reason, and never stop the run.
    """
    started = time.perf_counter()
    spec = get_backbone(backbone)
    size = tuple(input_size or spec.input_size)
    store = FeatureStore(cache, resolve_manifest(spec, weights=weights, input_size=size, dtype=dtype))
    if rebuild:
        store.remove()
    store.prepare()
    scan = scan_folder(data)
    samples = scan.samples
    if balanced is not None:
        keep = balanced_subset([s.sha256 for s in samples], [s.label for s in samples], balanced, seed=split_seed)
        samples = [s for s, k in zip(samples, keep) if k]
    splits = dict(zip((s.sha256 for s in samples), assign_splits([s.sha256 for s in samples], seed=split_seed,
                                                               fractions=split_fractions)))
    stored = store.stored_rows(warn=warn)
    todo = list({s.sha256: s for s in samples if s.sha256 not in stored}.values())
    skipped = list(scan.skipped)
    index_attrs = {
        "data_root": str(scan.root), "split_seed": split_seed, "split_fractions": list(split_fractions),
        "balanced": -1 if balanced is None else balanced,
        "weights_source": weights if weights in spec.weights_values else str(Path(weights).expanduser().resolve()),
    }

    def write_index() -> None:
        rows = [IndexRow(s.relpath, s.label, s.sha256, str(splits[s.sha256]), *stored[s.sha256])
                for s in samples if s.sha256 in stored]
        store.write_index(rows, classes=scan.classes, attrs={**index_attrs, "skipped": [k.as_dict() for k in skipped]})

    def on_commit(entries: list[tuple[str, str, int]]) -> None:
        for digest, shard, row in entries:
            stored.setdefault(digest, (shard, row))
        write_index()

    new, build_seconds = 0, 0.0
    try:
        if todo:
            new, failures, build_seconds = run_pipeline(
                todo, build=lambda: spec.build(weights, size, batch_size), store=store, input_size=size,
                batch_size=batch_size, compression=compression, shard_size=shard_size,
                decode_workers=decode_workers, progress=progress or Progress(), on_commit=on_commit,
            )
            skipped.extend(failures)
        write_index()
    except OSError as exc:
        raise CacheError(f"{store.cache_dir}: cannot write the cache: {describe_os_error(exc)}; "
                         "features committed before this are kept") from None
    in_index = sum(1 for s in samples if s.sha256 in stored)
    return ExtractReport(
        cache_file=str(store.index_path), backbone=spec.name, key=store.key, images=in_index,
        new=new, cached=in_index - new, skipped=skipped, seconds=time.perf_counter() - started,
        classes=scan.classes, build_seconds=build_seconds,
    )


def lower_thread_priority() -> None:
    """Let the calling helper thread yield the CPU to the forward pass (Linux: per-thread nice 10).

    On a machine with few cores, decoding and writing compete with the backbone's compute threads,
    and a descheduled compute thread stalls a whole operation. The decode window keeps the helpers
    ahead all the same: decoding needs a few percent of one core at CPU backbone speeds.
    """
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def decoded_batches(
    samples: Sequence[Sample], *, input_size, batch_size: int, workers: int, failures: list[Skipped]
) -> Iterator[tuple[list[Sample], np.ndarray]]:
    """Yield (samples, uint8 array) batches, decoding a bounded window ahead on ``workers`` threads.

    Files that fail to decode are appended to ``failures`` and left out of the batches.
    """
    window = batch_size * 3
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="featurebank-decode",
                            initializer=lower_thread_priority) as pool:
        pending: deque = deque()
        source = iter(samples)
        batch_samples: list[Sample] = []
        batch_images: list[np.ndarray] = []

        def fill() -> None:
            while len(pending) < window:
                sample = next(source, None)
                if sample is None:
                    return
                pending.append((sample, pool.submit(load_image, sample.path, input_size)))

        fill()
        while pending:
            sample, future = pending.popleft()
            fill()
            try:
                batch_images.append(future.result())
                batch_samples.append(sample)
            except ImageDecodeError as exc:
                failures.append(Skipped(str(sample.path), str(exc)))
            except OSError as exc:
                failures.append(Skipped(str(sample.path), f"cannot read file: {exc.strerror or exc}"))
            if len(batch_samples) == batch_size:
                yield batch_samples, np.stack(batch_images)
                batch_samples, batch_images = [], []
        if batch_samples:
            yield batch_samples, np.stack(batch_images)


def run_pipeline(
    todo: Sequence[Sample],
    *,
    build: Callable[[], FeatureFunction],
    store: FeatureStore,
    input_size,
    batch_size: int,
    compression: str,
    shard_size: int,
    decode_workers: int | None,
    progress: Progress,
    on_commit: Callable[[list[tuple[str, str, int]]], None],
) -> tuple[int, list[Skipped]]:
    """Extract ``todo`` into new shards of ``store``; returns (images stored, decode failures, build seconds).

    On an exception or Ctrl-C, every batch already computed is still committed before it propagates.
    """
    failures: list[Skipped] = []
    workers = decode_workers or max(1, min(8, (os.cpu_count() or 2)))
    writes: queue.Queue = queue.Queue(maxsize=2)
    state = {"writer": None, "error": None, "stored": 0, "build_seconds": 0.0}

    def write_loop() -> None:
        lower_thread_priority()
        while (item := writes.get()) is not None:
            if state["error"] is not None:
                continue
            features, batch = item
            try:
                if state["writer"] is None:
                    state["writer"] = store.shard_writer(
                        feature_shape=features.shape[1:], compression=compression, shard_size=shard_size)
                committed = state["writer"].write(features, [s.sha256 for s in batch], [s.relpath for s in batch])
                state["stored"] += len(batch)
                if committed:
                    on_commit(committed)
            except BaseException as exc:  # surfaced on the main thread
                state["error"] = exc

    writer_thread = threading.Thread(target=write_loop, name="featurebank-writer", daemon=True)
    writer_thread.start()
    progress.start(len(todo))
    feature_function = None
    try:
        for batch, images in decoded_batches(
            todo, input_size=input_size, batch_size=batch_size, workers=workers, failures=failures
        ):
            if state["error"] is not None:
                break
            if feature_function is None:
                build_started = time.perf_counter()
                feature_function = build()
                state["build_seconds"] = time.perf_counter() - build_started
            writes.put((feature_function(images), batch))
            progress.advance(len(batch))
    finally:
        writes.put(None)
        writer_thread.join()
        progress.finish()
        if state["writer"] is not None and state["error"] is None:
            committed = state["writer"].close()
            if committed:
                on_commit(committed)
        elif state["writer"] is not None:
            state["writer"].abort()
    if state["error"] is not None:
        raise state["error"]
    return state["stored"], failures, state["build_seconds"]

