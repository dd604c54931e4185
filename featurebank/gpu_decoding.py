"""JPEG decoding on the GPU (nvJPEG, through TorchCodec or torchvision), when the host's cores cannot feed the backbone.

Next to an H200 the backbone embeds 4,000-7,000 TrashNet photos a second and Pillow decodes ~620
per core, so the host's decoders, not the GPU, bound a pooled or compressed extraction
(BENCHMARKS.md, "The GPU stage"). ``--decoder nvjpeg`` reads the files' bytes on a pool of
threads and decodes the JPEGs in batches on the GPU (``decode_jpeg(list, device='cuda')`` of
TorchCodec, or of torchvision where TorchCodec does not load: import_jpeg_library), resizes them
there when needed (bilinear, antialiased: within one level of Pillow's), and copies each batch
out through reused pinned host buffers. Files nvJPEG should not decode go to Pillow on the
reading threads, so that the cache holds what Pillow would make of them: other formats, JPEGs
with an EXIF rotation, CMYK or Adobe-RGB JPEGs, 12-bit ones, and JPEGs that nvJPEG fails on.
Broken files are skipped with Pillow's reason, as with the other decoders.

nvJPEG's pixels differ from libjpeg-turbo's (Pillow's) by a few levels, so the cache records
``"decoder": "nvjpeg"`` in its manifest, with the library's version: a cache of its own key,
never chosen for the user.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from PIL import Image

from featurebank.buffers import RecycledArrays
from featurebank.decoding import decode_files, note_failure
from featurebank.device import pinned_array
from featurebank.errors import FeaturebankError, InvalidArgument
from featurebank.images import EXIF_ORIENTATION, lower_thread_priority

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
DEVICE = "cuda"  # where JPEGs are decoded; on "cpu" both libraries use libjpeg-turbo, Pillow's pixels exactly (tests)
JPEG_LIBRARIES = ("torchcodec", "torchvision")  # tried in this order (import_jpeg_library)
INSTALL_HINT = "--decoder nvjpeg needs PyTorch and TorchCodec: pip install -e '.[offline]' (or pip install torchcodec)"
NO_CUDA = "--decoder nvjpeg decodes on a CUDA GPU and PyTorch sees none here; use --decoder threads or processes"
BATCHES_AHEAD = 2  # decoded batches waiting for the consumer, besides the one being decoded
_BASELINE_SOF = (0xC0, 0xC1, 0xC2)  # Huffman-coded baseline, extended and progressive JPEGs (nvJPEG decodes these)
_OTHER_SOF = (0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)  # lossless, hierarchical, arithmetic
_RGB_COMPONENT_IDS = (82, 71, 66)  # 'R', 'G', 'B': libjpeg reads such a JPEG as RGB, not YCbCr


@dataclass(frozen=True)
class JpegLibrary:
    """The library whose nvJPEG decodes (libjpeg-turbo on the CPU); its name and version enter the manifest."""

    name: str  # one of JPEG_LIBRARIES
    torch: ModuleType
    decode: Callable[..., list]  # decode([1-D uint8 CPU tensors], device=...) -> [(3, H, W) uint8 RGB tensors]


def import_jpeg_library(libraries: tuple[str, ...] | None = None) -> JpegLibrary:
    """The first of ``libraries`` (JPEG_LIBRARIES) that loads here, or one line saying how to install one.

    TorchCodec (0.16+) is the maintained home of these decoders; torchvision's, deprecated since
    0.29, serve where TorchCodec is missing or its compiled library does not load (a CUDA runtime
    other than its wheel's): the GPU machines this was built for have torchvision only. Importing
    torchvision imports torch._dynamo, which imports Triton when it is installed; with TensorFlow
    already loaded, loading Triton's library kills the process (a segmentation fault: both bring
    their own LLVM). The decoders need no Triton, so where TensorFlow is loaded and Triton is not,
    Triton is marked missing for this process (torch then does without it). Extraction calls this
    before the backbone's build starts, so the two never load at once.
    """
    if "tensorflow" in sys.modules and "triton" not in sys.modules:
        sys.modules["triton"] = None  # import triton → ImportError, which torch handles
    reasons = []
    for name in libraries or JPEG_LIBRARIES:
        if name not in JPEG_LIBRARIES:
            raise InvalidArgument(f"JPEG library must be one of {', '.join(JPEG_LIBRARIES)}; received {name!r}")
        try:
            import torch

            if name == "torchcodec":
                from torchcodec.decoders import decode_jpeg
                decode = functools.partial(decode_jpeg, mode="RGB")
            else:
                from torchvision.io import ImageReadMode, decode_jpeg
                decode = functools.partial(decode_jpeg, mode=ImageReadMode.RGB)
        except ModuleNotFoundError as exc:
            reasons.append(f"{(exc.name or name).partition('.')[0]} is not installed")
        except Exception as exc:  # installed, but its compiled library does not load here (OSError, RuntimeError)
            reasons.append(f"{name}: {exc}".splitlines()[0])
        else:
            return JpegLibrary(name, torch, decode)
    raise FeaturebankError(f"{INSTALL_HINT} ({'; '.join(dict.fromkeys(reasons))})")


def nvjpeg_usable() -> bool:
    """Whether --decoder nvjpeg can run here: a JPEG library loads and PyTorch sees a CUDA GPU."""
    try:
        return import_jpeg_library().torch.cuda.is_available()
    except FeaturebankError:
        return False


def _rotated(exif_segment: bytes) -> bool:
    """Whether an APP1 EXIF segment asks for a rotation, read by Pillow as load_image reads it (unreadable: True)."""
    exif = Image.Exif()
    try:
        exif.load(exif_segment)
    except Exception:  # a routing decision only: Pillow then decodes the file and decides, as with the other decoders
        return True
    return exif.get(EXIF_ORIENTATION, 1) != 1


def nvjpeg_can_decode(data: bytes) -> bool:
    """Whether these bytes are a JPEG that nvJPEG decodes to the pixels Pillow means.

    Walks the markers up to the frame header: an 8-bit Huffman JPEG of 1 or 3 components, stored
    upright (no EXIF rotation), and not one that libjpeg reads as RGB or CMYK (an Adobe marker
    with transform 0, component ids R, G, B). Everything else goes to Pillow.
    """
    if not data.startswith(b"\xff\xd8"):
        return False
    position, adobe_rgb = 2, False
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return False
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            position += 2
            continue
        length = int.from_bytes(data[position + 2:position + 4], "big")
        segment = data[position + 4:position + 2 + length]
        if marker == 0xE1 and segment.startswith(b"Exif\x00\x00") and _rotated(segment):
            return False
        if marker == 0xEE and segment.startswith(b"Adobe") and len(segment) >= 12:
            adobe_rgb = segment[11] == 0
        if marker in _BASELINE_SOF:
            if len(segment) < 6:
                return False
            precision, components = segment[0], segment[5]
            ids = tuple(segment[6 + 3 * c] for c in range(components)) if len(segment) >= 6 + 3 * components else ()
            stored_as_rgb = components == 3 and (adobe_rgb or ids == _RGB_COMPONENT_IDS)
            return precision == 8 and components in (1, 3) and not stored_as_rgb
        if marker in _OTHER_SOF or marker == 0xDA:  # a frame nvJPEG does not decode, or scan data before any frame
            return False
        position += 2 + length
    return False


def read_for_gpu(path: str | Path, size: tuple[int, int]) -> bytes | np.ndarray | str:
    """On a reading thread: the bytes of a JPEG for nvJPEG, else Pillow's pixels, else the reason it failed."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError:
        return decode_files([path], size)[0]  # the reason Pillow gives, as with the other decoders
    return data if nvjpeg_can_decode(data) else decode_files([path], size)[0]


