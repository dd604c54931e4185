"""Feeding arrays to Keras in seeded, shuffled batches, from memory or straight from an HDF5 cache."""

from __future__ import annotations

import math

import numpy as np


def read_rows(X, positions: np.ndarray) -> np.ndarray:
    """Rows of a numpy array or a LazyFeatures view (which reads them from disk)."""
    if hasattr(X, "read_rows"):
        return X.read_rows(positions)
    return np.asarray(X[positions], dtype=np.float32)


def make_batches(X, y, *, batch_size: int, shuffle: bool, seed: int):
    """A keras.utils.PyDataset over (X, y) whose order depends only on ``seed`` and the epoch.

    The same code path serves arrays in memory and LazyFeatures views, so streaming a cache that
    does not fit in RAM trains exactly like loading it (memory: one batch).
    """
    import keras

    class ArrayBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False, max_queue_size=4)
            self.epoch = 0
            self.order = self._order()

        def _order(self) -> np.ndarray:
            if not shuffle:
                return np.arange(len(y))
            return np.random.default_rng([seed, self.epoch]).permutation(len(y))

        def __len__(self) -> int:
            return math.ceil(len(y) / batch_size)

        def __getitem__(self, index: int):
            positions = self.order[index * batch_size : (index + 1) * batch_size]
            features = read_rows(X, positions)
            return features, y[positions]

        def on_epoch_end(self) -> None:
            self.epoch += 1
            self.order = self._order()

    return ArrayBatches()


def predict_in_batches(model, X, batch_size: int) -> np.ndarray:
    """``model.predict_on_batch`` over X in order, one batch in memory at a time.

    Every batch has the same shape (the last is padded) so the predict function is traced once.
    """
    outputs = []
    for start in range(0, len(X), batch_size):
        rows = read_rows(X, np.arange(start, min(start + batch_size, len(X))))
        count = len(rows)
        if count < batch_size:
            rows = np.concatenate([rows, np.zeros((batch_size - count, *rows.shape[1:]), rows.dtype)])
        outputs.append(np.asarray(model.predict_on_batch(rows))[:count])
    return np.concatenate(outputs) if outputs else np.zeros((0, model.output_shape[-1]), np.float32)
