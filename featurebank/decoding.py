"""The one decoding pool: files → batches of uint8 pixels, decoded a bounded window ahead, on threads or processes.

Extraction, predict, the CNN's data and the audit all decode through ``decoded_batches``.

- ``threads`` (the default on a CPU): Pillow releases the GIL while it decodes and resizes, and a
  thread costs nothing to start.
- ``processes`` (picked next to an accelerator with many cores, see sizing.py): the Python around
  each decode (Pillow's header parsing, EXIF, the hand-over of the array) still holds the GIL,
  ~0.2–0.4 ms a photo, which caps a threaded pool at a few thousand photos per second however
  many cores there are, and takes the GIL from the engine's own thread. Each worker process decodes
  straight into its place in a batch of one shared-memory ring (a file in /dev/shm) and returns only
  the outcomes, so no pixels are pickled, and the engine hands the batch on as a view of the ring,
  so it copies none either; files go out in chunks, so the parent pays its per-task cost once per chunk.

Both give the same pixels and report the same failures, item for item, in the same order; with
processes a batch in which files failed is shorter by as many (threads fill it up from later files).

- ``nvjpeg`` (asked for by name only): JPEGs decoded in batches on the GPU (gpu_decoding.py), the
  files read and the other formats decoded by Pillow on threads. Its pixels are nvJPEG's, a few
  levels from Pillow's, so such a cache has a key of its own (``"decoder": "nvjpeg"``).
"""

from __future__ import annotations

import contextlib
import glob
import mmap
import os
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from featurebank.buffers import RecycledArrays
from featurebank.errors import FeaturebankError
from featurebank.images import ImageDecodeError, decode_failure, load_image, lower_thread_priority
from featurebank.sizing import SHARED_MEMORY, check_decoder, default_decode_workers, shared_memory_free

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
PROCESS_CHUNK = 32  # files per task sent to a decoding process, at most: loky costs the parent ~0.5 ms a task


def decode_files(paths: list, size: tuple[int, int]) -> list[np.ndarray | str]:
    """Each file's pixels, or the reason it could not be decoded (unexpected errors propagate)."""
    outcomes: list[np.ndarray | str] = []
    for path in paths:
        try:
            outcomes.append(load_image(path, size))
        except (ImageDecodeError, OSError) as exc:
            outcomes.append(decode_failure(exc))
    return outcomes


class _ThreadDecoding:
    def __init__(self, workers: int, size: tuple[int, int], low_priority: bool):
        self.size = size
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="featurebank-decode",
                                           initializer=lower_thread_priority if low_priority else None)

    def start(self, paths: list) -> Future:
        task = self.executor.submit(decode_files, paths, self.size)
        task.paths = paths
        return task

    def outcomes(self, task: Future) -> list[np.ndarray | str]:
        # A task no thread has started yet is decoded here rather than waited for: the decoders are behind (or, at
        # low priority, starved by other programs), and this thread would only wait. Processes never do this: they
        # keep a crash in the image library out of the engine's process, and a dead one must stop the run.
        return decode_files(task.paths, self.size) if task.cancel() else task.result()

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


# --- processes writing into a shared-memory ring of batches ------------------------------------------------

BATCHES_AHEAD = 3  # batches being decoded at once, ahead of the one the consumer has
HELD_VIEWS = 3  # ring batches a consumer may hold at once (its current one, one in flight, one in a transfer)
_SLOTS: np.ndarray | None = None  # in a decoding process: the ring, (batches, batch size, H, W, 3), to write into


def _attach_ring(path: str, ring_shape: tuple[int, ...], low_priority: bool) -> None:
    global _SLOTS
    if low_priority:
        lower_thread_priority()  # the process's one thread, which runs its tasks
    _SLOTS = np.memmap(path, np.uint8, mode="r+", shape=ring_shape).view(np.ndarray)


