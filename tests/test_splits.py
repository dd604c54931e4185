import hashlib

import numpy as np
import pytest

from featurebank.splits import assign_splits, balanced_subset, parse_fractions


def digests(n, start=0):
    return [hashlib.sha256(str(i).encode()).hexdigest() for i in range(start, start + n)]


def test_split_is_deterministic_and_near_requested_fractions():
    hashes = digests(3000)
    first = assign_splits(hashes, seed=0)
    assert (first == assign_splits(hashes, seed=0)).all()
    counts = {name: (first == name).mean() for name in ("train", "val", "test")}
    assert counts["train"] == pytest.approx(0.70, abs=0.03)
    assert counts["val"] == pytest.approx(0.15, abs=0.03)
    assert counts["test"] == pytest.approx(0.15, abs=0.03)
    assert (first != assign_splits(hashes, seed=1)).any()


def test_adding_images_never_moves_existing_ones():
    old = digests(100)
    before = assign_splits(old, seed=3)
    after = assign_splits(old + digests(50, start=1000), seed=3)
    assert (after[:100] == before).all()


def test_balanced_subset_keeps_n_per_class_and_all_of_small_classes():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 5)
    mask = balanced_subset(digests(85), labels, 10, seed=0)
    assert np.bincount(labels[mask]).tolist() == [10, 10, 5]
    assert (mask == balanced_subset(digests(85), labels, 10, seed=0)).all()


def test_parse_fractions():
    assert parse_fractions("70/15/15") == pytest.approx((0.7, 0.15, 0.15))
    assert parse_fractions("0.8,0.1,0.1") == pytest.approx((0.8, 0.1, 0.1))
    with pytest.raises(ValueError, match="three"):
        parse_fractions("70/30")