class NvjpegDecoding:
    """Batches of uint8 (n, H, W, 3) pixels decoded on ``device`` (DEVICE when None), copied to the host.

    ``workers`` threads read files (and decode with Pillow the files nvJPEG should not), at nice
    HELPER_NICE with ``low_priority`` as the other decoders; one thread of its own, at the
    process's priority (it launches the device's work, as the engine's thread does), decodes
    batches on the device, up to BATCHES_AHEAD ahead of the consumer.
    A batch in which files failed comes out shorter by as many; failures keep the files' order.
    With ``keep_on_device`` a batch stays where it was decoded, as a torch tensor, for a backbone
    on the same GPU (``takes_device_batches``): at 512x384 a batch of 128 is 75 MB, which the
    host round trip copied out and back in again, and on an H200 that round trip cost more than
    nvJPEG saved (BENCHMARKS.md). Files that Pillow decoded are copied in from the host.
    """

    def __init__(self, workers: int, size: tuple[int, int], batch_size: int, device: str | None = None,
                 keep_on_device: bool = False, low_priority: bool = False):
        self.library = import_jpeg_library()
        self.torch = torch = self.library.torch
        self.device = torch.device(device or DEVICE)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise FeaturebankError(NO_CUDA)
        self.size, self.batch_size, self.keep_on_device = tuple(size), batch_size, keep_on_device
        self.readers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="featurebank-read",
                                          initializer=lower_thread_priority if low_priority else None)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        allocate = functools.partial(pinned_array, torch) if self.device.type == "cuda" else np.empty
        self.host = RecycledArrays(keep=BATCHES_AHEAD + 4, allocate=allocate)

    def _decode_on_device(self, datas: list[bytes]) -> list:
        """Each JPEG's (H, W, 3) uint8 tensor on the device, or None where nvJPEG failed on it."""
        if not datas:  # a batch of Pillow's files only (torchvision's decode_jpeg refuses an empty list)
            return []
        torch = self.torch
        encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision 0.29 deprecates its image decoders for TorchCodec's
            try:
                decoded = self.library.decode(encoded, device=self.device)
            except RuntimeError:  # nvJPEG gives no partial results: find the files it fails on one by one
                decoded = []
                for one in encoded:
                    try:
                        decoded.append(self.library.decode([one], device=self.device)[0])
                    except RuntimeError:
                        decoded.append(None)
        return [None if image is None else image.permute(1, 2, 0) for image in decoded]

    def _resized(self, image):
        """(H, W, 3) uint8 on the device at self.size: bilinear, antialiased, as Pillow's resize (within 1 level)."""
        if tuple(image.shape[:2]) == self.size:
            return image
        torch = self.torch
        scaled = torch.nn.functional.interpolate(image.permute(2, 0, 1)[None].float(), size=self.size,
                                                 mode="bilinear", antialias=True, align_corners=False)
        return scaled[0].round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)

    def _batch(self, items: list, paths: list, outcomes: list) -> tuple[list, np.ndarray | None, list[tuple]]:
        """(good items, their uint8 pixels, [(item, reason)] of the failed ones) of one batch.

        The pixels are on the host, or with ``keep_on_device`` a tensor on the device. A JPEG that
        nvJPEG fails on goes to Pillow, which decodes it or gives the reason threads would."""
        on_device = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, bytes)]
        for i, image in zip(on_device, self._decode_on_device([outcomes[i] for i in on_device])):
            outcomes[i] = self._resized(image) if image is not None else decode_files([paths[i]], self.size)[0]
        good = [(item, outcome) for item, outcome in zip(items, outcomes) if not isinstance(outcome, str)]
        failed = [(item, outcome) for item, outcome in zip(items, outcomes) if isinstance(outcome, str)]
        if not good:
            return [], None, failed
        torch = self.torch
        if self.keep_on_device:
            pixels = target = torch.empty((len(good), *self.size, 3), dtype=torch.uint8, device=self.device)
        else:
            pixels = self.host.take((len(good), *self.size, 3), np.uint8)
            # The pinned tensor under the array: each copy is then a DMA that torch knows it may start asynchronously.
            target = pixels.base if isinstance(pixels.base, torch.Tensor) else torch.from_numpy(pixels)
        for row, (_, image) in enumerate(good):
            if isinstance(image, np.ndarray):  # decoded by Pillow, on the host (copied if read-only)
                image = torch.from_numpy(np.require(image, requirements=["W"]))
            target[row].copy_(image, non_blocking=self.stream is not None)
        if self.stream is not None:
            self.stream.synchronize()  # the batch is whole, wherever the consumer reads it
        return [item for item, _ in good], pixels, failed

    def batches(self, source: Iterator[T], path_of: Callable[[T], str | Path],
                failures: list | None) -> Iterator[tuple[list[T], np.ndarray | torch.Tensor]]:
        ready: queue.Queue = queue.Queue(maxsize=BATCHES_AHEAD)
        stop = threading.Event()
        end = object()

        def reads(chunk: list) -> list:
            return [self.readers.submit(read_for_gpu, path_of(item), self.size) for item in chunk]

        def produce() -> None:
            try:
                with torch_stream(self.torch, self.stream):
                    chunk = list(islice(source, self.batch_size))
                    started = reads(chunk)
                    while chunk and not stop.is_set():
                        following = list(islice(source, self.batch_size))
                        following_reads = reads(following)  # read the next batch while this one decodes
                        ready.put(self._batch(chunk, [path_of(item) for item in chunk],
                                              [task.result() for task in started]))
                        chunk, started = following, following_reads
                ready.put(end)
            except BaseException as exc:  # raised on the consumer's thread
                ready.put(exc)

        producer = threading.Thread(target=produce, name="featurebank-nvjpeg", daemon=True)
        producer.start()
        try:
            while (got := ready.get()) is not end:
                if isinstance(got, BaseException):
                    raise got
                items, pixels, failed = got
                for item, reason in failed:
                    note_failure(item, reason, path_of, failures)
                if items:
                    yield items, pixels
                del pixels, got
        finally:
            stop.set()
            while producer.is_alive():  # let a producer blocked on a full queue finish
                with contextlib.suppress(queue.Empty):
                    ready.get(timeout=0.05)
            producer.join()

    def close(self) -> None:
        self.readers.shutdown(wait=True, cancel_futures=True)


def torch_stream(torch, stream):
    """The CUDA stream context, or nothing on the CPU."""
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
