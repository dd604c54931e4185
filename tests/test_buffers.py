"""Batch arrays are reused once nothing refers to them, and never while anything does."""

import mmap

import numpy as np
import pytest

from featurebank.buffers import RecycledArrays
from featurebank import decoding
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


@pytest.mark.parametrize("decoder", ["threads", "processes"])
def test_decoded_batches_reuse_released_pixels_and_never_overwrite_kept_ones(tmp_path, make_images, decoder):
    files = sorted(make_images(tmp_path, 3))  # 18 files: batches of 4
    expected = [load_image(f, (32, 24)) for f in files]
    kept = [batch for _, batch in decoded_batches(files, lambda p: p, (32, 24), batch_size=4, workers=1,
                                                  decoder=decoder)]
    # every kept batch is its own memory, and stays valid after the pool (and its shared memory) is gone
    np.testing.assert_array_equal(np.concatenate(kept), expected)
    assert not any(np.shares_memory(a, b) for i, a in enumerate(kept) for b in kept[i + 1:])
    addresses, seen, in_shared_memory = set(), [], []
    for _, batch in decoded_batches(files * 3, lambda p: p, (32, 24), batch_size=4, workers=1, decoder=decoder):
        addresses.add(batch.ctypes.data)
        in_shared_memory.append(isinstance(batch.base, np.ndarray) and isinstance(batch.base.base, memoryview)
                                and isinstance(batch.base.base.obj, mmap.mmap))
        seen.append(batch.copy())
        del batch
    np.testing.assert_array_equal(np.concatenate(seen), expected * 3)
    assert len(addresses) < len(seen)  # released batches were decoded into again
    if decoder == "processes":  # decoded in place: the batches are the ring's slots, never copies
        assert all(in_shared_memory) and len(addresses) <= decoding.BATCHES_AHEAD + decoding.HELD_VIEWS
