"""The backbones' forward in IEEE float32 on cuDNN: how fast it can run here, against TF32 and bfloat16.

    python bench/fp32_ceiling.py [--models resnet50,efficientnet-lite0] [--images 2048] [--batch-size 128]
                                 [--input-size 512x384] [--repeats 2] [--json FILE]
    python bench/fp32_ceiling.py --keras-flops [--input-size 512x384]

Why: the issue's floors lie above what the engine's forward did in IEEE float32 on an H200 (full
ResNet50 maps: 1,400 img/s against 773 for Keras on JAX; Lite0 with zstd: 3,000 against 2,281 for
PyTorch; BENCHMARKS.md), and IEEE float32 is the only arithmetic that kept the features within
float16 rounding of a CPU's. Whether those are the GPU's float32 limits is what this measures, on
cuDNN through PyTorch. ResNet50 is torchvision's convolutional trunk (conv1 to layer4, the
(N, 2048, H/32, W/32) maps a cache stores), made Keras's ResNet v1: each stage's first block has its
stride on the 1x1 convolution, where torchvision's v1.5 has it on the 3x3. So it does exactly
Keras's arithmetic, 30.2 GFLOP an image at 512x384 (``--keras-flops``; 773 img/s was 23 TFLOP/s),
and is the network a PyTorch ResNet50 carrying Keras's weights would run; v1.5 does 6% more.
EfficientNet-Lite0 is the engine's own model (efficientnet-lite-pytorch,
``extract_features``). Weights are random: speed does not depend on them. As in the engine, uint8
batches wait on the device, are cast and scaled there, and the maps are cast to float16 and
copied into a pinned host buffer.

Ways, alternated ``--repeats`` times after a warm-up pass each:
- ``engine``: the engine's PyTorch setting, IEEE float32 (featurebank.device.float32_arithmetic),
  the NHWC batch permuted (so channels-last strides, which cuDNN follows), weights as built, no
  ``cudnn.benchmark``;
- ``float32-nchw``, ``float32-channels-last``: IEEE float32, the batch made NCHW-contiguous, or
  weights and batch channels-last;
- ``tf32-channels-last``: TF32 convolutions, PyTorch's default for cuDNN (set, not assumed);
- ``bfloat16-channels-last``: autocast.
All but ``engine`` run with ``cudnn.benchmark``: cuDNN times its algorithms in the warm-up and keeps
the fastest. Prints each way's median img/s and TFLOP/s (FLOPs counted by torch.utils.flop_counter),
then one JSON line. On a CPU it runs too, at a small size (TF32 is then float32).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import time
from pathlib import Path

from common import alternated_medians

WAYS = ("engine", "float32-nchw", "float32-channels-last", "tf32-channels-last", "bfloat16-channels-last")
FLOOR_WAYS = ("engine", "float32-nchw", "float32-channels-last")  # IEEE float32: what the precision rule allows
MODELS = ("resnet50", "efficientnet-lite0")


def conv_trunk(torch, model: str, size: tuple[int, int]):
    """The model's layers up to the maps a cache stores (no pooling, no classifier), random weights, in eval mode."""
    if model == "resnet50":
        import torchvision

        resnet = torchvision.models.resnet50(weights=None)
        for stage in (resnet.layer2, resnet.layer3, resnet.layer4):  # v1.5 → Keras's v1: the stride on the 1x1
            first = stage[0]
            first.conv1.stride, first.conv2.stride = first.conv2.stride, (1, 1)
        return torch.nn.Sequential(*list(resnet.children())[:-2]).eval()
    if model == "efficientnet-lite0":
        import efficientnet_lite_pytorch

        class Trunk(torch.nn.Module):
            def __init__(self):
                super().__init__()
                lite = efficientnet_lite_pytorch.EfficientNet
                self.lite = lite.from_name("efficientnet-lite0", image_size=list(size))  # padding fixed, as the engine

            def forward(self, x):
                return self.lite.extract_features(x)

        return Trunk().eval()
    raise SystemExit(f"--models: {model!r} is not one of {', '.join(MODELS)}")


