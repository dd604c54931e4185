"""The study's CNN variants, the SVM baselines, and the Table 1 grid, on a real (small) cache."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import featurebank
from classifiers.cnn import VARIANTS, build_cnn, expected_parameter_count
from classifiers.jobs import load_checked_model
from cli import main
from conftest import check_run_folder
from featurebank.errors import ModelFileError

LAYERS = {
    "funnel-out": ["conv1", "pool1", "conv2", "pool2", "conv3", "pool3"],
    "funnel-in": ["conv1", "pool1", "conv2", "pool2", "conv3", "pool3"],
    "batchnorm": ["conv1", "pool1", "batchnorm", "conv2", "pool2", "conv3", "pool3"],
    "l2": ["conv1", "pool1", "dense_l2", "conv2", "pool2", "conv3", "pool3"],
    "l1": ["conv1", "pool1", "dense_l1", "conv2", "pool2", "conv3", "pool3"],
    "l1l2": ["conv1", "pool1", "dense_l1l2", "conv2", "pool2", "conv3", "pool3"],
    "dropout": ["conv1", "pool1", "dropout1", "conv2", "pool2", "dropout2", "conv3", "pool3"],
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_cnn_layers_and_parameter_counts_match_the_study(variant):
    model = build_cnn(variant, (512, 384, 3), 6)
    names = [layer.name for layer in model.layers]
    assert names == ["images", "rescaling", *LAYERS[variant], "flatten", "softmax"]
    assert model.count_params() == expected_parameter_count(variant, (512, 384, 3), 6)
    filters = [model.get_layer(f"conv{i}").filters for i in (1, 2, 3)]
    assert filters == ([128, 64, 32] if variant == "funnel-in" else [32, 64, 128])
    assert model.get_layer("softmax").units == 6


def test_funnel_out_parameter_count_by_hand():
    # conv 896 + 18,496 + 73,856; 62x46x128 = 365,056 flattened → (365,056 + 1) x 6 = 2,190,342
    assert build_cnn("funnel-out", (512, 384, 3), 6).count_params() == 896 + 18_496 + 73_856 + 2_190_342


def test_regularisers_and_dropout_rates():
    import keras

    l1l2 = build_cnn("l1l2", (64, 48, 3), 6).get_layer("dense_l1l2")
    assert isinstance(l1l2.kernel_regularizer, keras.regularizers.L1L2) and l1l2.units == 64
    assert l1l2.kernel_regularizer.l1 == pytest.approx(0.01) and l1l2.kernel_regularizer.l2 == pytest.approx(0.01)
    assert build_cnn("dropout", (64, 48, 3), 6).get_layer("dropout2").rate == 0.4
    augmented = [layer.name for layer in build_cnn("funnel-out", (64, 48, 3), 6, augment=True).layers]
    assert augmented[1:6] == ["random_flip", "random_crop_shift", "random_rotation", "random_zoom",
                              "random_brightness"]


def test_cosine_schedule_decays_the_learning_rate_to_zero_over_the_run():
    from classifiers.heads import make_optimizer

    constant = make_optimizer("adam", None)
    cosine = make_optimizer("adam", None, schedule="cosine", total_steps=100)
    assert float(cosine.learning_rate) == pytest.approx(float(constant.learning_rate))  # Keras' default to start
    cosine.iterations.assign(50)
    assert float(cosine.learning_rate) == pytest.approx(float(constant.learning_rate) / 2, rel=1e-4)
    cosine.iterations.assign(100)
    assert float(cosine.learning_rate) == pytest.approx(0.0, abs=1e-9)


def test_cli_train_cnn(small_cache, tmp_path):
    result = CliRunner().invoke(main, [
        "train-cnn", "--cache", str(small_cache["cache"]), "--variant", "l1l2", "--optimizer", "adam",
        "--image-size", "64x48", "--epochs", "2", "--augment", "--lr-schedule", "cosine", "--runs-dir", str(tmp_path),
        "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    run_dir = Path(payload["run_dir"])
    metrics = check_run_folder(run_dir)
    assert metrics["epochs_run"] == 2 and metrics["test_accuracy"] == payload["test_accuracy"]
    recorded = json.loads((run_dir / "run.json").read_text())["cnn"]
    assert (recorded["variant"], recorded["augment"], recorded["lr_schedule"]) == ("l1l2", True, "cosine")
    check_predict(run_dir, small_cache, "cnn")


def check_predict(run_dir, small_cache, kind):
    """`featurebank predict` answers for this run with the dense head's JSON shape: a class per image, bad files skipped."""
    images = sorted((small_cache["data"] / "glass").glob("*.jpg"))[:2] + [small_cache["data"] / "missing.jpg"]
    result = CliRunner().invoke(main, ["predict", "--model", str(run_dir), "--json", *map(str, images)])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert set(payload) == {"run_dir", "kind", "predictions", "skipped"} and payload["kind"] == kind
    assert [p["path"] for p in payload["predictions"]] == [str(i) for i in images[:2]]
    for prediction in payload["predictions"]:
        assert set(prediction) == {"path", "class", "probability", "probabilities"}
        assert prediction["class"] in featurebank.load(small_cache["cache"]).classes
        assert abs(sum(prediction["probabilities"].values()) - 1) < 1e-4
    assert payload["skipped"] == [{"path": str(images[2]), "reason": "no such file"}]


