"""Dataset scanning: a class-per-folder image tree becomes samples (path, label, sha256) plus skipped files with reasons."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featurebank.errors import DatasetError

# Magic numbers of the image formats we accept, checked on content rather than extension.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"BM", "BMP"),
)
_HEADER_BYTES = 16


@dataclass(frozen=True)
class Sample:
    """One image file: where it is, which class folder it sits in, and the hash of its bytes."""

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
    """Everything found under a dataset root."""

    root: Path
    classes: list[str]
    samples: list[Sample] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def sniff_image_format(header: bytes) -> str | None:
    """Return the image format named by a file's first bytes, or None if it is not an image we read."""
    for offset, magic, name in _SIGNATURES:
        if header[offset : offset + len(magic)] == magic:
            return name
    if header[:4] == b"RIFF" and header[8:12] == b"WEBP":
        return "WEBP"
    return None


def hash_file(path: Path, chunk_size: int = 1 << 20) -> tuple[str, bytes]:
    """SHA-256 of a file's bytes and its first bytes (for format sniffing), in one read."""
    digest = hashlib.sha256()
    header = b""
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            if not header:
                header = chunk[:_HEADER_BYTES]
            digest.update(chunk)
    return digest.hexdigest(), header


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes (images, weights files, saved models)."""
    return hash_file(Path(path))[0]


_SYSTEM_NAMES = frozenset({"Thumbs.db", "desktop.ini", "__MACOSX"})


def _is_hidden(name: str) -> bool:
    return name[:1] == "." or name in _SYSTEM_NAMES


def inspect_file(path: Path, info: os.stat_result | None = None) -> tuple[str, str] | Skipped:
    """Return (sha256, format) for a usable image file, or a Skipped with the reason it is not one."""
    shown = str(path)
    if path.is_symlink() and not path.exists():
        return Skipped(shown, "broken symbolic link")
    try:
        info = info or path.stat()
        if not stat.S_ISREG(info.st_mode):
            return Skipped(shown, "not a regular file")
        if info.st_size == 0:
            return Skipped(shown, "empty file (0 bytes)")
        sha256, header = hash_file(path)
    except PermissionError:
        return Skipped(shown, "cannot read file: permission denied")
    except OSError as exc:
        return Skipped(shown, f"cannot read file: {exc.strerror or exc}")
    fmt = sniff_image_format(header)
    if fmt is None:
        return Skipped(shown, "not an image (content is not JPEG, PNG, WebP, GIF or BMP)")
    return sha256, fmt


class HashMemo:
    """(relative path, size, mtime_ns, inode) → (sha256, format) of files hashed before, as git's index keeps.

    A file whose size, modification time or inode changed is hashed again. Entries whose time is
    within ``RACY_NS`` of the scan that recorded them are not kept: the file could still have been
    changed within the same timestamp tick, so it is hashed again next time.
    """

    RACY_NS = 2_000_000_000

    def __init__(self, path: Path | None, *, enabled: bool = True):
        self.path = path
        self.started_ns = time.time_ns()
        self.entries: dict[str, tuple[int, int, int, str, str]] = {}
        self.seen: list[tuple[str, int, int, int, str, str]] = []
        self.changed = False
        if path is not None and enabled and path.is_file():
            try:
                with np.load(path) as memo:
                    columns = [np.char.decode(memo["relpath"], "utf-8").tolist()]
                    columns += [memo[k].tolist() for k in ("size", "mtime_ns", "inode")]
                    columns += [memo[k].astype(str).tolist() for k in ("sha256", "format")]
                self.entries = {row[0]: tuple(row[1:]) for row in zip(*columns)}
            except (OSError, ValueError, KeyError):
                self.entries = {}  # an unreadable memo only costs a full re-hash

    def inspect(self, path: str, relpath: str, info: os.stat_result) -> tuple[str, str] | Skipped:
        known = self.entries.get(relpath)
        if known is not None and known[0] == info.st_size and known[1] == info.st_mtime_ns and known[2] == info.st_ino:
            found = known[3], known[4]
        else:
            found = inspect_file(Path(path), info)
            self.changed = True
        if found.__class__ is not Skipped and info.st_mtime_ns < self.started_ns - self.RACY_NS:
            self.seen.append((relpath, info.st_size, info.st_mtime_ns, info.st_ino, found[0], found[1]))
        return found

    def save(self) -> None:
        """Replace the memo with this scan's entries (write, fsync, rename); failures only cost speed later."""
        if self.path is None or (not self.changed and len(self.seen) == len(self.entries)):
            return  # nothing new: the memo on disk already says all of this
        from featurebank.cache import write_atomically

        rows = list(zip(*self.seen)) if self.seen else [[]] * 6
        buffer = io.BytesIO()
        np.savez(buffer, relpath=np.char.encode(np.array(rows[0], dtype=str), "utf-8") if rows[0] else np.array([], "S"),
                 size=np.array(rows[1], np.int64), mtime_ns=np.array(rows[2], np.int64),
                 inode=np.array(rows[3], np.uint64), sha256=np.array(rows[4], dtype="S64"),
                 format=np.array(rows[5], dtype="S4"))
        with contextlib.suppress(OSError):
            write_atomically(self.path, buffer.getvalue())


def memo_path(memo_dir: str | os.PathLike, root: Path) -> Path:
    """Where the hash memo of data folder ``root`` lives inside a cache folder."""
    return Path(memo_dir) / f".scan-memo-{hashlib.sha256(str(root).encode()).hexdigest()[:16]}.npz"


def scan_folder(root: str | os.PathLike, *, memo_dir: str | os.PathLike | None = None,
                rehash: bool = False) -> ScanResult:
    """Find every image under ``root/<class>/...``; class names are the sorted sub-folder names.

    With ``memo_dir``, files whose size, modification time and inode match the hash memo kept
    there are not read again (``rehash`` reads them all). Files are recognised by content, not extension. Hidden files, system files and non-images are
    listed in ``skipped`` with a reason; files directly under ``root`` are skipped too, since they
    belong to no class. Images in nested folders belong to their top-level class folder.
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
    for label, class_dir in enumerate(class_dirs):
        for dirpath, dirnames, filenames in os.walk(class_dir.path, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
            prefix = dirpath[len(top) + 1 :].replace(os.sep, "/") + "/"
            for name in sorted(filenames):
                path = f"{dirpath}{os.sep}{name}"
                if _is_hidden(name):
                    result.skipped.append(Skipped(path, "hidden or system file"))
                    continue
                relpath = prefix + name
                try:
                    info = os.stat(path)
                except OSError:
                    info = None
                found = memo.inspect(path, relpath, info) if info is not None else inspect_file(Path(path))
                if isinstance(found, Skipped):
                    result.skipped.append(found)
                    continue
                sha256, fmt = found
                result.samples.append(Sample(top, relpath, label, sha256, fmt))
    memo.save()
    return result
