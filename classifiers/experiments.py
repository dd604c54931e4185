"""Named grids of runs over one cache: the study's Table 1 regenerated, and the baselines. Resumable."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from classifiers import jobs
from featurebank.errors import InvalidArgument


@dataclass(frozen=True)
class Row:
    """One line of a results table: how to train it and what the study reported for it."""

    row_id: str
    model_type: str
    tuning: str
    parameter_selection: str
    job: str  # 'cnn', 'head' or 'svm'
    options: dict = field(default_factory=dict)
    study: str = ""  # the study's reported test accuracy, as printed in its Table 1
    study_loss: str = ""  # the study's reported test loss, where its Table 1 gives one


def _cnn(variant, optimizer, tuning, study):
    return Row(f"cnn-{variant}-{optimizer}", "CNN from scratch", tuning, optimizer.upper() if optimizer == "sgd"
               else {"adam": "Adam", "rmsprop": "RMSProp"}[optimizer], "cnn",
               {"variant": variant, "optimizer": optimizer}, study)


def _head(optimizer, pooling="flatten", study="", study_loss=""):
    name = {"sgd": "SGD", "adam": "Adam", "rmsprop": "RMSProp"}[optimizer]
    tuning = "Flatten → Dense(6)" if pooling == "flatten" else f"global {pooling} pool → Dense(6)"
    return Row(f"head-{pooling}-{optimizer}", "ResNet50 (frozen) + dense head", tuning, name, "head",
               {"optimizer": optimizer, "pooling": pooling}, study, study_loss)


STUDY_NOTE = ("Study figures are those of its Table 1. Its text swaps the SGD and Adam head accuracies "
              "(66.7% and 69.3%); the table gives SGD 69.3%, Adam 66.7%, RMSProp 71.9%.")

GRIDS: dict[str, list[Row]] = {
    "seed-table1": [
        _cnn("funnel-out", "sgd", "original: 32/64/128 filters", "23.7%"),
        _cnn("funnel-in", "sgd", "funnel-in: 128/64/32 filters", "33.3%"),
        _cnn("batchnorm", "sgd", "BatchNormalization after pool 1", "36.0%"),
        _cnn("l2", "sgd", "Dense(64) L2(0.01) after pool 1", "25.4%"),
        _cnn("l1", "sgd", "Dense(64) L1(0.01) after pool 1", "17.5%"),
        _cnn("l1l2", "sgd", "Dense(64) L1L2(0.01, 0.01) after pool 1", "35.1% (another run: 24.6%)"),
        _cnn("dropout", "sgd", "Dropout(0.4) after pools 1 and 2", "29.8%"),
        _cnn("l1l2", "adam", "Dense(64) L1L2(0.01, 0.01) after pool 1", "35.1%"),
        _cnn("l1l2", "rmsprop", "Dense(64) L1L2(0.01, 0.01) after pool 1", "22.8%"),
        _head("sgd", study="69.3%", study_loss="32.71"),
        _head("adam", study="66.7%", study_loss="21.34"),
        _head("rmsprop", study="71.9%", study_loss="21.76"),
    ],
    "baselines": [
        Row("svm-classic", "SVM (Thung & Yang)", "SIFT bag of visual words", "C, gamma by CV", "svm",
            {"features": "classic"}, "63% (Thung & Yang)"),
        Row("svm-resnet50", "SVM on ResNet50 features", "global avg pool, standardised", "C, gamma by CV", "svm",
            {"features": "resnet50"}, ""),
        _head("adam", "avg"),
        _head("rmsprop", "max"),
    ],
}
QUICK = {"image_size": (64, 48), "epochs": 3, "start_from_epoch": 0, "vocabulary_size": 16}
COLUMNS = ["row_id", "model_type", "tuning", "parameter_selection", "test_loss_mean", "test_loss_std",
           "test_accuracy_mean", "test_accuracy_std", "repeats", "study_test_accuracy", "study_test_loss", "seconds",
           "run_dir"]


def run_row(row: Row, *, cache, data, repeats: int, seed: int, quick: bool, runs_dir: Path,
            image_size=None) -> dict:
    options = dict(row.options)
    common = dict(cache=cache, seed=seed, repeats=repeats, runs_dir=runs_dir, name=row.row_id)
    sized = {"image_size": tuple(image_size)} if image_size else {}
    if row.job == "cnn":
        extra = {k: QUICK[k] for k in ("image_size", "epochs", "start_from_epoch")} if quick else {}
        return jobs.train_cnn(data=data, **common, **options, **{**extra, **sized})
    if row.job == "head":
        extra = {k: QUICK[k] for k in ("epochs", "start_from_epoch")} if quick else {}
        return jobs.train_head(**common, **options, **extra)
    extra = {k: QUICK[k] for k in ("image_size", "vocabulary_size")} if quick else {}
    if options.get("features") != "classic":
        sized = {}
    return jobs.train_svm(data=data, **common, **options, **{**extra, **sized})


def read_results(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        return {r["row_id"]: r for r in csv.DictReader(fh)}


def write_results(out_dir: Path, grid: str, rows: list[Row], results: dict[str, dict]) -> None:
    """results.csv (machine-readable) and results.md (the study's Table 1 columns plus ours), rewritten atomically."""
    tmp = out_dir / ".results.csv.tmp"
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, COLUMNS)
        writer.writeheader()
        for row in rows:
            if row.row_id in results:
                writer.writerow({k: results[row.row_id].get(k, "") for k in COLUMNS})
    tmp.replace(out_dir / "results.csv")
    lines = [f"# {grid}", "",
             "| model type | tuning | parameter selection | test loss (ours) | study's test loss | test accuracy (ours, mean ± std) | study's test accuracy | figure |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        result = results.get(row.row_id)
        if result is None:
            lines.append(f"| {row.model_type} | {row.tuning} | {row.parameter_selection} | – | {row.study_loss} | not run "
                         f"| {row.study} | |")
            continue
        acc = f"{100 * float(result['test_accuracy_mean']):.1f}% ± {100 * float(result['test_accuracy_std']):.1f}"
        loss = f"{float(result['test_loss_mean']):.3f} ± {float(result['test_loss_std']):.3f}"
        figures = sorted(Path(result["run_dir"]).glob("**/curves.png")) or sorted(
            Path(result["run_dir"]).glob("**/confusion.png"))  # SVMs have no epochs, so no curves
        link = f"[{figures[0].stem}]({figures[0].relative_to(out_dir)})" if figures else ""
        lines.append(f"| {row.model_type} | {row.tuning} | {row.parameter_selection} | {loss} | {row.study_loss} | "
                     f"{acc} (n={result['repeats']}) | {row.study} | {link} |")
    if grid == "seed-table1":
        lines += ["", STUDY_NOTE]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")


def run_grid(grid: str, *, cache="cache", data=None, repeats: int = 3, seed: int = 0, quick: bool = False,
             image_size=None, out_dir=None, progress=None) -> dict:
    """Run every row of ``grid`` not yet in ``out_dir/results.csv``; rows finished earlier are kept (resumable).

    ``image_size`` (H, W) overrides the size of images for CNN and SIFT rows (the study: 512x384).
    """
    if grid not in GRIDS:
        raise InvalidArgument(f"grid must be one of {', '.join(GRIDS)}; received {grid!r}")
    rows = GRIDS[grid]
    out_dir = Path(out_dir or f"runs/{grid}{'-quick' if quick else ''}-r{repeats}")
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"grid": grid, "repeats": repeats, "seed": seed, "quick": quick, "cache": str(cache),
                "image_size": list(image_size) if image_size else None}
    settings_file = out_dir / "grid.json"
    if settings_file.is_file() and json.loads(settings_file.read_text()) != settings:
        raise InvalidArgument(f"{out_dir}: holds a grid run with other settings ({settings_file}); choose another --out")
    settings_file.write_text(json.dumps(settings, indent=2))
    results = read_results(out_dir / "results.csv")
    for row in rows:
        if row.row_id in results:
            continue
        if progress:
            progress(f"{row.row_id}: training ({repeats} repeat{'s' if repeats > 1 else ''})")
        started = time.perf_counter()
        outcome = run_row(row, cache=cache, data=data, repeats=repeats, seed=seed, quick=quick,
                          runs_dir=out_dir / "rows", image_size=image_size)
        runs = outcome.get("runs", [outcome])
        accuracies = [r["test_accuracy"] for r in runs]
        losses = [r["test_loss"] for r in runs]
        results[row.row_id] = {
            "row_id": row.row_id, "model_type": row.model_type, "tuning": row.tuning,
            "parameter_selection": row.parameter_selection, "test_loss_mean": float(np.mean(losses)),
            "test_loss_std": float(np.std(losses)), "test_accuracy_mean": float(np.mean(accuracies)),
            "test_accuracy_std": float(np.std(accuracies)), "repeats": len(runs), "study_test_accuracy": row.study,
            "study_test_loss": row.study_loss,
            "seconds": round(time.perf_counter() - started, 1), "run_dir": outcome["run_dir"],
        }
        write_results(out_dir, grid, rows, results)  # after every row, so an interruption keeps finished rows
    write_results(out_dir, grid, rows, results)
    return {"grid": grid, "out_dir": str(out_dir), "results_csv": str(out_dir / "results.csv"),
            "results_md": str(out_dir / "results.md"), "rows": [results[r.row_id] for r in rows]}
