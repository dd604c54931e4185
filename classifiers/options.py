"""Names of the closed sets of options the classifiers accept, defined once (the CLI imports them without sklearn)."""

OPTIMIZERS = ("sgd", "adam", "rmsprop")
LR_SCHEDULES = ("constant", "cosine")  # constant: the study; cosine: decays to 0 over the epochs
VARIANTS = ("funnel-out", "funnel-in", "batchnorm", "l2", "l1", "l1l2", "dropout")
GRID_NAMES = ("seed-table1", "baselines")
HEADS = ("svm", "logreg", "dense")  # heads of `featurebank evaluate`
DEFAULT_HEAD = "svm"  # the best row of bench/accuracy.py (BENCHMARKS.md)
# Near-duplicate thresholds of `featurebank audit`, chosen on TrashNet with EfficientNet-Lite0 (bench/audit.py,
# BENCHMARKS.md): JPEG-70 and 90%-resized copies keep feature cosine >= 0.78 and thumbnail correlation >= 0.9994;
# distinct photos' thumbnails rarely pass 0.99. The feature threshold only picks candidates, with a margin.
FEATURE_THRESHOLD = 0.70
PIXEL_THRESHOLD = 0.99
