"""Dense heads on cached backbone features: the study's Flatten → Dense(softmax), and pooled variants."""

from __future__ import annotations

import math

import numpy as np

from classifiers.base import ClassifierBase
from classifiers.batches import make_batches, predict_in_batches
from classifiers.options import LR_SCHEDULES, OPTIMIZERS
from featurebank.errors import InvalidArgument
from featurebank.quiet import import_keras

STEPS_PER_EXECUTION = 32


def make_optimizer(name: str, learning_rate: float | None, *, schedule: str = "constant", total_steps: int = 1):
    """A Keras optimizer with Keras' defaults, or the given learning rate; ``schedule='cosine'`` decays
    that rate to zero over ``total_steps`` (a cosine, without restarts)."""
    keras = import_keras()

    classes = {"sgd": keras.optimizers.SGD, "adam": keras.optimizers.Adam, "rmsprop": keras.optimizers.RMSprop}
    if name not in classes:
        raise InvalidArgument(f"optimizer must be one of {', '.join(OPTIMIZERS)}; received {name!r}")
    if schedule not in LR_SCHEDULES:
        raise InvalidArgument(f"learning-rate schedule must be one of {', '.join(LR_SCHEDULES)}; received {schedule!r}")
    if schedule == "constant":
        return classes[name]() if learning_rate is None else classes[name](learning_rate=learning_rate)
    initial = learning_rate if learning_rate is not None else float(classes[name]().learning_rate)
    decay = keras.optimizers.schedules.CosineDecay(initial, decay_steps=max(1, total_steps))
    return classes[name](learning_rate=decay)


def early_stopping(*, patience: int, start_from_epoch: int, monitor: str = "val_loss"):
    import keras

    return keras.callbacks.EarlyStopping(
        monitor=monitor, patience=patience, start_from_epoch=start_from_epoch, restore_best_weights=True
    )


def fit_keras_model(estimator, model, X, y_encoded, validation_data, *, optimizer: str, learning_rate,
                    epochs: int, batch_size: int, patience: int, start_from_epoch: int, seed: int, verbose: int,
                    lr_schedule: str = "constant"):
    """Compile and train ``model`` the study's way; stores ``model_``, ``history_``, ``best_epoch_``."""
    validation = None if validation_data is None else (validation_data[0], estimator._encode_more(validation_data[1]))
    feed = make_batches(X, y_encoded, batch_size=batch_size, shuffle=True, seed=seed, validation=validation)
    trainer = feed.trainer(model)  # shares model's weights
    # Up to STEPS_PER_EXECUTION training steps per call into the backend: the same updates in the same order
    # (identical results, tested), far fewer host round-trips for heads whose steps take microseconds.
    trainer.compile(optimizer=make_optimizer(optimizer, learning_rate, schedule=lr_schedule,
                                             total_steps=epochs * math.ceil(len(y_encoded) / batch_size)),
                    loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                    steps_per_execution=STEPS_PER_EXECUTION)
    callbacks = list(feed.callbacks)
    if validation is not None:
        callbacks.append(early_stopping(patience=patience, start_from_epoch=start_from_epoch))
    # shuffle=False: make_batches already orders each epoch (by seed and epoch); Keras must not reorder batches.
    stopper = None
    try:
        history = trainer.fit(feed.data, validation_data=feed.validation, epochs=epochs, callbacks=callbacks,
                              verbose=verbose, shuffle=False).history
        stopper = callbacks[-1] if validation is not None else None
        best_epoch = stopper.best_epoch + 1 if stopper is not None and stopper.best_weights is not None else None
    finally:
        # The callbacks hold the trainer, which holds what the feed handed to the backend: drop them all first.
        callbacks.clear()
        feed.callbacks.clear()
        del trainer, stopper
        feed.release()
    estimator.model_ = model
    estimator.history_ = {k: [float(v) for v in values] for k, values in history.items()}
    estimator.best_epoch_ = best_epoch or len(estimator.history_["loss"])
    return estimator


