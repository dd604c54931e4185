"""Dataset scanning: a class-per-folder image tree becomes samples (path, label, sha256) plus skipped files with reasons."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import operator
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np

from featurebank.errors import DatasetError
from featurebank.memo import HashMemo, memo_path
from featurebank.sizing import usable_cores

# Magic numbers of the image formats we accept, checked on content rather than extension.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"BM", "BMP"),
)
_HEADER_BYTES = 16
HASH_CHUNK = 64  # files per task of the hashing threads: the per-task cost stays small beside 64 reads
# Files smaller than this on average are hashed on one thread: each file's Python holds the GIL, and below
# ~32 KiB that outweighs what the threads share (bench/hashing.py --sizes, 2 threads on 2 cores: files of 2 KiB
# 0.46x, 8 KiB 0.59x, 32 KiB 1.12x, 64 KiB 1.35x; TrashNet's 57 KiB photos 1.27x).
HASH_THREADS_FROM_BYTES = 32 << 10


class Sample(NamedTuple):
    """One image file: where it is, which class folder it sits in, and the hash of its bytes.

    A named tuple: scans of a million files make a million of these, and tuples are cheap to build.
    """

    root: str  # the dataset root (absolute)
    relpath: str  # path relative to the dataset root, with forward slashes
    label: int
    sha256: str
    format: str

    @property
    def path(self) -> Path:
        """Absolute path (made on demand: a scan of a million files builds no Path objects)."""
        return Path(self.root, self.relpath)


@dataclass(frozen=True)
class Skipped:
    """A file that was not used, and why."""

    path: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass
class ScanResult:
    """Everything found under a dataset root: the images as columns (one entry per file), and skipped files.

    Columns, not objects, because a no-op run over a million files should build as little as it can;
    ``samples`` makes Sample tuples when asked.
    """

    root: Path
    classes: list[str]
    relpaths: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    sha256s: list[str] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def samples(self) -> list[Sample]:
        top = str(self.root)
        return [Sample(top, *row) for row in zip(self.relpaths, self.labels, self.sha256s, self.formats)]


def sniff_image_format(header: bytes) -> str | None:
    """Return the image format named by a file's first bytes, or None if it is not an image we read."""
    for offset, magic, name in _SIGNATURES:
        if header[offset : offset + len(magic)] == magic:
            return name
    if header[:4] == b"RIFF" and header[8:12] == b"WEBP":
        return "WEBP"
    return None


def hash_file(path: str | os.PathLike) -> tuple[str, bytes]:
    """SHA-256 of a file's bytes and its first bytes (for format sniffing), in one read.

    The bytes go into a buffer this thread reuses rather than a fresh 1 MiB one per read (a mapping
    of its own, which glibc makes and drops each time): on TrashNet two hashing threads took 7-9%
    less time so (``bench/hashing.py --fresh-buffers`` against without, BENCHMARKS.md).
    """
    view = getattr(_READ_BUFFER, "view", None)
    if view is None:
        view = _READ_BUFFER.view = memoryview(bytearray(_READ_BYTES))
    digest = hashlib.sha256()
    header = b""
    with open(path, "rb", buffering=0) as fh:
        while read := fh.readinto(view):
            if not header:
                header = bytes(view[:_HEADER_BYTES])
            digest.update(view[:read])
    return digest.hexdigest(), header


