"""extract → HDF5 → load, through the CLI and the library, with real (random-weight) ResNet50 models."""

import json
import os
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import featurebank
from cli import main
from featurebank.backbones import get_backbone
from featurebank.index_view import find_indexes
from conftest import FEATUREBANK


def run_cli(*args):
    """Run the installed console command as a user would; returns (parsed stdout JSON, seconds)."""
    started = time.perf_counter()
    done = subprocess.run([*FEATUREBANK, *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), time.perf_counter() - started


@pytest.mark.slow
def test_issue_acceptance_full_size_resnet50(tmp_path, make_images):
    data, cache = tmp_path / "data", tmp_path / "cache"
    make_images(data, 2, size=(512, 384))
    args = ["extract", "--backbone", "resnet50", "--weights", "none", "--data", str(data), "--cache", str(cache),
            "--json"]
    first, first_seconds = run_cli(*args)
    assert (first["new"], first["cached"], first["skipped"]) == (12, 0, [])
    with h5py.File(first["cache_file"], "r") as fh:
        assert fh["paths"].shape == fh["shard"].shape == fh["row"].shape == (12,)
        assert list(fh.attrs["feature_shape"]) == [16, 12, 2048]
        splits_before = dict(zip(fh["paths"].asstr()[...], fh["split"].asstr()[...]))
    shards = list((cache / (first["cache_file"].rsplit("/", 1)[1][:-3] + ".shards")).glob("*.h5"))
    assert shards
    for shard in shards:
        with h5py.File(shard, "r") as fh:
            assert fh["features"].chunks == (1, 16, 12, 2048)  # one image per chunk
            assert fh["pooled_avg"].shape == fh["pooled_max"].shape == (len(fh["sha256"]), 2048)

    second, second_seconds = run_cli(*args)
    assert (second["new"], second["cached"]) == (0, 12)
    assert second_seconds < first_seconds / 5

    fb = featurebank.load(cache=cache, backbone="resnet50")
    assert fb.X.shape == (12, 16, 12, 2048) and fb.X.dtype == np.float32
    assert fb.manifest["dtype"] == "float16"  # stored as float16 by default, loaded as float32
    assert fb.y.shape == (12,) and len(fb.classes) == 6

    make_images(data, 1, size=(512, 384), start=10, classes=["glass", "metal", "trash"])
    third, _ = run_cli(*args)
    assert (third["new"], third["cached"]) == (3, 12)
    fb = featurebank.load(cache=cache, backbone="resnet50")
    assert len(fb) == 15
    assert {p: s for p, s in zip(fb.paths, fb.split) if p in splits_before} == splits_before


def test_noop_rerun_does_not_import_tensorflow(small_cache):
    code = (
        "import sys, featurebank; r = featurebank.extract(sys.argv[1], cache=sys.argv[2], weights='none', "
        "input_size=(64, 64)); print(r.new, r.cached, 'tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(small_cache["data"]), str(small_cache["cache"])],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["0", "180", "False", "False"], done.stderr


def test_library_report_and_split_storage(small_cache):
    report = small_cache["report"]
    assert report.new == 180 and report.cached == 0 and report.images == 180
    fb = featurebank.load(cache=small_cache["cache"], backbone="resnet50")
    assert set(fb.split) <= {"train", "val", "test"}
    assert fb.attrs["split_seed"] == 0
    train = featurebank.load(cache=small_cache["cache"], backbone="resnet50", split="train", pooling="avg")
    assert train.X.shape == ((fb.split == "train").sum(), 2048)
    # Pooled side data is pooled from the float32 forward pass, before the float16 cast of the maps.
    np.testing.assert_allclose(train.X, fb.X[fb.split == "train"].mean(axis=(1, 2)), rtol=2e-3, atol=1e-3)
    peak = featurebank.load(cache=small_cache["cache"], backbone="resnet50", split="train", pooling="max")
    np.testing.assert_allclose(peak.X, fb.X[fb.split == "train"].max(axis=(1, 2)), rtol=2e-3, atol=1e-3)


def test_cli_info_lists_caches(small_cache):
    result = CliRunner().invoke(main, ["info", "--cache", str(small_cache["cache"]), "--json"])
    assert result.exit_code == 0, result.output
    caches = json.loads(result.output)["caches"]
    assert len(caches) == 1
    assert caches[0]["images"] == 180 and caches[0]["weights"] == "none"
    on_disk = sum(p.stat().st_size for p in small_cache["cache"].glob("*.h5")) + sum(
        p.stat().st_size for p in small_cache["cache"].glob("*.shards/*.h5"))
    assert caches[0]["feature_shape"] == [2, 2, 2048] and caches[0]["bytes"] == on_disk


def test_different_settings_never_share_rows(tmp_path, make_images):
    data = tmp_path / "data"
    make_images(data, 1)
    base = dict(cache=tmp_path / "cache", weights="none", input_size=(64, 64))
    featurebank.extract(data, **base)
    assert featurebank.extract(data, **{**base, "dtype": "float32"}).new == 6
    assert featurebank.extract(data, **{**base, "input_size": (96, 64)}).new == 6
    assert len(find_indexes(tmp_path / "cache")) == 3
    with pytest.raises(featurebank.CacheError, match="3 caches match.*dtype"):
        featurebank.load(cache=tmp_path / "cache", backbone="resnet50")
    full = featurebank.load(cache=tmp_path / "cache", backbone="resnet50", dtype="float32")
    assert full.X.dtype == np.float32 and full.manifest["dtype"] == "float32"
    half = featurebank.load(cache=tmp_path / "cache", backbone="resnet50", dtype="float16", input_size=(64, 64))
    np.testing.assert_allclose(half.X, full.X, rtol=1e-3, atol=1e-3)  # float16 storage, float32 out


def test_weights_file_is_identified_by_its_hash(tmp_path, make_images):
    import keras

    data = tmp_path / "data"
    make_images(data, 1)
    weights = tmp_path / "resnet50_notop.weights.h5"
    keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 64, 3)).save_weights(weights)
    report = featurebank.extract(data, cache=tmp_path / "cache", weights=str(weights), input_size=(64, 64),
                                 batch_size=4, shard_size=5)
    assert report.new == 6
    fb = featurebank.load(cache=tmp_path / "cache", backbone="resnet50", weights=str(weights))
    assert fb.manifest["weights"].startswith("sha256:") and len(fb) == 6

    # Every stored row is the backbone's output for the image at that path (no mix-up across batches).
    from featurebank.backbones import get_backbone
    from featurebank.images import load_image

    function = get_backbone("resnet50").build(str(weights), (64, 64), 8)
    images = np.stack([load_image(data / path, (64, 64)) for path in fb.paths])
    expected = function(images).astype(np.float16).astype(np.float32)  # stored as float16 by default
    np.testing.assert_allclose(fb.X, expected, rtol=2e-3, atol=1e-3)


