"""--decoder nvjpeg: JPEGs decoded in batches by TorchCodec or torchvision (nvJPEG on a GPU), everything else by Pillow.

No GPU here: these tests run the same code with each library decoding on the CPU
(``gpu_decoding.DEVICE = "cpu"``), where both use libjpeg-turbo and give Pillow's pixels exactly,
so any pixel, order or failure that differs from the threads' is the code's fault. nvJPEG's own
pixels (a few levels from Pillow's) are measured by bench/gpu_extract.py on a GPU.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageFilter

import featurebank
from featurebank import gpu_decoding
from featurebank.cache import cache_key
from featurebank.decoding import decoded_batches, decoder_for_cache
from featurebank.errors import FeaturebankError, InvalidArgument
from featurebank.images import ImageDecodeError

from conftest import FEATUREBANK, skip_unless_installed

try:
    gpu_decoding.import_jpeg_library()
except FeaturebankError as error:
    pytest.skip(str(error), allow_module_level=True)

SIZE = (48, 64)


def save(path, image: Image.Image, **options) -> str:
    image.save(path, "JPEG" if path.suffix == ".jpg" else "PNG", **options)
    return path.name


@pytest.fixture
def varied_files(tmp_path):
    """Every kind of file the routing tells apart; returns (files in order, {name: expected route to nvJPEG})."""
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, SIZE + (3,), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(2))
    rotated = Image.Exif()
    rotated[0x0112] = 6
    upright = Image.Exif()
    upright[0x0112] = 1
    routes = {
        save(tmp_path / "plain.jpg", photo): True,
        save(tmp_path / "grey.jpg", photo.convert("L")): True,
        save(tmp_path / "progressive.jpg", photo, progressive=True): True,
        save(tmp_path / "upright.jpg", photo, exif=upright.tobytes()): True,
        save(tmp_path / "larger.jpg", photo.resize((70, 52))): True,  # resized on the device
        save(tmp_path / "rotated.jpg", photo, exif=rotated.tobytes()): False,  # Pillow applies the rotation
        save(tmp_path / "cmyk.jpg", photo.convert("CMYK")): False,
        save(tmp_path / "stored_rgb.jpg", photo, keep_rgb=True): False,  # components R, G, B: not YCbCr
        save(tmp_path / "drawing.png", photo): False,
    }
    whole = (tmp_path / "plain.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2])  # a JPEG header, then too little data
    (tmp_path / "notes.jpg").write_text("not an image")
    routes.update({"cut.jpg": True, "notes.jpg": False})
    names = ["plain.jpg", "notes.jpg", "grey.jpg", "rotated.jpg", "cut.jpg", "progressive.jpg", "cmyk.jpg",
             "larger.jpg", "stored_rgb.jpg", "drawing.png", "upright.jpg", "missing.jpg"]
    return [tmp_path / name for name in names], routes


def decode_on_cpu_with(library: str, monkeypatch) -> None:
    try:
        gpu_decoding.import_jpeg_library((library,))
    except FeaturebankError as error:
        pytest.skip(str(error))
    monkeypatch.setattr(gpu_decoding, "JPEG_LIBRARIES", (library,))
    monkeypatch.setattr(gpu_decoding, "DEVICE", "cpu")


@pytest.fixture(params=gpu_decoding.JPEG_LIBRARIES)
def on_cpu(request, monkeypatch) -> str:
    """The nvjpeg path decoding on the CPU with each JPEG library in turn."""
    decode_on_cpu_with(request.param, monkeypatch)
    return request.param


@pytest.fixture
def on_cpu_with_the_first_library(monkeypatch) -> str:
    library = gpu_decoding.import_jpeg_library().name
    decode_on_cpu_with(library, monkeypatch)
    return library


def decode_all(files, decoder, batch_size=5):
    failures: list = []
    batches = [(list(items), pixels.copy()) for items, pixels in decoded_batches(
        files, lambda p: p, SIZE, batch_size=batch_size, workers=2, failures=failures, decoder=decoder)]
    return batches, failures


def test_routing_sends_only_upright_8_bit_ycbcr_or_grey_jpegs_to_nvjpeg(varied_files):
    files, routes = varied_files
    for path in files:
        if path.exists():
            assert gpu_decoding.nvjpeg_can_decode(path.read_bytes()) == routes[path.name], path.name


def test_nvjpeg_decoder_gives_the_threads_pixels_order_and_failures(varied_files, on_cpu):
    files, _ = varied_files
    threads, thread_failures = decode_all(files, "threads")
    nvjpeg, nvjpeg_failures = decode_all(files, "nvjpeg")
    good = [p for p in files if p.name not in ("notes.jpg", "cut.jpg", "missing.jpg")]
    assert [item for items, _ in nvjpeg for item in items] == good
    assert [len(items) for items, _ in nvjpeg] == [3, 5, 1]  # a batch is shorter by the files that failed in it
    assert [(p.name, reason) for p, reason in nvjpeg_failures] == [(p.name, reason) for p, reason in thread_failures]
    assert [p.name for p, _ in nvjpeg_failures] == ["notes.jpg", "cut.jpg", "missing.jpg"]
    ours = dict(zip(good, np.concatenate([pixels for _, pixels in nvjpeg])))
    theirs = dict(zip(good, np.concatenate([pixels for _, pixels in threads])))
    for path in good:
        assert ours[path].shape == SIZE + (3,) and ours[path].dtype == np.uint8
        difference = np.abs(ours[path].astype(int) - theirs[path]).max()
        # Resized on the device by torch's antialiased bilinear filter: within one level of Pillow's.
        assert difference <= (1 if path.name == "larger.jpg" else 0), (path.name, difference)


def test_batches_with_no_jpeg_for_nvjpeg_come_out_as_the_threads_do(varied_files, on_cpu):
    """One file a batch: batches of only Pillow's files (a PNG, a rotated JPEG) or only failures."""
    files, _ = varied_files
    threads, thread_failures = decode_all(files, "threads", batch_size=1)
    nvjpeg, nvjpeg_failures = decode_all(files, "nvjpeg", batch_size=1)
    assert [items for items, _ in nvjpeg] == [items for items, _ in threads]
    assert [(p.name, reason) for p, reason in nvjpeg_failures] == [(p.name, reason) for p, reason in thread_failures]
    for (items, ours), (_, theirs) in zip(nvjpeg, threads):
        assert np.abs(ours.astype(int) - theirs).max() <= (1 if items[0].name == "larger.jpg" else 0), items


