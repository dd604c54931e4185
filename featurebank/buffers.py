"""Large host arrays reused batch after batch instead of allocated afresh.

A batch of 128 ResNet50 inputs is 75 MB of pixels, and its float16 maps 100 MB. Each fresh
allocation of that size is new memory from the OS, and every page of it faults on first touch;
in a sandboxed VM (gVisor) those faults are slow and serialise the threads of a process, so a
pipeline that allocates its batches afresh pays for them in every stage at once
(BENCHMARKS.md, "GPU stage"). ``RecycledArrays`` hands out an array again once nothing else
holds it: a batch still referenced by the device's transfer, a queue, a view or a caller is
never overwritten, since CPython's reference count says it is in use.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np


class RecycledArrays:
    """Arrays of any shape and dtype, each handed out again once nothing outside this object refers to it.

    At most ``keep`` arrays are tracked: when all of them are in use, a new one is made and the
    oldest is forgotten (whoever holds it keeps it), so a caller that keeps every batch costs no
    more memory than one that allocates afresh.
    """

    def __init__(self, keep: int = 8, allocate: Callable[[tuple[int, ...], np.dtype], np.ndarray] = np.empty):
        self.keep = keep
        self.allocate = allocate  # e.g. arrays over pinned memory (gpu_decoding.py)
        self._arrays: list[np.ndarray] = []
        probe = [np.empty(0)]
        self._unused_count = sys.getrefcount(probe[0])  # the list's reference and the call's own

    def take(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        """An array of ``shape`` and ``dtype`` (contents undefined) that nothing else refers to."""
        shape, dtype = tuple(shape), np.dtype(dtype)
        for i in range(len(self._arrays)):
            if sys.getrefcount(self._arrays[i]) == self._unused_count:
                if self._arrays[i].shape == shape and self._arrays[i].dtype == dtype:
                    self._arrays.append(self._arrays.pop(i))  # most recently used last
                    return self._arrays[-1]
        made = self.allocate(shape, dtype)
        self._arrays.append(made)
        if len(self._arrays) > self.keep:
            self._arrays.pop(0)
        return made
