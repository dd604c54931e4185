"""`featurebank audit`: what is wrong with a dataset, found from its cache (features, content hashes) and pixels.

Findings, each a list of dicts with at least ``paths`` and ``labels``:

* exact_duplicates: the same bytes (same sha256) under several paths; ``kind`` is 'copy' (one
  class) or 'label conflict' (several classes); ``splits`` says where each copy is.
* near_duplicates: pairs whose pooled features have cosine similarity ≥ ``feature_threshold`` (candidates) and
  whose grey thumbnails correlate ≥ ``pixel_threshold`` (re-encoded, resized or re-shot copies);
  ``kind`` flags 'leak' (across splits) and 'label conflict'.
* label_issues: images whose given label gets low out-of-fold probability (an evaluate run's, or a
  quick logistic regression's), with the ``suggested`` label and a ``score`` = p(suggested) − p(given).
* outliers: images far from all their nearest neighbours in feature space.
* quality: too dark, overexposed, blurry, tiny or near-constant photos, from pixel statistics
  (featurebank/quality.py, cached by content hash).
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import numpy as np

import featurebank
from classifiers.base import transform_features
from classifiers.options import FEATURE_THRESHOLD, PIXEL_THRESHOLD
from featurebank.quality import QUALITY_RULES, photo_statistics, quality_issues, thumbnail_similarity
from featurebank.similarity import near_pairs, nearest_neighbour_distance

OUTLIER_K = 5


def exact_duplicates(fs) -> list[dict]:
    groups: dict[str, list[int]] = defaultdict(list)
    for row, digest in enumerate(fs.sha256):
        groups[digest].append(row)
    findings = []
    for digest, rows in groups.items():
        if len(rows) < 2:
            continue
        labels = [fs.classes[fs.y[r]] for r in rows]
        findings.append({"sha256": digest, "paths": [str(fs.paths[r]) for r in rows], "labels": labels,
                         "splits": [str(fs.split[r]) for r in rows],
                         "kind": "label conflict" if len(set(labels)) > 1 else "copy",
                         "leak": len({str(fs.split[r]) for r in rows}) > 1})
    return sorted(findings, key=lambda f: (f["kind"] != "label conflict", f["paths"]))


def near_duplicates(fs, vectors: np.ndarray, thumbnails: np.ndarray, *, feature_threshold: float = FEATURE_THRESHOLD,
                    pixel_threshold: float = PIXEL_THRESHOLD) -> list[dict]:
    findings = []
    for i, j, similarity in near_pairs(vectors, feature_threshold):
        if fs.sha256[i] == fs.sha256[j]:
            continue  # exact duplicates are their own finding
        pixels = thumbnail_similarity(thumbnails[i], thumbnails[j])
        if pixels < pixel_threshold:
            continue
        labels, splits = [fs.classes[fs.y[i]], fs.classes[fs.y[j]]], [str(fs.split[i]), str(fs.split[j])]
        kinds = [k for k, flag in (("label conflict", labels[0] != labels[1]), ("leak", splits[0] != splits[1])) if flag]
        findings.append({"paths": [str(fs.paths[i]), str(fs.paths[j])], "labels": labels, "splits": splits,
                         "sha256": [str(fs.sha256[i]), str(fs.sha256[j])], "similarity": round(float(similarity), 4),
                         "pixel_similarity": round(pixels, 4), "kind": ", ".join(kinds) or "same class and split"})
    return sorted(findings, key=lambda f: (-f["pixel_similarity"], -f["similarity"]))


def out_of_fold_probabilities(fs, oof_file: Path | None, *, folds: int = 5, seed: int = 0) -> tuple[np.ndarray, str]:
    """(n, n_classes) probabilities, from an evaluate run's file when given, else a quick logistic regression."""
    if oof_file is not None:
        from classifiers.evaluate import read_oof

        stored = read_oof(oof_file)
        if all(d in stored for d in fs.sha256):
            return np.array([[stored[d][1][c] for c in fs.classes] for d in fs.sha256]), str(oof_file)
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = transform_features(fs.X, "sqrt")
    proba = np.zeros((len(X), len(fs.classes)))
    counts = np.bincount(fs.y, minlength=len(fs.classes))
    folds = max(2, min(folds, int(counts[counts > 0].min())))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(X, fs.y):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=300)).fit(X[train], fs.y[train])
        proba[np.ix_(test, model[-1].classes_)] = model.predict_proba(X[test])
    return proba, f"logistic regression, {folds}-fold out-of-fold"


