"""Predicting new photos with any trained run: dense heads, CNNs, feature SVMs and the SIFT bag-of-words SVM.

Feature models see exactly what the cache would hold for the photo (featurebank.embed: the cache's
backbone, weights, preprocessing, augmentation and stored dtype); CNNs and the SIFT SVM see the
pixels decoded as in training. Every model file is hash-checked before it is loaded, and every
kind answers with the same JSON shape.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from classifiers.runs import read_run, verify_file
from featurebank.rows import VECTOR_POOLINGS, stored_vectors
from featurebank.embed import Embedder, embed_files
from featurebank.errors import ModelFileError
from featurebank.decoding import decoded_batches, decoder_for_cache
from featurebank.scan import Skipped, file_sha256, inspect_file

RUN_KINDS = ("dense_head", "cnn", "svm")


def resolve_backbone_weights(config: dict, override: str | None) -> str:
    """The weights argument that rebuilds exactly the backbone the run's cache was made with."""
    identity = config["manifest"]["weights"]
    if not identity.startswith("sha256:"):
        return identity  # 'imagenet' (hash-checked by Keras or pinned) or 'none' (seeded, reproducible)
    path = Path(override or config.get("weights_source") or "")
    digest = identity.split(":", 1)[1]
    if not path.is_file():
        raise ModelFileError(
            f"{path}: the backbone weights this model was trained with (sha256 {digest[:16]}…) are not there; "
            "pass the same weights file with --weights PATH")
    if file_sha256(path) != digest:
        raise ModelFileError(
            f"{path}: these weights differ from the ones this model was trained with (sha256 {digest[:16]}…); "
            "pass the original file with --weights PATH")
    return str(path)


def load_keras_model(run_dir: Path, config: dict):
    """The run's Keras model, hash-checked, then loaded in Keras' safe mode (no arbitrary code from the file)."""
    from featurebank.quiet import import_keras

    keras = import_keras()

    model_path = run_dir / config.get("model_file", "model.keras")
    verify_file(model_path, config.get("model_sha256"))
    try:
        return keras.saving.load_model(model_path, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises many types for damaged archives
        raise ModelFileError(f"{model_path}: cannot load the model ({type(exc).__name__}: {exc})") from None


def _usable(images) -> tuple[list[Path], list[dict]]:
    """The files that are images (same rules as extract), and the others with their reasons."""
    paths, skipped = [], []
    for image in images:
        path = Path(image)
        found = inspect_file(path) if path.exists() or path.is_symlink() else Skipped(str(path), "no such file")
        if isinstance(found, Skipped):
            skipped.append(found.as_dict())
        else:
            paths.append(path)
    return paths, skipped


def _model_and_batches(run_dir: Path, config: dict, paths: list[Path], *, weights, batch_size: int, failures: list,
                       warn: Callable[[str], None]):
    """(predict_proba function, iterator of (paths, model inputs)) for the run's kind."""
    kind = config.get("kind")
    if kind not in RUN_KINDS:
        raise ModelFileError(f"{run_dir}: unknown run kind {kind!r}; expected one of {', '.join(RUN_KINDS)}")
    if kind == "cnn":
        model = load_keras_model(run_dir, config)
        size = tuple(config["cnn"]["image_size"])
        return (lambda X: np.asarray(model.predict_on_batch(X)),
                decoded_batches(paths, lambda p: p, size, batch_size=batch_size, failures=failures))
    if kind == "svm" and config["svm"]["features"] == "classic":
        from classifiers.jobs import load_checked_model

        model = load_checked_model(run_dir)
        size = tuple(config["svm"]["image_size"])
        return model.predict_proba, decoded_batches(paths, lambda p: p, size, batch_size=batch_size,
                                                    failures=failures)
    manifest = config["manifest"]
    embedder = Embedder.for_manifest(manifest, weights=resolve_backbone_weights(config, weights), batch_size=batch_size)
    pooling = config.get("feature_pooling") if kind == "dense_head" else config["svm"]["pooling"]
    if kind == "dense_head":
        head = load_keras_model(run_dir, config)
        proba = lambda X: np.asarray(head.predict_on_batch(X))  # noqa: E731
    else:
        from classifiers.jobs import load_checked_model

        proba = load_checked_model(run_dir).predict_proba
    decoder, warning = decoder_for_cache(manifest)
    if warning:
        warn(warning)
    embedded = embed_files(paths, lambda p: p, embedder, input_size=tuple(manifest["input_size"]),
                           batch_size=batch_size, failures=failures, decoder=decoder)
    inputs = ((batch, stored_vectors(e.pooled, pooling) if pooling in VECTOR_POOLINGS else e.maps.astype(np.float32))
              for batch, e in embedded)
    return proba, inputs


def predict_images(run_dir, images, *, weights: str | None = None, batch_size: int = 16,
                   warn: Callable[[str], None] | None = None) -> dict:
    """Class and probabilities for each image; unreadable images are listed under 'skipped', not fatal.

    ``warn`` gets notes for the user (the CLI prints them; by default Python's ``warnings.warn``).
    """
    run_dir, config = read_run(run_dir)
    classes = config["classes"]
    paths, skipped = _usable(images)
    failures: list = []
    predictions = []
    if paths:
        proba, batches = _model_and_batches(run_dir, config, paths, weights=weights, batch_size=batch_size,
                                            failures=failures, warn=warn or warnings.warn)
        for batch, X in batches:
            for path, row in zip(batch, proba(X)):
                best = int(np.argmax(row))
                predictions.append({"path": str(path), "class": classes[best], "probability": float(row[best]),
                                    "probabilities": {c: float(p) for c, p in zip(classes, row)}})
    skipped += [{"path": str(path), "reason": reason} for path, reason in failures]
    return {"run_dir": str(run_dir), "kind": config.get("kind"), "predictions": predictions, "skipped": skipped}
