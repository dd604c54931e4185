"""ResNet50's forward in IEEE float32 outside Keras: how fast cuDNN runs it here, against TF32 and bfloat16.

    python bench/fp32_ceiling.py [--images 2048] [--batch-size 128] [--input-size 512x384] [--repeats 2]
                                 [--json FILE]

Why: the issue's floor for full ResNet50 maps (1,400 img/s) lies above what the engine's Keras
ResNet50 reached in IEEE float32 on an H200 (773 img/s under JAX, BENCHMARKS.md), and IEEE float32
is the only arithmetic that kept the features within float16 rounding of a CPU's. Whether 773 is
the GPU's float32 limit or XLA's is what this measures, with a second implementation:
torchvision's ResNet50, its convolutional trunk only (conv1 to layer4, (N, 2048, H/32, W/32), as
the cache stores), random weights. It is ResNet v1.5, the stride on the 3x3 convolution where
Keras's v1 has it on the 1x1: the same stages and output shape, with 6% more arithmetic at 512x384
(32.0 GFLOP an image against 30.2 for Keras's convolutions, so 773 img/s was 23 TFLOP/s).
As in the engine, uint8 batches wait on the device, are cast and scaled there, and the maps are
cast to float16 and copied into a pinned host buffer.

Ways, alternated ``--repeats`` times after a warm-up pass each (in which cuDNN times its algorithms
and keeps the fastest, ``cudnn.benchmark``, which the engine's PyTorch backbones do not set):
IEEE float32 in NCHW and in channels-last (featurebank.device.float32_arithmetic, the engine's
setting), TF32 in channels-last (PyTorch's default for cuDNN convolutions) and bfloat16 autocast
in channels-last. Prints each way's median img/s and the convolutions' TFLOP/s (FLOPs counted by
torch.utils.flop_counter), then one JSON line. On a CPU it runs too, at a small size, where TF32
is float32.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import time
from pathlib import Path

from common import alternated_medians

WAYS = ("float32", "float32-channels-last", "tf32-channels-last", "bfloat16-channels-last")


def conv_trunk(torch, torchvision):
    """torchvision's ResNet50 without its average pooling and classifier: the maps a cache stores."""
    model = torchvision.models.resnet50(weights=None)
    return torch.nn.Sequential(*list(model.children())[:-2]).eval()


def flops_per_image(torch, model, size: tuple[int, int], device) -> float:
    """The trunk's floating-point operations for one image (multiply-adds count two), by PyTorch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros((1, 3, *size), device=device))
    return float(counter.get_total_flops())


def cudnn_float32(torch) -> str:
    """How cuDNN runs float32 convolutions now: 'tf32' or 'ieee' (torch >= 2.9's setting, else the older flag)."""
    if hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cudnn.conv, "fp32_precision"):
        return str(torch.backends.cudnn.conv.fp32_precision)
    return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"


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


def measure(images: int, batch_size: int, size: tuple[int, int], repeats: int) -> dict:
    import torch
    import torchvision

    from featurebank.device import float32_arithmetic

    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True  # a ceiling: cuDNN times its algorithms in the warm-up and keeps the fastest
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    nchw = conv_trunk(torch, torchvision).to(device)
    channels_last = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    flops = flops_per_image(torch, nchw, size, device)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 256, (batch_size, *size, 3), dtype=torch.uint8, generator=generator).to(device)
               for _ in range(2)]  # two batches, as the engine's pixels arrive: (N, H, W, 3) uint8
    with torch.inference_mode():
        map_shape = nchw(torch.zeros((1, 3, *size), device=device)).shape[1:]
    host = [torch.empty((batch_size, *map_shape), dtype=torch.float16, pin_memory=cuda) for _ in range(2)]
    passes = max(1, -(-images // batch_size))

    def settings(way: str) -> contextlib.AbstractContextManager:
        stack = contextlib.ExitStack()
        if way.startswith("float32"):
            stack.enter_context(float32_arithmetic("torch", "float32"))
        if way.startswith("bfloat16"):
            stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
        return stack

    def one_pass(way: str) -> float:
        model = nchw if way == "float32" else channels_last
        with torch.inference_mode(), settings(way):
            if cuda:
                torch.cuda.synchronize()
            started = time.perf_counter()
            for i in range(passes):
                pixels = batches[i % 2].permute(0, 3, 1, 2)  # a channels-last view of (N, 3, H, W)
                if way == "float32":
                    pixels = pixels.contiguous()
                maps = model(pixels.float().div_(127.5).sub_(1.0))
                host[i % 2].copy_(maps.to(torch.float16), non_blocking=cuda)
            if cuda:
                torch.cuda.synchronize()
            return passes * batch_size / (time.perf_counter() - started)

    for way in WAYS:
        one_pass(way)  # the warm-up: cuDNN's algorithm choice, memory pools
    by_way, runs = alternated_medians(WAYS, repeats, lambda way: {"img_s": one_pass(way)})
    medians = {way: figures["img_s"] for way, figures in by_way.items()}
    rates = {way: [run["img_s"] for run in way_runs] for way, way_runs in runs.items()}
    return {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
            "cudnn_float32_default": cudnn_float32(torch),  # what the tf32 way ran with
            "input_size": list(size), "map_shape": list(map_shape), "batch_size": batch_size,
            "images_per_pass": passes * batch_size,
            "repeats": repeats, "gflop_per_image": flops / 1e9,
            "img_s": medians, "img_s_passes": rates, "tflop_s": {w: r * flops / 1e12 for w, r in medians.items()},
            "ieee_float32_best_img_s": max(medians["float32"], medians["float32-channels-last"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048, help="images per timed pass (whole batches)")
    parser.add_argument("--batch-size", type=int, default=128, help="the engine's batch next to a GPU")
    parser.add_argument("--input-size", default="512x384", help="HxW, as extract --input-size")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per way, the ways alternated")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    parser.add_argument("--keras-flops", action="store_true",
                        help="only print the GFLOP an image of Keras's ResNet50 (the engine's) at --input-size")
    args = parser.parse_args()
    from featurebank.backbones import input_size_from_text

    if args.keras_flops:
        size = input_size_from_text(args.input_size)
        print(f"Keras ResNet50's convolutions at {size[0]}x{size[1]}: {keras_conv_flops(size) / 1e9:.2f} GFLOP an image")
        return

    figures = measure(args.images, args.batch_size, input_size_from_text(args.input_size), args.repeats)
    print(f"{figures['device']}, torch {figures['torch']}: torchvision ResNet50 trunk at "
          f"{figures['input_size'][0]}x{figures['input_size'][1]}, batch {figures['batch_size']}, "
          f"{figures['gflop_per_image']:.1f} GFLOP an image; cuDNN's float32 by default: "
          f"{figures['cudnn_float32_default']}")
    for way in WAYS:
        print(f"  {way:24s} {figures['img_s'][way]:9.1f} img/s  {figures['tflop_s'][way]:7.2f} TFLOP/s  (passes: "
              + ", ".join(f"{r:.1f}" for r in figures["img_s_passes"][way]) + ")")
    print(json.dumps(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