def _decode_into_ring(slot: int, first: int, paths: list, size: tuple[int, int]) -> list[str | None]:
    """In a decoding process: decode each file into the next position of a ring batch; None where it worked."""
    reasons: list[str | None] = []
    for position, outcome in enumerate(decode_files(paths, size), start=first):
        if isinstance(outcome, str):
            reasons.append(outcome)
        else:
            _SLOTS[slot, position] = outcome
            reasons.append(None)
    return reasons


def _remove_stale_rings() -> None:
    """Rings left in shared memory by processes that were killed (their pid is in the name)."""
    for path in glob.glob(os.path.join(SHARED_MEMORY, "featurebank-decode-*")):
        with contextlib.suppress(ValueError, OSError):
            pid = int(Path(path).name.split("-")[2])
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os.unlink(path)


def _died(paths: list) -> FeaturebankError:
    return FeaturebankError(f"{paths[0]}: a decoding process died (out of memory, killed, or a crash in the image "
                            "library) while this file or one near it was being decoded; features stored so far are "
                            "kept; run again, with --decoder threads to find a file that crashes")


def note_failure(item: T, reason: str, path_of: Callable[[T], str | Path], failures: list | None) -> None:
    """A file that did not decode: noted in ``failures``, or raised where the caller keeps none."""
    if failures is None:
        raise ImageDecodeError(f"{path_of(item)}: {reason}")
    failures.append((item, reason))


class _RingBatch:
    """A batch being decoded straight into its ring slot: its items, and the tasks decoding them (in order)."""

    def __init__(self, slot: int):
        self.slot = slot
        self.items: list = []
        self.tasks: list[tuple[int, list, Future]] = []  # (first position, the chunk's items, its task)