def test_predict_refuses_weights_whose_bytes_changed(tmp_path, make_images):
    import keras

    from classifiers.jobs import train_head
    from classifiers.predict import predict_images
    from featurebank.errors import ModelFileError

    data = tmp_path / "data"
    make_images(data, 5)
    weights = tmp_path / "resnet50_notop.weights.h5"
    keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 64, 3)).save_weights(weights)
    featurebank.extract(data, cache=tmp_path / "cache", weights=str(weights), input_size=(64, 64))
    fb = featurebank.load(cache=tmp_path / "cache", backbone="resnet50")
    run = train_head(tmp_path / "cache", weights=str(weights), pooling="avg", epochs=1, start_from_epoch=0,
                     runs_dir=tmp_path / "runs")
    assert len(predict_images(run["run_dir"], [data / fb.paths[0]])["predictions"]) == 1
    with open(weights, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelFileError, match="differ from the ones this model was trained with"):
        predict_images(run["run_dir"], [data / fb.paths[0]])


def test_zstd_written_on_threads_equals_uncompressed_and_plain_h5py_reads_it(small_cache, tmp_path):
    options = dict(weights="none", input_size=(64, 64), shard_size=64)
    featurebank.extract(small_cache["data"], cache=tmp_path / "zstd", compression="zstd", **options)
    zstd = featurebank.load(tmp_path / "zstd")
    plain = featurebank.load(small_cache["cache"])
    np.testing.assert_array_equal(zstd.X, plain.X)  # bit for bit
    reader = ("import glob, sys, h5py, hdf5plugin, numpy; f = h5py.File(sorted(glob.glob(sys.argv[1] + '/*.shards/*.h5'))"
              "[0]); d = f['features']; print(list(d._filters), d.chunks[0], numpy.isfinite(d[...]).all())")
    done = subprocess.run([sys.executable, "-c", reader, str(tmp_path / "zstd")], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.split() == ["['32015']", "1", "True"], done.stderr


def test_a_batch_is_compressed_in_one_pool_task_into_the_frames_row_by_row_compression_gives(monkeypatch):
    """zstd_frames hands the pool one task per batch (zstd's own threads inside it: the GIL taken once, not per row),
    and its frames are those of compressing each row alone; so are a build's without multi_compress_to_buffer."""
    import zstandard

    from featurebank import array_pool

    rng = np.random.default_rng(0)
    rows = (np.maximum(rng.standard_normal((8, 12, 1280)), 0) * (rng.random((8, 12, 1280)) < 0.1)).astype(np.float16)
    rows = rows.reshape(8, -1)
    expected = [zstandard.ZstdCompressor(level=array_pool.ZSTD_LEVEL).compress(row) for row in rows]
    pool, tasks = array_pool._array_pool(), []

    class CountingPool:
        def submit(self, *args):
            tasks.append("submit")
            return pool.submit(*args)

        def map(self, function, items):
            items = list(items)
            tasks.extend(["map"] * len(items))
            return pool.map(function, items)

    monkeypatch.setattr(array_pool, "_array_pool", CountingPool)
    assert [bytes(frame) for frame in array_pool.zstd_frames(rows)] == expected and tasks == ["submit"]

    class RowByRow:  # zstandard linked to a system libzstd: no multi_compress_to_buffer
        def __init__(self):  # a compressor each (they are not thread-safe)
            self.compress = zstandard.ZstdCompressor(level=array_pool.ZSTD_LEVEL).compress

    tasks.clear()
    monkeypatch.setattr(array_pool, "_compressor", RowByRow)
    assert [bytes(frame) for frame in array_pool.zstd_frames(rows)] == expected and tasks == ["map"] * 8


@pytest.mark.parametrize("backbone", ["efficientnet-lite0", "resnet50"])
def test_float16_cast_on_the_device_stays_within_float16_rounding(backbone):
    """The PyTorch and Keras backbones cast to the stored dtype and pool where the model runs: the
    stored float16 maps differ from the float32 forward pass by at most half a float16 step (2^-11
    relative), and the pooled vectors are the float32 forward's own (to float32 summation order)."""
    if backbone.startswith("efficientnet"):
        pytest.importorskip("efficientnet_lite_pytorch", reason="needs the offline extra")
    from featurebank.embed import Embedder

    function = get_backbone(backbone).build("none", (96, 64), 4)
    assert hasattr(function, "embed")
    images = np.random.default_rng(0).integers(0, 256, (3, 96, 64, 3), dtype=np.uint8)  # a short, padded batch
    reference = function(images)
    embedded = Embedder(function, dtype="float16")(images)
    assert embedded.maps.dtype == np.float16 and embedded.maps.shape == reference.shape
    bound = np.abs(reference) * 2.0**-11 + 2.0**-24  # half a step at float16's 11-bit precision, and subnormals
    assert np.all(np.abs(embedded.maps.astype(np.float32) - reference) <= bound)
    np.testing.assert_allclose(embedded.pooled["avg"], reference.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(embedded.pooled["max"], reference.max(axis=(1, 2)))


JAX_EMBED = """
import numpy as np
from featurebank.backbones import get_backbone
from featurebank.embed import Embedder
import keras
assert keras.backend.backend() == "jax", keras.backend.backend()
function = get_backbone("resnet50").build("none", (96, 64), 4)
images = np.random.default_rng(0).integers(0, 256, (3, 96, 64, 3), dtype=np.uint8)
reference = function(images)
embedded = Embedder(function, dtype="float16")(images)
error = np.abs(embedded.maps.astype(np.float32) - reference) - (np.abs(reference) * 2.0**-11 + 2.0**-24)
print(embedded.maps.dtype, embedded.maps.shape, float(error.max()) <= 0, reference.std() > 0)
"""


def test_keras_on_jax_casts_on_the_device_within_float16_rounding(tmp_path):
    """The GPU machines have JAX and no TensorFlow: the Keras backbones run there with KERAS_BACKEND=jax."""
    pytest.importorskip("jax", reason="needs jax (pip install -e .[test] installs it)")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "XDG_CACHE_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", JAX_EMBED], capture_output=True, text=True, env=env, timeout=300)
    assert done.stdout.split() == ["float16", "(3,", "3,", "2,", "2048)", "True", "True"], done.stderr[-2000:]

def test_keras_embed_from_another_thread_than_the_build():
    """Ray actors build the backbone in one thread and embed in another (Keras numbers unnamed ops per thread)."""
    import threading

    from featurebank.embed import Embedder

    function = get_backbone("resnet50").build("none", (64, 64), 2)
    done = {}
    worker = threading.Thread(target=lambda: done.update(result=Embedder(function, dtype="float16")(
        np.zeros((2, 64, 64, 3), np.uint8))))
    worker.start()
    worker.join(timeout=120)
    assert done["result"].maps.shape == (2, 2, 2, 2048) and done["result"].maps.dtype == np.float16