def flops_per_image(torch, model, size: tuple[int, int], device) -> float:
    """The trunk's floating-point operations for one image (multiply-adds count two), by PyTorch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros((1, 3, *size), device=device))
    return float(counter.get_total_flops())


@contextlib.contextmanager
def tf32_convolutions(torch):
    """cuDNN's float32 convolutions as TF32 while entered, whatever the default (torch >= 2.9's setting, or the
    older flag)."""
    if hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cudnn.conv, "fp32_precision"):
        setting, name, value = torch.backends.cudnn.conv, "fp32_precision", "tf32"
    else:
        setting, name, value = torch.backends.cudnn, "allow_tf32", True
    before = getattr(setting, name)
    setattr(setting, name, value)
    try:
        yield
    finally:
        setattr(setting, name, before)


def keras_conv_flops(size: tuple[int, int]) -> float:
    """Keras's ResNet50 (the engine's, v1), its convolutions' FLOPs for one image at ``size``, from the layers' shapes.

    Counted as torch's counter counts: two per multiply-add of each convolution, nothing for batch norm,
    activations and additions. Run apart from ``measure`` (``--keras-flops``): Keras's backend and torch
    are not loaded into one process here.
    """
    import keras

    model = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(*size, 3))
    return float(sum(2 * layer.output.shape[1] * layer.output.shape[2] * layer.kernel_size[0] * layer.kernel_size[1]
                     * layer.input.shape[-1] * layer.filters for layer in model.layers
                     if isinstance(layer, keras.layers.Conv2D)))


def measure(model_name: str, batches_per_pass: int, batch_size: int, size: tuple[int, int], repeats: int) -> dict:
    import torch

    from featurebank.device import float32_arithmetic

    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    as_built = conv_trunk(torch, model_name, size).to(device)
    channels_last = copy.deepcopy(as_built).to(memory_format=torch.channels_last)
    flops = flops_per_image(torch, as_built, size, device)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 256, (batch_size, *size, 3), dtype=torch.uint8, generator=generator).to(device)
               for _ in range(2)]  # two batches, as the engine's pixels arrive: (N, H, W, 3) uint8
    with torch.inference_mode():
        map_shape = as_built(torch.zeros((1, 3, *size), device=device)).shape[1:]
    host = [torch.empty((batch_size, *map_shape), dtype=torch.float16, pin_memory=cuda) for _ in range(2)]

    def settings(way: str) -> contextlib.AbstractContextManager:
        stack = contextlib.ExitStack()
        if way in FLOOR_WAYS:
            stack.enter_context(float32_arithmetic("torch", "float32"))
        if way.startswith("tf32"):
            stack.enter_context(tf32_convolutions(torch))
        if way.startswith("bfloat16"):
            stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
        return stack

    def one_pass(way: str) -> float:
        model = channels_last if way.endswith("channels-last") else as_built
        torch.backends.cudnn.benchmark = way != "engine"
        with torch.inference_mode(), settings(way):
            if cuda:
                torch.cuda.synchronize()
            started = time.perf_counter()
            for i in range(batches_per_pass):
                pixels = batches[i % 2].permute(0, 3, 1, 2)  # (N, 3, H, W) with channels-last strides
                if way == "float32-nchw":
                    pixels = pixels.contiguous()
                maps = model(pixels.float().sub_(127.0).div_(128.0))
                host[i % 2].copy_(maps.to(torch.float16), non_blocking=cuda)
            if cuda:
                torch.cuda.synchronize()
            return batches_per_pass * batch_size / (time.perf_counter() - started)

    for way in WAYS:
        one_pass(way)  # the warm-up: cuDNN's algorithm choice (with benchmark), memory pools
    by_way, runs = alternated_medians(WAYS, repeats, lambda way: {"img_s": one_pass(way)})
    torch.backends.cudnn.benchmark = False
    medians = {way: figures["img_s"] for way, figures in by_way.items()}
    return {"map_shape": list(map_shape), "gflop_per_image": flops / 1e9, "img_s": medians,
            "img_s_passes": {way: [run["img_s"] for run in way_runs] for way, way_runs in runs.items()},
            "tflop_s": {way: rate * flops / 1e12 for way, rate in medians.items()},
            "ieee_float32_best_way": max(FLOOR_WAYS, key=medians.get),
            "ieee_float32_best_img_s": max(medians[way] for way in FLOOR_WAYS)}


def measure_all(models: list[str], images: int, batch_size: int, size: tuple[int, int], repeats: int) -> dict:
    """Every model's ways, in one process (one CUDA start), with what the machine and torch are."""
    import torch

    batches_per_pass = max(1, -(-images // batch_size))  # whole batches, as the engine runs them
    figures = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               "torch": torch.__version__, "input_size": list(size), "batch_size": batch_size,
               "images_per_pass": batches_per_pass * batch_size, "repeats": repeats}
    figures["models"] = {model: measure(model, batches_per_pass, batch_size, size, repeats) for model in models}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--images", type=int, default=2048, help="images per timed pass (whole batches)")
    parser.add_argument("--batch-size", type=int, default=128, help="the engine's batch next to a GPU")
    parser.add_argument("--input-size", default="512x384", help="HxW, as extract --input-size")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per way, the ways alternated")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    parser.add_argument("--keras-flops", action="store_true",
                        help="only print the GFLOP an image of Keras's ResNet50 (the engine's) at --input-size")
    args = parser.parse_args()
    from featurebank.backbones import input_size_from_text

    size = input_size_from_text(args.input_size)
    if args.keras_flops:
        gflop = keras_conv_flops(size) / 1e9
        print(f"Keras ResNet50's convolutions at {size[0]}x{size[1]}: {gflop:.2f} GFLOP an image")
        return
    figures = measure_all(args.models.split(","), args.images, args.batch_size, size, args.repeats)
    for model, f in figures["models"].items():
        print(f"{figures['device']}, torch {figures['torch']}: {model} at {size[0]}x{size[1]}, batch "
              f"{figures['batch_size']}, {f['gflop_per_image']:.2f} GFLOP an image")
        for way in WAYS:
            print(f"  {way:24s} {f['img_s'][way]:9.1f} img/s  {f['tflop_s'][way]:7.2f} TFLOP/s  (passes: "
                  + ", ".join(f"{r:.1f}" for r in f["img_s_passes"][way]) + ")")
    print(json.dumps(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
