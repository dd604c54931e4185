"""The study's from-scratch CNNs (seven variants), trained on decoded images rather than cached features."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from classifiers.base import ClassifierBase
from classifiers.heads import fit_keras_model
from classifiers.options import OPTIMIZERS, VARIANTS
from featurebank.errors import InvalidArgument
from featurebank.quiet import import_keras



def build_cnn(variant: str, input_shape: tuple[int, int, int], n_classes: int, *, augment: bool = False):
    """The study's architecture for ``variant`` (see the README's table), as an uncompiled keras.Model.

    All variants: uint8 image → Rescaling(1/255) → three Conv2D(3×3, relu) + MaxPool(2) stages →
    Flatten → Dense(n_classes, softmax). funnel-out has 32/64/128 filters, funnel-in 128/64/32;
    batchnorm adds BatchNormalization after the first pooling; l2/l1/l1l2 add Dense(64, relu) with
    that 0.01 kernel regulariser on the feature map after the first pooling; dropout adds
    Dropout(0.4) after the first and second pooling. ``augment`` puts random flips, translations,
    small rotations and zooms, and brightness in front (training only).
    """
    keras = import_keras()
    from keras import layers, regularizers

    if variant not in VARIANTS:
        raise InvalidArgument(f"variant must be one of {', '.join(VARIANTS)}; received {variant!r}")
    filters = (128, 64, 32) if variant == "funnel-in" else (32, 64, 128)
    inputs = keras.Input(input_shape, name="images")
    x = inputs
    if augment:
        x = layers.RandomFlip("horizontal", name="random_flip")(x)
        x = layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", name="random_crop_shift")(x)
        x = layers.RandomRotation(0.04, fill_mode="reflect", name="random_rotation")(x)  # ±15°
        x = layers.RandomZoom(0.15, fill_mode="reflect", name="random_zoom")(x)
        x = layers.RandomBrightness(0.2, value_range=(0, 255), name="random_brightness")(x)
    x = layers.Rescaling(1.0 / 255, name="rescaling")(x)
    for stage, count in enumerate(filters, start=1):
        x = layers.Conv2D(count, 3, activation="relu", name=f"conv{stage}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{stage}")(x)
        if stage == 1 and variant == "batchnorm":
            x = layers.BatchNormalization(name="batchnorm")(x)
        if stage == 1 and variant in ("l2", "l1", "l1l2"):
            regularizer = {"l2": regularizers.L2(0.01), "l1": regularizers.L1(0.01),
                           "l1l2": regularizers.L1L2(0.01, 0.01)}[variant]
            x = layers.Dense(64, activation="relu", kernel_regularizer=regularizer, name=f"dense_{variant}")(x)
        if stage in (1, 2) and variant == "dropout":
            x = layers.Dropout(0.4, name=f"dropout{stage}")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="softmax")(x)
    return keras.Model(inputs, outputs, name=f"cnn_{variant.replace('-', '_')}")


def expected_parameter_count(variant: str, input_shape: tuple[int, int, int], n_classes: int) -> int:
    """Trainable + non-trainable parameters of ``build_cnn`` by formula (checked against Keras in the tests)."""
    height, width, channels = input_shape
    filters = (128, 64, 32) if variant == "funnel-in" else (32, 64, 128)
    total = 0
    for stage, count in enumerate(filters, start=1):
        total += (3 * 3 * channels + 1) * count
        height, width, channels = (height - 2) // 2, (width - 2) // 2, count
        if stage == 1 and variant == "batchnorm":
            total += 4 * channels  # gamma, beta, moving mean, moving variance
        if stage == 1 and variant in ("l2", "l1", "l1l2"):
            total += (channels + 1) * 64
            channels = 64
    return total + (height * width * channels + 1) * n_classes


class CNNClassifier(ClassifierBase):
    """A from-scratch CNN of the study, scikit-learn style, on uint8 images (N, H, W, 3) or image paths.

    Parameters
    ----------
    variant : one of VARIANTS.
    optimizer, learning_rate, epochs, batch_size, patience, start_from_epoch, seed : as DenseHead.
    image_size : (height, width) images are resized to when X holds paths; the study used (512, 384).
    augment : random flips, shifts, rotations, zooms and brightness while training (off: the study's setting).
    lr_schedule : 'constant' (the study) or 'cosine' (the learning rate decays to 0 over ``epochs``).
    """

    def __init__(self, *, variant: str = "funnel-out", optimizer: str = "sgd", learning_rate: float | None = None,
                 image_size: tuple[int, int] = (512, 384), epochs: int = 40, batch_size: int = 32,
                 patience: int = 5, start_from_epoch: int = 10, augment: bool = False, lr_schedule: str = "constant",
                 seed: int = 0, verbose: int = 0):
        self.variant = variant
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.image_size = image_size
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.start_from_epoch = start_from_epoch
        self.augment = augment
        self.lr_schedule = lr_schedule
        self.seed = seed
        self.verbose = verbose

    def _images(self, X):
        return X if isinstance(X, np.ndarray) else ImageFiles(X, tuple(self.image_size))

    def __sklearn_tags__(self):
        """Images in, not a 2-d feature matrix: scikit-learn's generic checks cannot apply (they then skip)."""
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = False
        return tags

    def fit(self, X, y, *, validation_data=None, classes=None) -> CNNClassifier:
        """Train on images X (array or paths) and labels y; early-stop on ``validation_data`` loss."""
        keras = import_keras()

        if self.optimizer not in OPTIMIZERS:
            raise InvalidArgument(f"optimizer must be one of {', '.join(OPTIMIZERS)}; received {self.optimizer!r}")
        self._check_X(X, y, min_samples=2)
        y_encoded = self._encode_labels(y, classes)
        images = self._images(X)
        self.input_shape_ = tuple(images.shape[1:])
        keras.utils.set_random_seed(self.seed)
        model = build_cnn(self.variant, self.input_shape_, len(self.classes_), augment=self.augment)
        if validation_data is not None:
            validation_data = (self._images(validation_data[0]), validation_data[1])
        return fit_keras_model(
            self, model, images, y_encoded, validation_data, optimizer=self.optimizer,
            learning_rate=self.learning_rate, epochs=self.epochs, batch_size=self.batch_size,
            patience=self.patience, start_from_epoch=self.start_from_epoch, seed=self.seed, verbose=self.verbose,
            lr_schedule=self.lr_schedule,
        )

    def predict_proba(self, X) -> np.ndarray:
        from classifiers.batches import predict_in_batches

        self._check_fitted()
        return predict_in_batches(self.model_, self._images(X), self.batch_size)


class ImageFiles:
    """Array-like over image files, decoded (and resized) on demand by ``read_rows`` on a few threads."""

    def __init__(self, paths: Sequence, image_size: tuple[int, int]):
        self.paths = list(paths)
        self.image_size = image_size
        self.shape = (len(self.paths), *image_size, 3)

    def __len__(self) -> int:
        return len(self.paths)

    def read_rows(self, positions) -> np.ndarray:
        from featurebank.decoding import decode_many

        images, kept, failures = decode_many([self.paths[i] for i in positions], self.image_size)
        if failures:
            raise InvalidArgument(f"{failures[0][0]}: {failures[0][1]}")
        return images
