"""Work started on an accelerator: ``Pending`` results, and PyTorch copies through pinned host buffers.

The embedding loop (``featurebank.embed.in_flight``) keeps one batch in flight: it submits batch
k+1 before it waits for batch k, so the device computes while the host copies out, hands on and
decodes. Feature functions return a ``Pending`` for that. ``PinnedCopies`` is how the PyTorch
backbones and Keras on its torch backend move a batch in and its outputs out on CUDA; torch is
imported only by its users.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from featurebank.buffers import RecycledArrays


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

    def to_device(self, images: np.ndarray, slot: _PinnedSlot):
        """``images`` as a tensor on the device (through the slot's pinned buffer on CUDA)."""
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
