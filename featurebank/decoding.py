"""The one decoding pool: files → batches of uint8 pixels, decoded a bounded window ahead, on threads or processes.

Extraction, predict, the CNN's data and the audit all decode through ``decoded_batches``.

- ``threads`` (the default on a CPU): Pillow releases the GIL while it decodes and resizes, and a
  thread costs nothing to start.
- ``processes`` (picked next to an accelerator with many cores, see sizing.py): the Python around
  each decode (Pillow's header parsing, EXIF, the hand-over of the array) still holds the GIL,
  ~0.2–0.4 ms a photo, which caps a threaded pool at a few thousand photos per second however
  many cores there are, and takes the GIL from the engine's own thread. Each worker process decodes
  straight into a slot of one shared-memory ring (a file in /dev/shm) and returns only the slots'
  outcomes, so no pixels are pickled; files go out in chunks, so the parent pays its per-task cost
  once per chunk.

Both give the same pixels and report the same failures, item for item, in the same order.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from pathlib import Path
from typing import TypeVar

import numpy as np

from featurebank.buffers import RecycledArrays
from featurebank.errors import FeaturebankError, InvalidArgument
from featurebank.images import ImageDecodeError, decode_failure, load_image, lower_thread_priority
from featurebank.sizing import DECODERS, SHARED_MEMORY, default_decode_workers, shared_memory_free

T = TypeVar("T")
PROCESS_CHUNK = 8  # files per task sent to a decoding process


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
    chunk = 1

    def __init__(self, workers: int, size: tuple[int, int], window: int, low_priority: bool):
        """``window`` is the processes' ring size; threads hand their arrays over and need no ring."""
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

    def release(self, task: Future) -> None:
        pass

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


# --- processes writing into a shared-memory ring ------------------------------------------------------------

_RING: np.ndarray | None = None  # in a decoding process: the ring it writes into


def _attach_ring(path: str, shape: tuple[int, ...], low_priority: bool) -> None:
    global _RING
    if low_priority:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, 10)
    _RING = np.memmap(path, np.uint8, mode="r+", shape=shape)


def _decode_into_ring(slots: list[int], paths: list, size: tuple[int, int]) -> list[str | None]:
    """In a decoding process: decode each file into its slot; None where it worked, else the reason."""
    reasons: list[str | None] = []
    for slot, outcome in zip(slots, decode_files(paths, size)):
        if isinstance(outcome, str):
            reasons.append(outcome)
        else:
            _RING[slot] = outcome
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


class _ProcessDecoding:
    chunk = PROCESS_CHUNK

    def __init__(self, workers: int, size: tuple[int, int], window: int, low_priority: bool):
        self.size = size
        shape = (window, *size, 3)
        needed = int(np.prod(shape))
        _remove_stale_rings()
        free = shared_memory_free()
        if free < needed:
            raise FeaturebankError(
                f"{SHARED_MEMORY}: decoding processes need {needed / 2**20:.0f} MiB of shared memory for "
                f"{window} images in flight and {free / 2**20:.0f} MiB is free; use --decoder threads, a smaller "
                "--batch-size, or give the machine more shared memory (docker run --shm-size)")
        handle, self.path = tempfile.mkstemp(prefix=f"featurebank-decode-{os.getpid()}-", dir=SHARED_MEMORY)
        try:
            os.ftruncate(handle, needed)
        finally:
            os.close(handle)
        try:
            # A plain ndarray over the mapping: indexing a np.memmap builds a memmap per image, in the engine's thread.
            self.ring = np.memmap(self.path, np.uint8, mode="r+", shape=shape).view(np.ndarray)
            self.free = deque(range(window))
            # loky (joblib's process pool) starts fresh interpreters, never forks: the parent may run JAX, torch
            # or TensorFlow threads, which a forked child inherits broken; and unlike multiprocessing's spawn,
            # a caller's script needs no ``if __name__ == "__main__"`` guard.
            from joblib.externals.loky import ProcessPoolExecutor

            self.executor = ProcessPoolExecutor(workers, initializer=_attach_ring,
                                                initargs=(self.path, shape, low_priority))
        except BaseException:
            os.unlink(self.path)
            raise

    def start(self, paths: list) -> Future:
        slots = [self.free.popleft() for _ in paths]
        try:
            task = self.executor.submit(_decode_into_ring, slots, [str(p) for p in paths], self.size)
        except BrokenProcessPool:
            raise _died(paths) from None
        task.slots, task.paths = slots, paths
        return task

    def outcomes(self, task: Future) -> list[np.ndarray | str]:
        try:
            reasons = task.result()
        except BrokenProcessPool:
            raise _died(task.paths) from None
        return [self.ring[slot] if reason is None else reason for slot, reason in zip(task.slots, reasons)]

    def release(self, task: Future) -> None:
        self.free.extend(task.slots)

    def close(self) -> None:
        self.executor.shutdown(wait=True, kill_workers=True)
        del self.ring
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def decoded_batches(items: Iterable[T], path_of: Callable[[T], str | Path], size: tuple[int, int], *,
                    batch_size: int, workers: int | None = None, failures: list | None = None,
                    priority: str = "low", decoder: str = "threads") -> Iterator[tuple[list[T], np.ndarray]]:
    """Yield (items, uint8 (n, H, W, 3)) batches, decoding a bounded window (three batches) ahead.

    ``items`` may be a lazy iterable (extraction feeds claimed work as it goes). Files that fail
    to decode are appended to ``failures`` as (item, reason) and left out; without ``failures``
    the first failure raises ImageDecodeError. ``priority='low'`` runs the decoders at nice 10, for
    when they share a small CPU with a backbone. ``decoder`` is 'threads' or 'processes'. With
    threads, files that no decoder has started when they are needed are decoded by the caller's
    thread, which would otherwise only wait: at the start, and whenever the decoders fall behind or
    are starved.
    """
    if decoder not in DECODERS:
        raise InvalidArgument(f"decoder must be one of {', '.join(DECODERS)}; received {decoder!r}")
    window = batch_size * 3
    kind = _ThreadDecoding if decoder == "threads" else _ProcessDecoding
    pool = kind(workers or default_decode_workers(), size, window, priority == "low")
    try:
        pending: deque = deque()
        source = iter(items)
        queued = 0
        arrays = RecycledArrays()  # a batch's pixels are reused once its consumer let go of them (buffers.py)
        pixels = arrays.take((batch_size, *size, 3), np.uint8)
        batch: list[T] = []

        def fill() -> None:
            nonlocal queued
            while queued < window:
                chunk = list(islice(source, min(pool.chunk, window - queued)))
                if not chunk:
                    return
                pending.append((chunk, pool.start([path_of(item) for item in chunk])))
                queued += len(chunk)

        fill()
        while pending:
            chunk, task = pending.popleft()
            outcomes = pool.outcomes(task)
            for item, outcome in zip(chunk, outcomes):
                if isinstance(outcome, str):
                    if failures is None:
                        raise ImageDecodeError(f"{path_of(item)}: {outcome}")
                    failures.append((item, outcome))
                    continue
                pixels[len(batch)] = outcome
                batch.append(item)
                if len(batch) == batch_size:
                    yield batch, pixels
                    del pixels  # the consumer may hold on to it; if it does not, it can be taken again
                    pixels, batch = arrays.take((batch_size, *size, 3), np.uint8), []
            pool.release(task)
            queued -= len(chunk)
            fill()
        if batch:
            yield batch, pixels[: len(batch)]
    finally:
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
