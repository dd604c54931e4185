"""Deterministic train/val/test splits and balanced subsets, decided by each image's content hash and a seed.

An image's split is a pure function of (sha256, seed, fractions), so adding or removing other images
never moves an image to another split. Every class is split by the same per-image draw, so each
class is divided in the requested proportions in expectation (stratified), without any image's
assignment depending on the others.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from featurebank.errors import InvalidArgument

SPLIT_NAMES = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)


def hash_uniform(sha256: str, seed: int, purpose: str) -> float:
    """A number in [0, 1) that depends only on an image's hash, a seed and what it is drawn for."""
    digest = hashlib.sha256(f"{purpose}:{seed}:{sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def parse_fractions(text: str) -> tuple[float, float, float]:
    """Parse '70/15/15' or '0.7,0.15,0.15' into three fractions summing to 1."""
    parts = [p for p in text.replace(",", "/").split("/") if p.strip()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise InvalidArgument(f"split must look like 70/15/15; received {text!r}") from None
    if len(values) != 3 or any(v < 0 for v in values) or sum(values) <= 0:
        raise InvalidArgument(f"split must be three non-negative numbers train/val/test; received {text!r}")
    total = sum(values)
    return tuple(v / total for v in values)  # type: ignore[return-value]


def assign_splits(
    sha256s: Sequence[str], *, seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> np.ndarray:
    """Split name ('train', 'val' or 'test') for each image hash."""
    split_of = SplitOf(seed=seed, fractions=fractions)
    return np.array([split_of[digest] for digest in sha256s], dtype="U5")


class SplitOf(dict):
    """sha256 → split name, drawn on first use and remembered (a no-op run draws none)."""

    def __init__(self, *, seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS):
        super().__init__()
        self.seed, self.train_end, self.val_end = seed, fractions[0], fractions[0] + fractions[1]

    def __missing__(self, sha256: str) -> str:
        u = hash_uniform(sha256, self.seed, "split")
        self[sha256] = name = "train" if u < self.train_end else ("val" if u < self.val_end else "test")
        return name


def balanced_subset(sha256s: Sequence[str], labels: Sequence[int], per_class: int, *, seed: int = 0) -> np.ndarray:
    """Boolean mask keeping ``per_class`` images of each class, chosen by hash order (as the study's 127 per class).

    Classes with fewer images keep all of them.
    """
    labels = np.asarray(labels)
    keys = np.array([hash_uniform(d, seed, "balanced") for d in sha256s])
    mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        chosen = members[np.argsort(keys[members], kind="stable")[:per_class]]
        mask[chosen] = True
    return mask
