"""Work started on an accelerator: ``Pending`` results, and copies through pinned host memory.

The embedding loop (``featurebank.embed.in_flight``) keeps one batch in flight: it submits batch
k+1 before it waits for batch k, so the device computes while the host copies out, hands on and
decodes. Feature functions return a ``Pending`` for that. ``PinnedCopies`` is how the PyTorch
backbones and Keras on its torch backend move a batch in and its outputs out on CUDA; the
``jax_*`` helpers and ``through_pinned_host`` do the same for Keras on JAX (the keras_function.py
embed step). torch and jax are imported only by their users.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator

import numpy as np

from featurebank.buffers import RecycledArrays


def float32_arithmetic(backend: str, compute_dtype: str) -> contextlib.AbstractContextManager:
    """While it is entered, float32 convolutions and matrix products of ``backend`` run in IEEE float32.

    On NVIDIA GPUs since Ampere, cuDNN and XLA run float32 convolutions as TF32 by default (10-bit
    mantissas), and on an H200 that moved float32 features further from a CPU's than float16
    storage rounds (0.07% relative L2 for ResNet50, 0.42% for EfficientNet-Lite0; BENCHMARKS.md),
    under one cache key. So ``float32`` means IEEE float32 on every device, and the fast arithmetic
    is ``compute_dtype='bfloat16'``, which has a key of its own. ``backend``: "torch", "jax" or
    "tensorflow" (Keras's backend, or "torch" for the PyTorch backbones). The settings are put
    back on exit; JAX's is per thread, the others are process-wide. Other compute dtypes: nothing.
    """
    if compute_dtype != "float32":
        return contextlib.nullcontext()
    if backend == "jax":
        import jax

        return jax.default_matmul_precision("highest")  # part of the jit cache key: traced and called inside it
    if backend == "torch":
        import torch

        return _torch_ieee_float32(torch)
    if backend == "tensorflow":
        return _tensorflow_ieee_float32()
    raise ValueError(f"unknown backend {backend!r}")


@contextlib.contextmanager
def _torch_ieee_float32(torch) -> Iterator[None]:
    """cuDNN convolutions and cuBLAS matrix products without TF32; torch >= 2.9's settings, else the older ones.

    torch refuses to read its older flag once the newer setting made cuDNN's kinds differ, so a
    torch that has ``fp32_precision`` is set only through it."""
    if hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        settings, name, value = (torch.backends.cudnn.conv, torch.backends.cuda.matmul), "fp32_precision", "ieee"
    else:
        settings, name, value = (torch.backends.cudnn, torch.backends.cuda.matmul), "allow_tf32", False
    before = [getattr(setting, name) for setting in settings]
    for setting in settings:
        setattr(setting, name, value)
    try:
        yield
    finally:
        for setting, old in zip(settings, before):
            setattr(setting, name, old)


@contextlib.contextmanager
def _tensorflow_ieee_float32() -> Iterator[None]:
    import tensorflow as tf

    before = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    try:
        yield
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(before)


def is_torch_tensor(images) -> bool:
    """Whether ``images`` is a torch tensor, e.g. a batch that nvJPEG left on the GPU; torch is not imported."""
    return type(images).__module__.partition(".")[0] == "torch"


def on_host(images) -> np.ndarray:
    """``images`` as numpy: a torch tensor is copied to the host, for feature functions that take numpy only."""
    return images.cpu().numpy() if is_torch_tensor(images) else images


def padded_batch(images, batch_size: int):
    """``images`` with black images appended up to ``batch_size`` (numpy, or a torch tensor on its device).

    Feature functions run every batch at their one batch size: a JIT backend then compiles one
    step, and an image's features never depend on the size of the batch it fell in (CPU and GPU
    convolution libraries pick their algorithm by shape, and different algorithms round
    differently), so a run's last batch gives the bits a full batch would.
    """
    missing = batch_size - len(images)
    if missing <= 0:
        return images
    if is_torch_tensor(images):
        import torch

        if images.is_cuda:  # read on this thread's stream: not reused by the decoder's before that read ran
            images.record_stream(torch.cuda.current_stream(images.device))
        return torch.cat([images, images.new_zeros((missing, *images.shape[1:]))])
    return np.concatenate([images, np.zeros((missing, *images.shape[1:]), dtype=images.dtype)])


def pinned_array(torch, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A numpy array over pinned (page-locked) host memory, whose copies to and from a CUDA GPU are DMAs.

    The tensor that owns the memory is the array's ``.base``, for ``copy_(..., non_blocking=True)``."""
    torch_dtype = torch.from_numpy(np.empty(0, dtype)).dtype
    return torch.empty(tuple(shape), dtype=torch_dtype, pin_memory=True).numpy()


