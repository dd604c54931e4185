"""Batch arrays are reused once nothing refers to them, and never while anything does."""

import numpy as np

from featurebank.buffers import RecycledArrays
from featurebank.decoding import decoded_batches
from featurebank.images import load_image


def test_an_array_is_taken_again_only_once_nothing_refers_to_it():
    arrays = RecycledArrays()
    first = arrays.take((4, 3), np.uint8)
    address = first.ctypes.data
    view = first[1:]
    del first
    second = arrays.take((4, 3), np.uint8)  # the view still refers to the first array
    assert second.ctypes.data != address
    del view
    third = arrays.take((4, 3), np.uint8)
    assert third.ctypes.data == address
    assert arrays.take((2, 3), np.float32).shape == (2, 3)  # another shape is another array


def test_a_caller_that_keeps_every_array_costs_no_more_than_fresh_ones():
    arrays = RecycledArrays(keep=3)
    kept = [arrays.take((8,), np.uint8) for _ in range(10)]
    assert len({a.ctypes.data for a in kept}) == 10 and len(arrays._arrays) == 3


def test_decoded_batches_reuse_released_pixels_and_never_overwrite_kept_ones(tmp_path, make_images):
    files = sorted(make_images(tmp_path, 3))  # 18 files: batches of 4
    expected = [load_image(f, (32, 24)) for f in files]
    kept = [batch for _, batch in decoded_batches(files, lambda p: p, (32, 24), batch_size=4, workers=1)]
    np.testing.assert_array_equal(np.concatenate(kept), expected)
    assert len({batch.ctypes.data for batch in kept}) == len(kept)  # every kept batch is its own array
    addresses, seen = set(), []
    for _, batch in decoded_batches(files, lambda p: p, (32, 24), batch_size=4, workers=1):
        addresses.add(batch.ctypes.data)
        seen.append(batch.copy())
        del batch
    np.testing.assert_array_equal(np.concatenate(seen), expected)
    assert len(addresses) < len(seen)  # released batches were decoded into again
