"""The hash memo of a data folder: (relative path, size, mtime_ns, inode) → (sha256, format), as git's index keeps.

A scan ``stat``s every file and hashes only those the memo does not know in that version, so a
no-op run over a million files reads no image bytes (``featurebank/scan.py`` uses it).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import time
from itertools import repeat
from pathlib import Path

import numpy as np


class HashMemo:
    """(relative path, size, mtime_ns, inode) → (sha256, format) of files hashed before, as git's index keeps.

    A file whose size, modification time or inode changed is hashed again. Entries whose time is
    within ``RACY_NS`` of the scan that recorded them are not kept: the file could still have been
    changed within the same timestamp tick, so it is hashed again next time. Lookups and saves work
    on whole columns (numpy), so a scan of unchanged files costs one ``stat`` per file and little else.

    Two files, as a log-structured store keeps them: the base (``.npz``) and a delta
    (``.delta.npz``) of the entries learnt since. A run that adds files rewrites only the delta; once
    the delta outgrows a quarter of the base, the run writes one new base from its scan (dropping
    entries of files gone) and removes the delta. Every entry is a fact about one file version, so a
    base and a delta written by different writers still combine correctly (later entries win).
    """

    RACY_NS = 2_000_000_000
    DELTA_MIN_ROWS = 4096  # a delta this small is always kept as a delta

    def __init__(self, path: Path | None, *, enabled: bool = True):
        self.path = path
        self.delta_path = None if path is None else path.with_suffix(".delta.npz")
        self.started_ns = time.time_ns()
        base = _read_memo(path) if path is not None and enabled else None
        delta = _read_memo(self.delta_path) if base is not None else None
        self.base_rows, self.delta_rows = (len(part[0]) if part else 0 for part in (base, delta))
        self.relpaths: list[str] = []
        self.stats = np.zeros((0, 3), np.int64)  # size, mtime_ns, inode per entry
        self.sha256: list[str] = []
        self.formats: list[str] = []
        if base is not None:  # the base's columns as they are (a no-op scan of a million files compares them whole)
            self.relpaths, self.stats, self.sha256, self.formats = base
        if delta is not None:  # the delta's entries come last, and win in lookups
            self.relpaths = self.relpaths + delta[0]
            self.stats = np.concatenate([self.stats, delta[1]])
            self.sha256, self.formats = self.sha256 + delta[2], self.formats + delta[3]

    def lookup(self, relpaths: list[str], stats: np.ndarray) -> tuple[list[str], list[str], np.ndarray] | None:
        """The memo's (sha256s, formats, known) columns for the scan's files; ``known[i]`` says whether file i's
        (size, mtime_ns, inode) row of ``stats`` matches the memo (its sha256 and format are meaningful only then).

        Returns None when every file is in the memo, in the memo's order: then ``sha256`` and
        ``formats`` are the scan's columns as they are, and the memo on disk needs no rewrite.
        """
        if relpaths == self.relpaths and np.array_equal(stats, self.stats):  # nothing changed: compared in C
            return None
        where = dict(zip(self.relpaths, range(len(self.relpaths))))  # a delta's entries come last and win
        position = np.fromiter(map(where.get, relpaths, repeat(-1)), np.int64, len(relpaths))
        known = (position >= 0) & (self.stats[position].reshape(-1, 3) == stats).all(axis=1) if len(self.stats) \
            else np.zeros(len(relpaths), bool)
        picked = position.clip(0).tolist()
        if not self.relpaths:
            return [""] * len(relpaths), [""] * len(relpaths), known
        return list(map(self.sha256.__getitem__, picked)), list(map(self.formats.__getitem__, picked)), known

    def save(self, relpaths: list[str], stats: np.ndarray, sha256s: list[str], formats: list[str],
             usable: np.ndarray, known: np.ndarray) -> None:
        """Record this scan's ``usable`` images that the memo did not ``know``: in the delta while it is small,
        else as a new base of the whole scan. Written atomically; failures only cost speed later."""
        if self.path is None:
            return
        keep = usable & (stats[:, 1] < self.started_ns - self.RACY_NS)
        learnt = np.flatnonzero(keep & ~known).tolist()
        scan = (relpaths, stats, sha256s, formats)
        if self.base_rows and self.delta_rows + len(learnt) <= max(self.DELTA_MIN_ROWS, self.base_rows // 4):
            if learnt:  # the delta: its old entries, then the new ones
                old = slice(self.base_rows, None)
                new_relpaths, new_stats, new_sha256s, new_formats = _rows(scan, learnt)
                _write_memo(self.delta_path, self.relpaths[old] + new_relpaths, np.concatenate([self.stats[old], new_stats]),
                            self.sha256[old] + new_sha256s, self.formats[old] + new_formats)
            return
        if _write_memo(self.path, *(scan if keep.all() else _rows(scan, np.flatnonzero(keep).tolist()))):
            with contextlib.suppress(OSError):
                self.delta_path.unlink(missing_ok=True)


def _rows(columns: tuple, rows: list[int]) -> tuple:
    """The given rows of memo columns (lists of strings and an (n, 3) stats array)."""
    return tuple(column[rows] if isinstance(column, np.ndarray) else [column[i] for i in rows] for column in columns)


def _read_memo(path: Path) -> tuple[list[str], np.ndarray, list[str], list[str]] | None:
    """A memo file's (relpaths, stats, sha256s, formats) columns; None when absent, unreadable or of an older kind."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as memo:
            relpaths = _split_text(memo["relpaths"])
            stats = np.stack([memo[k].astype(np.int64) for k in ("size", "mtime_ns", "inode")], axis=1)
            sha256, formats = (_split_text(memo[k]) for k in ("sha256", "format"))
    except (OSError, ValueError, KeyError, UnicodeDecodeError):
        return None  # an unreadable or older memo only costs a full re-hash
    if not len(relpaths) == len(stats) == len(sha256) == len(formats):
        return None
    return relpaths, stats, sha256, formats


def _write_memo(path: Path, relpaths: list[str], stats: np.ndarray, sha256s: list[str], formats: list[str]) -> bool:
    """Write a memo file (write, fsync, rename); returns whether it was written."""
    from featurebank.files import write_atomically

    buffer = io.BytesIO()
    np.savez(buffer, relpaths=_joined_text(relpaths), size=stats[:, 0], mtime_ns=stats[:, 1],
             inode=stats[:, 2].astype(np.uint64), sha256=_joined_text(sha256s), format=_joined_text(formats))
    try:
        write_atomically(path, buffer.getvalue())
    except OSError:
        return False
    return True


def _joined_text(values) -> np.ndarray:
    """Strings as one NUL-separated UTF-8 byte array (an npz column that loads with one decode and one split)."""
    return np.frombuffer("\0".join(values).encode("utf-8"), np.uint8)


def _split_text(column: np.ndarray) -> list[str]:
    text = column.tobytes().decode("utf-8")
    return text.split("\0") if text else []


def memo_path(memo_dir: str | os.PathLike, root: Path) -> Path:
    """Where the hash memo of data folder ``root`` lives inside a cache folder."""
    return Path(memo_dir) / f".scan-memo-{hashlib.sha256(str(root).encode()).hexdigest()[:16]}.npz"