class Pending:
    """A batch whose work was started, perhaps still running on the device: ``result()`` waits and returns it.

    ``ready`` is True when nothing is left to wait for (the work ran on the host, synchronously): the
    embedding loop hands such a batch on at once, and keeps an unready one in flight while it starts
    the next, so that the device computes batch k+1 while batch k is copied out.
    """

    def __init__(self, fetch: Callable[[], object], *, ready: bool = False):
        self._fetch: Callable[[], object] | None = fetch
        self._value: object = None
        self.ready = ready

    @classmethod
    def done(cls, value) -> Pending:
        return cls(lambda: value, ready=True)

    def result(self):
        if self._fetch is not None:
            self._value, self._fetch = self._fetch(), None
            self.ready = True
        return self._value


class _PinnedSlot:
    """Pinned host buffers for one batch in flight (input pixels and outputs), and the event of its copy out."""

    def __init__(self):
        self.buffers: dict[str, object] = {}
        self.copied = None  # CUDA event recorded after the outputs' copies were queued
        self.generation = 0  # bumped at each reuse: a Pending of an older batch can tell its buffers were taken


class PinnedCopies:
    """uint8 batches to a torch device and outputs back, two batches in flight at most.

    On CUDA the pixels go in and the outputs come out through pinned host buffers of two
    alternating slots, and the copies out run on a stream of their own after an event of the
    compute stream, so ``copy_out`` returns once the copies are queued. On the CPU the outputs
    are copied to numpy at once (a ready Pending).
    """

    SLOTS = 2

    def __init__(self, torch, device):
        self.torch = torch
        self.cuda = device.type == "cuda"
        self.device = device
        self._slots = [_PinnedSlot() for _ in range(self.SLOTS)]
        self._next_slot = 0
        self._copy_stream = torch.cuda.Stream(device) if self.cuda else None
        self._recycled: dict[str, RecycledArrays] = {}

    def take_slot(self) -> _PinnedSlot:
        """The next slot, once the copies of the batch that used it last have finished."""
        slot = self._slots[self._next_slot]
        self._next_slot = (self._next_slot + 1) % self.SLOTS
        if slot.copied is not None:
            slot.copied.synchronize()
        slot.generation += 1
        return slot

    def _pinned(self, slot: _PinnedSlot, name: str, shape, dtype):
        buffer = slot.buffers.get(name)
        if buffer is None or tuple(buffer.shape) != tuple(shape) or buffer.dtype != dtype:
            buffer = self.torch.empty(tuple(shape), dtype=dtype, pin_memory=True)
            slot.buffers[name] = buffer
        return buffer

    def to_device(self, images, slot: _PinnedSlot):
        """``images`` as a tensor on the device (numpy through the slot's pinned buffer on CUDA).

        A torch tensor already on the device (a batch nvJPEG decoded there) is used as it is; the
        caching allocator is told the compute stream reads it, so that its memory is not handed to
        the decoder's stream before that work is done."""
        if is_torch_tensor(images):
            if self.cuda and images.is_cuda:
                images.record_stream(self.torch.cuda.current_stream(self.device))
            return images.to(self.device, non_blocking=True)
        x = self.torch.from_numpy(np.require(images, requirements=["C", "W"]))
        if self.cuda:
            x = self._pinned(slot, "in", x.shape, x.dtype).copy_(x)
        return x.to(self.device, non_blocking=True)

    def copy_out(self, outputs: dict, slot: _PinnedSlot) -> Pending:
        """A Pending of {name: numpy copy} of the device tensors ``outputs``."""
        if not self.cuda:
            return Pending.done({name: tensor.numpy().copy() for name, tensor in outputs.items()})
        torch = self.torch
        computed = torch.cuda.Event()
        computed.record()
        with torch.cuda.stream(self._copy_stream):
            self._copy_stream.wait_event(computed)
            host = {name: self._pinned(slot, name, tensor.shape, tensor.dtype).copy_(tensor, non_blocking=True)
                    for name, tensor in outputs.items()}
            slot.copied = copied = torch.cuda.Event()
            copied.record(self._copy_stream)
        generation = slot.generation

        def fetch() -> dict:
            copied.synchronize()  # ``outputs`` stays referenced until here: the allocator cannot reuse it earlier
            if slot.generation != generation:
                raise RuntimeError("more than two batches were in flight: this batch's host buffers were reused")
            arrays = {}
            for name, buffer in host.items():  # copied out of the slot, into arrays reused once they are let go
                pinned = buffer.numpy()
                arrays[name] = self._recycled.setdefault(name, RecycledArrays()).take(pinned.shape, pinned.dtype)
                np.copyto(arrays[name], pinned)
            outputs.clear()
            return arrays

        return Pending(fetch)