_READ_BYTES = 1 << 20  # read at a time, into each thread's buffer (_READ_BUFFER)
_READ_BUFFER = threading.local()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes (images, weights files, saved models)."""
    return hash_file(path)[0]


_SYSTEM_NAMES = frozenset({"Thumbs.db", "desktop.ini", "__MACOSX"})


def _is_hidden(name: str) -> bool:
    return name[:1] == "." or name in _SYSTEM_NAMES


def inspect_file(path: str | os.PathLike, info: os.stat_result | None = None) -> tuple[str, str] | Skipped:
    """Return (sha256, format) for a usable image file, or a Skipped with the reason it is not one.

    ``info``: the file's ``stat`` (following links) where the caller has it; a file that has one is no broken link.
    """
    shown = os.fspath(path)
    if info is None and os.path.islink(shown) and not os.path.exists(shown):
        return Skipped(shown, "broken symbolic link")
    try:
        info = info or os.stat(shown)
        if not stat.S_ISREG(info.st_mode):
            return Skipped(shown, "not a regular file")
        if info.st_size == 0:
            return Skipped(shown, "empty file (0 bytes)")
        sha256, header = hash_file(shown)
    except PermissionError:
        return Skipped(shown, "cannot read file: permission denied")
    except OSError as exc:
        return Skipped(shown, f"cannot read file: {exc.strerror or exc}")
    fmt = sniff_image_format(header)
    if fmt is None:
        return Skipped(shown, "not an image (content is not JPEG, PNG, WebP, GIF or BMP)")
    return sha256, fmt


def inspect_files(paths: list[str], infos: list[os.stat_result | None], *,
                  workers: int | None = None) -> list[tuple[str, str] | Skipped]:
    """``inspect_file`` of each path (with its ``stat``), in order, on ``workers`` threads.

    Reading a file and hashing its bytes both release the GIL (hashlib does for updates of 2 KiB and
    more), so a first scan of a collection of photos runs on every core instead of one: next to a
    GPU it is a fixed cost of every run over new files, paid before the first batch (BENCHMARKS.md,
    ``bench/hashing.py``). ``workers=None`` takes every usable core where the files average
    HASH_THREADS_FROM_BYTES or more, and one thread for smaller files, whose Python outweighs their
    hashing. Files go to the threads HASH_CHUNK at a time; the results, and so the skipped files'
    order, are the same as one thread's.
    """
    if workers is None:
        sizes = [info.st_size for info in infos if info is not None]
        large = bool(sizes) and sum(sizes) >= HASH_THREADS_FROM_BYTES * len(sizes)
        workers = usable_cores() if large else 1
    if workers < 2 or len(paths) <= HASH_CHUNK:
        return [inspect_file(path, info) for path, info in zip(paths, infos)]
    chunks = [range(start, min(start + HASH_CHUNK, len(paths))) for start in range(0, len(paths), HASH_CHUNK)]
    with ThreadPoolExecutor(min(workers, len(chunks)), thread_name_prefix="featurebank-hash") as pool:
        done = pool.map(lambda chunk: [inspect_file(paths[i], infos[i]) for i in chunk], chunks)
        return [inspected for chunk in done for inspected in chunk]


def _walk(folder: str, prefix: str, relpaths: list[str], infos: list, skipped: list[Skipped]) -> None:
    """Append the files under ``folder`` (sorted, files before sub-folders, as ``os.walk``) with their ``stat``.

    Hidden folders and symbolic links to folders are not entered; hidden files are reported. One
    ``scandir`` per folder and one ``stat`` per file (relative to the open folder): a no-op scan
    reads no file's bytes.
    """
    try:
        with os.scandir(folder) as listing:
            entries = list(listing)
    except OSError as exc:
        skipped.append(Skipped(folder, f"cannot list folder: {exc.strerror or exc}"))
        return
    names = sorted(e.name for e in entries if not e.is_dir())
    folders = [e.name for e in entries if e.is_dir() and not e.is_symlink() and not _is_hidden(e.name)]
    if not _SYSTEM_NAMES.isdisjoint(names) or any(map(str.startswith, names, repeat("."))):  # loops in C
        skipped += [Skipped(f"{folder}{os.sep}{name}", "hidden or system file") for name in names if _is_hidden(name)]
        names = [name for name in names if not _is_hidden(name)]
    relpaths += [prefix + name for name in names]
    infos += _stat_all(folder, names)
    for name in sorted(folders):
        _walk(f"{folder}{os.sep}{name}", f"{prefix}{name}/", relpaths, infos, skipped)


def _stat_all(folder: str, names: list[str]) -> list[os.stat_result | None]:
    """``os.stat`` of each name in ``folder`` (None where it fails), relative to one open folder handle."""
    try:
        handle = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return [None] * len(names)
    try:
        try:
            return [os.stat(name, dir_fd=handle) for name in names]
        except OSError:  # one failed (a broken link, a file removed meanwhile): go one by one
            infos: list[os.stat_result | None] = []
            for name in names:
                try:
                    infos.append(os.stat(name, dir_fd=handle))
                except OSError:
                    infos.append(None)
            return infos
    finally:
        os.close(handle)


_NOT_STATED = SimpleNamespace(st_size=-1, st_mtime_ns=-1, st_ino=-1)  # matches no memo entry


def _stat_columns(infos: list[os.stat_result | None]) -> np.ndarray:
    """(size, mtime_ns, inode) of each file as an (n, 3) int64 array; -1 where ``stat`` failed."""
    if None in infos:
        infos = [_NOT_STATED if i is None else i for i in infos]
    columns = [np.fromiter(map(operator.attrgetter(name), infos), np.int64, len(infos))
               for name in ("st_size", "st_mtime_ns", "st_ino")]
    return np.stack(columns, axis=1) if infos else np.zeros((0, 3), np.int64)


@contextlib.contextmanager
def _collector_paused():
    """Pause Python's cyclic garbage collector (as ``gc.freeze`` users do around bulk allocation)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def scan_folder(root: str | os.PathLike, *, memo_dir: str | os.PathLike | None = None,
                rehash: bool = False, hash_workers: int | None = None) -> ScanResult:
    """Find every image under ``root/<class>/...``; class names are the sorted sub-folder names.

    With ``memo_dir``, files whose size, modification time and inode match the hash memo kept
    there are not read again (``rehash`` reads them all); the others are read and hashed on
    ``hash_workers`` threads (None: as ``inspect_files`` chooses from the files' sizes). Files are
    recognised by content, not extension. Hidden files, system files and non-images are listed in
    ``skipped`` with a reason; files directly under ``root`` are skipped too, since they belong to
    no class. Images in nested folders belong to their top-level class folder.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"{root}: data folder does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root}: data folder is not a directory")
    root = root.resolve()
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except PermissionError:
        raise DatasetError(f"{root}: cannot list the data folder: permission denied") from None

    class_dirs = [e for e in entries if e.is_dir() and not _is_hidden(e.name)]
    if not class_dirs:
        raise DatasetError(
            f"{root}: no class folders found; expected one sub-folder per class (e.g. {root}/glass/*.jpg)"
        )
    result = ScanResult(root=root, classes=[e.name for e in class_dirs])
    memo = HashMemo(memo_path(memo_dir, root) if memo_dir is not None else None, enabled=not rehash)
    for entry in entries:
        if not entry.is_dir() or _is_hidden(entry.name):
            reason = "hidden or system file" if _is_hidden(entry.name) else "file outside any class folder"
            result.skipped.append(Skipped(str(root / entry.name), reason))

    top = str(root)
    relpaths: list[str] = []
    labels: list[int] = []
    infos: list[os.stat_result | None] = []
    with _collector_paused():  # a million small objects, none of them garbage: cyclic GC passes would be wasted
        for label, class_dir in enumerate(class_dirs):
            before = len(relpaths)
            _walk(class_dir.path, class_dir.name + "/", relpaths, infos, result.skipped)
            labels += [label] * (len(relpaths) - before)
        stats = _stat_columns(infos)
        found = memo.lookup(relpaths, stats)
        unknown = [] if found is None else np.flatnonzero(~found[2]).tolist()
        infos = [infos[i] for i in unknown]  # the other stat results are freed while the collector still sleeps
    result.relpaths, result.labels = relpaths, labels
    if found is None:  # every file as the memo has it: its columns are the scan's
        result.sha256s, result.formats = list(memo.sha256), list(memo.formats)
        return result
    sha256s, formats, _ = found
    usable = np.ones(len(relpaths), bool)
    inspections = inspect_files([os.path.join(top, relpaths[i]) for i in unknown], infos, workers=hash_workers)
    for i, inspected in zip(unknown, inspections):  # new or changed files, read and hashed
        if inspected.__class__ is Skipped:
            result.skipped.append(inspected)
            usable[i] = False
        else:
            sha256s[i], formats[i] = inspected
    memo.save(relpaths, stats, sha256s, formats, usable, found[2])
    if not usable.all():
        kept = np.flatnonzero(usable).tolist()
        relpaths, labels, sha256s, formats = ([column[i] for i in kept] for column in (relpaths, labels, sha256s, formats))
    result.relpaths, result.labels = relpaths, labels
    result.sha256s, result.formats = sha256s, formats
    return result
