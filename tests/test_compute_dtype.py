"""extract --compute-dtype bfloat16: the backbone runs in mixed bfloat16, into a cache of its own key.

bfloat16 keeps 8 significant bits, so its maps differ from a float32 forward's by 1-10% (random
ResNet50 ~1%, pretrained EfficientNet-Lite0 ~6-10%, relative L2): far more than float16 storage
rounds (2^-11), which is why such features never share a cache with float32 ones.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import featurebank
from featurebank.backbones import get_backbone
from featurebank.embed import Embedder
from featurebank.errors import AmbiguousCacheError
from featurebank.extraction import resolve_manifest
from featurebank.cache import cache_key, make_manifest

from conftest import FEATUREBANK


def test_float32_keeps_the_keys_caches_had_and_bfloat16_is_a_key_of_its_own():
    spec = get_backbone("resnet50")
    settings = dict(weights="none", input_size=(64, 64), dtype="float16")
    float32 = resolve_manifest(spec, **settings)
    bfloat16 = resolve_manifest(spec, **settings, compute_dtype="bfloat16")
    before = make_manifest(backbone="resnet50", weights="none", input_size=(64, 64), preprocessing=spec.preprocessing,
                           layer=spec.layer, dtype="float16", library="keras")  # as made before compute_dtype existed
    assert float32 == before and "compute_dtype" not in float32
    assert bfloat16 == {**before, "compute_dtype": "bfloat16"} and cache_key(bfloat16) != cache_key(float32)


def near_but_not_float32(reference: np.ndarray, maps: np.ndarray, avg: np.ndarray) -> None:
    """bfloat16 ran (the maps leave float16 rounding of the float32 forward) and stayed close to it."""
    assert maps.dtype == np.float16 and maps.shape == reference.shape
    outside_float16_rounding = np.abs(maps.astype(np.float32) - reference) > np.abs(reference) * 2.0**-11 + 2.0**-24
    assert outside_float16_rounding[reference != 0].mean() > 0.5  # of the values ReLU did not zero
    pooled = reference.mean(axis=(1, 2))
    # measured: 0.004 and 0.99999 (random ResNet50), 0.068 and 0.9986 (pretrained Lite0, here as on TrashNet photos)
    assert np.max(np.linalg.norm(avg - pooled, axis=1) / np.linalg.norm(pooled, axis=1)) < 0.15
    cosine = (avg * pooled).sum(1) / np.linalg.norm(avg, axis=1) / np.linalg.norm(pooled, axis=1)
    assert cosine.min() > 0.995


@pytest.mark.parametrize("backbone", ["resnet50", "efficientnet-lite0"])
def test_bfloat16_backbones_compute_in_bfloat16_close_to_float32(backbone):
    import keras

    weights = "none"
    if backbone.startswith("efficientnet"):
        pytest.importorskip("efficientnet_lite_pytorch", reason="needs the offline extra")
        weights = "imagenet"  # pretrained ReLU6 maps, the sparse kind bfloat16 moves most
    spec = get_backbone(backbone)
    images = np.random.default_rng(0).integers(0, 256, (3, 96, 64, 3), dtype=np.uint8)
    reference = spec.build(weights, (96, 64), 4)(images)
    embedded = Embedder(spec.build(weights, (96, 64), 4, "bfloat16"), dtype="float16")(images)
    near_but_not_float32(reference, embedded.maps, embedded.pooled["avg"])
    assert keras.config.dtype_policy().name == "float32"  # the build's policy did not stay behind


JAX_BFLOAT16 = """
import numpy as np
from featurebank.backbones import get_backbone
from featurebank.embed import Embedder
import keras
assert keras.backend.backend() == "jax", keras.backend.backend()
spec = get_backbone("resnet50")
images = np.random.default_rng(0).integers(0, 256, (3, 96, 64, 3), dtype=np.uint8)
reference = spec.build("none", (96, 64), 4)(images)
embedded = Embedder(spec.build("none", (96, 64), 4, "bfloat16"), dtype="float16")(images)
np.savez(OUT, reference=reference, maps=embedded.maps, avg=embedded.pooled["avg"])
"""


def test_bfloat16_on_keras_with_jax(tmp_path):
    """The GPU machines run Keras on JAX: the policy reaches the jitted step there too."""
    pytest.importorskip("jax", reason="needs jax (pip install -e .[test] installs it)")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "XDG_CACHE_HOME": str(tmp_path)}
    out = tmp_path / "features.npz"
    done = subprocess.run([sys.executable, "-c", f"OUT = {str(out)!r}\n" + JAX_BFLOAT16], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    arrays = np.load(out)
    near_but_not_float32(arrays["reference"], arrays["maps"], arrays["avg"])


def test_a_bfloat16_cache_beside_a_float32_one_is_picked_by_name_and_embeds_as_it_stored(tmp_path, make_images):
    make_images(tmp_path / "data", 2, size=(64, 64), classes=["glass", "paper"])
    settings = dict(cache=tmp_path / "cache", weights="none", input_size=(64, 64), batch_size=4)
    featurebank.extract(tmp_path / "data", **settings)
    report = featurebank.extract(tmp_path / "data", **settings, compute_dtype="bfloat16")
    assert report.new == 4  # nothing taken from the float32 cache

    with pytest.raises(AmbiguousCacheError, match="compute_dtype=bfloat16"):
        featurebank.load(tmp_path / "cache")
    stored = featurebank.load(tmp_path / "cache", compute_dtype="bfloat16")
    float32 = featurebank.load(tmp_path / "cache", compute_dtype="float32")
    assert stored.manifest["compute_dtype"] == "bfloat16" and "compute_dtype" not in float32.manifest
    assert not np.array_equal(stored.X, float32.X)

    from featurebank.images import load_image

    # predict, the audit and Ray build from the manifest: they get the numbers this cache holds
    embedder = Embedder.for_manifest(stored.manifest, weights="none", batch_size=4)
    again = embedder(np.stack([load_image(tmp_path / "data" / p, (64, 64)) for p in stored.paths]))
    np.testing.assert_array_equal(again.maps, stored.X)


def test_a_backbone_without_bfloat16_says_so_in_one_line(tmp_path, make_images):
    make_images(tmp_path / "data", 1, classes=["glass"])
    done = subprocess.run([*FEATUREBANK, "extract", "--data", str(tmp_path / "data"), "--cache", str(tmp_path / "c"),
                           "--backbone", "rgb-stats", "--weights", "none", "--compute-dtype", "bfloat16"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == "Error: --compute-dtype bfloat16: rgb-stats computes in float32 only"


def test_bfloat16_instructions_are_read_from_cpuinfo(tmp_path):
    from featurebank.sizing import cpu_has_bfloat16

    cases = {"flags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile\n": True, "flags\t\t: fpu sse2 avx2 avx512f\n": False,
             "Features\t: fp asimd sve bf16 i8mm\n": True, "processor\t: 0\n": None}
    for number, (text, expected) in enumerate(cases.items()):
        (tmp_path / str(number)).write_text(text * 2)
        assert cpu_has_bfloat16(str(tmp_path / str(number))) is expected, text
    assert cpu_has_bfloat16(str(tmp_path / "absent")) is None


@pytest.mark.parametrize("has_bfloat16", [False, True])
def test_bfloat16_on_a_cpu_without_its_instructions_is_warned_about(tmp_path, make_images, monkeypatch,
                                                                      has_bfloat16):
    from featurebank import extraction

    monkeypatch.setattr(extraction, "cpu_has_bfloat16", lambda: has_bfloat16)
    make_images(tmp_path / "data", 1, size=(64, 64), classes=["glass"])
    warnings: list[str] = []
    report = featurebank.extract(tmp_path / "data", cache=tmp_path / "cache", weights="none", input_size=(64, 64),
                                 compute_dtype="bfloat16", warn=warnings.append)
    assert report.new == 1
    assert any("no bfloat16 instructions" in w for w in warnings) is (not has_bfloat16)


def torch_tf32_settings(torch) -> tuple:
    """What cuDNN convolutions and cuBLAS matrix products may do with float32 (torch >= 2.9's names, else older)."""
    if hasattr(torch.backends.cudnn, "conv"):
        return torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
def test_float32_backbones_run_their_convolutions_in_ieee_float32_not_tf32(compute_dtype):
    """On NVIDIA GPUs float32 convolutions run as TF32 by default, which moved an H200's features beyond
    float16 rounding of a CPU's (BENCHMARKS.md): a float32 forward turns it off while it runs, and puts
    the user's settings back. (A CPU runs IEEE float32 either way; what is checked is what the GPU is told.)"""
    pytest.importorskip("efficientnet_lite_pytorch", reason="needs the offline extra")
    import torch

    ieee = ("ieee", "ieee") if hasattr(torch.backends.cudnn, "conv") else (False, False)
    before = torch_tf32_settings(torch)
    assert before != ieee  # torch's default lets cuDNN use TF32
    features = get_backbone("efficientnet-lite0").build("none", (64, 64), 2, compute_dtype)
    first_conv = next(m for m in features.model.modules() if isinstance(m, torch.nn.Conv2d))
    seen = []
    first_conv.register_forward_hook(lambda *_: seen.append(torch_tf32_settings(torch)))
    images = np.zeros((2, 64, 64, 3), dtype=np.uint8)
    features(images)
    features.embed(images, np.float16)
    assert seen == [ieee if compute_dtype == "float32" else before] * 2
    assert torch_tf32_settings(torch) == before


JAX_PRECISION = """
import jax
import numpy as np
from featurebank.backbones import get_backbone
from featurebank.embed import Embedder
seen = []
convolve = jax.lax.conv_general_dilated
def recording(*args, **kwargs):
    seen.append(str(jax.config.jax_default_matmul_precision))
    return convolve(*args, **kwargs)
jax.lax.conv_general_dilated = recording  # Keras's JAX backend calls it by this name
images = np.zeros((2, 64, 64, 3), dtype=np.uint8)
Embedder(get_backbone("resnet50").build("none", (64, 64), 2, COMPUTE_DTYPE), dtype="float16")(images)
assert len(seen) == 53, len(seen)  # ResNet50's convolutions, traced once
print(sorted(set(seen)), jax.config.jax_default_matmul_precision)
"""


@pytest.mark.parametrize("compute_dtype, traced", [("float32", "['highest'] None"), ("bfloat16", "['None'] None")])
def test_keras_on_jax_traces_float32_convolutions_at_highest_precision(tmp_path, compute_dtype, traced):
    """The GPU machines run Keras on JAX, where XLA runs float32 convolutions as TF32 unless told HIGHEST."""
    pytest.importorskip("jax", reason="needs jax (pip install -e .[test] installs it)")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "XDG_CACHE_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", f"COMPUTE_DTYPE = {compute_dtype!r}\n" + JAX_PRECISION],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == traced


def test_tensorflow_float32_turns_tf32_off_and_back():
    import tensorflow as tf

    from featurebank.device import float32_arithmetic

    assert tf.config.experimental.tensor_float_32_execution_enabled()
    with float32_arithmetic("tensorflow", "float32"):
        assert not tf.config.experimental.tensor_float_32_execution_enabled()
    with float32_arithmetic("tensorflow", "bfloat16"):
        assert tf.config.experimental.tensor_float_32_execution_enabled()
    assert tf.config.experimental.tensor_float_32_execution_enabled()