def use_jax_compilation_cache(jax) -> None:
    """Keep JAX's compiled embed steps on disk, unless the user chose a folder (``JAX_COMPILATION_CACHE_DIR``).

    A later run, or a second model in this one, of the same backbone, batch, input size and device
    loads its step instead of compiling it again: seconds on a GPU, where XLA tunes each
    convolution, paid by every extraction otherwise (BENCHMARKS.md). The folder is
    ``$XDG_CACHE_HOME/featurebank/jax`` (``~/.cache`` by default); deleting it costs only time.
    """
    if jax.config.jax_compilation_cache_dir is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        jax.config.update("jax_compilation_cache_dir", os.path.join(base, "featurebank", "jax"))


@functools.cache
def jax_device_and_pinned_host(jax) -> tuple[object, object | None]:
    """The JAX device's sharding, and the same in pinned host memory (None where the device has none)."""
    device = jax.devices()[0]
    on_device = jax.sharding.SingleDeviceSharding(device)
    pinned = "pinned_host" in {memory.kind for memory in device.addressable_memories()}
    return on_device, on_device.with_memory_kind("pinned_host") if pinned else None


def jax_pinned_host_maps(jax, maps: bool) -> list | None:
    """Output shardings that leave the step's maps in pinned host memory, or None (the device's default).

    A GPU copies into pinned memory by DMA at full bus speed; ``copy_to_host_async`` of a device array
    goes through pageable memory, which capped float16 ResNet50 maps at ~1100-1300 img/s on an H200
    (BENCHMARKS.md). The vectors are small and stay on the device until copied.
    """
    on_device, pinned = jax_device_and_pinned_host(jax)
    if not maps or pinned is None:
        return None
    return [pinned, on_device, on_device]  # the step returns a list


def jax_input(images):
    """On JAX: ``images`` (numpy, or a torch tensor on the GPU) as the embed step's input on the device.

    A torch tensor, a batch nvJPEG decoded on the GPU, is read in place through DLPack: no copy
    through the host. Its decoder synchronised its stream before handing it on, so JAX's stream
    may read it at once (``from_dlpack`` also has torch's current stream waited for). numpy goes
    through pinned host memory (``through_pinned_host``).
    """
    if is_torch_tensor(images):
        import jax

        if not images.is_cuda or jax.default_backend() == "gpu":
            return jax.dlpack.from_dlpack(images)
    return through_pinned_host(on_host(images))  # numpy, or JAX without its GPU backend: through the host


def through_pinned_host(images: np.ndarray):
    """On JAX: ``images`` on the device, copied there from pinned host memory; numpy as it is where there is none.

    Handed numpy, JAX copies a batch to a GPU from pageable memory, which the driver stages through
    a bounce buffer of its own: 25 ms for a batch of 128 ResNet50 inputs (75 MB) on an H200, all
    of it on the thread that feeds the device (BENCHMARKS.md). Put into pinned host memory first
    (a plain memcpy), the copy to the device is a DMA that runs while the thread goes on.
    """
    import jax

    on_device, pinned = jax_device_and_pinned_host(jax)
    return images if pinned is None else jax.device_put(jax.device_put(images, pinned), on_device)
