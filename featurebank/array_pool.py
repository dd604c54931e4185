"""The array pool: threads for array work that releases the GIL: zstd's frames at extraction, casts at load, the
audit's pixel statistics and the SIFT baseline's descriptors.

One pool for the process, on every usable core at the process's priority unless whoever runs the work
sizes it: an extraction, for the length of its run, from ``featurebank.sizing`` and at its helpers' priority
(``sized_array_pool``); a bench, for good (``configure_array_pool``). The frames are what HDF5's zstd filter
stores for a chunk, so the shard writer (featurebank/cache.py) puts them in as they are.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from featurebank.images import lower_thread_priority

ZSTD_LEVEL = 1  # faster and no larger than level 3 on dense and on sparse maps (bench/zstd_levels.py, BENCHMARKS.md)


def zstd_frames(rows: np.ndarray) -> list:
    """One zstd frame per row of C-contiguous ``rows`` (bytes-like objects), compressed on the array pool's threads.

    The frames are exactly what HDF5's zstd filter (id 32015, which ``hdf5plugin`` registers)
    stores for a chunk, so they go in with ``write_direct_chunk`` and any h5py reader that
    imports hdf5plugin reads them back, bit for bit. A batch is compressed in one call
    (``multi_compress_to_buffer``) on zstd's own threads, started from a thread of the array pool
    so that they run at its priority: the GIL is released once per batch. Compressing each row as
    a task of its own took the GIL at every row, and a Python-heavy thread beside them (PyTorch's
    eager forward launching its kernels) then starved those tasks (BENCHMARKS.md,
    ``bench/compression_gil.py``). Builds of zstandard without that call (linked to a system
    libzstd) compress row by row on the pool.
    """
    if len(rows) < 2:  # rows are C-contiguous: zstd reads each through the buffer protocol, with no copy first
        return [_compressor().compress(row) for row in rows]
    if not hasattr(_compressor(), "multi_compress_to_buffer"):
        return zstd_frames_row_by_row(rows)
    return _array_pool().submit(_batch_frames, rows, _POOL_SETTINGS[0]).result()


def zstd_frames_row_by_row(rows: np.ndarray) -> list[bytes]:
    """``zstd_frames`` as one pool task per row (the GIL taken at each): for zstandard builds without the batch call."""
    return map_in_order(lambda row: _compressor().compress(row), rows)


def _batch_frames(rows: np.ndarray, threads: int) -> list:
    frames = _compressor().multi_compress_to_buffer(list(rows), threads=threads)
    return [frames[i] for i in range(len(frames))]  # each keeps the buffer it points into alive


_POOL = None
_POOL_SETTINGS: tuple[int, bool] = (0, False)  # (threads, low priority) the pool was made with
_LOCAL = threading.local()


def configure_array_pool(workers: int, *, low_priority: bool = False) -> None:
    """Size the array-work pool for the rest of the process. Low priority yields the cores to a backbone on them."""
    _resize((max(1, workers), low_priority))


@contextlib.contextmanager
def sized_array_pool(workers: int, *, low_priority: bool = False) -> Iterator[None]:
    """The array pool sized as ``configure_array_pool`` says while the block runs (an extraction), then as before.

    An extraction sizes it for its compression (one thread when it compresses nothing) at its
    helpers' priority; after the run, load's casts, the audit's statistics and the SIFT baseline in
    the same process get back every core at the process's own priority.
    """
    before = _POOL_SETTINGS
    configure_array_pool(workers, low_priority=low_priority)
    try:
        yield
    finally:
        _resize(before)


def _resize(settings: tuple[int, bool]) -> None:
    """Use ``settings`` (threads, low priority) from the next task on; (0, False) is the default: every usable core."""
    global _POOL, _POOL_SETTINGS
    if settings != _POOL_SETTINGS and _POOL is not None:
        _POOL.shutdown(wait=True)
        _POOL = None
    _POOL_SETTINGS = settings


def in_parallel(work, items: list) -> None:
    """Run ``work(part)`` over the items split into one interleaved part per pool thread.

    For array work that releases the GIL: numpy's float16 → float32 casts when ``load()`` fills
    a table of maps run at twice the speed on 2 cores (BENCHMARKS.md).
    """
    pool = _array_pool()
    parts = [items[i::_POOL_SETTINGS[0]] for i in range(_POOL_SETTINGS[0])]
    if len(items) < 2 * len(parts):
        work(items)
        return
    for done in [pool.submit(work, part) for part in parts]:
        done.result()


def map_in_order(function, items) -> list:
    """``[function(item) for item in items]``, one pool task per item: for work that holds the GIL only briefly
    around a long native call (OpenCV's SIFT, a zstd frame)."""
    return list(_array_pool().map(function, items))


def _array_pool():
    """The pool itself, made at its first task after each resize (every usable core at the default, (0, False))."""
    global _POOL, _POOL_SETTINGS
    if _POOL is None:
        from featurebank.sizing import usable_cores

        workers, low = _POOL_SETTINGS if _POOL_SETTINGS[0] else (usable_cores(), False)
        _POOL_SETTINGS = (workers, low)
        _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="featurebank-array",
                                   initializer=lower_thread_priority if low else None)
    return _POOL


def _compressor():
    import zstandard

    if not hasattr(_LOCAL, "compressor"):  # a ZstdCompressor is not thread-safe: one per thread
        _LOCAL.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return _LOCAL.compressor
