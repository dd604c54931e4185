"""Issue 11's targets against the figures of one `bench/gpu_run.sh` call, as Markdown rows for BENCHMARKS.md.

    python bench/gpu_targets.py OUT_FOLDER

Reads the JSON files gpu_run.sh wrote (one per gpu_extract.py run) and prints, for each run, its
forward, decode (threads, processes, nvJPEG), write and end-to-end img/s, the ratio to
min(forward, decode, write), the rate its three stages would give one after another (1 / (1/forward + 1/decode +
1/write): an extraction near it overlaps nothing), where the extraction's thread waited, how long after the
engine's start its first batch was handed to the writer, how many seconds the whole run took beyond what its
images after the first batch take at the rate after it (its fixed costs), and the issue's target for
that run with met / missed. The
end-to-end figure judged is the whole run's (model build excluded); the rate after the first
batch is shown beside it. Under the table, where gpu_run.sh left fp32_ceiling.json: each backbone's forward on
cuDNN alone in IEEE float32, TF32 and bfloat16 (bench/fp32_ceiling.py), and whether IEEE float32 reaches its floor.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from common import in_series_img_s

# run name → (what the issue asks of it, img/s floor, ratio floor or None)
TARGETS = {
    "resnet50-float16-none": ("uncompressed float16 maps: ≥ 0.9 of min(forward, decode, write) and ≥ 1400 img/s",
                              1400, 0.9),
    "resnet50-float16-zstd": ("compressed, random ResNet50 maps (dense): reported beside Lite0", 0, None),
    "resnet50-pooled": ("pooled vectors only: ≥ 5000 img/s", 5000, None),
    "lite0-pretrained-zstd": ("compressed full maps, pretrained Lite0: ≥ 3000 img/s", 3000, None),
    # --compute-dtype bfloat16: its own cache key, features within 1-10% of float32's (BENCHMARKS.md); the
    # float32 forward alone ran at ~4,000 img/s for pooled ResNet50 on an H200, under the 5,000 asked
    "resnet50-pooled-bfloat16": ("pooled vectors only, bfloat16 compute: ≥ 5000 img/s", 5000, None),
    "lite0-pretrained-zstd-bfloat16": ("compressed full maps, pretrained Lite0, bfloat16 compute: ≥ 3000 img/s",
                                       3000, None),
    # --decoder nvjpeg: JPEGs decoded on the GPU (its own cache key); the host's decoders bounded these two
    "resnet50-pooled-bfloat16-nvjpeg": ("pooled vectors only, bfloat16 compute, JPEGs on the GPU: ≥ 5000 img/s",
                                        5000, None),
    "lite0-pretrained-zstd-nvjpeg": ("compressed full maps, pretrained Lite0, JPEGs on the GPU: ≥ 3000 img/s",
                                     3000, None),
    # a probe: pretrained Lite0 with no compression threads beside the backbone (its zstd runs came out at about
    # the rate of their stages one after another on the H200, 2026-11-28)
    "lite0-pretrained-none": ("uncompressed Lite0 maps, no compression threads: reported", 0, None),
    # a probe: the first row with float32 convolutions as TF32, the libraries' default, instead of the engine's IEEE
    # float32 (bench/common.allow_tf32)
    "resnet50-float16-none-tf32": ("uncompressed float16 maps, TF32 convolutions: reported", 0, None),
    # a probe: Lite0's zstd row with the decoders and compression threads at the process's priority, as the engine
    # ran them next to a GPU until 2026-11-28, not nice 10 (bench/common.helpers_at_normal_priority)
    "lite0-pretrained-zstd-helpers-normal": ("compressed full maps, pretrained Lite0, helpers at normal priority: "
                                             "reported", 0, None),
    # a probe: the pooled bfloat16 row without the first call's warm-up on the build thread (bench/common.skip_warm_up)
    "resnet50-pooled-bfloat16-no-warm-up": ("pooled vectors only, bfloat16 compute, first call not warmed up: "
                                            "reported", 0, None),
    # a probe: the first row in mixed bfloat16 (a key of its own; its maps are not within float16 rounding of a
    # float32 forward, so it is not the target's), where IEEE float32 bounded the forward at ~770 img/s
    "resnet50-float16-none-bfloat16": ("uncompressed float16 maps, bfloat16 compute: reported", 0, None),
    # a probe: Lite0's zstd row without the warm-up, which now runs on the engine's thread while the first
    # batch decodes (PyTorch keeps cuDNN's plans per thread)
    "lite0-pretrained-zstd-no-warm-up": ("compressed full maps, pretrained Lite0, first call not warmed up: reported",
                                         0, None),
}


def verdict(figures: dict, floor: float, ratio: float | None) -> str:
    if not floor and ratio is None:
        return "reported"
    met = figures["extract_img_s"] >= floor and (ratio is None or figures["extract_vs_limit"] >= ratio)
    return "met" if met else "missed"


def waits(figures: dict) -> str:
    """Where the extraction's thread waited (featurebank.pipeline.STAGES); empty for runs made before it was kept."""
    stages = figures.get("extract_stage_seconds")
    if not stages:
        return ""
    return (f"{stages['decode']:.1f}, {stages['backbone']:.1f}, {stages['device']:.1f}, {stages['writer']:.1f} "
            f"({stages['write']:.1f})")


