"""Training jobs: a cache in, one run folder per repeat out. The CLI's train commands call these."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from classifiers.data import load_split_images, load_splits
from classifiers.heads import DenseHead
from classifiers.runs import (
    finish_run,
    new_run_dir,
    summarize_repeats,
    write_json,
)
from featurebank.decoding import decode_many
from featurebank.scan import file_sha256


def run_repeats(runs_dir, label: str, repeats: int, seed: int, train_one: Callable[[int, Path], dict]) -> dict:
    """Call ``train_one(seed, folder)`` per repeat; one run → its folder, several → seed-N/ folders + summary.json.

    Returns one run's metrics (with ``run_dir``), or mean ± std over the repeats with ``runs``.
    """
    parent = new_run_dir(runs_dir, label)
    if repeats == 1:
        return {**train_one(seed, parent), "seed": seed, "run_dir": str(parent)}
    results = []
    for run_seed in range(seed, seed + repeats):
        folder = parent / f"seed-{run_seed}"
        folder.mkdir()
        results.append({"seed": run_seed, "run_dir": str(folder), **train_one(run_seed, folder)})
    summary = {**summarize_repeats(results), "run_dir": str(parent)}
    write_json(parent / "summary.json", summary)
    return summary


def _keras_params(optimizer, learning_rate, epochs, batch_size, patience, start_from_epoch) -> dict:
    return {"optimizer": optimizer, "learning_rate": learning_rate, "epochs": epochs, "batch_size": batch_size,
            "patience": patience, "start_from_epoch": start_from_epoch}


def train_head(cache="cache", backbone: str = "resnet50", *, optimizer: str = "rmsprop", learning_rate=None,
               pooling: str = "flatten", epochs: int = 40, batch_size: int = 32, patience: int = 5,
               start_from_epoch: int = 10, seed: int = 0, repeats: int = 1, balanced: int | None = None,
               weights: str | None = None, dtype: str | None = None, key: str | None = None,
               runs_dir="runs", name: str | None = None, stream: bool | None = None, exclude=None,
               verbose: int = 0) -> dict:
    """Train the dense head on a cache's train split, early-stop on val, evaluate on test; write run folders."""
    data = load_splits(cache, backbone, pooling=pooling, balanced=balanced, weights=weights, dtype=dtype, key=key,
                       stream=stream, exclude=exclude)
    (X_train, y_train), (X_val, y_val), (X_test, y_test) = (data.splits[s] for s in ("train", "val", "test"))
    label = name or f"{backbone}-{pooling}-{optimizer}"
    params = _keras_params(optimizer, learning_rate, epochs, batch_size, patience, start_from_epoch)

    def train_one(run_seed: int, folder: Path) -> dict:
        head = DenseHead(pooling=pooling, seed=run_seed, verbose=verbose, **params)
        head.fit(X_train, y_train, validation_data=(X_val, y_val), classes=list(range(len(data.classes))))
        head.model_.save(folder / "model.keras")
        config = {
            "kind": "dense_head", "model_file": "model.keras", "model_sha256": file_sha256(folder / "model.keras"),
            "backbone": data.manifest["backbone"], "cache_key": data.key, "cache_file": data.cache_file,
            "manifest": data.manifest, "weights_source": data.attrs.get("weights_source"),
            "feature_pooling": data.feature_pooling, "head": {**params, "pooling": pooling, "seed": run_seed},
            "balanced": balanced, "streamed": data.streamed,
            "split_sizes": {k: int(len(v[1])) for k, v in data.splits.items()},
        }
        return finish_run(folder, estimator=head, X_test=X_test, y_test=y_test, classes=data.classes,
                          config=config, title=f"{label} (seed {run_seed})")

    return run_repeats(runs_dir, label, repeats, seed, train_one)


def _decode_splits(images, size) -> tuple[dict, list[dict]]:
    """Decode every split's images; files that fail are reported and left out (same rules as extract)."""
    decoded, skipped = {}, []
    for split, (paths, labels) in images.splits.items():
        pixels, kept, failures = decode_many(paths, size)
        decoded[split] = (pixels, labels[kept])
        skipped += [{"path": p, "reason": r} for p, r in failures]
    return decoded, skipped