class DenseHead(ClassifierBase):
    """Softmax classifier on backbone features: [pooling] → Flatten → Dense(n_classes, softmax).

    Parameters
    ----------
    optimizer : 'sgd', 'adam' or 'rmsprop' (Keras defaults unless ``learning_rate`` is given).
    learning_rate : float or None.
    pooling : 'flatten' (the study: every cell of the feature map), 'avg' or 'max' (global pooling
        over space, far fewer weights), applied inside the model to 4-d inputs; 2-d inputs pass as they are.
    epochs, batch_size : training length; early stopping on val_loss ends it sooner.
    patience, start_from_epoch : EarlyStopping settings (best weights are restored).
    seed : seeds Keras' initialisation and the shuffling order.
    verbose : Keras' verbosity.

    Attributes
    ----------
    classes_ : labels, in the order of ``predict_proba``'s columns.
    model_ : the trained keras.Model.
    history_ : per-epoch loss/accuracy (and val_ ones), as a dict of lists.
    best_epoch_ : the epoch whose weights were kept.
    input_shape_ : shape of one input row; n_features_in_ : its first dimension (scikit-learn's convention).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.r_[np.zeros((20, 4)), np.ones((20, 4))]; y = np.r_[np.zeros(20), np.ones(20)].astype(int)
    >>> DenseHead(optimizer="adam", learning_rate=0.1, epochs=20).fit(X, y).score(X, y)
    1.0
    """

    def __init__(self, *, optimizer: str = "rmsprop", learning_rate: float | None = None, pooling: str = "flatten",
                 epochs: int = 40, batch_size: int = 32, patience: int = 5, start_from_epoch: int = 10,
                 seed: int = 0, verbose: int = 0):
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.pooling = pooling
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.start_from_epoch = start_from_epoch
        self.seed = seed
        self.verbose = verbose

    def build_model(self, input_shape: tuple[int, ...], n_classes: int):
        import keras

        inputs = keras.Input(input_shape, name="features")
        x = inputs
        if len(input_shape) == 3 and self.pooling in ("avg", "max"):
            pool = keras.layers.GlobalAveragePooling2D if self.pooling == "avg" else keras.layers.GlobalMaxPooling2D
            x = pool(name=f"{self.pooling}_pool")(x)
        x = keras.layers.Flatten(name="flatten")(x)
        outputs = keras.layers.Dense(n_classes, activation="softmax", name="softmax")(x)
        return keras.Model(inputs, outputs, name=f"dense_head_{self.pooling}")

    def fit(self, X, y, *, validation_data=None, classes=None) -> DenseHead:
        """Train on (X, y); with ``validation_data=(X_val, y_val)``, early-stop on its loss.

        ``X`` may be a numpy array or a ``featurebank.LazyFeatures`` view (streamed from disk).
        ``classes`` fixes the label set when a split lacks some class.
        """
        keras = import_keras()

        if self.optimizer not in OPTIMIZERS:
            raise InvalidArgument(f"optimizer must be one of {', '.join(OPTIMIZERS)}; received {self.optimizer!r}")
        if self.pooling not in ("flatten", "avg", "max"):
            raise InvalidArgument(f"pooling must be 'flatten', 'avg' or 'max'; received {self.pooling!r}")
        if hasattr(X, "read_rows"):  # a LazyFeatures view: streamed, validated batch by batch by the shard reader
            self._check_X(X, y, min_samples=2)
            y = np.asarray(y)
            self.n_features_in_ = int(X.shape[1])
        else:
            X, y = self._validate_fit(X, y, allow_nd=True)
        y_encoded = self._encode_labels(y, classes)
        self.input_shape_ = tuple(X.shape[1:])
        keras.utils.set_random_seed(self.seed)
        model = self.build_model(self.input_shape_, len(self.classes_))
        return fit_keras_model(
            self, model, X, y_encoded, validation_data, optimizer=self.optimizer, learning_rate=self.learning_rate,
            epochs=self.epochs, batch_size=self.batch_size, patience=self.patience,
            start_from_epoch=self.start_from_epoch, seed=self.seed, verbose=self.verbose,
        )

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, one row per sample, columns in ``classes_`` order."""
        if hasattr(X, "read_rows"):
            self._check_fitted()
        else:
            X = self._validate_predict(X, allow_nd=True)
        if tuple(X.shape[1:]) != self.input_shape_:
            raise InvalidArgument(f"X rows have shape {tuple(X.shape[1:])}; this head was fitted on {self.input_shape_}")
        return predict_in_batches(self.model_, X, max(1, min(max(self.batch_size, 256), len(X))))
