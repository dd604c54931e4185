"""Files that readers use, written whole: a temporary name, fsync, rename; HDF5 files built in memory.

Every file featurebank writes into a cache (shards, index, manifest, memo) goes through here, so
readers see the old file or the new one and never a partial one, and a crash leaves at most a
temporary whose name says which host and process made it (``remove_stale_temporaries``).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import socket
import uuid
from pathlib import Path

import h5py
import numpy as np

HOST = socket.gethostname().replace("~", "-") or "localhost"
DIRECT_IO_ALIGNMENT = 4096  # O_DIRECT wants buffers, offsets and lengths in multiples of the block size


def temporary_name(path: Path) -> Path:
    """A hidden sibling of ``path`` whose name carries this host and process, for safe clean-up."""
    return path.with_name(f".tmp~{HOST}~{os.getpid()}~{uuid.uuid4().hex[:8]}~{path.name}")


def write_atomically(path: Path, payload, *, size: int | None = None) -> None:
    """Write ``payload`` (any bytes-like object) to ``path``: temporary file, fsync, rename.

    Readers see the old file or the new one. With ``size``, ``payload`` is a page-aligned buffer
    padded to a multiple of DIRECT_IO_ALIGNMENT whose first ``size`` bytes are the file: it is
    written with O_DIRECT, past the page cache, where the file system allows it (see MemoryFile).
    """
    tmp = temporary_name(path)
    try:
        if size is None or not _write_direct(tmp, payload, size):
            with open(tmp, "wb") as out:
                out.write(memoryview(payload)[:size])
                out.flush()
                os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _write_direct(tmp: Path, payload, size: int) -> bool:
    """Write ``payload`` to ``tmp`` with O_DIRECT, cut it to ``size`` and fsync; False where O_DIRECT is refused."""
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_DIRECT", 0), 0o644)
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # file systems without O_DIRECT (tmpfs on older kernels, some FUSE)
            return False
        raise
    try:
        view, written = memoryview(payload), 0
        while written < len(view):
            written += os.write(fd, view[written:])
        os.ftruncate(fd, size)
        os.fsync(fd)
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # refused at the first write (alignment the device does not take)
            return False
        raise
    finally:
        os.close(fd)
    return True


class MemoryFile:
    """A growable file in memory that HDF5 writes into (h5py's ``fileobj`` driver), reused file after file.

    Why not HDF5's core driver: each shard would land in fresh memory and be copied out once more
    (``get_file_image``), and on a small CPU those page faults and copies cost more than decoding
    the photo. A writer keeps one MemoryFile: its pages are touched once per run, and with
    ``direct=True`` a file goes to disk straight from it with O_DIRECT, skipping the page cache,
    whose writes cost ~2 ms of CPU per float16 ResNet50 map on this project's 2-core VM
    (BENCHMARKS.md). Shards are written once and read later, so caching them buys little. HDF5
    never touches the disk itself: a full or failing disk surfaces as a plain OSError from the
    write, and can neither corrupt HDF5's state nor leave a partial file behind.
    """

    def __init__(self, *, direct: bool = False, expected_bytes: int = 0) -> None:
        self.direct = direct
        self.expected_bytes = expected_bytes  # reserved up front, so a full-sized file never copies itself to grow
        self._data = np.empty(0, np.uint8)
        self._size = 0
        self._position = 0

    def new_h5(self) -> h5py.File:
        """Start a new, empty HDF5 file in this buffer (the previous one must be committed or dropped)."""
        self._size = self._position = 0
        self._reserve(self.expected_bytes)
        # No chunk cache: every chunk is written whole, once, so caching it would only copy it again.
        return h5py.File(self, "w", rdcc_nbytes=0)

    def commit(self, fh: h5py.File, path: Path) -> None:
        """Close ``fh`` (made by ``new_h5``) and write it to ``path`` atomically."""
        fh.close()
        self.write_out(path)

    def write_out(self, path: Path) -> None:
        """Write the closed file in this buffer to ``path`` atomically; HDF5 is not called, so any thread may."""
        if not self.direct:
            write_atomically(path, memoryview(self._data[: self._size]))
            return
        padded = -(-self._size // DIRECT_IO_ALIGNMENT) * DIRECT_IO_ALIGNMENT
        self._reserve(padded)
        self._data[self._size : padded] = 0
        write_atomically(path, memoryview(self._data[:padded]), size=self._size)

    def _reserve(self, capacity: int) -> None:
        """Grow the buffer to hold ``capacity`` bytes, page-aligned, by half again at least (amortised)."""
        if capacity <= len(self._data):
            return
        capacity = -(-max(capacity, len(self._data) * 3 // 2, 1 << 20) // DIRECT_IO_ALIGNMENT) * DIRECT_IO_ALIGNMENT
        # Its pages cost nothing until touched, and their first touch does not wait for huge pages (aligned_empty):
        # that wait cost ~1.4 ms per ResNet50 map on this project's VM.
        grown = aligned_empty((capacity,), np.uint8)
        grown[: self._size] = self._data[: self._size]
        self._data = grown

    # The file interface that h5py's fileobj driver calls.
    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size}[whence]
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def write(self, data) -> int:
        chunk = np.frombuffer(data, np.uint8)
        end = self._position + len(chunk)
        self._reserve(end)
        if self._position > self._size:
            self._data[self._size : self._position] = 0  # a write past the end leaves a hole of zeros
        self._data[self._position : end] = chunk
        self._position, self._size = end, max(self._size, end)
        return len(chunk)

    def read(self, size: int = -1) -> bytes:
        end = self._size if size < 0 else min(self._size, self._position + size)
        data = self._data[self._position : end].tobytes()
        self._position = max(self._position, end)
        return data

    def readinto(self, buffer) -> int:
        target = np.frombuffer(buffer, np.uint8)
        count = max(0, min(len(target), self._size - self._position))
        target[:count] = self._data[self._position : self._position + count]
        self._position += count
        return count

    def truncate(self, size: int | None = None) -> int:
        size = self._position if size is None else size
        if size > self._size:
            self._reserve(size)
            self._data[self._size : size] = 0
        self._size = size
        return size

    def flush(self) -> None:
        pass


@contextlib.contextmanager
def atomic_h5(path: Path):
    """Context manager: an h5py.File built in memory and committed to ``path`` atomically on success."""
    memory = MemoryFile()
    fh = memory.new_h5()
    try:
        yield fh
    except BaseException:
        fh.close()
        raise
    memory.commit(fh, path)


def remove_stale_temporaries(*folders: Path) -> None:
    """Delete temporaries left by dead processes of this host; other hosts' files are never touched."""
    for folder in folders:
        for tmp in folder.glob(".tmp~*"):
            parts = tmp.name.split("~")
            if len(parts) >= 4 and parts[1] == HOST and parts[2].isdigit() and not process_alive(int(parts[2])):
                with contextlib.suppress(OSError):
                    tmp.unlink()


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def aligned_empty(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """An uninitialised C-contiguous array in an anonymous memory map of its own: page-aligned.

    Why not ``np.empty``: numpy only promises 16-byte alignment, and frameworks wrap 64-byte-aligned
    memory as a tensor without a copy (the study's Flatten head: gigabytes of maps). And numpy
    advises large arrays for transparent huge pages, whose first touch can wait on memory
    compaction: filling 4 GiB took 5.5–8.8 s that way on the 2-core machine, 2.6–3.3 s in a plain
    mapping (BENCHMARKS.md).
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes == 0:
        return np.empty(shape, dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype).reshape(shape)
