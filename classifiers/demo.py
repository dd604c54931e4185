"""The demo: extract with an offline pretrained backbone, train heads and an SVM, return a results table."""

from __future__ import annotations

import time
from pathlib import Path

import featurebank
from classifiers import jobs
from featurebank.sample import write_sample


def run_demo(data=None, *, cache="cache", backbone: str = "efficientnet-lite0", weights: str = "imagenet",
             per_class: int = 20, input_size=None, runs_dir="runs", seed: int = 0, progress=None) -> dict:
    """The main job end to end on ``data`` (default: a generated sample written under ``runs_dir``)."""
    say = progress or (lambda message: None)
    if data is None:
        data = write_sample(Path(runs_dir) / "demo-sample", per_class=per_class, seed=seed)
        say(f"generated a sample of {6 * per_class} images in {data}")
    say(f"extracting {backbone} features ...")
    extraction = featurebank.extract(data, backbone=backbone, cache=cache, weights=weights, input_size=input_size)
    selection = dict(weights=weights, key=extraction.key[:16])
    rows = []
    for label, train in [
        ("dense head, global avg pool, Adam", lambda: jobs.train_head(
            cache, backbone, optimizer="adam", pooling="avg", seed=seed, runs_dir=runs_dir, name="demo-head-avg",
            **selection)),
        ("dense head, Flatten (the study), RMSProp", lambda: jobs.train_head(
            cache, backbone, optimizer="rmsprop", pooling="flatten", seed=seed, runs_dir=runs_dir,
            name="demo-head-flatten", **selection)),
        ("SVM (RBF) on avg-pooled features", lambda: jobs.train_svm(
            cache, features=backbone, pooling="avg", seed=seed, runs_dir=runs_dir, name="demo-svm", **selection)),
    ]:
        say(f"training {label} ...")
        started = time.perf_counter()
        result = train()
        rows.append({"model": label, "test_accuracy": result["test_accuracy"], "test_loss": result["test_loss"],
                     "macro_f1": result["macro_f1"], "seconds": round(time.perf_counter() - started, 1),
                     "run_dir": result["run_dir"]})
    return {"data": str(data), "backbone": backbone, "weights": weights, "extract": extraction.as_dict(),
            "split_sizes": _split_sizes(extraction.cache_file), "rows": rows}


def _split_sizes(cache_file: str) -> dict:
    fb = featurebank.load(cache_file, lazy=True)
    fb.X.close()
    return {name: int((fb.split == name).sum()) for name in ("train", "val", "test")}


def format_table(result: dict) -> str:
    extraction = result["extract"]
    lines = [
        f"data: {result['data']}",
        f"backbone: {result['backbone']} ({result['weights']} weights) - {extraction['new']} images extracted, "
        f"{extraction['cached']} already cached, {len(extraction['skipped'])} skipped, {extraction['seconds']:.1f} s",
        "splits: " + ", ".join(f"{k} {v}" for k, v in result["split_sizes"].items()),
        "",
        f"{'model':<42} {'test acc':>9} {'test loss':>10} {'macro F1':>9} {'seconds':>8}",
    ]
    for row in result["rows"]:
        lines.append(f"{row['model']:<42} {row['test_accuracy']:>9.3f} {row['test_loss']:>10.3f} "
                     f"{row['macro_f1']:>9.3f} {row['seconds']:>8.1f}")
    return "\n".join(lines)
