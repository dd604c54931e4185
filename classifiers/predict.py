"""Predicting new photos with a trained run: the cache's backbone, weights and preprocessing, then the head."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from classifiers.runs import read_run, verify_file
from featurebank.backbones import file_sha256, get_backbone
from featurebank.errors import ModelFileError
from featurebank.images import ImageDecodeError, load_image
from featurebank.load import pool_features
from featurebank.scan import Skipped, inspect_file


def resolve_backbone_weights(config: dict, override: str | None) -> str:
    """The weights argument that rebuilds exactly the backbone the run's cache was made with."""
    identity = config["manifest"]["weights"]
    if not identity.startswith("sha256:"):
        return identity  # 'imagenet' (hash-checked by Keras) or 'none' (seeded, reproducible)
    path = Path(override or config.get("weights_source") or "")
    digest = identity.split(":", 1)[1]
    if not path.is_file():
        raise ModelFileError(
            f"{path}: the backbone weights this head was trained with (sha256 {digest[:16]}…) are not there; "
            "pass the same weights file with --weights PATH")
    if file_sha256(path) != digest:
        raise ModelFileError(
            f"{path}: these weights differ from the ones this head was trained with (sha256 {digest[:16]}…); "
            "pass the original file with --weights PATH")
    return str(path)


def load_head(run_dir: Path, config: dict):
    """The trained head, loaded in Keras' safe mode (no arbitrary code from the file)."""
    from featurebank.quiet import import_keras

    keras = import_keras()

    model_path = run_dir / config.get("model_file", "model.keras")
    verify_file(model_path, config.get("model_sha256"))
    try:
        return keras.saving.load_model(model_path, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises many types for damaged archives
        raise ModelFileError(f"{model_path}: cannot load the model ({type(exc).__name__}: {exc})") from None


def predict_images(run_dir, images, *, weights: str | None = None, batch_size: int = 16) -> dict:
    """Class and probabilities for each image; unreadable images are listed under 'skipped', not fatal."""
    run_dir, config = read_run(run_dir)
    if config.get("kind") != "dense_head":
        raise ModelFileError(f"{run_dir}: predict works with dense-head runs; this run is {config.get('kind')!r}")
    manifest = config["manifest"]
    spec = get_backbone(manifest["backbone"])
    size = tuple(manifest["input_size"])
    backbone_weights = resolve_backbone_weights(config, weights)
    head = load_head(run_dir, config)
    classes = config["classes"]

    decoded, names, skipped = [], [], []
    for image in images:
        path = Path(image)
        found = inspect_file(path) if path.exists() or path.is_symlink() else Skipped(str(path), "no such file")
        if isinstance(found, Skipped):
            skipped.append(found.as_dict())
            continue
        try:
            decoded.append(load_image(path, size))
            names.append(str(path))
        except ImageDecodeError as exc:
            skipped.append({"path": str(path), "reason": str(exc)})
    predictions = []
    if decoded:
        function = spec.build(backbone_weights, size, batch_size)
        for start in range(0, len(decoded), batch_size):
            batch = np.stack(decoded[start : start + batch_size])
            features = function(batch).astype(manifest["dtype"]).astype(np.float32)  # as stored in the cache
            proba = np.asarray(head.predict_on_batch(pool_features(features, config.get("feature_pooling"))))
            for name, row in zip(names[start : start + batch_size], proba):
                best = int(np.argmax(row))
                predictions.append({"path": name, "class": classes[best], "probability": float(row[best]),
                                    "probabilities": {c: float(p) for c, p in zip(classes, row)}})
    return {"run_dir": str(run_dir), "predictions": predictions, "skipped": skipped}
