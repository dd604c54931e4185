"""One batch in flight: the device computes batch k+1 while batch k is copied out (issue 11, build item 1)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from featurebank.backbones import get_backbone
from featurebank.device import Pending
from featurebank.embed import Embedder, in_flight


def test_the_next_batch_is_submitted_before_the_last_one_is_waited_for():
    events = []

    def submit(images):
        events.append(f"submit {images}")
        return Pending(lambda: events.append(f"wait {images}") or images * 10)

    assert list(in_flight(((k, k) for k in range(3)), submit)) == [(0, 0), (1, 10), (2, 20)]
    assert events == ["submit 0", "submit 1", "wait 0", "submit 2", "wait 1", "wait 2"]


def test_a_batch_that_is_ready_at_once_is_handed_on_at_once():
    """Host-side (synchronous) work keeps its old order: the writer gets each batch as soon as it exists."""
    events = []

    def submit(images):
        events.append(f"submit {images}")
        return Pending.done(images)

    for key, value in in_flight(((k, k) for k in range(3)), submit):
        events.append(f"handed {key}")
    assert events == ["submit 0", "handed 0", "submit 1", "handed 1", "submit 2", "handed 2"]


def test_a_waited_pending_fetches_once():
    calls = []
    pending = Pending(lambda: calls.append(1) or "value")
    assert not pending.ready
    assert (pending.result(), pending.result(), pending.ready, calls) == ("value", "value", True, [1])


@pytest.mark.parametrize("backbone", ["efficientnet-lite0", "resnet50"])
def test_a_vectors_only_cache_does_not_copy_the_maps_out(backbone):
    """--store pooled: the feature function is asked for vectors only, and gives the same ones as with maps."""
    if backbone.startswith("efficientnet"):
        pytest.importorskip("efficientnet_lite_pytorch", reason="needs the offline extra")
    function = get_backbone(backbone).build("none", (64, 64), 2)
    images = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    with_maps = Embedder(function, dtype="float16")(images)
    vectors_only = Embedder(function, dtype="float16", keep_maps=False)(images)
    assert with_maps.maps is not None and vectors_only.maps is None
    for name in ("avg", "max"):
        np.testing.assert_array_equal(vectors_only.pooled[name], with_maps.pooled[name])


JAX_IN_FLIGHT = """
import jax
import numpy as np
from featurebank.backbones import get_backbone
from featurebank.embed import Embedder, in_flight
function = get_backbone("resnet50").build("none", (96, 64), 4)
rng = np.random.default_rng(0)
batches = [rng.integers(0, 256, (n, 96, 64, 3), dtype=np.uint8) for n in (4, 4, 3)]
one_by_one = [Embedder(function, dtype="float16")(b) for b in batches]
started = Embedder(function, dtype="float16").submit(batches[0])
overlapped = [e for _, e in in_flight(enumerate(batches), Embedder(function, dtype="float16").submit)]
vectors = [Embedder(function, dtype="float16", keep_maps=False)(b) for b in batches]
same = all(np.array_equal(a.maps, b.maps) and a.maps.dtype == np.float16 and
           all(np.array_equal(a.pooled[k], b.pooled[k]) for k in ("avg", "max")) for a, b in zip(one_by_one, overlapped))
same_vectors = all(v.maps is None and all(np.array_equal(v.pooled[k], a.pooled[k]) for k in ("avg", "max"))
                   for v, a in zip(vectors, one_by_one))
maps_memory = function._jax_step("float16", True)(batches[0])[0].sharding.memory_kind
put, puts = jax.device_put, []
jax.device_put = lambda x, to=None, **k: puts.append((type(x).__name__, to.memory_kind)) or put(x, to, **k)
Embedder(function, dtype="float16").submit(batches[0]).result()
print("asynchronous" if not started.ready else "synchronous", same, same_vectors, [len(e.maps) for e in overlapped],
      maps_memory, puts == [("ndarray", "pinned_host"), ("ArrayImpl", "device")])
"""


def test_keras_on_jax_keeps_a_batch_in_flight_and_gives_the_same_features(tmp_path):
    """On JAX, submit dispatches the step and returns an unready Pending (it does not wait); overlapped batches
    equal one-by-one ones, bit for bit; the batch goes in and the step leaves the maps through pinned host memory
    (a GPU copies by DMA there, not through pageable memory), and the compiled step is kept on disk for the next run. Whether the device
    really is still busy then is not asserted (timing)."""
    pytest.importorskip("jax", reason="needs jax (pip install -e .[test] installs it)")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "XDG_CACHE_HOME": str(tmp_path),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    done = subprocess.run([sys.executable, "-c", JAX_IN_FLIGHT], capture_output=True, text=True, env=env, timeout=300)
    assert done.stdout.split() == ["asynchronous", "True", "True", "[4,", "4,", "3]", "pinned_host",
                                  "True"], done.stderr[-2000:]
    # The compiled steps were kept for the next run, in featurebank's folder under the user's cache.
    assert any(p.name.startswith("jit_step") for p in (tmp_path / "featurebank" / "jax").iterdir())


KERAS_ON_TORCH = """
import numpy as np
from featurebank.backbones import get_backbone
from featurebank.embed import Embedder, in_flight
import keras
assert keras.backend.backend() == "torch", keras.backend.backend()
function = get_backbone("resnet50").build("none", (96, 64), 4)
rng = np.random.default_rng(0)
batches = [rng.integers(0, 256, (n, 96, 64, 3), dtype=np.uint8) for n in (4, 4, 3)]
reference = [function(b) for b in batches]  # the float32 forward, through predict_on_batch
one_by_one = [Embedder(function, dtype="float16")(b) for b in batches]
overlapped = [e for _, e in in_flight(enumerate(batches), Embedder(function, dtype="float16").submit)]
vectors = [Embedder(function, dtype="float16", keep_maps=False)(b) for b in batches]
within = all(np.all(np.abs(e.maps.astype(np.float32) - r) <= np.abs(r) * 2.0**-11 + 2.0**-24)
             for e, r in zip(one_by_one, reference))
