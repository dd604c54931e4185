"""Stratified k-fold cross-validation of heads on cached features, with out-of-fold probabilities.

Every outer fold fits a fresh clone of the head on the other folds only; the head's own tuning
(inner CV for C and gamma, an inner validation split for early stopping) happens inside ``fit``
and so never sees the outer test fold. The out-of-fold probabilities (each image predicted by the
model that did not train on it) are written to the run folder, where ``featurebank audit`` finds
them to rank likely label errors.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np

from classifiers.options import DEFAULT_HEAD, HEADS
from classifiers.runs import new_run_dir, write_json
from featurebank.errors import InvalidArgument

OOF_FILE = "oof_probabilities.csv"


def make_head(name: str, *, seed: int = 0):
    """A fresh estimator for a head name: 'svm' (RBF SVC, signed sqrt), 'logreg', or 'dense' (Keras softmax)."""
    if name == "svm":
        from classifiers.svm import FeatureSVM

        return FeatureSVM(preprocess="sqrt", cv=3, seed=seed, C_grid=(1.0, 10.0, 100.0), gamma_grid=("scale",))
    if name == "logreg":
        from classifiers.linear import LogisticHead

        return LogisticHead(seed=seed)
    if name == "dense":
        return ValidatedDenseHead(seed=seed)
    raise InvalidArgument(f"head must be one of {', '.join(HEADS)}; received {name!r}")


class ValidatedDenseHead:
    """The Keras DenseHead with early stopping on a stratified 15% of its own training data."""

    def __init__(self, *, seed: int = 0):
        self.seed = seed

    def fit(self, X, y, *, classes=None):
        from sklearn.model_selection import train_test_split

        from classifiers.heads import DenseHead

        train, val = train_test_split(np.arange(len(y)), test_size=0.15, stratify=y, random_state=self.seed)
        self.head_ = DenseHead(optimizer="adam", pooling="avg", seed=self.seed)
        self.head_.fit(X[train], y[train], validation_data=(X[val], y[val]), classes=classes)
        return self

    def predict_proba(self, X) -> np.ndarray:
        return self.head_.predict_proba(X)

    def get_params(self, deep: bool = True) -> dict:
        return {"seed": self.seed}


def cross_validate(fs, head, *, folds: int = 5, seed: int = 0) -> dict:
    """Outer stratified k-fold CV of ``head`` (a name or an estimator with fit/predict_proba) on a FeatureSet.

    Returns per-fold accuracy and macro F1, their mean and std, each fold's test positions, and
    the out-of-fold probabilities (n, n_classes).
    """
    from sklearn.base import clone
    from sklearn.metrics import confusion_matrix, f1_score
    from sklearn.model_selection import StratifiedKFold

    X, y = np.asarray(fs.X, dtype=np.float32), np.asarray(fs.y)
    if X.ndim != 2:
        raise InvalidArgument(f"cross-validation needs pooled features (pooling='avg', 'max' or 'avg+max'); "
                              f"received X of shape {X.shape}")
    counts = np.bincount(y, minlength=len(fs.classes))
    if counts[counts > 0].min() < folds:
        raise InvalidArgument(f"--folds {folds}: every class needs at least {folds} images; the smallest has "
                              f"{counts[counts > 0].min()}")
    labels = list(range(len(fs.classes)))
    oof = np.zeros((len(y), len(fs.classes)))
    fold_of = np.full(len(y), -1)
    results = []
    for k, (train, test) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=seed).split(X, y)):
        started = time.perf_counter()
        model = make_head(head, seed=seed + k) if isinstance(head, str) else clone(head)
        model.fit(X[train], y[train], classes=labels)
        oof[test] = model.predict_proba(X[test])
        fold_of[test] = k
        predicted = oof[test].argmax(axis=1)
        results.append({
            "fold": k, "accuracy": float(np.mean(predicted == y[test])),
            "macro_f1": float(f1_score(y[test], predicted, labels=labels, average="macro", zero_division=0)),
            "confusion_matrix": confusion_matrix(y[test], predicted, labels=labels).tolist(),
            "test_images": int(len(test)), "seconds": round(time.perf_counter() - started, 2),
            "best_params": getattr(model, "best_params_", None),
        })
    accuracy = np.array([r["accuracy"] for r in results])
    macro_f1 = np.array([r["macro_f1"] for r in results])
    return {
        "model": head if isinstance(head, str) else type(head).__name__,
        "accuracy_mean": float(accuracy.mean()), "accuracy_std": float(accuracy.std()),
        "macro_f1_mean": float(macro_f1.mean()), "macro_f1_std": float(macro_f1.std()),
        "folds": accuracy.tolist(), "fold_details": results, "fold_of": fold_of, "oof": oof,
    }


def evaluate(cache="cache", backbone: str = "efficientnet-lite0", *, heads=(DEFAULT_HEAD,), folds: int = 5,
             pooling: str = "avg+max", seed: int = 0, balanced: int | None = None, weights=None, dtype=None,
             exclude=None, runs_dir="runs") -> list[dict]:
    """Cross-validate each head on a cache (or caches joined with '+'); one run folder per head.

    Each folder holds summary.json, folds.json, confusion.png (all out-of-fold predictions) and
    oof_probabilities.csv (path, sha256, label, fold, one probability column per class).
    """
    import featurebank
    from classifiers.evaluation import plot_confusion

    fs = featurebank.load(cache, backbone, pooling=pooling, weights=weights, dtype=dtype, balanced=balanced,
                          exclude=exclude)
    reports = []
    for head in heads:
        result = cross_validate(fs, head, folds=folds, seed=seed)
        run_dir = new_run_dir(runs_dir, f"evaluate-{backbone}-{result['model']}")
        oof, fold_of = result.pop("oof"), result.pop("fold_of")
        write_oof(run_dir / OOF_FILE, fs, oof, fold_of)
        overall = np.zeros((len(fs.classes),) * 2, dtype=np.int64)
        for detail in result["fold_details"]:
            overall += np.asarray(detail["confusion_matrix"])
        plot_confusion(overall, fs.classes, run_dir / "confusion.png",
                       f"{backbone} {result['model']}: {folds}-fold out-of-fold predictions")
        summary = {**result, "backbone": backbone, "pooling": pooling, "n_folds": folds, "seed": seed,
                   "images": int(len(fs)), "balanced": balanced, "classes": fs.classes, "missing": fs.missing,
                   "cache_key": fs.key, "run_dir": str(run_dir)}
        write_json(run_dir / "folds.json", result["fold_details"])
        write_json(run_dir / "summary.json", summary)
        reports.append(summary)
    return reports


def write_oof(path: Path, fs, oof: np.ndarray, fold_of: np.ndarray) -> None:
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["path", "sha256", "label", "fold", *[f"p_{c}" for c in fs.classes]])
        for row in range(len(fs)):
            out.writerow([fs.paths[row], fs.sha256[row], fs.classes[fs.y[row]], int(fold_of[row]),
                          *[f"{p:.6f}" for p in oof[row]]])


def read_oof(path: Path) -> dict:
    """sha256 → (given label, {class: probability}) from an evaluate run's out-of-fold file."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {r["sha256"]: (r["label"], {k[2:]: float(v) for k, v in r.items() if k.startswith("p_")}) for r in rows}
