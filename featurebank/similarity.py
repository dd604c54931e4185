"""Cosine-similarity search over pooled feature vectors, blockwise so memory stays bounded at a million rows.

Rows must be L2-normalised. Similarities are computed one block of rows against all rows at a
time (block × n floats), keeping only pairs above the threshold, so memory is O(block · n) and
never O(n²).
"""

from __future__ import annotations

import numpy as np


def _block_rows(n: int, budget_bytes: int = 256 << 20) -> int:
    return int(max(1, min(n, budget_bytes // max(1, 4 * n))))


def near_pairs(vectors: np.ndarray, threshold: float, *, block: int | None = None) -> list[tuple[int, int, float]]:
    """All pairs (i < j) with cosine similarity ≥ ``threshold``, as (i, j, similarity)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(vectors)
    block = block or _block_rows(n)
    pairs = []
    for start in range(0, n, block):
        stop = min(start + block, n)
        sims = vectors[start:stop] @ vectors[start:].T  # only j ≥ start: each pair once
        rows, cols = np.nonzero(sims >= threshold)
        for r, c in zip(rows.tolist(), cols.tolist()):
            i, j = start + r, start + c
            if j > i:
                pairs.append((i, j, float(sims[r, c])))
    return pairs


def nearest_neighbour_distance(vectors: np.ndarray, k: int, *, block: int | None = None) -> np.ndarray:
    """Mean cosine distance of each row to its ``k`` nearest other rows."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(vectors)
    block = block or _block_rows(n)
    out = np.empty(n, np.float32)
    for start in range(0, n, block):
        stop = min(start + block, n)
        sims = vectors[start:stop] @ vectors.T
        sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # not its own neighbour
        top = np.partition(sims, -k, axis=1)[:, -k:]
        out[start:stop] = 1.0 - top.mean(axis=1)
    return out