pooled = all(np.allclose(e.pooled["avg"], r.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6) and
             np.array_equal(e.pooled["max"], r.max(axis=(1, 2))) for e, r in zip(one_by_one, reference))
same = all(np.array_equal(a.maps, b.maps) and np.array_equal(a.pooled["avg"], b.pooled["avg"])
           for a, b in zip(one_by_one, overlapped))
same_vectors = all(v.maps is None and np.array_equal(v.pooled["max"], a.pooled["max"]) for v, a in zip(vectors, one_by_one))
print(one_by_one[0].maps.dtype, within, pooled, same, same_vectors, [len(e.maps) for e in overlapped])
"""


def test_keras_on_torch_embeds_through_pinned_copies_within_float16_rounding():
    """KERAS_BACKEND=torch calls the model directly (no predict_on_batch) and moves the batch with PinnedCopies."""
    pytest.importorskip("torch", reason="needs torch (pip install -e .[offline] installs it)")
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    done = subprocess.run([sys.executable, "-c", KERAS_ON_TORCH], capture_output=True, text=True, env=env, timeout=300)
    assert done.stdout.split() == ["float16", "True", "True", "True", "True", "[4,", "4,", "3]"], done.stderr[-2000:]


DEVICE_BATCHES = """
import numpy as np
import torch
from featurebank.backbones import get_backbone
from featurebank.embed import Embedder
import keras
function = get_backbone("resnet50").build("none", (96, 64), 4)
rng = np.random.default_rng(0)
batches = [rng.integers(0, 256, (n, 96, 64, 3), dtype=np.uint8) for n in (4, 3)]  # the last one padded
embed = Embedder(function, dtype="float16")
same = all(np.array_equal(embed(b).maps, embed(torch.from_numpy(b)).maps) and
           np.array_equal(embed(b).pooled["max"], embed(torch.from_numpy(b)).pooled["max"]) for b in batches)
in_place = "n/a"
if keras.backend.backend() == "jax":  # the step's input is the tensor's own memory: nothing was copied
    from featurebank.device import jax_input
    tensor = torch.zeros((4, 96, 64, 3), dtype=torch.uint8)
    in_place = jax_input(tensor).unsafe_buffer_pointer() == tensor.data_ptr()
print(keras.backend.backend(), function.takes_device_batches, same, in_place)
"""


@pytest.mark.parametrize("backend", ["jax", "torch", "tensorflow"])
def test_keras_takes_a_torch_batch_on_jax_and_torch_and_a_host_copy_on_tensorflow(tmp_path, backend):
    """nvJPEG's batches stay on the GPU as torch tensors: JAX reads them through DLPack, Keras on torch uses them,
    Keras on TensorFlow gets them copied to the host (Embedder); every way, the features numpy gives."""
    pytest.importorskip("torch", reason="needs torch (pip install -e .[offline] installs it)")
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu", "XDG_CACHE_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", DEVICE_BATCHES], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    in_place = "True" if backend == "jax" else "n/a"
    assert done.stdout.split()[-4:] == [backend, str(backend != "tensorflow"), "True", in_place]


WARM_UP = """
import numpy as np
import torch
from featurebank.backbones import get_backbone
from featurebank.embed import Embedder
function = get_backbone("resnet50").build("none", (96, 64), 4)
embed = Embedder(function, dtype="float16")
embed.warm_up(4, (96, 64))
model, traces = function._embed_model("float16"), []
call = model.stateless_call  # the jitted step calls it when it is traced, and only then
model.stateless_call = lambda *args, **kwargs: traces.append(1) or call(*args, **kwargs)
batch = np.random.default_rng(0).integers(0, 256, (4, 96, 64, 3), dtype=np.uint8)
embed(batch), embed(torch.from_numpy(batch)), embed(batch[:3])  # numpy, nvJPEG's kind of batch, the last one padded
after_warm_up = len(traces)
Embedder(function, dtype="float16", keep_maps=False)(batch)  # a step not warmed up: traced at its first call
print(after_warm_up, len(traces))
"""


def test_after_the_warm_up_keras_on_jax_runs_every_batch_of_a_run_without_tracing_again(tmp_path):
    """The warm-up's batch of zeros leaves the very step extraction runs compiled: host batches, torch tensors
    (nvJPEG's) and the padded last batch run it as it is."""
    pytest.importorskip("torch", reason="needs torch (pip install -e .[offline] installs it)")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "XDG_CACHE_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", WARM_UP], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["0", "1"]
