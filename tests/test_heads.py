"""Dense heads: the estimator on arrays, and train-head / predict end to end on a real cache."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import featurebank
from featurebank.rows import aligned_empty
from classifiers import DenseHead, NotFittedError
from classifiers.jobs import train_head
from cli import main
from conftest import check_run_folder


def separable(n_per_class=40, n_classes=3, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (n_classes, dim))
    X = np.concatenate([c + rng.normal(0, 1, (n_per_class, dim)) for c in centers]).astype(np.float32)
    y = np.repeat(np.arange(n_classes), n_per_class)
    return X, y


def test_estimator_api_follows_scikit_learn():
    head = DenseHead(optimizer="adam", epochs=3)
    assert head.get_params() == {
        "optimizer": "adam", "learning_rate": None, "pooling": "flatten", "epochs": 3, "batch_size": 32,
        "patience": 5, "start_from_epoch": 10, "seed": 0, "verbose": 0}
    with pytest.raises(NotFittedError):
        head.predict(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        head.fit(np.zeros((5, 4)), np.zeros(4))
    with pytest.raises(ValueError, match="optimizer must be one of"):
        DenseHead(optimizer="lbfgs").fit(np.zeros((5, 4)), np.zeros(5))


def test_string_labels_and_pooling_inside_the_model():
    X, y = separable(dim=8)
    maps = np.repeat(np.repeat(X[:, None, None, :], 2, axis=1), 3, axis=2)  # (n, 2, 3, 8)
    names = np.array(["glass", "metal", "paper"])[y]
    head = DenseHead(optimizer="adam", pooling="avg", epochs=30, learning_rate=0.05).fit(maps, names)
    assert head.classes_.tolist() == ["glass", "metal", "paper"]
    assert head.predict_proba(maps).shape == (len(X), 3)
    assert head.score(maps, names) > 0.9
    assert [layer.name for layer in head.model_.layers][1:] == ["avg_pool", "flatten", "softmax"]


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rmsprop"])
def test_each_optimizer_learns_a_clear_signal_from_a_real_cache(small_cache, optimizer, tmp_path):
    result = train_head(small_cache["cache"], "resnet50", optimizer=optimizer, pooling="avg", runs_dir=tmp_path,
                        seed=0)
    assert result["test_accuracy"] >= 0.9, result
    run_dir = tmp_path / next(tmp_path.iterdir()).name
    metrics = check_run_folder(run_dir)
    assert metrics["test_accuracy"] == result["test_accuracy"]
    assert set(metrics["per_class"]) == set(featurebank.load(small_cache["cache"]).classes)
    assert np.array(metrics["confusion_matrix"]).sum() == metrics["test_images"]
    assert metrics["cache_key"] == featurebank.load(small_cache["cache"], split="test").key


def test_streaming_trains_exactly_like_in_memory(small_cache, tmp_path):
    common = dict(optimizer="adam", pooling="flatten", epochs=3, start_from_epoch=0, seed=3)
    in_memory = train_head(small_cache["cache"], runs_dir=tmp_path / "a", stream=False, **common)
    streamed = train_head(small_cache["cache"], runs_dir=tmp_path / "b", stream=True, **common)
    assert streamed["test_loss"] == pytest.approx(in_memory["test_loss"], rel=1e-5)
    assert streamed["confusion_matrix"] == in_memory["confusion_matrix"]


def test_cli_train_head_repeats_then_predict(small_cache, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["train-head", "--cache", str(small_cache["cache"]), "--optimizer", "rmsprop",
                                  "--pooling", "avg", "--repeats", "3", "--epochs", "12", "--runs-dir",
                                  str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert len(summary["runs"]) == 3
    assert summary["test_accuracy_std"] == pytest.approx(np.std([r["test_accuracy"] for r in summary["runs"]]))
    assert summary["test_accuracy_mean"] == pytest.approx(np.mean([r["test_accuracy"] for r in summary["runs"]]))
    run_dir = summary["runs"][0]["run_dir"]

    images = sorted((small_cache["data"] / "glass").glob("*.jpg"))[:1] + sorted((small_cache["data"] / "trash").glob("*.jpg"))[:1]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    result = runner.invoke(main, ["predict", "--model", run_dir, "--json", *map(str, images), str(broken)])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [p["class"] for p in payload["predictions"]] == ["glass", "trash"]
    assert payload["skipped"][0]["path"] == str(broken)

    result = runner.invoke(main, ["predict", "--model", summary["run_dir"], str(images[0])])
    assert result.exit_code != 0 and "holds 3 repeats" in result.output


def test_tampered_or_missing_model_is_refused(small_cache, tmp_path):
    from classifiers.predict import predict_images
    from featurebank.errors import ModelFileError

    result = train_head(small_cache["cache"], optimizer="adam", pooling="avg", epochs=2, runs_dir=tmp_path)
    run_dir = Path(result["run_dir"])
    image = next((small_cache["data"] / "glass").glob("*.jpg"))
    assert predict_images(run_dir, [image])["predictions"][0]["class"] in featurebank.load(small_cache["cache"]).classes
    with open(run_dir / "model.keras", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelFileError, match="modified after training"):
        predict_images(run_dir, [image])
    (run_dir / "model.keras").unlink()
    with pytest.raises(ModelFileError, match="missing"):
        predict_images(run_dir, [image])


def test_several_steps_per_backend_call_train_exactly_like_one(monkeypatch):
    import classifiers.heads as heads

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(200, 16)).astype(np.float32), rng.integers(0, 3, 200)
    options = dict(optimizer="adam", epochs=4, batch_size=16, seed=1)
    monkeypatch.setattr(heads, "STEPS_PER_EXECUTION", 1)
    one = DenseHead(**options).fit(X, y).predict_proba(X)
    monkeypatch.setattr(heads, "STEPS_PER_EXECUTION", 32)
    many = DenseHead(**options).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(one, many)


@pytest.mark.parametrize("copy_threads", [1, 3])
def test_lazy_reads_in_any_order_equal_the_stored_rows(small_cache, monkeypatch, copy_threads):
    """Reading a view's rows (dense spans, sparse runs, repeats, any order) gives exactly the stored maps,
    whether one thread or several copy the rows into place."""
    import h5py

    from featurebank import array_pool

    monkeypatch.setattr(array_pool, "_POOL", None)
    monkeypatch.setattr(array_pool, "_POOL_SETTINGS", (copy_threads, False))

    lazy = featurebank.load(small_cache["cache"], lazy=True)
    stored = {}
    for shard in sorted(small_cache["cache"].glob("*.shards/[!.]*.h5")):
        with h5py.File(shard, "r") as fh:
            stored.update(zip(fh["sha256"].asstr()[...], fh["features"][...].astype(np.float32)))
    expected = np.stack([stored[digest] for digest in lazy.sha256])
    np.testing.assert_array_equal(np.asarray(lazy.X), expected)  # every row
    rng = np.random.default_rng(0)
    for positions in (np.arange(0, len(lazy), 5), rng.permutation(len(lazy))[:40], np.array([7, 3, 7, 150, 3])):
        np.testing.assert_array_equal(lazy.X.read_rows(positions), expected[positions])
        np.testing.assert_array_equal(np.asarray(lazy.X.subset(positions)), expected[positions])
    lazy.X.close()
    array_pool._POOL.shutdown()


def test_graph_and_python_feeds_give_the_same_batches_each_epoch(monkeypatch):
    """Arrays in memory are gathered inside the training step, views in Python: same rows, same order, per epoch."""
    import keras

    import classifiers.batches as batches

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the graph feed is TensorFlow's")
    rng = np.random.default_rng(0)
    X, X_val = aligned_empty((50, 3)), aligned_empty((11, 3))
    X[:], X_val[:] = rng.normal(size=X.shape), rng.normal(size=X_val.shape)
    y, y_val = rng.integers(0, 4, 50), rng.integers(0, 4, 11)
    graph = batches.make_batches(X, y, batch_size=8, shuffle=True, seed=4, validation=(X_val, y_val))
    monkeypatch.setattr(batches, "GRAPH_FEED_MAX_BYTES", 0)
    monkeypatch.setattr(batches, "shares_without_copy", lambda a: False)
    python = batches.make_batches(X, y, batch_size=8, shuffle=True, seed=4, validation=(X_val, y_val))
    assert not isinstance(graph.data, keras.utils.PyDataset) and isinstance(python.data, keras.utils.PyDataset)
    features = keras.Input((3,))
    on_rows = graph.trainer(keras.Model(features, keras.layers.Identity()(features)))  # keys → the rows themselves

    def rows_of(feed_data):
        return [(np.asarray(on_rows(keys)), np.asarray(labels)) for keys, labels in feed_data]

    seen = []
    for epoch in (0, 3):
        for feed in (graph, python):
            feed.callbacks[0].on_epoch_begin(epoch)
        from_graph = rows_of(graph.data)
        from_python = [python.data[i] for i in range(len(python.data))]
        assert len(from_graph) == len(from_python) == 7
        for (xg, yg), (xp, yp) in zip(from_graph, from_python):
            np.testing.assert_array_equal(xg, xp)
            np.testing.assert_array_equal(yg, yp)
        rows = np.concatenate([xg for xg, _ in from_graph])
        assert sorted(map(tuple, rows)) == sorted(map(tuple, X))  # each row once per epoch
        seen.append(rows)
    assert not np.array_equal(seen[0], seen[1])  # a new order each epoch
    from_graph = rows_of(graph.validation)  # validation: the other table, in order
    np.testing.assert_array_equal(np.concatenate([x for x, _ in from_graph]), X_val)
    np.testing.assert_array_equal(np.concatenate([y for _, y in from_graph]), y_val)
    np.testing.assert_array_equal(np.concatenate([python.validation[i][0] for i in range(2)]), X_val)


def test_aligned_arrays_are_shared_with_tensorflow_and_others_copied():
    """64-byte-aligned float arrays reach TensorFlow without a copy; anything else is copied, never shared."""
    import keras

    import classifiers.batches as batches

    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow's tensors")
    table = aligned_empty((4, 32), np.float32)
    table[:] = 1.0
    assert table.ctypes.data % 64 == 0 and batches.shares_without_copy(table)
    shared = batches.as_tensor(table)
    table[0, 0] = 5.0
    assert float(shared[0, 0]) == 5.0  # the same memory
    shifted = table.reshape(-1)[4:].reshape(31, 4)  # 16 bytes past the boundary
    assert not batches.shares_without_copy(shifted)
    copied = batches.as_tensor(shifted)
    shifted[0, 0] = 7.0
    assert float(copied[0, 0]) == 1.0  # a copy
    assert not batches.shares_without_copy(table.astype(np.int64))
    frozen = aligned_empty((4, 32))
    frozen.flags.writeable = False
    assert not batches.shares_without_copy(frozen)


def test_loaded_splits_are_aligned_slices_of_one_table(small_cache):
    """load_splits reads every split in one pass into one aligned table; each split's rows are exactly load()'s."""
    from classifiers.data import load_splits

    data = load_splits(small_cache["cache"], pooling="flatten", stream=False)
    everything = featurebank.load(small_cache["cache"])
    start = data.splits["train"][0].ctypes.data
    for name, (X, y) in data.splits.items():
        assert X.ctypes.data % 64 == 0 and X.ctypes.data == start
        start += X.nbytes
        chosen = everything.split == name
        np.testing.assert_array_equal(X, everything.X[chosen])
        np.testing.assert_array_equal(y, everything.y[chosen])


def test_fitting_keeps_no_reference_to_the_training_arrays():
    """The head trained on shared memory lets go of it: the arrays are freed as soon as the caller drops them
    (TensorFlow would otherwise keep every training step it traced, and the rows the step captured)."""
    import weakref

    rng = np.random.default_rng(1)
    X, X_val = aligned_empty((40, 2, 2, 3)), aligned_empty((12, 2, 2, 3))
    X[:], X_val[:] = rng.normal(size=X.shape), rng.normal(size=X_val.shape)
    y, y_val = rng.integers(0, 3, 40), rng.integers(0, 3, 12)
    alive = [weakref.ref(X), weakref.ref(X_val)]
    head = DenseHead(optimizer="adam", epochs=2, start_from_epoch=0).fit(X, y, validation_data=(X_val, y_val))
    kept, expected = X_val.copy(), head.predict_proba(X_val)
    del X, X_val  # no gc.collect(): freed at once, not at the next garbage collection
    assert [ref() is None for ref in alive] == [True, True]
    np.testing.assert_array_equal(head.predict_proba(kept), expected)  # the trained head is untouched