def test_nvjpeg_decoder_without_failures_list_raises_on_the_first_bad_file(varied_files, on_cpu):
    files, _ = varied_files
    with pytest.raises(ImageDecodeError, match="notes.jpg: cannot decode image: cannot identify image file"):
        list(decoded_batches(files, lambda p: p, SIZE, batch_size=5, workers=2, decoder="nvjpeg"))


def test_nvjpeg_decoder_needs_a_cuda_gpu_and_says_so():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(FeaturebankError, match="CUDA GPU.*--decoder threads"):
        gpu_decoding.NvjpegDecoding(1, SIZE, 4)


def test_nvjpeg_cache_is_a_key_of_its_own_with_the_same_features_here(tmp_path, make_images, on_cpu):
    data = tmp_path / "data"
    make_images(data, 2)  # 2 per class
    (data / "glass" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    settings = dict(backbone="rgb-stats", cache=tmp_path / "cache", input_size=(64, 48), batch_size=4)
    pillow = featurebank.extract(data, **settings)
    nvjpeg = featurebank.extract(data, **settings, decoder="nvjpeg")
    assert nvjpeg.key != pillow.key and nvjpeg.new == 12 and nvjpeg.sizes["decoder"] == "nvjpeg"
    assert [s.path for s in nvjpeg.skipped] == [s.path for s in pillow.skipped]
    assert [s.reason for s in nvjpeg.skipped] == [s.reason for s in pillow.skipped]
    with pytest.raises(FeaturebankError, match="decoder=pillow.*decoder=nvjpeg|decoder=nvjpeg.*decoder=pillow"):
        featurebank.load(tmp_path / "cache", "rgb-stats")
    ours = featurebank.load(tmp_path / "cache", "rgb-stats", decoder="nvjpeg")
    theirs = featurebank.load(tmp_path / "cache", "rgb-stats", decoder="pillow")
    assert ours.manifest["decoder"] == "nvjpeg" and on_cpu in ours.manifest["versions"]
    assert nvjpeg.sizes["jpeg_library"] == on_cpu
    assert "decoder" not in theirs.manifest and cache_key(theirs.manifest) == pillow.key
    order = np.argsort(ours.sha256)
    np.testing.assert_array_equal(ours.X[order], theirs.X[np.argsort(theirs.sha256)])
    assert decoder_for_cache(ours.manifest)[0] == "threads" and "nvJPEG" in decoder_for_cache(ours.manifest)[1]
    assert decoder_for_cache(theirs.manifest) == ("threads", None)


def test_cli_nvjpeg_without_a_gpu_is_one_line_and_ray_refuses_it(tmp_path, make_images):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    make_images(tmp_path / "data" / "a", 2)
    run = subprocess.run(FEATUREBANK + ["extract", "--data", str(tmp_path / "data"), "--backbone", "rgb-stats",
                                        "--cache", str(tmp_path / "cache"), "--decoder", "nvjpeg", "--json"],
                         capture_output=True, text=True)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "--decoder nvjpeg decodes on a CUDA GPU and PyTorch sees none" in run.stderr
    with pytest.raises(InvalidArgument, match="local engine only"):
        featurebank.extract(tmp_path / "data", backbone="rgb-stats", cache=tmp_path / "cache", decoder="nvjpeg",
                            engine="ray")


def test_torchvision_loads_after_tensorflow_without_triton_crashing_the_process():
    """With TensorFlow loaded, loading Triton (which torchvision's import pulls in) was a segmentation fault."""
    skip_unless_installed("triton", "the crash needs Triton installed")
    skip_unless_installed("torchvision")
    code = ("import tensorflow, sys\n"
            "from featurebank.gpu_decoding import import_jpeg_library\n"
            "library = import_jpeg_library(('torchvision',))\n"
            "print('decoder', library.name, callable(library.decode), sys.modules['triton'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("decoder torchvision True None")


def test_torchcodec_first_then_torchvision_then_an_install_hint_with_the_reasons(monkeypatch):
    skip_unless_installed("torchvision")
    skip_unless_installed("torchcodec")
    assert gpu_decoding.import_jpeg_library().name == "torchcodec"
    for module in ("torchcodec", "torchcodec.decoders"):  # as where TorchCodec is missing
        monkeypatch.setitem(sys.modules, module, None)
    assert gpu_decoding.import_jpeg_library().name == "torchvision"
    for module in ("torchvision", "torchvision.io"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(FeaturebankError, match=r"pip install torchcodec\) \(torchcodec is not installed; "
                                               r"torchvision is not installed\)$"):
        gpu_decoding.import_jpeg_library()
    assert not gpu_decoding.nvjpeg_usable()


def test_predict_from_an_nvjpeg_cache_without_a_gpu_decodes_with_pillow_and_warns(tmp_path, make_images,
                                                                                  on_cpu_with_the_first_library):
    import torch
    from click.testing import CliRunner

    from cli import main

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    data = tmp_path / "data"
    make_images(data, 6)
    report = featurebank.extract(data, backbone="rgb-stats", cache=tmp_path / "cache", input_size=(64, 48),
                                 decoder="nvjpeg")
    runner = CliRunner()
    trained = runner.invoke(main, ["train-svm", "--cache", str(tmp_path / "cache"), "--features", "rgb-stats",
                                   "--key", report.key[:12], "--runs-dir", str(tmp_path / "runs"), "--json"])
    assert trained.exit_code == 0, trained.output
    photos = sorted((data / "glass").glob("*.jpg"))[:2]
    predicted = runner.invoke(main, ["predict", "--model", json.loads(trained.stdout)["run_dir"], "--json",
                                     *map(str, photos)])
    assert predicted.exit_code == 0, predicted.output
    assert len(json.loads(predicted.stdout)["predictions"]) == 2
    assert "warning: this cache's JPEGs were decoded by nvJPEG on a GPU, and here Pillow decodes them" in predicted.stderr


def test_a_torchcodec_whose_library_does_not_load_gives_way_to_torchvision():
    """As on a machine whose CUDA runtime is not the one TorchCodec's wheel links (libcudart.so.13)."""
    skip_unless_installed("torchvision")
    skip_unless_installed("torchcodec")
    code = ("import torch\n"
            "load_library = torch.ops.load_library\n"
            "def refuse(path):\n"
            "    if 'torchcodec' not in str(path):\n"
            "        return load_library(path)\n"
            "    raise OSError(f'{path}: libcudart.so.13: cannot open shared object file')\n"
            "torch.ops.load_library = refuse\n"
            "from featurebank.gpu_decoding import import_jpeg_library\n"
            "print(import_jpeg_library().name)\n"
            "try:\n"
            "    import_jpeg_library(('torchcodec',))\n"
            "except Exception as error:\n"
            "    print(error)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    chosen, hint = done.stdout.strip().splitlines()
    assert chosen == "torchvision"
    assert hint.startswith("--decoder nvjpeg needs PyTorch and TorchCodec") and "torchcodec: " in hint
    assert hint.endswith("libcudart.so.13: cannot open shared object file)")


def test_batches_kept_on_the_device_hold_the_host_batches_pixels(varied_files, on_cpu):
    """keep_on_device (extraction's way with a backbone on the GPU): tensors, the same pixels, files and failures."""
    import torch

    files, _ = varied_files
    host, host_failures = decode_all(files, "nvjpeg")
    failures: list = []
    kept = list(decoded_batches(files, lambda p: p, SIZE, batch_size=5, workers=2, failures=failures,
                                decoder="nvjpeg", keep_on_device=True))
    assert all(isinstance(pixels, torch.Tensor) and pixels.dtype == torch.uint8 for _, pixels in kept)
    assert [list(items) for items, _ in kept] == [items for items, _ in host] and failures == host_failures
    for (_, ours), (_, theirs) in zip(kept, host):
        np.testing.assert_array_equal(ours.numpy(), theirs)


def test_an_nvjpeg_extraction_hands_its_batches_to_a_torch_backbone_on_the_device(tmp_path, make_images, on_cpu,
                                                                               monkeypatch):
    """Lite0 (PyTorch) takes the decoder's tensors as they are, rgb-stats (numpy) gets host copies: both caches
    equal the ones Pillow's threads make (on the CPU nvJPEG's libraries give Pillow's pixels exactly)."""
    pytest.importorskip("efficientnet_lite_pytorch", reason="needs the offline extra")
    import torch

    from featurebank.torch_backbones import TorchFeatureFunction

    submitted = []
    submit = TorchFeatureFunction.submit
    monkeypatch.setattr(TorchFeatureFunction, "submit",
                        lambda self, images, *a, **k: submitted.append(type(images)) or submit(self, images, *a, **k))
    make_images(tmp_path / "data", 3, size=(64, 64), classes=["glass", "paper"])
    for backbone in ("efficientnet-lite0", "rgb-stats"):
        settings = dict(backbone=backbone, cache=tmp_path / backbone, weights="none", input_size=(64, 64),
                        batch_size=4)
        featurebank.extract(tmp_path / "data", **settings)
        featurebank.extract(tmp_path / "data", **settings, decoder="nvjpeg")
        ours = featurebank.load(tmp_path / backbone, backbone, decoder="nvjpeg")
        theirs = featurebank.load(tmp_path / backbone, backbone, decoder="pillow")
        np.testing.assert_array_equal(ours.X[np.argsort(ours.sha256)], theirs.X[np.argsort(theirs.sha256)])
    assert submitted == [np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]  # threads' batches, then nvJPEG's
