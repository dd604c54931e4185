"""What a writer knows is stored: each image's (shard, row) and split, and the shards it has checked.

The rows the index lists stay as the index keeps them, numpy columns sorted by content hash: the
next index is written from them without a Python object per stored image, and lookups go through
one dictionary of positions (digest → int), built when first asked. (numpy's searchsorted over
64-byte digests was tried: slower than the dictionary at 80,000 rows.) Rows of shards read since
(this writer's and other writers' commits) are few and go in a dictionary of their own. Splits
recorded by the index are kept beside the rows, so a run draws splits only for images it has not
seen (a split is a pure function of the content hash and the settings; recording it only saves the draw).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence

import numpy as np

SHA256_DTYPE = "S64"  # hex digests as fixed-width bytes, as the index stores them
SPLIT_DTYPE = "S5"  # 'train', 'val', 'test'; b'' where not known


def sha256_column(sha256s: Sequence[str]) -> np.ndarray:
    """Hex digests as a fixed-width bytes column."""
    return np.array(sha256s, dtype=SHA256_DTYPE).reshape(-1)


class StoredState:
    """Where every stored image is; first in wins when an image is stored twice (indexed rows first)."""

    def __init__(self):
        self.indexed_sha256 = np.zeros(0, SHA256_DTYPE)  # sorted
        self.indexed_shard = np.zeros(0, np.int32)  # numbers into indexed_names
        self.indexed_row = np.zeros(0, np.int64)
        self.indexed_split = np.zeros(0, SPLIT_DTYPE)  # drawn before with this run's split settings, or b''
        self.indexed_names: list[str] = []
        self._position: dict[str, int] | None = None  # digest → position in the indexed columns, when asked
        self._last_asked: tuple[Sequence[str], np.ndarray] | None = None  # (digests, their positions): asked twice per run
        self.rows: dict[str, tuple[str, int]] = {}  # rows of shards read directly, never also indexed
        self.shards: dict[str, tuple[int, int]] = {}  # checked shards: name → (bytes, mtime_ns)
        self.index_digest: str | None = None  # content digest of the index read, to skip rewriting an unchanged one
        self.index_split_settings: tuple = ()  # (seed, fractions) the indexed splits were drawn with

    def set_indexed(self, sha256: np.ndarray, shard: np.ndarray, row: np.ndarray, names: list[str],
                    keep_shards: Iterable[str], split: np.ndarray | None = None) -> None:
        """The index's stored rows (sorted by ``sha256``), keeping those of the shards in ``keep_shards``.

        ``split``: each row's split as the index recorded it (unknown when None: drawn again when needed).
        """
        split = np.zeros(len(sha256), SPLIT_DTYPE) if split is None else split.astype(SPLIT_DTYPE)
        if len(sha256) > 1 and not (sha256[:-1] <= sha256[1:]).all():  # written sorted; checked, not trusted
            order = np.argsort(sha256, kind="stable")
            sha256, shard, row, split = sha256[order], shard[order], row[order], split[order]
        keep_shards = set(keep_shards)
        if len(keep_shards) < len(names):
            kept = np.isin(shard, [i for i, name in enumerate(names) if name in keep_shards])
            sha256, shard, row, split = sha256[kept], shard[kept], row[kept], split[kept]
        self.indexed_sha256, self.indexed_shard, self.indexed_row = sha256, shard.astype(np.int32), row
        self.indexed_split = split
        self.indexed_names = list(names)
        self._position = self._last_asked = None

    def forget_splits(self) -> None:
        """The recorded splits were drawn with other settings: every split is drawn again when needed."""
        self.indexed_split = np.zeros(len(self.indexed_sha256), SPLIT_DTYPE)

    def _positions(self) -> dict[str, int]:
        """digest → position in the indexed columns (built on first use)."""
        if self._position is None:
            self._position = dict(zip(self.indexed_sha256.astype("U64").tolist(), range(len(self.indexed_sha256))))
        return self._position

    def _indexed_positions(self, sha256s: Sequence[str]) -> np.ndarray:
        """Position of each digest in the indexed columns, or -1 (a run asks this of its scan twice: kept for the same list)."""
        if self._last_asked is None or self._last_asked[0] is not sha256s:
            positions = np.fromiter(map(self._positions().get, sha256s, itertools.repeat(-1)), np.int64, len(sha256s))
            positions.flags.writeable = False
            self._last_asked = (sha256s, positions)
        return self._last_asked[1]

    def stored_mask(self, sha256s: Sequence[str]) -> np.ndarray:
        """Whether each image is stored."""
        stored = self._indexed_positions(sha256s) >= 0
        if self.rows:
            stored |= np.fromiter(map(self.rows.__contains__, sha256s), bool, len(sha256s))
        return stored

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self.rows or sha256 in self._positions()

    def add_shard(self, name: str, sha256s: list[str], info: tuple[int, int]) -> None:
        """A shard read directly: its images not stored yet are now found there."""
        for row in np.flatnonzero(~self.stored_mask(sha256s)).tolist():
            self.rows.setdefault(sha256s[row], (name, row))
        self.shards[name] = info

    def forget_shards(self, gone: set[str]) -> None:
        """Shards moved aside or deleted: their rows are not stored any more."""
        for name in gone:
            self.shards.pop(name, None)
        self.rows = {digest: where for digest, where in self.rows.items() if where[0] not in gone}
        if any(name in gone for name in self.indexed_names):
            self.set_indexed(self.indexed_sha256, self.indexed_shard, self.indexed_row, self.indexed_names,
                             [name for name in self.indexed_names if name not in gone], self.indexed_split)

    def _renumber(self, number: dict[str, int]) -> np.ndarray:
        """Indexed shard numbers → ``number``'s numbering (-1 for shards it lacks)."""
        return np.array([number.get(name, -1) for name in self.indexed_names], np.int32)

    def locate(self, sha256s: Sequence[str], number: dict[str, int],
               split_of: Callable[[str], str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(found, shard, row, split) columns for ``sha256s``; shards numbered by ``number`` (name → number).

        Splits come from the index where it recorded them, else from ``split_of`` (a draw); the ones
        drawn are remembered for ``all_rows``, so the next index records them.
        """
        positions = self._indexed_positions(sha256s)
        found = positions >= 0
        hits = positions[found]
        shard, row = np.full(len(positions), -1, np.int32), np.full(len(positions), -1, np.int64)
        shard[found], row[found] = self._renumber(number)[self.indexed_shard[hits]], self.indexed_row[hits]
        split = np.zeros(len(positions), SPLIT_DTYPE)
        split[found] = self.indexed_split[hits]
        if self.rows:
            for i in np.flatnonzero(~found).tolist():
                where = self.rows.get(sha256s[i])
                if where is not None:
                    found[i], shard[i], row[i] = True, number[where[0]], where[1]
        for i in np.flatnonzero(found & (split == b"")).tolist():  # new images, or splits drawn with other settings
            split[i] = split_of(sha256s[i])
        self.indexed_split[hits] = split[positions >= 0]
        return found, shard, row, split

    def all_rows(self, number: dict[str, int],
                 split_of: Callable[[str], str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every stored image as (sha256, shard, row, split) columns sorted by sha256; shards numbered by
        ``number``; splits as recorded (b'' where never drawn) or, for rows of shards read since, ``split_of``'s."""
        sha256, split = self.indexed_sha256, self.indexed_split
        shard = self._renumber(number)[self.indexed_shard]
        row = self.indexed_row
        if self.rows:
            where = list(self.rows.values())
            sha256 = np.concatenate([sha256, sha256_column(list(self.rows))])
            shard = np.concatenate([shard, np.array([number[name] for name, _ in where], np.int32)])
            row = np.concatenate([row, np.array([r for _, r in where], np.int64)])
            split = np.concatenate([split, np.array([split_of(d) for d in self.rows], SPLIT_DTYPE)])
            order = np.argsort(sha256, kind="stable")
            sha256, shard, row, split = sha256[order], shard[order], row[order], split[order]
        return sha256, shard.astype(np.int32), row.astype(np.int64), split
