"""Where extraction's time goes, on any machine: forward, decode, write and end-to-end img/s, in one run.

    python bench/gpu_extract.py [--images 10000] [--source ../shared/datasets/trashnet] [--backbone resnet50]
                                [--weights none] [--batch-size 64] [--workers N] [--compression none] [--store maps]
                                [--decoder threads|processes|nvjpeg] [--json FILE]

Makes --images distinct JPEGs by re-encoding --source photos at varied JPEG quality (every file's
bytes differ, so nothing is deduplicated), then measures on this machine (CPU or GPU, whatever
the backbone uses):
  forward   the embed path alone (uint8 batch → backbone → stored dtype + pooled), on two decoded batches
            alternated, one batch in flight as extraction runs it (featurebank.embed.in_flight), each
            result let go as the next arrives (kept, every batch would need fresh host memory: on JAX,
            fresh pinned memory); then four overlapped batches are checked against one-by-one ones,
            bit for bit
  decode    the decoding pool alone (featurebank.decoding.decoded_batches), every file (from the pool's start,
            and after its first batch: decode_*_steady_img_s), with threads,
            with processes and with nvJPEG on the GPU (where PyTorch sees one; its batches left there,
            as extraction leaves them for a backbone on the GPU; the engine's choice, or --decoder, is
            the one in the ratio); and how far nvJPEG's pixels are from Pillow's, on the first batch
  write     the shard writer alone (same dtype, compression and shard size), on real maps repeated
  extract   `featurebank.extract` end to end into a fresh cache, every file (model build excluded), and
            the same after its first batch, which pays the pools' start and a JIT backend's compilation
            (on JAX the forward phase left the step in the compilation cache, so extraction loads it,
            as a user's second run would: compile_cache_entries_before_extract says so); and where
            the engine's thread waited (ExtractReport.stage_seconds). It runs on a thread of its own
            (featurebank-engine), one that never ran the backbone, as in a user's run: PyTorch keeps
            cuDNN's handles and execution plans per thread, so the forward phase's would have spared
            its first batch costs a user pays
and prints each img/s and extract / min(forward, decode, write). The same script runs on a GPU
machine (see BENCHMARKS.md for how it was run there, or why not).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from common import TRASHNET, allow_tf32, helpers_at_normal_priority, in_series_img_s, pixel_difference, skip_warm_up
from PIL import Image

import featurebank
from featurebank import extraction
from featurebank.embed import Embedder, in_flight
from featurebank.errors import FeaturebankError
from featurebank.extraction import Progress, resolve_manifest
from featurebank.backbones import get_backbone
from featurebank.array_pool import configure_array_pool
from featurebank.decoding import decoded_batches
from featurebank.images import load_image
from featurebank.index import FeatureStore
from featurebank.pipeline import describe_stages
from featurebank.sizing import DECODERS, choose_sizes

ENGINE_THREAD = "featurebank-engine"  # the thread extraction runs on (bench/profile_summary.py's default)


QUALITIES = range(60, 96)  # each source photo re-encoded at these JPEG qualities, one file each


def make_distinct_jpegs(source: Path, out: Path, count: int) -> list[Path]:
    """``count`` distinct JPEGs re-encoded from (up to 300) source photos at QUALITIES, spread over class folders."""
    photos = sorted(p for p in source.rglob("*.jpg"))[:300]
    if count > len(photos) * len(QUALITIES):
        raise SystemExit(f"{source}: {len(photos)} photos make at most {len(photos) * len(QUALITIES)} distinct "
                         f"JPEGs, and --images asks for {count}")
    pictures = [Image.open(p).convert("RGB") for p in photos]
    for folder in {p.parent.name for p in photos}:
        (out / folder).mkdir(parents=True, exist_ok=True)

    def write_copies(j: int) -> list[Path]:
        """The copies of picture j, one after the other (Image.save keeps its options on the image)."""
        paths = []
        for i in range(j, count, len(pictures)):
            path = out / photos[j].parent.name / f"copy{i:06d}.jpg"
            if not path.exists():  # a --data-dir kept from an earlier run is reused as it is
                buffer = io.BytesIO()
                pictures[j].save(buffer, format="JPEG", quality=QUALITIES[i // len(pictures)])
                path.write_bytes(buffer.getvalue())
            paths.append(path)
        return paths

    with ThreadPoolExecutor() as pool:  # Pillow encodes with the GIL released: every core helps
        copies = list(pool.map(write_copies, range(min(count, len(pictures)))))
    return [copies[i % len(pictures)][i // len(pictures)] for i in range(count)]


class BatchClock(Progress):
    """Times the batches an extraction hands to its writer: img/s from the first handed on to the last.

    The first batch pays the one-off costs that the model build does not include: a JIT backend
    compiles the step on its first call, and the decoding pool starts. The last shard's commit
    falls after the last batch is handed on, so it is not in this figure (it is in extract_img_s).
    """

    def __init__(self):
        self.stamps: list[tuple[float, int]] = []

    def advance(self, count: int) -> None:
        self.stamps.append((time.perf_counter(), count))

    def steady_img_s(self) -> float:
        if len(self.stamps) < 2:
            return float("nan")
        images = sum(count for _, count in self.stamps[1:])
        return images / (self.stamps[-1][0] - self.stamps[0][0])


def device_description() -> str:
    parts = [f"{os.cpu_count()} cores"]
    try:
        import torch

        if torch.cuda.is_available():
            parts.append(f"torch {torch.cuda.get_device_name(0)}")
    except ImportError:
        pass
    try:
        import keras

        parts.append(f"keras {keras.__version__} on {keras.backend.backend()}")
        if keras.backend.backend() == "jax":
            import jax

            parts.append(f"jax {jax.__version__} {jax.devices()[0].device_kind}")
    except ImportError:
        pass
    return ", ".join(parts)


def compile_cache_entries() -> int | None:
    """Steps in JAX's persistent compilation cache (None without JAX or a cache folder).

    The forward phase compiles the same step that extraction then runs: with entries here, the
    extraction loads it (as a user's second run would) instead of compiling it again.
    """
    try:
        import jax
    except ImportError:
        return None
    folder = jax.config.jax_compilation_cache_dir
    return len(list(Path(folder).glob("jit_step*"))) if folder and Path(folder).is_dir() else None


def nvjpeg_against_pillow(files: list[Path], size: tuple[int, int]) -> dict:
    """How far nvJPEG's pixels are from Pillow's on these files (nothing where nvJPEG cannot run here)."""
    from featurebank.gpu_decoding import NvjpegDecoding

    try:
        decoding = NvjpegDecoding(2, size, len(files))
    except FeaturebankError as exc:
        return {"nvjpeg_vs_pillow": str(exc)}
    try:
        [(_, ours)] = list(decoding.batches(iter(files), lambda p: p, failures=None))
    finally:
        decoding.close()
    theirs = np.stack([load_image(p, size) for p in files])
    return {"nvjpeg_vs_pillow": pixel_difference(ours, theirs),
            "nvjpeg_library": decoding.library.name}


def start_profiler(path: Path) -> subprocess.Popen:
    """py-spy sampling this process's Python stacks (all threads, idle ones too) until stop_profiler.

    Without pausing the process (``--nonblocking``) and without native frames: with them, py-spy
    pauses every thread at each sample, which slowed a Lite0 extraction tenfold on 2 cores.
    """
    process = subprocess.Popen(["py-spy", "record", "--pid", str(os.getpid()), "--threads",
                                "--idle", "--nonblocking", "--rate", "50", "--format", "raw", "--output", str(path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # py-spy attaches before the extraction starts
    return process


def stop_profiler(process: subprocess.Popen, path: Path) -> None:
    process.send_signal(signal.SIGINT)  # py-spy writes its samples and exits
    _, errors = process.communicate(timeout=60)
    if process.returncode != 0 or not path.is_file():
        print(f"py-spy failed ({process.returncode}): {errors.strip()[-300:]}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--source", type=Path, default=TRASHNET)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--input-size", default=None, help="HxW [the backbone's]")
    parser.add_argument("--batch-size", type=int, default=None, help="[the engine's choice for the device]")
    parser.add_argument("--workers", type=int, default=None, help="decoders [the engine's choice for the cores]")
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--compression", default="none")
    parser.add_argument("--store", default="maps")
    parser.add_argument("--compute-dtype", default="float32", help="float32 or bfloat16 (mixed precision)")
    parser.add_argument("--decoder", default=None, help="threads, processes or nvjpeg [the engine's choice]")
    parser.add_argument("--decode-only", default=",".join(DECODERS),
                        help="the decoders whose decode-only img/s to measure (the one in the ratio always is)")
    parser.add_argument("--forward-images", type=int, default=512, help="images pushed through the forward-only pass")
    parser.add_argument("--tf32", action="store_true",
                        help="a probe: float32 convolutions as TF32 on an NVIDIA GPU, the libraries' default, not "
                             "the engine's IEEE float32 (bench/common.py)")
    parser.add_argument("--no-warm-up", action="store_true",
                        help="a probe: next to a GPU, extraction without its warm-up of the first call on the build "
                             "thread (bench/common.py)")
    parser.add_argument("--helpers-at-normal-priority", action="store_true",
                        help="a probe: extraction's decoders and compression threads at the process's priority, not "
                             "nice 10, as the engine ran them next to a GPU until 2026-11-28 (bench/common.py)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="sample every thread's Python stack (py-spy) during the extraction into this "
                             "file (collapsed stacks; bench/profile_summary.py reads it)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="keep the generated JPEGs here and reuse them in later runs [inside the work folder]")
    args = parser.parse_args()
    if args.profile and shutil.which("py-spy") is None:
        parser.error("--profile needs py-spy on the PATH: pip install py-spy")
    spec = get_backbone(args.backbone)
    size = tuple(int(v) for v in args.input_size.split("x")) if args.input_size else spec.input_size
    work = args.work or Path(tempfile.mkdtemp(prefix="featurebank-gpu-"))
    if args.tf32:
        allow_tf32()
    if args.no_warm_up:
        skip_warm_up()
    if args.helpers_at_normal_priority:
        helpers_at_normal_priority()
    sizes = choose_sizes(spec.library, compression=args.compression, batch_size=args.batch_size,
                         decode_workers=args.workers, decoder=args.decoder)
    configure_array_pool(sizes.compression_workers, low_priority=extraction.HELPERS_PRIORITY == "low")
    args.batch_size = sizes.batch_size
    figures: dict = {"device": device_description(), "backbone": args.backbone, "input_size": list(size),
                     "sizes": sizes.as_dict(), "compression": args.compression, "dtype": args.dtype,
                     "store": args.store, "compute_dtype": args.compute_dtype, "decoder": sizes.decoder,
                     "tf32": args.tf32, "warm_up": sizes.accelerated and not args.no_warm_up,
                     "helpers_priority": extraction.HELPERS_PRIORITY, "profiled": args.profile is not None}
    print(f"engine: {sizes.describe()}")
    print(json.dumps(figures))
    try:
        data = args.data_dir or work / "data"
        files = make_distinct_jpegs(args.source, data, args.images)
        figures["distinct_files"] = len({hashlib.sha256(path.read_bytes()).digest() for path in files})
        manifest = resolve_manifest(spec, weights=args.weights, input_size=size, dtype=args.dtype, store=args.store,
                                    compute_dtype=args.compute_dtype, decoder=args.decoder)
        embedder = Embedder.for_manifest(manifest, weights=args.weights, batch_size=args.batch_size, spec=spec)
        first = np.stack([load_image(p, size) for p in files[: args.batch_size]])
        pixels = [first, np.ascontiguousarray(first[:, :, ::-1])]  # two batches whose results differ
        one_by_one = [embedder(batch) for batch in pixels]  # also the warm-up: build, compile, first call
        repeats = max(2, -(-args.forward_images // args.batch_size))
        started = time.perf_counter()
        for _ in in_flight(((i % 2, pixels[i % 2]) for i in range(repeats)), embedder.submit):
            pass  # each result let go as the next arrives, as extraction hands batches on to its writer
        figures["forward_img_s"] = repeats * args.batch_size / (time.perf_counter() - started)
        overlapped = [e for _, e in in_flight(((i % 2, pixels[i % 2]) for i in range(4)), embedder.submit)]
        figures["in_flight_equal"] = all(
            np.array_equal(e.maps, one_by_one[i % 2].maps) and
            all(np.array_equal(v, one_by_one[i % 2].pooled[k]) for k, v in e.pooled.items())
            for i, e in enumerate(overlapped))
        embedded = one_by_one[0]

        measured = set(args.decode_only.split(",")) | {sizes.decoder}
        if "nvjpeg" in measured:
            figures.update(nvjpeg_against_pillow(files[: args.batch_size], size))
        for decoder in [d for d in DECODERS if d in measured]:
            started, decoded, first = time.perf_counter(), 0, None  # first: (images, time) at the first batch
            try:
                for batch, _ in decoded_batches(  # nvJPEG's stay on the GPU, as in extract
                        files, lambda p: p, size, batch_size=args.batch_size, workers=sizes.decode_workers,
                        decoder=decoder, keep_on_device=decoder == "nvjpeg", priority=extraction.HELPERS_PRIORITY):
                    decoded += len(batch)
                    first = first or (decoded, time.perf_counter())
            except FeaturebankError as exc:  # too little shared memory for the processes' ring; nvjpeg without a GPU
                figures[f"decode_{decoder}_img_s"], figures[f"decode_{decoder}_error"] = 0.0, str(exc)
                continue
            finished = time.perf_counter()
            figures[f"decode_{decoder}_img_s"] = decoded / (finished - started)  # the pool's start included
            if first and decoded > first[0]:  # after the first batch, as extract_steady_img_s is
                figures[f"decode_{decoder}_steady_img_s"] = (decoded - first[0]) / (finished - first[1])
        figures["decode_img_s"] = figures[f"decode_{sizes.decoder}_img_s"]

        store = FeatureStore(work / "write-cache", manifest)
        store.prepare()
        writer = store.shard_writer(feature_shape=embedded.maps.shape[1:] if embedded.maps is not None else (),
                                    compression=args.compression, shard_size=256, classes=["a"])
        started = time.perf_counter()
        for start in range(0, args.images, args.batch_size):
            n = min(args.batch_size, args.images - start)
            writer.write(None if embedded.maps is None else embedded.maps[:n], {k: v[:n] for k, v in embedded.pooled.items()},
                         [f"{start + i:064x}" for i in range(n)], [f"a/{start + i}.jpg" for i in range(n)], [0] * n,
                         ["train"] * n)
        writer.close()
        figures["write_img_s"] = args.images / (time.perf_counter() - started)

        figures["compile_cache_entries_before_extract"] = compile_cache_entries()
        batches = BatchClock()
        profiler = start_profiler(args.profile) if args.profile else None
        try:  # on a thread that never ran the backbone, as a user's run: its first batch pays that thread's set-up
            with ThreadPoolExecutor(1, thread_name_prefix=ENGINE_THREAD) as engine:
                report = engine.submit(lambda: featurebank.extract(
                    data, backbone=args.backbone, cache=work / "cache", weights=args.weights, input_size=size,
                    batch_size=args.batch_size, dtype=args.dtype, compression=args.compression, store=args.store,
                    decode_workers=args.workers, compute_dtype=args.compute_dtype, decoder=args.decoder,
                    progress=batches)).result()
        finally:
            if profiler is not None:
                stop_profiler(profiler, args.profile)
        figures["sizes"] = report.sizes  # the engine's own, with the JPEG library that nvjpeg used
        figures["extract_img_s"] = report.new / (report.seconds - report.build_seconds)
        figures["extract_img_s_with_build"] = report.images_per_s
        figures["extract_steady_img_s"] = batches.steady_img_s()
        figures["extract_stage_seconds"] = report.stage_seconds
        figures["extract_phase_seconds"] = report.phase_seconds
        limit = min(figures["forward_img_s"], figures["decode_img_s"], figures["write_img_s"])
        figures["extract_vs_limit"] = figures["extract_img_s"] / limit
        figures["in_series_img_s"] = in_series_img_s(figures)
        figures["extract_steady_vs_limit"] = figures["extract_steady_img_s"] / limit
        decodes = ", ".join(f"{figures[f'decode_{d}_img_s']:.1f} with {d}" for d in DECODERS if f"decode_{d}_img_s" in figures)
        print(f"forward {figures['forward_img_s']:.1f} img/s (in flight == one by one: {figures['in_flight_equal']}), "
              f"decode img/s: {decodes} ({sizes.decoder} in the ratio), write "
              f"{figures['write_img_s']:.1f} img/s, extract {figures['extract_img_s']:.1f} img/s (model build excluded; "
              f"{figures['extract_img_s_with_build']:.1f} with it) = {figures['extract_vs_limit']:.3f} of "
              f"min(forward, decode, write); after its first batch (JIT compilation, pools starting) "
              f"{figures['extract_steady_img_s']:.1f} img/s = {figures['extract_steady_vs_limit']:.3f}; the three stages "
              f"one after another would give {figures['in_series_img_s']:.1f} img/s")
        print(f"extract {describe_stages(report.stage_seconds, report.phase_seconds)}, in {report.seconds - report.build_seconds:.1f} s")
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}))
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