def first_batch(figures: dict) -> str:
    """Seconds from the engine's start to its first batch handed to the writer; empty for runs made before it was kept."""
    phases = figures.get("extract_phase_seconds") or {}
    return "" if phases.get("first_batch") is None else f"{phases['first_batch']:.2f}"


def beyond_steady(figures: dict) -> str:
    """Seconds the whole run took beyond its images after the first batch at the rate after it: its fixed costs."""
    images, batch = figures["distinct_files"], figures["sizes"]["batch_size"]
    return f"{images / figures['extract_img_s'] - (images - batch) / figures['extract_steady_img_s']:.2f}"


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/gpu-out")
    device = (out / "device.txt").read_text().strip() if (out / "device.txt").is_file() else "(no nvidia-smi)"
    print(f"device: {device}")
    print("| run | forward | decode threads / processes / nvJPEG | write | extract (after 1st batch) | ratio "
          "| in series | waits: decode, backbone, device, writer (writer busy), s | first batch, s | beyond the steady rate, s "
          "| target | |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, (target, floor, ratio) in TARGETS.items():
        path = out / f"{name}.json"
        if not path.is_file():
            print(f"| {name} | | | | | | | | | | {target} | not run |")
            continue
        f = json.loads(path.read_text())
        decodes = " / ".join(f"{f[key]:.0f}" if key in f else "–"
                             for key in ("decode_threads_img_s", "decode_processes_img_s", "decode_nvjpeg_img_s"))
        print(f"| {name} ({f['device']}) | {f['forward_img_s']:.0f} | {decodes} | {f['write_img_s']:.0f} | {f['extract_img_s']:.0f} "
              f"({f['extract_steady_img_s']:.0f}) | {f['extract_vs_limit']:.3f} | {in_series_img_s(f):.0f} | {waits(f)} | {first_batch(f)} | "
              f"{beyond_steady(f)} | {target} | "
              f"{verdict(f, floor, ratio)} |")
    ceiling = out / "fp32_ceiling.json"
    if ceiling.is_file():  # bench/fp32_ceiling.py: whether the floors lie above the GPU's IEEE float32, or the engine's
        c = json.loads(ceiling.read_text())
        print(f"\nThe forward on cuDNN alone (bench/fp32_ceiling.py, {c['device']}, torch {c['torch']}), img/s:")
        floors = {"resnet50": ("full ResNet50 maps", TARGETS["resnet50-float16-none"][1]),
                  "efficientnet-lite0": ("compressed Lite0 maps", TARGETS["lite0-pretrained-zstd"][1])}
        for model, f in c["models"].items():
            what, floor = floors[model]
            best = f["ieee_float32_best_way"]
            print(f"- {model}: " + ", ".join(f"{way} {rate:.0f}" for way, rate in f["img_s"].items())
                  + f". IEEE float32 at best: {f['img_s'][best]:.0f} img/s ({best}, {f['tflop_s'][best]:.1f} TFLOP/s), "
                  + ("at or above" if f["img_s"][best] >= floor else "below") + f" the {floor} img/s floor of {what}.")


if __name__ == "__main__":
    main()
