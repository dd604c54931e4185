"""One process's extraction pipeline: decoding pool → embedder (one batch in flight) → writer thread → shards.

Decoding, the forward pass and writing overlap: while the backbone runs batch *k*, the decoding
pool decodes batch *k+1* and the writer thread stores batch *k-1*. ``StageClock`` records where
the engine's thread waited (for decoded pixels, for the backbone, for the writer) and how long
the writer was busy, so a run says which stage bounded it (``ExtractReport.stage_seconds``).
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from featurebank.decoding import decoded_batches
from featurebank.device import Pending
from featurebank.embed import Embedder, in_flight
from featurebank.images import lower_thread_priority
from featurebank.index import FeatureStore
from featurebank.scan import Sample, Skipped

if TYPE_CHECKING:
    import torch

    from featurebank.extraction import ExtractionPlan
    from featurebank.progress import Progress

T = TypeVar("T")

# What each figure of StageClock means; the engine's thread's own waits come first.
STAGES = {
    "decode": "the engine's thread waiting for decoded pixels (with threads, decoding files no decoder had started)",
    "backbone": "handing batches to the backbone (a CPU backbone computes here; a GPU one copies in and starts)",
    "device": "waiting for a batch in flight on the device (its compute and its copy out)",
    "writer": "waiting for room in the writer's queue (the writer is behind)",
    "write": "the writer thread busy storing batches (compression hand-off, shard writes and commits)",
    "commit": "the last shard's commit after the last batch",
}


class StageClock:
    """Seconds spent per stage of one pipeline (see STAGES); thread-safe, as the writer adds its own."""

    def __init__(self):
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.started = time.perf_counter()
        self.first_batch_seconds: float | None = None  # from the clock's start to the first batch handed to the writer
        self._lock = threading.Lock()

    def handed_on(self) -> None:
        """A batch went to the writer; the first one's time is kept (what a run pays before its first features)."""
        if self.first_batch_seconds is None:
            self.first_batch_seconds = time.perf_counter() - self.started

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] += seconds

    @contextmanager
    def timing(self, stage: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - started)

    def iterate(self, stage: str, items: Iterable[T]) -> Iterator[T]:
        """``items``, with the time spent getting each one added to ``stage``."""
        iterator = iter(items)
        try:
            while True:
                with self.timing(stage):
                    item = next(iterator, _END)
                if item is _END:
                    return
                yield item
        finally:  # stopped early: a generator's own clean-up (a decoding pool's shutdown) runs now
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def as_dict(self) -> dict[str, float]:
        return {stage: round(seconds, 3) for stage, seconds in self.seconds.items()}


def describe_stages(seconds: dict[str, float], phases: dict[str, float | None] | None = None) -> str:
    """One line for people: where the engine's thread waited, how busy the writer was, and the run's phases."""
    line = (f"time: waited {seconds['decode']:.1f} s for decoding, {seconds['backbone']:.1f} s handing batches to "
            f"the backbone, {seconds['device']:.1f} s for the device, {seconds['writer']:.1f} s for the writer "
            f"(busy {seconds['write']:.1f} s; last commit {seconds['commit']:.1f} s)")
    if phases and phases.get("first_batch") is not None:
        line += (f"; scanning and reading the cache {phases['plan']:.1f} s, first batch "
                 f"{phases['first_batch']:.1f} s after the engine started, index {phases['index']:.1f} s")
    return line


_END = object()


class LazyEmbedder:
    """Builds the embedder once there is work, on a thread of its own, then reuses it.

    ``start`` begins the build when a pipeline has its first file, so that loading the backbone
    overlaps the decoding pool's start and first batch instead of following them; a run with
    nothing to do never loads it. ``warm_up``, when given, pays the first call's one-off costs (a
    JIT backend's tracing and compilation or their loading from the compilation cache, cuDNN's
    set-up) before the first batch: on a GPU, where a forward pass of one batch takes
    milliseconds, those costs are seconds. It runs on the thread that will submit the batches
    (``warm_up_here``), because part of them is that thread's own: PyTorch keeps cuDNN's handles
    and execution plans per thread, so a warm-up on the build thread left the engine's thread to
    pay them again at its first batch. ``built`` waits for the build alone, and only that wait is
    ``build_seconds``.
    """

    def __init__(self, build: Callable[[], Embedder], warm_up: Callable[[Embedder], None] | None = None):
        self.build = build
        self.warm_up = warm_up
        self.embedder: Embedder | None = None
        self.build_seconds = 0.0
        self._building: threading.Thread | None = None
        self._built = threading.Event()
        self._warmed = warm_up is None
        self._error: BaseException | None = None

    @property
    def needs_warm_up(self) -> bool:
        return not self._warmed

    def start(self) -> None:
        if self._building is None:
            self._building = threading.Thread(target=self._build, name="featurebank-build", daemon=True)
            self._building.start()

    def _build(self) -> None:
        try:
            self.embedder = self.build()
        except BaseException as exc:  # raised by get(), on the pipeline's thread
            self._error = exc
        finally:
            self._built.set()

    def built(self, first_batch_at: Callable[[], float | None] | None = None) -> None:
        """Wait for the build, adding the wait to ``build_seconds``.

        While the first batch is decoded elsewhere (``first_batch_at()``: when it was there, None
        before), only what outlasted that decoding counts, as when the first batch waits for the build.
        """
        if not self._built.is_set():
            started = time.perf_counter()
            self.start()
            self._built.wait()
            done = time.perf_counter()
            arrived = started if first_batch_at is None else first_batch_at()
            if arrived is not None and arrived < done:
                self.build_seconds += done - max(arrived, started)

    def warm_up_here(self) -> None:
        """Make the warm-up's call on this thread, once, the build done; raises what the build or the warm-up raised."""
        embedder = self.get()
        if not self._warmed:
            self._warmed = True
            self.warm_up(embedder)

    def get(self) -> Embedder:
        """The embedder, built; raises what the build raised."""
        self.built()
        if self._error is not None:
            raise self._error
        return self.embedder

    def settle(self) -> None:
        """Wait for a build in progress (no thread is left loading a backbone when a run ends)."""
        self.start()
        self._building.join()


