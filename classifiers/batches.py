"""Feeding arrays to Keras in seeded, shuffled batches, from memory or straight from an HDF5 cache.

One order per epoch, ``epoch_order(n, seed, epoch)``, whichever way the batches travel:

- inside TensorFlow, for arrays in memory under the TensorFlow backend: 64-byte-aligned ones of
  any size (TensorFlow uses their memory as it is; ``featurebank.load`` allocates so), others up
  to ``GRAPH_FEED_MAX_BYTES`` (copied once). ``tf.data`` hands the training step the rows'
  numbers, and the step gathers the rows itself (``Batches.trainer`` wraps the model in a
  ``ModelOnRows``). Small heads take microseconds per step, and handing each batch over from
  Python (``PyDataset`` → ``tf.data.Dataset.from_generator``) cost more than the step itself; the
  study's Flatten head (1.5 MB rows) would copy every batch into fresh memory twice, and a
  ``tf.data`` pipeline that holds the rows itself pays for them each time Keras opens an epoch's
  iterator (BENCHMARKS.md);
- through a ``keras.utils.PyDataset`` otherwise: LazyFeatures views streamed from disk (memory:
  one batch), unaligned arrays too large to copy into TensorFlow, and the JAX and PyTorch backends
  (whose per-step overhead is small).

A callback sets each epoch's order at the start of that epoch, so both ways give the same batches
in the same order and train the same model (tested: streamed == in memory).
"""

from __future__ import annotations

import functools
import gc
import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from featurebank.rows import ARRAY_ALIGNMENT

GRAPH_FEED_MAX_BYTES = 1 << 30  # unaligned arrays up to this size are copied into TensorFlow once and batched there


class Batches(NamedTuple):
    """What ``model.fit`` takes: training batches, validation batches (or None), the callbacks that keep
    the order in step with the epochs, and ``trainer(model)``: the model to compile and fit, which
    shares ``model``'s weights (``model`` itself, or ``model`` inside one that gathers the rows)."""

    data: object
    validation: object
    callbacks: list
    trainer: Callable
    release: Callable  # call once training is over (also when it fails): frees what the backend was handed


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


def make_batches(X, y, *, batch_size: int, shuffle: bool, seed: int, validation=None) -> Batches:
    """Batches of (X, y) whose order depends only on ``seed`` and the epoch (see the module's docstring).

    ``validation``: (X_val, y_val), batched in order the same way. Compile and fit
    ``trainer(model)`` on ``data`` with ``shuffle=False`` (the order is ours), ``validation`` and
    ``callbacks``, then call ``release()``; the weights trained are ``model``'s.
    """
    import keras

    y = np.asarray(y)
    arrays = [X] if validation is None else [X, validation[0]]
    in_graph = keras.backend.backend() == "tensorflow" and all(
        isinstance(a, np.ndarray) and (shares_without_copy(a) or a.nbytes <= GRAPH_FEED_MAX_BYTES) for a in arrays)
    if in_graph:
        tables = _RowTables(arrays)
        feed = _OrderedBatches(0, y, batch_size)
        checking = None if validation is None else _OrderedBatches(1, np.asarray(validation[1]), batch_size)
        trainer, release = tables.trainer, tables.release
    else:
        feed = _python_feed(X, y, batch_size)
        checking = None if validation is None else _python_feed(validation[0], np.asarray(validation[1]), batch_size)
        trainer, release = _same_model, _nothing
    feed.set_order(epoch_order(len(y), shuffle=False, seed=seed, epoch=0))
    callbacks = [_order_each_epoch(feed, len(y), seed)] if shuffle else []
    return Batches(feed.data, None if checking is None else checking.data, callbacks, trainer, release)


def _same_model(model):
    return model


def _nothing() -> None:
    pass


def shares_without_copy(X: np.ndarray) -> bool:
    """Whether TensorFlow can use X's memory as it is (DLPack): C-contiguous, 64-byte aligned, a plain float dtype."""
    return (X.flags.c_contiguous and X.flags.writeable and X.ctypes.data % ARRAY_ALIGNMENT == 0
            and X.dtype in (np.float32, np.float16) and X.size > 0)


def as_tensor(X: np.ndarray):
    """A TensorFlow tensor of X: its memory shared where ``shares_without_copy``, a copy otherwise.

    ``featurebank.load`` allocates maps aligned, so the study's Flatten head (2.8 GB of training maps)
    is batched inside TensorFlow without a copy. Unaligned memory must not reach DLPack: TensorFlow
    aborts the process on it.
    """
    import tensorflow as tf

    if shares_without_copy(X):
        return tf.experimental.dlpack.from_dlpack(X.__dlpack__())
    return tf.convert_to_tensor(X)


def _order_each_epoch(feed, n: int, seed: int):
    """A callback that sets ``feed``'s row order at the start of each epoch (before Keras opens its iterator)."""
    import keras

    class OrderEachEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            feed.set_order(epoch_order(n, shuffle=True, seed=seed, epoch=epoch))

    return OrderEachEpoch()


