"""Lines for people: how the command line shows each workflow's result (the workflows return dicts, for --json).

Kept apart from the workflows so that they stay silent as a library, and from ``cli.py`` so that it
only parses options and prints.
"""

from __future__ import annotations

import os


def cache_line(row: dict) -> str:
    """One cache of ``featurebank.load.describe_index``, as `featurebank info` lists it."""
    shape = "x".join(map(str, row["feature_shape"])) or "none (pooled vectors only)"
    return (f"{os.path.basename(row['cache_file'])}  backbone={row['backbone']} weights={row['weights'][:23]} "
            f"dtype={row['dtype']} input={'x'.join(map(str, row['input_size']))} features={shape} "
            f"store={row['store']} augment={row['augment']} stages={'yes' if row['stage_width'] else 'no'} "
            f"compute={row['compute_dtype']} decoder={row['decoder']} images={row['images']} "
            f"size={row['bytes'] / 1e6:.1f} MB")


def backbone_line(row: dict) -> str:
    """One backbone of ``Backbone.as_dict``, as `featurebank backbones` lists it."""
    extra = f"  stages {len(row['stages'])} ({sum(c for _, c in row['stages'])} floats)" if row["stages"] else ""
    extra += f"  (needs pip install -e '.[{row['requires']}]')" if row["requires"] else ""
    return (f"{row['name']:<20} input {row['input_size'][0]}x{row['input_size'][1]}  features "
            f"{'x'.join(map(str, row['feature_shape']))}  {row['bytes_float32'] / 1e6:.2f} MB/image float32, "
            f"{row['bytes_float16'] / 1e6:.2f} MB float16{extra}")


def training_lines(result: dict) -> list[str]:
    """A train-head, train-cnn or train-svm result: each seed's test accuracy and their mean, or the one run's."""
    if "runs" not in result:
        return [f"test accuracy {result['test_accuracy']:.4f}, loss {result['test_loss']:.4f}, "
                f"macro F1 {result['macro_f1']:.4f} → {result['run_dir']}"]
    lines = [f"seed {run['seed']}: test accuracy {run['test_accuracy']:.4f}, loss {run['test_loss']:.4f}"
             for run in result["runs"]]
    return lines + [f"test accuracy {result['test_accuracy_mean']:.4f} ± {result['test_accuracy_std']:.4f} "
                    f"over {len(result['runs'])} runs → {result['run_dir']}"]


def prediction_line(row: dict) -> str:
    """One photo's class and every class's probability, the likeliest first."""
    others = ", ".join(f"{c} {p:.3f}" for c, p in sorted(row["probabilities"].items(), key=lambda kv: -kv[1]))
    return f"{row['path']}: {row['class']} ({others})"


def evaluation_line(report: dict) -> str:
    """One head's cross-validation: accuracy and macro F1, mean ± std over the folds."""
    folds = ", ".join(f"{a:.3f}" for a in report["folds"])
    return (f"{report['backbone']} {report['pooling']} {report['model']}: accuracy {report['accuracy_mean']:.4f} "
            f"± {report['accuracy_std']:.4f} (folds {folds}), macro F1 {report['macro_f1_mean']:.4f} ± "
            f"{report['macro_f1_std']:.4f}, {report['images']} images → {report['run_dir']}")


def audit_lines(result: dict, backbone: str) -> list[str]:
    """An audit: the count of each kind of finding and its first three."""
    lines = [f"{result['images']} images, backbone {backbone}, in {result['timings']['total']:.1f} s:"]
    for name, count in result["summary"].items():
        lines.append(f"  {name.replace('_', ' ')}: {count}")
        for finding in result[name][:3]:
            detail = finding.get("kind") or finding.get("issue") or f"{finding.get('given')} → {finding.get('suggested')}"
            lines.append(f"    {' | '.join(finding['paths'])}  ({detail})")
    return lines
