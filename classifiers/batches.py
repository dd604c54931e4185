"""Feeding arrays to Keras in seeded, shuffled batches, from memory or straight from an HDF5 cache.

One order per epoch, ``epoch_order(n, seed, epoch)``, whichever way the batches travel:

- inside TensorFlow's graph (``tf.data`` gathers the rows), for arrays in memory up to
  ``GRAPH_FEED_MAX_BYTES`` under the TensorFlow backend. Small heads take microseconds per step,
  and handing each batch over from Python (``PyDataset`` → ``tf.data.Dataset.from_generator``)
  cost more than the step itself: a pooled head trained about twice as fast this way (BENCHMARKS.md);
- through a ``keras.utils.PyDataset`` otherwise: LazyFeatures views streamed from disk (memory:
  one batch), arrays too large to copy into TensorFlow, and the JAX and PyTorch backends (whose
  per-step overhead is small).

A callback sets each epoch's order at the start of that epoch, so both ways give the same batches
in the same order and train the same model (tested: streamed == in memory).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

GRAPH_FEED_MAX_BYTES = 1 << 30  # arrays up to this size are copied into TensorFlow once and batched there


class Batches(NamedTuple):
    """What ``model.fit`` takes for one dataset, and the callbacks that keep its order in step with the epochs."""

    data: object
    callbacks: list


def read_rows(X, positions: np.ndarray) -> np.ndarray:
    """Rows of a numpy array or a LazyFeatures view (which reads them from disk)."""
    if hasattr(X, "read_rows"):
        return X.read_rows(positions)
    return np.asarray(X[positions], dtype=np.float32)


def epoch_order(n: int, *, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """The order of the rows in ``epoch``: a permutation seeded by (seed, epoch), or 0..n-1."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch]).permutation(n)


def make_batches(X, y, *, batch_size: int, shuffle: bool, seed: int) -> Batches:
    """Batches of (X, y) whose order depends only on ``seed`` and the epoch (see the module's docstring).

    Pass ``data`` to ``model.fit`` with ``shuffle=False`` (the order is ours) and add ``callbacks``.
    """
    import keras

    y = np.asarray(y)
    in_graph = (keras.backend.backend() == "tensorflow" and isinstance(X, np.ndarray)
                and X.nbytes <= GRAPH_FEED_MAX_BYTES)
    feed = _GraphFeed(X, y, batch_size) if in_graph else _python_feed(X, y, batch_size)
    feed.set_order(epoch_order(len(y), shuffle=False, seed=seed, epoch=0))
    callbacks = [_order_each_epoch(feed, len(y), seed)] if shuffle else []
    return Batches(feed.data, callbacks)


def _order_each_epoch(feed, n: int, seed: int):
    """A callback that sets ``feed``'s row order at the start of each epoch (before Keras opens its iterator)."""
    import keras

    class OrderEachEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            feed.set_order(epoch_order(n, shuffle=True, seed=seed, epoch=epoch))

    return OrderEachEpoch()


class _GraphFeed:
    """Rows gathered inside TensorFlow's graph: the order is a variable the callback assigns."""

    def __init__(self, X: np.ndarray, y: np.ndarray, batch_size: int):
        import tensorflow as tf

        features, labels = tf.convert_to_tensor(X), tf.convert_to_tensor(y)
        self.order = tf.Variable(np.arange(len(y)), dtype=tf.int64, trainable=False)
        n = len(y)

        def batch(index):
            positions = self.order[index * batch_size : tf.minimum((index + 1) * batch_size, n)]
            return tf.cast(tf.gather(features, positions), tf.float32), tf.gather(labels, positions)

        self.data = tf.data.Dataset.range(math.ceil(n / batch_size)).map(batch)

    def set_order(self, order: np.ndarray) -> None:
        self.order.assign(order)


def _python_feed(X, y: np.ndarray, batch_size: int):
    import keras

    class ArrayBatches(keras.utils.PyDataset):
        """Batches read in Python (from memory or, for LazyFeatures, from disk), one at a time."""

        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False, max_queue_size=4)
            self.order = np.arange(len(y))

        @property
        def data(self):
            return self

        def set_order(self, order: np.ndarray) -> None:
            self.order = order

        def __len__(self) -> int:
            return math.ceil(len(y) / batch_size)

        def __getitem__(self, index: int):
            positions = self.order[index * batch_size : (index + 1) * batch_size]
            return read_rows(X, positions), y[positions]

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
