"""Names of the closed sets of options the classifiers accept, defined once (the CLI imports them without sklearn)."""

OPTIMIZERS = ("sgd", "adam", "rmsprop")
VARIANTS = ("funnel-out", "funnel-in", "batchnorm", "l2", "l1", "l1l2", "dropout")
GRID_NAMES = ("seed-table1", "baselines")
HEADS = ("svm", "logreg", "dense")  # heads of `featurebank evaluate`
DEFAULT_HEAD = "svm"  # the best row of bench/accuracy.py (BENCHMARKS.md)