def label_issues(fs, proba: np.ndarray) -> list[dict]:
    """Confident-learning style: an image is suspect when another class's probability reaches that class's
    average self-confidence while its given class falls below its own; ranked by the margin."""
    given = fs.y
    confident = np.array([proba[given == c, c].mean() if (given == c).any() else 1.0 for c in range(proba.shape[1])])
    findings = []
    for row in range(len(given)):
        p = proba[row].copy()
        p_given = p[given[row]]
        p[given[row]] = -1
        suggested = int(np.argmax(p))
        if p[suggested] >= confident[suggested] and p_given < confident[given[row]] and p[suggested] > p_given:
            findings.append({"paths": [str(fs.paths[row])], "labels": [fs.classes[given[row]]],
                             "sha256": str(fs.sha256[row]), "given": fs.classes[given[row]],
                             "suggested": fs.classes[suggested], "score": round(float(p[suggested] - p_given), 4),
                             "p_given": round(float(p_given), 4)})
    return sorted(findings, key=lambda f: -f["score"])


def outliers(fs, vectors: np.ndarray, *, k: int = OUTLIER_K) -> list[dict]:
    """Images whose mean cosine distance to their k nearest neighbours is far above the typical one (Q3 + 3 IQR)."""
    if len(vectors) <= k:
        return []
    distance = nearest_neighbour_distance(vectors, k)
    q1, q3 = np.percentile(distance, [25, 75])
    limit = q3 + 3 * (q3 - q1)
    rows = np.flatnonzero(distance > limit)
    return sorted(({"paths": [str(fs.paths[r])], "labels": [fs.classes[fs.y[r]]], "sha256": str(fs.sha256[r]),
                    "score": round(float(distance[r]), 4), "limit": round(float(limit), 4)} for r in rows),
                  key=lambda f: -f["score"])


def audit(cache="cache", backbone: str = "efficientnet-lite0", *, data=None, feature_threshold: float = FEATURE_THRESHOLD,
          pixel_threshold: float = PIXEL_THRESHOLD, oof_file=None, weights=None, dtype=None, exclude=None,
          progress=None) -> dict:
    """Run every check on one cache; returns {finding type: [findings]} plus 'summary' and 'timings'."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    fs = featurebank.load(cache, backbone, pooling="avg", weights=weights, dtype=dtype, exclude=exclude)
    root = Path(data or fs.attrs.get("data_root", ""))
    timings["load"] = time.perf_counter() - started
    vectors = transform_features(fs.X, "none")
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def step(name, function, *args, **kwargs):
        begun = time.perf_counter()
        if progress:
            progress(f"audit: {name}")
        result = function(*args, **kwargs)
        timings[name] = time.perf_counter() - begun
        return result

    stats, thumbnails = step("pixel_statistics", photo_statistics, [root / p for p in fs.paths], fs.sha256,
                             cache_dir=Path(fs.cache_file).parent)
    findings = {
        "exact_duplicates": step("exact_duplicates", exact_duplicates, fs),
        "near_duplicates": step("near_duplicates", near_duplicates, fs, vectors, thumbnails,
                                feature_threshold=feature_threshold, pixel_threshold=pixel_threshold),
    }
    proba, source = step("out_of_fold", out_of_fold_probabilities, fs, Path(oof_file) if oof_file else None)
    findings["label_issues"] = step("label_issues", label_issues, fs, proba)
    findings["outliers"] = step("outliers", outliers, fs, vectors)
    findings["quality"] = step("quality", quality_issues, fs, stats)
    timings["total"] = time.perf_counter() - started
    return {**findings, "summary": {name: len(items) for name, items in findings.items()},
            "images": int(len(fs)), "backbone": backbone, "data_root": str(root),
            "thresholds": {"feature_cosine": feature_threshold, "thumbnail_correlation": pixel_threshold},
            "label_source": source, "quality_rules": QUALITY_RULES,
            "timings": {k: round(v, 2) for k, v in timings.items()}}


EXCLUDE_REASONS = {
    "exact_duplicates": lambda f: [(f["sha256"], "the same bytes under two labels")] if f["kind"] == "label conflict"
    else [],
    "near_duplicates": lambda f: [(f["sha256"][1], f"near-duplicate of {f['paths'][0]} ({f['kind']})")]
    if f["kind"] != "same class and split" else [],
    "label_issues": lambda f: [(f["sha256"], f"likely label error: labelled {f['given']}, looks like {f['suggested']}")],
    "quality": lambda f: [(f["sha256"], f"photo quality: {f['issue']}")],
}


def write_exclusions(result: dict, path: Path) -> int:
    """An exclusion list (sha256, tab, reason) of the findings worth leaving out; returns the number of images."""
    reasons: dict[str, str] = {}
    for name, reason_of in EXCLUDE_REASONS.items():
        for finding in result[name]:
            for digest, reason in reason_of(finding):
                reasons.setdefault(digest, reason)
    lines = ["# featurebank audit exclusion list: sha256<TAB>reason; pass it with --exclude FILE"]
    lines += [f"{digest}\t{reason}" for digest, reason in sorted(reasons.items())]
    Path(path).write_text("\n".join(lines) + "\n")
    return len(reasons)
