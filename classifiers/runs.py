"""Run folders: every training run writes its model, config, history, metrics and figures into one folder."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from classifiers.evaluation import classification_metrics, plot_confusion, plot_curves
from featurebank.errors import ModelFileError
from featurebank.scan import file_sha256

RUN_FILE = "run.json"


def new_run_dir(runs_dir: str | Path, name: str) -> Path:
    """A fresh folder runs_dir/<timestamp>-<name>/ (suffixed if it exists)."""
    base = Path(runs_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    path.mkdir(parents=True)
    return path


def write_json(path: Path, payload) -> None:
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def finish_run(run_dir: Path, *, estimator, X_test, y_test, classes: list[str], config: dict, title: str) -> dict:
    """Evaluate on the test split and write history.json, metrics.json, curves.png, confusion.png, run.json."""
    proba = estimator.predict_proba(X_test)
    metrics = classification_metrics(np.asarray(y_test), proba, classes)
    metrics.update({k: config[k] for k in ("cache_key", "cache_file", "backbone", "model_sha256") if k in config})
    history = getattr(estimator, "history_", None)
    if history:
        write_json(run_dir / "history.json", history)
        plot_curves(history, run_dir / "curves.png", title, getattr(estimator, "best_epoch_", None))
        metrics["epochs_run"] = len(history["loss"])
        metrics["best_epoch"] = getattr(estimator, "best_epoch_", None)
    plot_confusion(metrics["confusion_matrix"], classes, run_dir / "confusion.png", title)
    write_json(run_dir / "metrics.json", metrics)
    write_json(run_dir / RUN_FILE, {**config, "classes": classes, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return metrics


def verify_file(path: Path, expected_sha256: str | None) -> None:
    """Refuse a model file that is missing or whose bytes differ from those recorded when it was saved."""
    if not path.is_file():
        raise ModelFileError(f"{path}: model file is missing")
    if not expected_sha256:
        raise ModelFileError(f"{path}: no sha256 recorded for this model file; refusing to load it")
    if file_sha256(path) != expected_sha256:
        raise ModelFileError(f"{path}: model file was modified after training (sha256 differs from run.json); refusing to load it")


def read_run(run_dir: str | Path) -> tuple[Path, dict]:
    """The run folder and its run.json; a folder of several seeds must be narrowed to one."""
    run_dir = Path(run_dir)
    if not (run_dir / RUN_FILE).is_file():
        seeds = sorted(p.name for p in run_dir.glob("seed-*") if (p / RUN_FILE).is_file())
        if seeds:
            raise ModelFileError(f"{run_dir}: holds {len(seeds)} repeats; pass one of them, e.g. {run_dir / seeds[0]}")
        raise ModelFileError(f"{run_dir}: not a featurebank run folder (no {RUN_FILE})")
    try:
        return run_dir, json.loads((run_dir / RUN_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{run_dir / RUN_FILE}: unreadable run description ({exc})") from None


def summarize_repeats(results: list[dict]) -> dict:
    """Mean ± std of test accuracy and loss over repeated runs (population std, as numpy's default)."""
    accuracy = np.array([r["test_accuracy"] for r in results])
    loss = np.array([r["test_loss"] for r in results])
    return {
        "test_accuracy_mean": float(accuracy.mean()), "test_accuracy_std": float(accuracy.std()),
        "test_loss_mean": float(loss.mean()), "test_loss_std": float(loss.std()),
        "runs": results,
    }