def first_batch_beside_warm_up(batches: Iterator[T], embed: LazyEmbedder, clock: StageClock) -> Iterator[T]:
    """``batches`` (timed as "decode"), whose first one is decoded on a thread of its own while this thread warms up.

    The decoding pool's start and the first batch's decoding then overlap the backbone's first
    call (``LazyEmbedder.warm_up_here``, timed as "backbone"), which runs on this thread, the one
    that submits every batch after it. The wait for the build is ``build_seconds`` as far as it
    outlasted the first batch's decoding.
    """
    fetched: dict = {}

    def fetch() -> None:
        try:
            fetched["item"] = next(batches, _END)
        except BaseException as exc:  # raised on the pipeline's thread
            fetched["error"] = exc
        fetched["at"] = time.perf_counter()

    fetcher = threading.Thread(target=fetch, name="featurebank-first-batch", daemon=True)
    fetcher.start()
    try:
        try:
            embed.built(lambda: fetched.get("at"))
            with clock.timing("backbone"):
                embed.warm_up_here()
        finally:
            with clock.timing("decode"):
                fetcher.join()
        if "error" in fetched:
            raise fetched["error"]
        if fetched["item"] is not _END:
            yield fetched["item"]
            yield from clock.iterate("decode", batches)
    finally:
        if not fetcher.is_alive():  # a second Ctrl-C during the join leaves the generator to its thread
            close = getattr(batches, "close", None)
            if close is not None:
                close()


def run_pipeline(
    work: Iterator[Sample] | Sequence[Sample],
    *,
    embed: LazyEmbedder,
    store: FeatureStore,
    plan: ExtractionPlan,
    batch_size: int,
    compression: str,
    shard_size: int,
    decode_workers: int | None,
    progress: Progress,
    decoder: str = "threads",
    decode_priority: str = "low",
    clock: StageClock | None = None,
) -> tuple[int, list[Skipped]]:
    """Extract ``work`` into new shards of ``store``, all committed on return; returns (images stored, failures).

    On an exception or Ctrl-C, every batch already computed is still committed before it propagates.
    ``clock`` collects where the time went (a new one when None).
    """
    clock = clock or StageClock()
    work = iter(work)
    first = next(work, _END)
    if first is _END:
        return 0, []
    embed.start()  # loads the backbone while the decoding pool starts
    work = itertools.chain([first], work)
    failures: list = []
    writes: queue.Queue = queue.Queue(maxsize=2)
    state = {"writer": None, "error": None, "stored": 0}

    def write_loop() -> None:
        lower_thread_priority()
        while (item := writes.get()) is not None:
            if state["error"] is not None:
                continue
            embedded, batch = item
            try:
                with clock.timing("write"):
                    if state["writer"] is None:
                        shape = embedded.maps.shape[1:] if embedded.maps is not None else ()
                        state["writer"] = store.shard_writer(feature_shape=shape, compression=compression,
                                                             shard_size=shard_size, classes=plan.classes)
                    state["writer"].write(embedded.maps, embedded.pooled, [s.sha256 for s in batch],
                                          [s.relpath for s in batch], [s.label for s in batch],
                                          [plan.splits[s.sha256] for s in batch])
                state["stored"] += len(batch)
            except BaseException as exc:  # surfaced on the main thread
                state["error"] = exc

    def submit(images: np.ndarray | torch.Tensor) -> Pending:
        embed.built()  # timed apart (build_seconds)
        with clock.timing("backbone"):
            started = embed.get().submit(images)

        def result():
            with clock.timing("device"):
                return started.result()

        return Pending(result, ready=started.ready)

    writer_thread = threading.Thread(target=write_loop, name="featurebank-writer", daemon=True)
    writer_thread.start()
    try:
        # nvJPEG's batches stay on the GPU for a backbone there (Embedder.submit copies them out for the others)
        batches = decoded_batches(work, lambda s: s.path, plan.input_size, batch_size=batch_size,
                                  workers=decode_workers, failures=failures, decoder=decoder, priority=decode_priority,
                                  keep_on_device=decoder == "nvjpeg")
        timed = (first_batch_beside_warm_up(batches, embed, clock) if embed.needs_warm_up
                 else clock.iterate("decode", batches))
        for batch, embedded in in_flight(timed, submit):
            if state["error"] is not None:
                break
            with clock.timing("writer"):
                writes.put((embedded, batch))
            clock.handed_on()
            progress.advance(len(batch))
    finally:
        embed.settle()
        writes.put(None)
        writer_thread.join()
        if state["writer"] is not None and state["error"] is None:
            with clock.timing("commit"):
                state["writer"].close()
        elif state["writer"] is not None:
            state["writer"].abort()
    if state["error"] is not None:
        raise state["error"]
    return state["stored"], [Skipped(str(s.path), reason) for s, reason in failures]