@pytest.mark.parametrize("features", ["resnet50", "classic"])
def test_cli_train_svm_and_hash_checked_loading(small_cache, tmp_path, features):
    result = CliRunner().invoke(main, ["train-svm", "--features", features, "--cache", str(small_cache["cache"]),
                                       "--runs-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    run_dir = Path(payload["run_dir"])
    metrics = check_run_folder(run_dir)
    assert metrics["test_accuracy"] == payload["test_accuracy"]
    model = load_checked_model(run_dir)
    assert model.classes_.tolist() == list(range(6))
    check_predict(run_dir, small_cache, "svm")
    with open(run_dir / "model.joblib", "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(ModelFileError, match="modified after training"):
        load_checked_model(run_dir)


def test_svm_on_resnet_features_learns_the_signal(small_cache, tmp_path):
    from classifiers.jobs import train_svm

    assert train_svm(small_cache["cache"], features="resnet50", runs_dir=tmp_path)["test_accuracy"] >= 0.9


def test_sift_descriptors_are_computed_on_the_array_pool_in_order(monkeypatch):
    """The SIFT baseline keeps no pool of its own: its descriptors come from featurebank's array pool, in order."""
    import threading

    import numpy as np

    from classifiers import svm
    from classifiers.svm import BagOfVisualWordsSVM, sift_descriptors
    from conftest import class_image

    images = [np.asarray(class_image(label, 0, size=(96, 128))) for label in range(6)]
    threads, original = [], svm.sift_descriptors
    monkeypatch.setattr(svm, "sift_descriptors",
                        lambda image, **k: threads.append(threading.current_thread().name) or original(image, **k))
    described = BagOfVisualWordsSVM(max_keypoints=50).describe(images)
    assert len(threads) == 6 and all(name.startswith("featurebank-array") for name in threads)
    for image, descriptors in zip(images, described):
        np.testing.assert_array_equal(descriptors, sift_descriptors(image, max_keypoints=50, root=True))


@pytest.mark.slow
def test_experiments_quick_grid_writes_all_rows_and_resumes(small_cache, tmp_path):
    out = tmp_path / "grid"
    args = ["experiments", "--grid", "seed-table1", "--cache", str(small_cache["cache"]), "--quick", "--repeats", "1",
            "--out", str(out), "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    table = (out / "results.md").read_text()
    body = [line for line in table.splitlines() if line.startswith("| ") and "model type" not in line]
    assert len(body) == 12
    for figure in ("23.7%", "33.3%", "36.0%", "25.4%", "17.5%", "35.1%", "29.8%", "22.8%", "| 69.3% |", "| 66.7% |",
                   "| 71.9% |", "| 32.71 |", "swaps the SGD and Adam"):
        assert figure in table
    assert "not run" not in table
    rows_before = (out / "results.csv").read_text()
    again = CliRunner().invoke(main, args)  # resumes: every row is kept, nothing retrained
    assert again.exit_code == 0 and (out / "results.csv").read_text() == rows_before
