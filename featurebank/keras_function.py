"""Keras models as feature functions that run where Keras runs: TensorFlow, JAX or torch, on the GPU when there is one.

``KerasFeatureFunction`` is what every Keras backbone of the registry (backbones.py) builds; the
PyTorch backbones have their own (torch_backbones.py). Both take uint8 batches, compute in IEEE
float32 or mixed bfloat16 (``float32_arithmetic``), and give back only the stored bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from featurebank.device import (Pending, PinnedCopies, float32_arithmetic, jax_input, jax_pinned_host_maps,
                                padded_batch, use_jax_compilation_cache)

if TYPE_CHECKING:
    import torch


class KerasFeatureFunction:
    """Runs a Keras model on fixed-size batches (the last one padded) so it is compiled once.

    ``submit``/``embed`` run a second model over the same layers whose outputs are the maps already
    cast to the stored dtype and their avg- and max-pooled float32 vectors: the cast and the pooling
    run where the model runs (TensorFlow, JAX or torch backend, GPU when there is one), and only the
    stored bytes come back to the host. The cast rounds the float32 forward's own values, so a
    float16 cache holds exactly what casting on the host would give. On the JAX backend ``submit``
    returns as soon as the step is dispatched: the batch goes in through pinned host memory
    (``through_pinned_host``), the step writes the maps into pinned host memory itself
    (``jax_pinned_host_maps``) and the vectors start copying to the host when the device has
    them (``copy_to_host_async``); on the torch backend the model is called directly and
    the batch moves through ``PinnedCopies`` (on CUDA: pinned buffers, copies out on their own
    stream). Either way the host prepares the next batch meanwhile. TensorFlow's
    ``predict_on_batch`` waits. With ``compute_dtype='float32'`` every call runs in IEEE float32,
    not TF32 (``float32_arithmetic``). On JAX and torch ``submit`` also takes a uint8 torch tensor
    already on the GPU (nvJPEG's batches, ``takes_device_batches``): JAX reads it in place through
    DLPack, torch uses it as it is; nothing goes through the host.
    """

    def __init__(self, model, batch_size: int, compute_dtype: str = "float32"):
        self.model = model
        self.batch_size = batch_size
        self.compute_dtype = compute_dtype
        self._embed_models: dict[str, object] = {}
        self._jax_steps: dict[tuple[str, bool], Callable] = {}
        self._torch_copies: PinnedCopies | None = None

    @property
    def takes_device_batches(self) -> bool:
        """Whether ``submit`` takes a torch tensor on the device: on the JAX and torch backends."""
        from featurebank.quiet import import_keras

        return import_keras().backend.backend() in ("jax", "torch")

    def _arithmetic(self, backend: str):
        return float32_arithmetic(backend, self.compute_dtype)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        from featurebank.quiet import import_keras

        with self._arithmetic(import_keras().backend.backend()):
            maps = self.model.predict_on_batch(padded_batch(images, self.batch_size))
        return np.asarray(maps, dtype=np.float32)[: len(images)]

    def _embed_model(self, name: str):
        if name not in self._embed_models:
            from featurebank.quiet import import_keras

            keras = import_keras()

            def stored_and_pooled(maps):
                maps = keras.ops.cast(maps, "float32")  # exact from bfloat16; the vectors are pooled in float32
                return [keras.ops.cast(maps, name), keras.ops.mean(maps, axis=(1, 2)), keras.ops.max(maps, axis=(1, 2))]

            # One named layer, not loose ops: Keras numbers unnamed ops per thread, and this may be called from
            # another thread than the one that built the model (Ray actors do), where "cast" would clash.
            outputs = keras.layers.Lambda(stored_and_pooled, name=f"featurebank_stored_{name}")(self.model.outputs[0])
            self._embed_models[name] = keras.Model(self.model.inputs, outputs, name=f"{self.model.name}_embed_{name}")
        return self._embed_models[name]

    def _jax_step(self, name: str, maps: bool) -> Callable:
        """The embed model as one jitted JAX function of (variables, images); without ``maps`` only the vectors."""
        if (name, maps) not in self._jax_steps:
            import jax

            model = self._embed_model(name)
            trainable = [v.value for v in model.trainable_variables]
            frozen = [v.value for v in model.non_trainable_variables]

            def step(trainable, frozen, images):
                outputs, _ = model.stateless_call(trainable, frozen, images, training=False)
                return outputs if maps else outputs[1:]

            use_jax_compilation_cache(jax)
            jitted = jax.jit(step, out_shardings=jax_pinned_host_maps(jax, maps))
            self._jax_steps[name, maps] = lambda images: jitted(trainable, frozen, images)
        return self._jax_steps[name, maps]

    def submit(self, images: np.ndarray | torch.Tensor, dtype, *, maps: bool = True) -> Pending:
        """Start embedding ``images``; the Pending gives (maps in ``dtype`` or None, {'avg', 'max'} float32)."""
        from featurebank.quiet import import_keras

        name, count = np.dtype(dtype).name, len(images)
        backend = import_keras().backend.backend()
        if backend == "torch":
            copying = self._submit_on_torch(name, padded_batch(images, self.batch_size), maps)
            names = ("maps", "avg", "max") if maps else ("avg", "max")
            return Pending(lambda: self._unpack([copying.result()[n] for n in names], count, maps), ready=copying.ready)
        if backend == "jax":
            padded = padded_batch(images, self.batch_size)
            with self._arithmetic(backend):
                outputs = self._jax_step(name, maps)(jax_input(padded))
            for output in outputs:
                output.copy_to_host_async()

            def fetch(batch=padded):  # a torch tensor that JAX reads in place stays alive until the step is done
                return self._unpack(outputs, count, maps)

            return Pending(fetch)
        with self._arithmetic(backend):
            outputs = self._embed_model(name).predict_on_batch(padded_batch(images, self.batch_size))
        return Pending.done(self._unpack(outputs if maps else outputs[1:], count, maps))

    def _submit_on_torch(self, name: str, images: np.ndarray | torch.Tensor, maps: bool) -> Pending:
        """Keras on its torch backend: the model called under no_grad, the batch moved by PinnedCopies."""
        import torch

        model = self._embed_model(name)
        if self._torch_copies is None:
            self._torch_copies = PinnedCopies(torch, model.weights[0].value.device)
        copies = self._torch_copies
        slot = copies.take_slot()
        with torch.no_grad(), self._arithmetic("torch"):
            stored, avg, largest = model(copies.to_device(images, slot), training=False)
        outputs = {"maps": stored, "avg": avg, "max": largest} if maps else {"avg": avg, "max": largest}
        return copies.copy_out(outputs, slot)

    @staticmethod
    def _unpack(outputs, count: int, maps: bool) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        """([maps,] avg, max) of the padded batch → (maps or None, {'avg', 'max'} float32) of its first ``count``."""
        arrays = [np.asarray(output)[:count] for output in outputs]
        stored = arrays.pop(0) if maps else None
        return stored, {"avg": arrays[0].astype(np.float32, copy=False), "max": arrays[1].astype(np.float32, copy=False)}

    def embed(self, images: np.ndarray, dtype, *, maps: bool = True) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        """(maps in ``dtype``, {'avg', 'max'} float32), pooled from the float32 maps before the cast."""
        return self.submit(images, dtype, maps=maps).result()
