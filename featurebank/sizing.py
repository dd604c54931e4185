"""The engine's sizes, chosen from the device and the cores unless the user gives them.

A GPU wants large batches and enough decoding threads to feed it; a small CPU wants small batches
(memory, latency) and as few helper threads as keep the backbone busy, since every helper thread
takes a core from it. ``choose_sizes`` looks at the accelerator the backbone's library sees and the
cores this process may use; every value the user passes wins. The CLI prints the result, so the
user sees what was picked.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from featurebank.errors import InvalidArgument

DECODERS = ("threads", "processes", "nvjpeg")  # how the decoding pool runs (featurebank/decoding.py)
SHARED_MEMORY = "/dev/shm"  # where decoding processes keep their ring of decoded images
PROCESS_DECODING_CORES = 8  # next to an accelerator, from this many cores decoding runs in processes
PROCESS_DECODING_SHM = 1 << 30  # ...when shared memory has this room (ring: 6 batches of 128 at 512x384, 432 MiB)
CPU_BATCH = 16  # ResNet50 at 512x384 on a CPU: as fast per image as larger batches, a fraction of the memory
GPU_BATCH = 128  # fills an H100/H200 with ResNet50 at 512x384; activations stay a few GiB
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # bfloat16 arithmetic in /proc/cpuinfo (x86; Arm's "bf16")


@dataclass(frozen=True)
class EngineSizes:
    """What the local engine runs with."""

    device: str  # "cpu", or the accelerator's platform and name
    cores: int  # CPU cores this process may run on
    batch_size: int
    decode_workers: int
    compression_workers: int
    decoder: str = "threads"  # one of DECODERS
    jpeg_library: str | None = None  # with nvjpeg: whose decoder (gpu_decoding.JPEG_LIBRARIES)

    @property
    def accelerated(self) -> bool:
        return self.device != "cpu"

    def describe(self) -> str:
        if self.decoder == "nvjpeg":
            readers = f"{self.decode_workers} reading thread{'s' * (self.decode_workers != 1)}"
            library = f" ({self.jpeg_library})" if self.jpeg_library else ""
            decoding = f"JPEGs decoded by nvJPEG{library}, {readers}"
        else:
            kind = {"threads": "thread", "processes": "process"}[self.decoder] if self.decode_workers == 1 else self.decoder
            decoding = f"{self.decode_workers} decoding {kind}"
        return (f"{self.device}, {self.cores} cores: batch {self.batch_size}, {decoding}, "
                f"{self.compression_workers} compression thread{'s' * (self.compression_workers != 1)}")

    def as_dict(self) -> dict:
        return asdict(self)


def check_decoder(decoder: str | None, *, auto: bool = True) -> None:
    """Raise InvalidArgument unless ``decoder`` is one of DECODERS (or None, the engine's choice, where ``auto``)."""
    if decoder not in DECODERS and not (auto and decoder is None):
        raise InvalidArgument(f"decoder must be one of {', '.join(DECODERS)}; received {decoder!r}")


def default_batch_size(accelerated: bool) -> int:
    return GPU_BATCH if accelerated else CPU_BATCH


def default_decode_workers(cores: int | None = None) -> int:
    """Decoding threads: every usable core but one (Pillow releases the GIL; the last core runs the
    engine's Python and the writer)."""
    return max(1, (cores or usable_cores()) - 1)


def shared_memory_free() -> int:
    """Bytes free in SHARED_MEMORY (0 where there is none)."""
    try:
        stats = os.statvfs(SHARED_MEMORY)
    except OSError:
        return 0
    return stats.f_bavail * stats.f_frsize


def default_decoder(on_accelerator: bool, cores: int) -> str:
    """'processes' next to an accelerator with PROCESS_DECODING_CORES cores or more and room in shared
    memory: there decoding is the limit, and a threaded pool's share of the GIL (Pillow's Python around
    each decode) would cap it; 'threads' elsewhere, where decoding needs a fraction of a core."""
    many = on_accelerator and cores >= PROCESS_DECODING_CORES
    return "processes" if many and shared_memory_free() >= PROCESS_DECODING_SHM else "threads"


def cpu_has_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU has bfloat16 instructions (BFLOAT16_CPU_FLAGS); None where ``cpuinfo`` does not say.

    Without them the libraries emulate bfloat16 arithmetic, so ``--compute-dtype bfloat16`` is likely
    slower than float32 on that CPU; with them it ran 1.5-2.2x faster here (BENCHMARKS.md).
    """
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as file:
            lines = [line for line in file if line.startswith(("flags", "Features"))]
    except OSError:
        return None
    if not lines:
        return None
    return any(set(line.split(":", 1)[-1].split()) & set(BFLOAT16_CPU_FLAGS) for line in lines)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, as containers and schedulers set it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def accelerator(library: str) -> str | None:
    """The accelerator the backbone's library would run on ('cuda: NVIDIA H200'), None for the CPU.

    Imports that library (the backbone is about to be built with it anyway).
    """
    if library == "keras":
        from featurebank.quiet import import_keras

        backend = import_keras().backend.backend()
        if backend == "jax":
            import jax

            devices = [d for d in jax.devices() if d.platform != "cpu"]
            return f"{devices[0].platform}: {devices[0].device_kind}" if devices else None
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            return f"gpu: {gpus[0].name}" if gpus else None
        library = backend  # the torch backend
    if library == "torch":
        import torch

        return f"cuda: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else None
    return None  # numpy backbones


def choose_sizes(library: str, *, compression: str, batch_size: int | None = None,
                 decode_workers: int | None = None, compression_workers: int | None = None,
                 decoder: str | None = None, device: str | None = None, cores: int | None = None) -> EngineSizes:
    """Sizes for a run of a ``library`` backbone; the ones given are kept as they are.

    - batch: GPU_BATCH on an accelerator, CPU_BATCH on the CPU;
    - decoders: every core but one (Pillow releases the GIL; the last core runs the engine's
      Python and the writer); processes next to an accelerator with 8 cores or more (``default_decoder``),
      threads elsewhere;
    - compression threads (zstd only): half the cores next to a GPU, where the CPU is otherwise
      idle; on the CPU every core, so that they fill the backbone's idle moments.
    Both run at low OS priority on every device (``extraction.HELPERS_PRIORITY``).
    """
    check_decoder(decoder)
    cores = cores or usable_cores()
    device = device or accelerator(library) or "cpu"
    on_gpu = device != "cpu"
    compressing = compression == "zstd"
    return EngineSizes(
        device=device, cores=cores,
        batch_size=batch_size or default_batch_size(on_gpu),
        decode_workers=decode_workers or default_decode_workers(cores),
        decoder=decoder or default_decoder(on_gpu, cores),
        compression_workers=compression_workers or (0 if not compressing else max(1, cores // 2) if on_gpu else cores),
    )