def train_cnn(cache="cache", backbone: str = "resnet50", *, variant: str = "funnel-out", optimizer: str = "sgd",
              learning_rate=None, image_size=(512, 384), augment: bool = False, lr_schedule: str = "constant",
              epochs: int = 40,
              batch_size: int = 32, patience: int = 5, start_from_epoch: int = 10, seed: int = 0, repeats: int = 1,
              balanced: int | None = None, data=None, weights=None, dtype=None, key=None, runs_dir="runs",
              name: str | None = None, exclude=None, verbose: int = 0) -> dict:
    """Train one of the study's CNNs on the images of a cache's splits (so CNNs and heads see the same images)."""
    from classifiers.cnn import CNNClassifier

    images = load_split_images(cache, backbone, data=data, balanced=balanced, weights=weights, dtype=dtype, key=key,
                               exclude=exclude)
    decoded, skipped = _decode_splits(images, tuple(image_size))
    (X_train, y_train), (X_val, y_val), (X_test, y_test) = (decoded[s] for s in ("train", "val", "test"))
    label = name or f"cnn-{variant}-{optimizer}"
    params = _keras_params(optimizer, learning_rate, epochs, batch_size, patience, start_from_epoch)

    def train_one(run_seed: int, folder: Path) -> dict:
        model = CNNClassifier(variant=variant, image_size=tuple(image_size), augment=augment, lr_schedule=lr_schedule,
                              seed=run_seed, verbose=verbose, **params)
        model.fit(X_train, y_train, validation_data=(X_val, y_val), classes=list(range(len(images.classes))))
        model.model_.save(folder / "model.keras")
        config = {
            "kind": "cnn", "model_file": "model.keras", "model_sha256": file_sha256(folder / "model.keras"),
            "cache_key": images.key, "cache_file": images.cache_file, "data_root": images.data_root,
            "cnn": {**params, "variant": variant, "image_size": list(image_size), "augment": augment,
                    "lr_schedule": lr_schedule, "seed": run_seed, "parameters": int(model.model_.count_params())},
            "balanced": balanced, "skipped": skipped,
            "split_sizes": {k: int(len(v[1])) for k, v in decoded.items()},
        }
        return finish_run(folder, estimator=model, X_test=X_test, y_test=y_test, classes=images.classes,
                          config=config, title=f"{label} (seed {run_seed})")

    return {**run_repeats(runs_dir, label, repeats, seed, train_one), "skipped": skipped}


def train_svm(cache="cache", *, features: str = "resnet50", pooling: str = "avg", image_size=(512, 384),
              vocabulary_size: int = 200, seed: int = 0, repeats: int = 1, balanced: int | None = None, data=None,
              backbone_for_splits: str = "resnet50", weights=None, dtype=None, key=None, runs_dir="runs",
              name: str | None = None, exclude=None) -> dict:
    """SVC on pooled cached features (``features`` = a backbone name) or on SIFT bags of words ('classic')."""
    import joblib

    from classifiers.svm import BagOfVisualWordsSVM, FeatureSVM

    skipped: list[dict] = []
    provenance: dict = {}
    if features == "classic":
        images = load_split_images(cache, backbone_for_splits, data=data, balanced=balanced, weights=weights,
                                   dtype=dtype, key=key, exclude=exclude)
        splits, skipped = _decode_splits(images, tuple(image_size))
        classes, cache_key, cache_file = images.classes, images.key, images.cache_file
        description = {"features": "classic", "image_size": list(image_size), "vocabulary_size": vocabulary_size}
    else:
        loaded = load_splits(cache, features, pooling=pooling, balanced=balanced, weights=weights, dtype=dtype,
                             key=key, stream=False, exclude=exclude)
        splits = {k: (np.asarray(X), y) for k, (X, y) in loaded.splits.items()}
        classes, cache_key, cache_file = loaded.classes, loaded.key, loaded.cache_file
        description = {"features": features, "pooling": pooling}
        provenance = {"manifest": loaded.manifest, "weights_source": loaded.attrs.get("weights_source")}
    label = name or f"svm-{features}"
    X_train = splits["train"][0]
    y_train = splits["train"][1]
    X_test, y_test = splits["test"]

    def train_one(run_seed: int, folder: Path) -> dict:
        if features == "classic":
            model = BagOfVisualWordsSVM(vocabulary_size=vocabulary_size, seed=run_seed)
        else:
            model = FeatureSVM(seed=run_seed)
        # The SVM chooses C and gamma by cross-validation, so train and val both serve as training data.
        X_fit = np.concatenate([X_train, splits["val"][0]])
        y_fit = np.concatenate([y_train, splits["val"][1]])
        model.fit(X_fit, y_fit, classes=list(range(len(classes))))
        joblib.dump(model, folder / "model.joblib")
        digest = file_sha256(folder / "model.joblib")
        config = {"kind": "svm", "model_file": "model.joblib", "model_sha256": digest, "cache_key": cache_key,
                  "cache_file": cache_file, "svm": {**description, "seed": run_seed, **model.best_params_},
                  "cv_accuracy": model.cv_accuracy_, "balanced": balanced, "skipped": skipped,
                  "split_sizes": {k: int(len(v[1])) for k, v in splits.items()}, **provenance}
        metrics = finish_run(folder, estimator=model, X_test=X_test, y_test=y_test, classes=classes, config=config,
                             title=f"{label} (seed {run_seed})")
        return {**metrics, "best_params": model.best_params_, "cv_accuracy": model.cv_accuracy_}

    return {**run_repeats(runs_dir, label, repeats, seed, train_one), "skipped": skipped}


def load_checked_model(run_dir) -> object:
    """A run's scikit-learn model, unpickled only after its sha256 matches the one recorded at training."""
    import joblib

    from classifiers.runs import read_run, verify_file

    folder, config = read_run(run_dir)
    path = folder / config.get("model_file", "model.joblib")
    verify_file(path, config.get("model_sha256"))
    return joblib.load(path)
