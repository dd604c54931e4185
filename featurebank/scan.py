"""Dataset scanning: a class-per-folder image tree becomes samples (path, label, sha256) plus skipped files with reasons."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

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

    path: Path  # absolute path
    relpath: str  # path relative to the dataset root, with forward slashes
    label: int
    sha256: str
    format: str


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


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in {"Thumbs.db", "desktop.ini", "__MACOSX"}


def inspect_file(path: Path) -> tuple[str, str] | Skipped:
    """Return (sha256, format) for a usable image file, or a Skipped with the reason it is not one."""
    shown = str(path)
    if path.is_symlink() and not path.exists():
        return Skipped(shown, "broken symbolic link")
    try:
        info = path.stat()
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


def scan_folder(root: str | os.PathLike) -> ScanResult:
    """Find every image under ``root/<class>/...``; class names are the sorted sub-folder names.

    Files are recognised by content, not extension. Hidden files, system files and non-images are
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
    for entry in entries:
        if not entry.is_dir() or _is_hidden(entry.name):
            reason = "hidden or system file" if _is_hidden(entry.name) else "file outside any class folder"
            result.skipped.append(Skipped(str(root / entry.name), reason))

    for label, class_dir in enumerate(class_dirs):
        for dirpath, dirnames, filenames in os.walk(class_dir.path, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if _is_hidden(name):
                    result.skipped.append(Skipped(str(path), "hidden or system file"))
                    continue
                found = inspect_file(path)
                if isinstance(found, Skipped):
                    result.skipped.append(found)
                    continue
                sha256, fmt = found
                relpath = path.relative_to(root).as_posix()
                result.samples.append(Sample(path, relpath, label, sha256, fmt))
    return result