class _RingDecoding:
    """Decoding processes writing each batch into one slot of a shared-memory ring, handed over without a copy.

    The engine's thread neither copies pixels nor touches each image: a batch is a view of its slot
    (a file in /dev/shm that every process maps), and a slot is decoded into again only once
    nothing refers to that view (CPython's reference count says so, as in buffers.py). A file
    that fails leaves a hole that the batch's later images close up, so that batch comes out
    shorter. A consumer that keeps more than HELD_VIEWS batches at once is handed copies.
    """

    def __init__(self, workers: int, size: tuple[int, int], batch_size: int, low_priority: bool):
        self.batch_shape = (batch_size, *size, 3)
        # Large enough chunks that the parent's cost per task is spread over many files, small enough that every
        # worker has two of them queued.
        self.chunk = max(1, min(PROCESS_CHUNK, BATCHES_AHEAD * batch_size // (2 * workers)))
        batch_bytes = int(np.prod(self.batch_shape))
        slots = BATCHES_AHEAD + HELD_VIEWS
        needed = slots * batch_bytes
        _remove_stale_rings()
        free = shared_memory_free()
        if free < needed:
            raise FeaturebankError(
                f"{SHARED_MEMORY}: decoding processes need {needed / 2**20:.0f} MiB of shared memory for "
                f"{slots} batches of {batch_size} images and {free / 2**20:.0f} MiB is free; use --decoder threads, "
                "a smaller --batch-size, or give the machine more shared memory (docker run --shm-size)")
        handle, self.path = tempfile.mkstemp(prefix=f"featurebank-decode-{os.getpid()}-", dir=SHARED_MEMORY)
        try:
            try:
                os.ftruncate(handle, needed)
                mapping = mmap.mmap(handle, needed)
            finally:
                os.close(handle)
            # One owner array per slot: a view of a batch counts as a reference to its slot's owner alone. The
            # mapping is never closed here: views a caller keeps stay valid after the run.
            self.owners = [np.frombuffer(mapping, np.uint8, batch_bytes, b * batch_bytes) for b in range(slots)]
            self._unused_count = sys.getrefcount(self.owners[0])  # the list's reference and the call's own
            # loky (joblib's process pool) starts fresh interpreters, never forks: the parent may run JAX, torch
            # or TensorFlow threads, which a forked child inherits broken; and unlike multiprocessing's spawn,
            # a caller's script needs no ``if __name__ == "__main__"`` guard.
            from joblib.externals.loky import ProcessPoolExecutor

            self.executor = ProcessPoolExecutor(workers, initializer=_attach_ring,
                                                initargs=(self.path, (slots, *self.batch_shape), low_priority))
        except BaseException:
            os.unlink(self.path)
            raise

    def held(self, slot: int) -> bool:
        """Whether anything outside this object refers to the slot's pixels."""
        return sys.getrefcount(self.owners[slot]) > self._unused_count

    def batches(self, source: Iterator[T], path_of: Callable[[T], str | Path],
                failures: list | None) -> Iterator[tuple[list[T], np.ndarray]]:
        ahead: deque[_RingBatch] = deque()
        filling: _RingBatch | None = None
        exhausted = False

        def fill() -> None:
            nonlocal filling, exhausted
            while not exhausted:
                if filling is None:
                    busy = {batch.slot for batch in ahead}
                    free = [s for s in range(len(self.owners)) if s not in busy and not self.held(s)]
                    if len(ahead) >= BATCHES_AHEAD or not free:
                        return
                    filling = _RingBatch(free[0])
                    ahead.append(filling)
                first = len(filling.items)
                chunk = list(islice(source, min(self.chunk, self.batch_shape[0] - first)))
                if not chunk:
                    exhausted = True
                    return
                paths = [path_of(item) for item in chunk]
                try:
                    task = self.executor.submit(_decode_into_ring, filling.slot, first, [str(p) for p in paths],
                                                self.batch_shape[1:3])
                except BrokenProcessPool:
                    raise _died(paths) from None
                filling.tasks.append((first, chunk, task))
                filling.items.extend(chunk)
                if len(filling.items) == self.batch_shape[0]:
                    filling = None

        fill()
        while ahead:
            batch = ahead.popleft()
            if batch is filling:  # only once the source ran out
                filling = None
            good = []
            for first, chunk, task in batch.tasks:
                try:
                    reasons = task.result()
                except BrokenProcessPool:
                    raise _died([path_of(item) for item in chunk]) from None
                for position, (item, reason) in enumerate(zip(chunk, reasons), start=first):
                    if reason is None:
                        good.append(position)
                    else:
                        note_failure(item, reason, path_of, failures)
            if good:
                whole = self.owners[batch.slot].reshape(self.batch_shape)
                for target, position in enumerate(good):
                    if target != position:  # close up the holes failed files left
                        whole[target] = whole[position]
                pixels = whole[: len(good)]
                del whole
                others = sum(self.held(s) for s in range(len(self.owners)) if s != batch.slot)
                if others >= HELD_VIEWS:  # a consumer keeping its batches gets copies; the ring stays free
                    pixels = pixels.copy()
                yield [batch.items[p] for p in good], pixels
                del pixels  # the slot is decoded into again once the consumer lets go of it too
            fill()

    def close(self) -> None:
        self.executor.shutdown(wait=True, kill_workers=True)
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def _threaded_batches(pool: _ThreadDecoding, source: Iterator[T], path_of: Callable[[T], str | Path],
                      size: tuple[int, int], batch_size: int,
                      failures: list | None) -> Iterator[tuple[list[T], np.ndarray]]:
    """Threads hand over one array per file, copied here into batch arrays reused once their consumer let go."""
    pending: deque = deque()
    arrays = RecycledArrays()  # buffers.py
    pixels = arrays.take((batch_size, *size, 3), np.uint8)
    batch: list[T] = []

    def fill() -> None:
        while len(pending) < BATCHES_AHEAD * batch_size and (item := next(source, _END)) is not _END:
            pending.append((item, pool.start([path_of(item)])))

    fill()
    while pending:
        item, task = pending.popleft()
        [outcome] = pool.outcomes(task)
        if isinstance(outcome, str):
            note_failure(item, outcome, path_of, failures)
        else:
            pixels[len(batch)] = outcome
            batch.append(item)
            if len(batch) == batch_size:
                yield batch, pixels
                del pixels  # the consumer may hold on to it; if it does not, it can be taken again
                pixels, batch = arrays.take((batch_size, *size, 3), np.uint8), []
        fill()
    if batch:
        yield batch, pixels[: len(batch)]


_END = object()


def pixel_decoder(decoder: str | None) -> str:
    """Whose pixels a decoder makes (cache.PIXEL_DECODERS): Pillow's with threads and processes (or None)."""
    check_decoder(decoder)
    return "nvjpeg" if decoder == "nvjpeg" else "pillow"


def decoder_for_cache(manifest: dict) -> tuple[str, str | None]:
    """(decoder, warning or None) for decoding new images as a cache's were (predict).

    An nvJPEG cache is decoded with nvJPEG where PyTorch sees a GPU; elsewhere with Pillow, whose
    pixels are a few levels off, and the warning says so.
    """
    if manifest.get("decoder", "pillow") != "nvjpeg":
        return "threads", None
    from featurebank.gpu_decoding import nvjpeg_usable

    if nvjpeg_usable():
        return "nvjpeg", None
    return "threads", ("this cache's JPEGs were decoded by nvJPEG on a GPU, and here Pillow decodes them: "
                       "their pixels differ by a few levels, so the features (and perhaps a prediction) may "
                       "differ slightly")


def decoded_batches(items: Iterable[T], path_of: Callable[[T], str | Path], size: tuple[int, int], *,
                    batch_size: int, workers: int | None = None, failures: list | None = None,
                    priority: str = "low", decoder: str = "threads", keep_on_device: bool = False
                    ) -> Iterator[tuple[list[T], np.ndarray | torch.Tensor]]:
    """Yield (items, uint8 (n, H, W, 3)) batches, decoding a bounded window (three batches) ahead.

    ``items`` may be a lazy iterable (extraction feeds claimed work as it goes). Files that fail
    to decode are appended to ``failures`` as (item, reason) and left out; without ``failures``
    the first failure raises ImageDecodeError. ``priority='low'`` runs the decoders at nice 10, for
    when they share a small CPU with a backbone. ``decoder`` is 'threads', 'processes' or 'nvjpeg'
    (JPEGs decoded on the GPU, gpu_decoding.py; its pixels differ from Pillow's). With
    threads, files that no decoder has started when they are needed are decoded by the caller's
    thread, which would otherwise only wait: at the start, and whenever the decoders fall behind or
    are starved; batches are full but for the last. With processes, a batch is a view of shared
    memory, decoded into again once the caller lets go of it, and a batch in which files failed
    comes out shorter by as many (with nvjpeg too). With nvjpeg and ``keep_on_device``, a batch
    is a uint8 torch tensor on the GPU instead of numpy (for ``Embedder.submit``, which copies it
    to the host for a feature function that cannot take it).
    """
    check_decoder(decoder, auto=False)
    workers = workers or default_decode_workers()
    if decoder == "threads":
        pool = _ThreadDecoding(workers, size, priority == "low")
        batches = _threaded_batches(pool, iter(items), path_of, size, batch_size, failures)
    elif decoder == "nvjpeg":
        from featurebank.gpu_decoding import NvjpegDecoding

        pool = NvjpegDecoding(workers, size, batch_size, keep_on_device=keep_on_device, low_priority=priority == "low")
        batches = pool.batches(iter(items), path_of, failures)
    else:
        pool = _RingDecoding(workers, size, batch_size, priority == "low")
        batches = pool.batches(iter(items), path_of, failures)
    try:
        yield from batches
    finally:
        batches.close()
        pool.close()


def decode_many(paths, size: tuple[int, int], *, workers: int | None = None):
    """Decode many files; returns (uint8 array of the good ones, their indices, [(path, reason)])."""
    failures: list = []
    images, kept = [], []
    for indices, batch in decoded_batches(range(len(paths)), lambda i: paths[i], size, batch_size=64,
                                          workers=workers, failures=failures, priority="normal"):
        images.append(batch)
        kept.extend(indices)
    stacked = np.concatenate(images) if images else np.zeros((0, *size, 3), np.uint8)
    return stacked, np.array(kept, dtype=np.int64), [(str(paths[i]), reason) for i, reason in failures]