class _RowTables:
    """Arrays held by TensorFlow (their memory shared where it can be), batched by row number.

    A batch is ``(keys, labels)``; each key is (table number, row). The training step gathers
    the rows (``ModelOnRows``), so no batch of rows ever exists outside it.

    ``release()`` after training: TensorFlow keeps every traced training step alive, and with it
    every tensor the step captured (here: the whole training set), because Keras' optimizer reaches
    a ``tf.custom_gradient`` (through ``tf.distribute``'s all-reduce), which registers a gradient
    function per trace in a global registry, never removed (tensorflow/tensorflow#97697, #80895).
    ``release`` drops the entries registered since these tables were made; they serve only the
    tracing of this training. (So one training at a time per process: a model traced on another
    thread meanwhile would lose its entries too. featurebank trains one at a time.) Tables held in
    variables would be freed with them, but the first gather from such a variable took 1.1–2.5 s
    longer (TensorFlow copies a variable whose memory it shares before its first sparse read).
    """

    def __init__(self, arrays: list[np.ndarray]):
        self.tables = tuple(as_tensor(a) for a in arrays)
        self._registered_before = set(_gradient_registry())

    def trainer(self, model):
        return model_on_rows_class()(model, self.tables)

    def release(self) -> None:
        """Forget the tables and the training steps traced on them; their memory is freed (tested)."""
        registry = _gradient_registry()
        for name in set(registry) - self._registered_before:
            if name.startswith("CustomGradient-"):
                registry.pop(name, None)
        self.tables = ()
        gc.collect()  # the steps' graphs are cycles: free the rows now, before the caller loads more


def _gradient_registry() -> dict:
    """TensorFlow's global registry of gradient functions (private: empty if this TensorFlow lacks it)."""
    from tensorflow.python.framework import ops

    return getattr(getattr(ops, "_gradient_registry", None), "_registry", {})


class _OrderedBatches:
    """The keys of one table's rows, in batches, in an order held in a variable the callback assigns."""

    def __init__(self, table: int, y: np.ndarray, batch_size: int):
        import tensorflow as tf

        labels, n = tf.convert_to_tensor(y), len(y)
        self.order = tf.Variable(np.arange(n), dtype=tf.int64, trainable=False)

        def batch(index):
            rows = self.order[index * batch_size : tf.minimum((index + 1) * batch_size, n)]
            keys = tf.stack([tf.fill(tf.shape(rows), tf.constant(table, tf.int64)), rows], axis=1)
            return keys, tf.gather(labels, rows)

        self.data = tf.data.Dataset.range(math.ceil(n / batch_size)).map(batch)

    def set_order(self, order: np.ndarray) -> None:
        self.order.assign(order)


@functools.cache
def model_on_rows_class() -> type:
    """The ``ModelOnRows`` class (defined on first use: Keras is imported only when needed)."""
    import keras
    import tensorflow as tf

    class ModelOnRows(keras.Model):
        """``inner`` on rows it gathers itself: keys (table number, row) in, ``inner``'s outputs out.

        All keys of a batch name the same table. It shares ``inner``'s weights and leaves nothing on
        it: called inside this model's own steps, never on symbolic Keras inputs, ``inner`` gains no
        graph node that would keep the tables (gigabytes) alive once training is over (tested).
        """

        def __init__(self, inner, tables, **kwargs):
            super().__init__(name=f"{inner.name}_on_rows", **kwargs)
            self.inner = inner
            self._tables = tables

        def call(self, keys, training=None):
            rows = keys[:, 1]
            branches = [lambda table=table: tf.cast(tf.gather(table, rows), tf.float32) for table in self._tables]
            gathered = branches[0]() if len(branches) == 1 else tf.switch_case(tf.cast(keys[0, 0], tf.int32), branches)
            return self.inner(gathered, training=training)

    return ModelOnRows


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
    The batches are evened out (386 rows with ``batch_size=256``: two of 193), so the padding is
    a few rows, and full batches of an aligned array reach TensorFlow without a copy.
    """
    import keras

    if len(X):
        batch_size = math.ceil(len(X) / math.ceil(len(X) / batch_size))
    shared = keras.backend.backend() == "tensorflow" and isinstance(X, np.ndarray)
    outputs = []
    for start in range(0, len(X), batch_size):
        stop = min(start + batch_size, len(X))
        rows = (np.asarray(X[start:stop], dtype=np.float32) if isinstance(X, np.ndarray)
                else read_rows(X, np.arange(start, stop)))
        count = len(rows)
        if count < batch_size:
            rows = np.concatenate([rows, np.zeros((batch_size - count, *rows.shape[1:]), rows.dtype)])
        if shared:
            rows = as_tensor(rows)  # shares aligned memory, copies the rest (as Keras would)
        outputs.append(np.asarray(model.predict_on_batch(rows))[:count])
    return np.concatenate(outputs) if outputs else np.zeros((0, model.output_shape[-1]), np.float32)
