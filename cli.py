"""featurebank's command line: thin click commands over the featurebank and classifiers libraries."""

from __future__ import annotations

import contextlib
import json
import sys

import click

import featurebank
from classifiers import describe
from classifiers.options import (
    DEFAULT_HEAD,
    FEATURE_THRESHOLD,
    GRID_NAMES,
    HEADS,
    LR_SCHEDULES,
    OPTIMIZERS,
    PIXEL_THRESHOLD,
    VARIANTS,
)
from featurebank.cache import COMPRESSIONS, COMPUTE_DTYPES, DTYPES, POOLED, STORES
from featurebank.embed import AUGMENTS
from featurebank.extraction import ENGINES
from featurebank.errors import FeaturebankError
from featurebank.load import VECTOR_POOLINGS
from featurebank.pipeline import describe_stages
from featurebank.progress import TqdmProgress
from featurebank.sizing import DECODERS, EngineSizes


class FriendlyGroup(click.Group):
    """Turns library errors (user mistakes, bad files) into one clean line instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FeaturebankError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("Interrupted; everything committed so far is kept in the cache.", err=True)
            sys.exit(130)


class ParsedType(click.ParamType):
    """A click type whose value is parsed by a library function that raises ValueError with the reason."""

    def __init__(self, name: str, parse):
        self.name = name
        self.parse = parse

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return self.parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _size(text: str):
    from featurebank.backbones import input_size_from_text

    return input_size_from_text(text)


def _fractions(text: str):
    from featurebank.splits import parse_fractions

    return parse_fractions(text)


def SizeType() -> ParsedType:  # noqa: N802 (reads like a click type)
    return ParsedType("HxW", _size)


def FractionsType() -> ParsedType:  # noqa: N802
    return ParsedType("TRAIN/VAL/TEST", _fractions)


def echo_json(payload: dict) -> None:
    click.echo(json.dumps(payload, indent=None, default=str))


# Options that several commands take, defined once (click makes a new parameter at each use).
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
CACHE_OPTION = click.option("--cache", default="cache", show_default=True, type=click.Path(file_okay=False),
                            help="Cache folder.")
WEIGHTS_PICK = click.option("--weights", default=None, help="Pick the cache made with these weights, if several.")
DTYPE_PICK = click.option("--dtype", default=None, type=click.Choice(DTYPES), help="Pick the cache of this dtype, if several.")
KEY_PICK = click.option("--key", default=None, help="Pick a cache by (a prefix of) its key.")
EXCLUDE_OPTION = click.option("--exclude", type=click.Path(dir_okay=False, exists=True), default=None,
                              help="Leave out the images of an exclusion list (featurebank audit --write-exclude).")
RUNS_DIR_OPTION = click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False),
                               help="Where run folders are written.")
RECORDED_DATA = click.option("--data", default=None, type=click.Path(file_okay=False),
                             help="Image folder the cache was built from [default: the one recorded in the cache].")
SEED_OPTION = click.option("--seed", default=0, show_default=True, type=int, help="Seed of the first run.")
BALANCED_OPTION = click.option("--balanced", type=click.IntRange(1), default=None,
                               help="Use N images per class (the study: 127).")


def stacked(*options):
    """One decorator applying ``options`` in the order listed (the first is the first in --help)."""
    def apply(command):
        for option in reversed(options):
            command = option(command)
        return command
    return apply


def echo_lines(lines: list[str], err: bool = False) -> None:
    for line in lines:
        click.echo(line, err=err)


def backbone_names() -> list[str]:
    from featurebank.backbones import available_backbones

    return [b.name for b in available_backbones()]


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(featurebank.__version__, prog_name="featurebank")
def main() -> None:
    """Extract deep image features once into an HDF5 cache, then train classifiers on them in seconds."""


# -- extract -----------------------------------------------------------------------------------------------
@main.command(short_help="Compute backbone features for a folder of images, once, into the cache.")
@click.option("--data", "data", required=True, type=click.Path(file_okay=False),
              help="Image folder with one sub-folder per class.")
@click.option("--backbone", default="resnet50", show_default=True, type=click.Choice(backbone_names()),
              help="Frozen network whose last convolutional output is stored.")
@CACHE_OPTION
@click.option("--weights", default="imagenet", show_default=True,
              help="'imagenet' (downloaded by Keras, hash-checked), 'none' (random, for tests) or a local weights file.")
@click.option("--batch-size", default=None, type=click.IntRange(1),
              help="Images per forward pass [default: chosen from the device: 16 on a CPU, 128 on a GPU].")
@click.option("--dtype", default="float16", show_default=True, type=click.Choice(DTYPES),
              help="Stored precision; float16 halves the size and changed no accuracy we measured (BENCHMARKS.md).")
@click.option("--compression", default="none", show_default=True, type=click.Choice(COMPRESSIONS),
              help="Lossless HDF5 compression; zstd stores sparse ReLU maps in ~1/10 the bytes (on a thread pool).")
@click.option("--store", default="maps", show_default=True, type=click.Choice(STORES),
              help="maps: feature maps plus pooled avg/max vectors; pooled: the pooled vectors only (~1/100 the bytes).")
@click.option("--augment", default="none", show_default=True, type=click.Choice(AUGMENTS),
              help="hflip-mean: store the mean of the image's and its mirror image's features (twice the compute; "
                   "its own cache key).")
@click.option("--stages", is_flag=True,
              help="Also store the avg-pooled output of every stage of the backbone (EfficientNet-Lite: 7 stages); "
                   "heads read them with --pooling avg+stages. Its own cache key.")
@click.option("--compute-dtype", default="float32", show_default=True, type=click.Choice(COMPUTE_DTYPES),
              help="The backbone's arithmetic. bfloat16: mixed precision, faster on GPUs and on CPUs with bfloat16 "
                   "instructions; features within ~1% of float32 ones (BENCHMARKS.md). Its own cache key.")
@click.option("--input-size", type=SizeType(), default=None, help="Resize images to HxW [backbone default: 512x384].")
@click.option("--split", "split_fractions", type=FractionsType(), default="70/15/15", show_default=True,
              help="Train/val/test proportions.")
@click.option("--split-seed", default=0, show_default=True, type=int, help="Seed of the content-hash split.")
@click.option("--balanced", type=click.IntRange(1), default=None, help="Keep N images per class (the study: 127).")
@click.option("--shard-size", default=256, show_default=True, type=click.IntRange(1),
              help="Images per shard file; a crash loses at most the shard being written.")
@click.option("--workers", "decode_workers", type=click.IntRange(1), default=None,
              help="Decoders [default: one per usable core, less one].")
@click.option("--decoder", type=click.Choice(DECODERS), default=None,
              help="Decode in threads or in processes (which write into shared memory) [default: processes next to "
                   "a GPU with 8+ cores, threads elsewhere]; nvjpeg: JPEGs on the CUDA GPU (TorchCodec, or "
                   "torchvision), its own cache key.")
@click.option("--engine", default="local", show_default=True, type=click.Choice(ENGINES),
              help="local: this process; ray: a Ray cluster (pip install -e '.[ray]').")
@click.option("--ray-address", default=None,
              help="Ray cluster to join ('auto', 'ray://host:10001'); default: start a local Ray instance.")
@click.option("--rebuild", is_flag=True, help="Delete this cache key's stored features and start over.")
@click.option("--exclude", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Do not compute or index the images of an exclusion list (featurebank audit --write-exclude).")
@click.option("--rehash", is_flag=True, help="Hash every file again instead of trusting the (size, time, inode) memo.")
@click.option("--verify", is_flag=True, help="Open every shard and set aside damaged ones (their images are recomputed).")
@click.option("--strict", is_flag=True, help="Exit with status 1 if any file was skipped.")
@click.option("--quiet", is_flag=True, help="No progress bar or summary.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout; human text goes to stderr.")
def extract(data, backbone, cache, weights, batch_size, dtype, compression, store, augment, stages, compute_dtype,
            input_size,
            split_fractions, split_seed, balanced, shard_size, decode_workers, decoder, engine, ray_address, rebuild,
            exclude, rehash, verify, strict, quiet, as_json):
    """Run the frozen backbone once per image of DATA and store the features in the cache.

    Images already in the cache (same bytes, same backbone, weights, size and dtype) are not
    recomputed; unusable files are skipped with a reason and do not stop the run.
    """
    show_progress = not quiet and sys.stderr.isatty()
    # With --json, stdout holds the one JSON object only: anything else printed meanwhile (Ray's driver
    # relays worker errors to stdout from a thread) goes to stderr.
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        report = featurebank.extract(
            data, backbone=backbone, cache=cache, weights=weights, batch_size=batch_size, dtype=dtype,
            input_size=input_size, split_seed=split_seed, split_fractions=split_fractions, balanced=balanced,
            compression=compression, shard_size=shard_size, decode_workers=decode_workers, decoder=decoder, store=store,
            augment=augment, compute_dtype=compute_dtype,
            stages=stages, rebuild=rebuild, exclude=exclude, rehash=rehash, verify=verify, engine=engine,
            ray_address=ray_address, progress=TqdmProgress() if show_progress else None,
            warn=lambda message: click.echo(f"warning: {message}", err=True),
        )
    if as_json:
        echo_json(report.as_dict())
    if not quiet:
        for item in report.skipped:
            click.echo(f"skipped {item.path}: {item.reason}", err=True)
        if report.sizes and not show_progress:  # with a progress bar it was shown when the run started
            click.echo(f"engine: {EngineSizes(**report.sizes).describe()}", err=True)
        click.echo(report.summary(), err=True)
        if report.stage_seconds:
            click.echo(describe_stages(report.stage_seconds, report.phase_seconds), err=True)
    if strict and report.skipped:
        sys.exit(1)


# -- info --------------------------------------------------------------------------------------------------
@main.command(short_help="List the feature caches in a cache folder.")
@CACHE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def info(cache, as_json):
    """List every cache in CACHE: backbone, weights, dtype, input size, images and bytes on disk."""
    from featurebank.index_view import find_indexes
    from featurebank.load import describe_index

    rows, broken = [], []
    for path in find_indexes(cache):
        try:
            rows.append(describe_index(path))
        except FeaturebankError as exc:
            broken.append(str(exc))
    if as_json:
        echo_json({"caches": rows, "errors": broken})
        return
    if not rows and not broken:
        click.echo(f"{cache}: no feature caches (create one with `featurebank extract --data DIR`)")
    echo_lines([describe.cache_line(row) for row in rows])
    echo_lines([f"error: {message}" for message in broken], err=True)


# -- shared options for commands that read a cache ----------------------------------------------------------
cache_selection = stacked(  # which cache a command reads (as featurebank.load)
    click.option("--cache", default="cache", show_default=True, type=click.Path(), help="Cache folder."),
    click.option("--backbone", default="resnet50", show_default=True, type=click.Choice(backbone_names()),
                 help="Backbone whose cache to use."),
    WEIGHTS_PICK, DTYPE_PICK, KEY_PICK, EXCLUDE_OPTION)

training_options = stacked(  # every Keras training command's (the study's defaults)
    click.option("--optimizer", default="rmsprop", show_default=True, type=click.Choice(OPTIMIZERS),
                 help="Keras optimizer, with Keras' default settings unless --lr is given."),
    click.option("--lr", "learning_rate", type=float, default=None, help="Learning rate [Keras default]."),
    click.option("--epochs", default=40, show_default=True, type=click.IntRange(1), help="Most epochs."),
    click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1), help="Batch size."),
    click.option("--patience", default=5, show_default=True, type=click.IntRange(0),
                 help="Early stopping: epochs without val_loss improvement."),
    click.option("--start-from-epoch", default=10, show_default=True, type=click.IntRange(0),
                 help="Early stopping: epochs before it may stop."),
    SEED_OPTION,
    click.option("--repeats", default=1, show_default=True, type=click.IntRange(1),
                 help="Train N times with seeds seed..seed+N-1 and report mean ± std."),
    BALANCED_OPTION, RUNS_DIR_OPTION,
    click.option("--name", default=None, help="Run folder name suffix [derived from the options]."),
    click.option("--verbose", is_flag=True, help="Show Keras' per-epoch progress."),
    JSON_OPTION)


def print_training_result(result: dict, as_json: bool) -> None:
    if as_json:
        echo_json(result)
    else:
        echo_lines(describe.training_lines(result))


# -- train-head --------------------------------------------------------------------------------------------
@main.command("train-head", short_help="Train a dense softmax head on cached features.")
@cache_selection
@training_options
@click.option("--pooling", default="flatten", show_default=True, type=click.Choice(("flatten", *POOLED)),
              help="flatten = the study's Flatten → Dense; avg/max pool each feature map first.")
@click.option("--stream/--in-memory", default=None,
              help="Stream features from HDF5 instead of loading them [auto: stream if they exceed half the free RAM].")
def train_head(cache, backbone, weights, dtype, key, exclude, optimizer, learning_rate, epochs, batch_size, patience,
               start_from_epoch, seed, repeats, balanced, runs_dir, name, verbose, as_json, pooling, stream):
    """Train the study's head on the cache's train split, stop early on val, report on test.

    Each run writes a folder with model.keras, history.json, metrics.json, curves.png and confusion.png.
    """
    from classifiers.jobs import train_head as run

    result = run(cache, backbone, optimizer=optimizer, learning_rate=learning_rate, pooling=pooling, epochs=epochs,
                 batch_size=batch_size, patience=patience, start_from_epoch=start_from_epoch, seed=seed,
                 repeats=repeats, balanced=balanced, weights=weights, dtype=dtype, key=key, runs_dir=runs_dir,
                 name=name, stream=stream, exclude=exclude, verbose=2 if verbose else 0)
    print_training_result(result, as_json)


# -- predict -----------------------------------------------------------------------------------------------
@main.command(short_help="Classify photos with a trained run.")
@click.option("--model", "run_dir", required=True, type=click.Path(file_okay=False, exists=True),
              help="Run folder written by train-head.")
@click.option("--weights", default=None, help="Backbone weights file, if it moved since extraction (hash-checked).")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1), help="Images per forward pass.")
@JSON_OPTION
@click.argument("images", nargs=-1, required=True, type=click.Path())
def predict(run_dir, weights, batch_size, as_json, images):
    """Run the cache's backbone and the trained head on IMAGES; print class and probabilities.

    Unreadable images are reported and do not stop the others.
    """
    from classifiers.predict import predict_images

    result = predict_images(run_dir, images, weights=weights, batch_size=batch_size,
                            warn=lambda message: click.echo(f"warning: {message}", err=True))
    if as_json:
        echo_json(result)
    else:
        echo_lines([describe.prediction_line(row) for row in result["predictions"]])
    for item in result["skipped"]:
        click.echo(f"skipped {item['path']}: {item['reason']}", err=True)


# -- train-cnn ---------------------------------------------------------------------------------------------
@main.command("train-cnn", short_help="Train one of the study's from-scratch CNNs on the cache's images.")
@cache_selection
@training_options
@click.option("--variant", default="funnel-out", show_default=True,
              type=click.Choice(VARIANTS),
              help="The study's architecture (see README).")
@RECORDED_DATA
@click.option("--image-size", type=SizeType(), default="512x384", show_default=True,
              help="Train at HxW (smaller is much faster on a CPU).")
@click.option("--augment", is_flag=True,
              help="Random flips, shifts, rotations, zooms and brightness while training (not in the study).")
@click.option("--lr-schedule", default="constant", show_default=True, type=click.Choice(LR_SCHEDULES),
              help="constant: the study; cosine: the learning rate decays to 0 over --epochs.")
def train_cnn(cache, backbone, weights, dtype, key, exclude, optimizer, learning_rate, epochs, batch_size, patience,
              start_from_epoch, seed, repeats, balanced, runs_dir, name, verbose, as_json, variant, data, image_size,
              augment, lr_schedule):
    """Train a CNN from scratch on the same train/val/test images as the cache's splits.

    The optimizer defaults to rmsprop like train-head; the study trained its CNN rows with SGD (--optimizer sgd).
    """
    from classifiers.jobs import train_cnn as run

    result = run(cache, backbone, variant=variant, optimizer=optimizer, learning_rate=learning_rate,
                 image_size=image_size, augment=augment, lr_schedule=lr_schedule, epochs=epochs,
                 batch_size=batch_size, patience=patience, start_from_epoch=start_from_epoch, seed=seed,
                 repeats=repeats, balanced=balanced, data=data, weights=weights, dtype=dtype, key=key,
                 runs_dir=runs_dir, name=name, exclude=exclude, verbose=2 if verbose else 0)
    for item in result["skipped"]:
        click.echo(f"skipped {item['path']}: {item['reason']}", err=True)
    print_training_result(result, as_json)


# -- train-svm ---------------------------------------------------------------------------------------------
@main.command("train-svm", short_help="Train an SVM baseline: on pooled backbone features, or SIFT bag of words.")
@click.option("--features", default="resnet50", show_default=True,
              help="A backbone present in --cache (pooled features), or 'classic' (SIFT bag of visual words).")
@click.option("--cache", default="cache", show_default=True, type=click.Path(), help="Cache folder.")
@click.option("--pooling", default="avg", show_default=True, type=click.Choice(VECTOR_POOLINGS),
              help="Which stored pooled vectors the SVM sees ('stages': a cache made with extract --stages).")
@RECORDED_DATA
@click.option("--image-size", type=SizeType(), default="512x384", show_default=True, help="Image size for SIFT.")
@click.option("--vocabulary-size", default=200, show_default=True, type=click.IntRange(2),
              help="Visual words (k-means clusters) for 'classic'.")
@click.option("--splits-from", "backbone_for_splits", default="resnet50", show_default=True,
              help="For 'classic': the backbone cache whose splits (and images) to use.")
@stacked(WEIGHTS_PICK, DTYPE_PICK, KEY_PICK, EXCLUDE_OPTION, SEED_OPTION)
@click.option("--repeats", default=1, show_default=True, type=click.IntRange(1), help="Runs with seeds seed..seed+N-1.")
@stacked(BALANCED_OPTION, RUNS_DIR_OPTION)
@click.option("--name", default=None, help="Run folder name suffix.")
@JSON_OPTION
def train_svm(features, cache, pooling, data, image_size, vocabulary_size, backbone_for_splits, weights, dtype, key,
              exclude, seed, repeats, balanced, runs_dir, name, as_json):
    """Standardised RBF SVC with C and gamma chosen by cross-validation on train+val, reported on test."""
    from classifiers.jobs import train_svm as run

    result = run(cache, features=features, pooling=pooling, image_size=image_size, vocabulary_size=vocabulary_size,
                 seed=seed, repeats=repeats, balanced=balanced, data=data, backbone_for_splits=backbone_for_splits,
                 weights=weights, dtype=dtype, key=key, runs_dir=runs_dir, name=name, exclude=exclude)
    for item in result["skipped"]:
        click.echo(f"skipped {item['path']}: {item['reason']}", err=True)
    print_training_result(result, as_json)


# -- evaluate ----------------------------------------------------------------------------------------------
@main.command(short_help="Cross-validate heads on cached features (k-fold), with out-of-fold probabilities.")
@click.option("--cache", default="cache", show_default=True, type=click.Path(), help="Cache folder.")
@click.option("--backbone", default="efficientnet-lite0", show_default=True,
              help="A backbone's cache, or several joined by content hash: efficientnet-lite0+efficientnet-lite2.")
@click.option("--head", "heads", multiple=True, type=click.Choice(HEADS),
              help=f"Head(s) to evaluate; repeat for several [default: {DEFAULT_HEAD}, the best in BENCHMARKS.md].")
@click.option("--folds", default=5, show_default=True, type=click.IntRange(2), help="Outer folds.")
@click.option("--pooling", default="avg+max", show_default=True, type=click.Choice(VECTOR_POOLINGS),
              help="Pooled vectors the heads see, read from the stored pooled side data ('stages': the avg-pooled "
                   "output of every stage of the backbone, stored by extract --stages).")
@stacked(BALANCED_OPTION, EXCLUDE_OPTION, WEIGHTS_PICK, DTYPE_PICK)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the folds.")
@stacked(RUNS_DIR_OPTION, JSON_OPTION)
def evaluate(cache, backbone, heads, folds, pooling, balanced, exclude, weights, dtype, seed, runs_dir, as_json):
    """Stratified k-fold CV: per-fold and mean ± std accuracy and macro F1; tuning sees only training folds.

    Writes one run folder per head: summary.json, folds.json, confusion.png and oof_probabilities.csv.
    """
    from classifiers.evaluate import evaluate as run

    reports = run(cache, backbone, heads=heads or (DEFAULT_HEAD,), folds=folds, pooling=pooling, seed=seed,
                  balanced=balanced, weights=weights, dtype=dtype, exclude=exclude, runs_dir=runs_dir)
    for name, paths in reports[0]["missing"].items():
        click.echo(f"warning: {len(paths)} images are not in the {name} cache and were left out, e.g. {paths[0]}",
                   err=True)
    best = max(reports, key=lambda r: r["accuracy_mean"])
    if as_json:
        keys = ("model", "accuracy_mean", "accuracy_std", "folds", "macro_f1_mean", "macro_f1_std", "images",
                "backbone", "pooling", "run_dir", "missing")
        echo_json({**{k: best[k] for k in keys}, "results": [{k: r[k] for k in keys} for r in reports]})
        return
    echo_lines([describe.evaluation_line(report) for report in reports])


# -- audit -------------------------------------------------------------------------------------------------
@main.command(short_help="Find duplicates, leaks, label conflicts, likely label errors, outliers and bad photos.")
@click.option("--cache", default="cache", show_default=True, type=click.Path(), help="Cache folder.")
@click.option("--backbone", default="efficientnet-lite0", show_default=True, help="Whose cache (pooled vectors).")
@RECORDED_DATA
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Write report.html and one PNG contact sheet per finding type here.")
@click.option("--write-exclude", "exclude_out", default=None, type=click.Path(dir_okay=False),
              help="Write an exclusion list (sha256, reason) for --exclude of extract, train-* and evaluate.")
@click.option("--oof", "oof_file", default=None, type=click.Path(dir_okay=False, exists=True),
              help="oof_probabilities.csv of a `featurebank evaluate` run [default: a quick logistic regression].")
@click.option("--feature-threshold", default=FEATURE_THRESHOLD, show_default=True, type=click.FloatRange(0, 1),
              help="Near-duplicates: cosine similarity of pooled features at least this.")
@click.option("--pixel-threshold", default=PIXEL_THRESHOLD, show_default=True, type=click.FloatRange(-1, 1),
              help="Near-duplicates: and grey-thumbnail correlation at least this.")
@stacked(EXCLUDE_OPTION, JSON_OPTION)
def audit(cache, backbone, data, out_dir, exclude_out, oof_file, feature_threshold, pixel_threshold, exclude,
          as_json):
    """Check a dataset from its cache: exact and near duplicates (with leaks across splits and label
    conflicts), likely label errors, outliers and photo quality. Nothing is deleted or moved."""
    from pathlib import Path

    from classifiers.audit import audit as run
    from classifiers.audit import write_exclusions

    result = run(cache, backbone, data=data, feature_threshold=feature_threshold, pixel_threshold=pixel_threshold,
                 oof_file=oof_file, exclude=exclude)
    if out_dir:
        from classifiers.report import write_report

        result["report"] = {k: str(v) for k, v in write_report(result, Path(out_dir)).items()}
    if exclude_out:
        result["excluded"] = write_exclusions(result, Path(exclude_out))
    if as_json:
        echo_json(result)
        return
    echo_lines(describe.audit_lines(result, backbone))
    if out_dir:
        click.echo(f"report: {result['report']['report']}")
    if exclude_out:
        click.echo(f"exclusion list: {exclude_out} ({result['excluded']} images); use it with --exclude {exclude_out}")


# -- experiments -------------------------------------------------------------------------------------------
@main.command(short_help="Run a named grid (the study's Table 1, baselines) over one cache.")
@click.option("--grid", required=True, type=click.Choice(GRID_NAMES), help="Which grid.")
@click.option("--cache", default="cache", show_default=True, type=click.Path(), help="Cache folder (ResNet50 cache).")
@RECORDED_DATA
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1), help="Runs per row.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of each row's first run.")
@click.option("--quick", is_flag=True, help="64x48 images and 3 epochs: the whole grid in minutes (smoke test).")
@click.option("--image-size", type=SizeType(), default=None,
              help="Image size for the CNN and SIFT rows [512x384, the study's]; smaller is much faster on a CPU.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Output folder [default: runs/<grid>[-quick]-r<repeats>]; re-running resumes it.")
@JSON_OPTION
def experiments(grid, cache, data, repeats, seed, quick, image_size, out_dir, as_json):
    """Train every row of GRID, reusing the cache, and write results.csv and results.md (with the study's figures)."""
    from classifiers.experiments import run_grid

    result = run_grid(grid, cache=cache, data=data, repeats=repeats, seed=seed, quick=quick, image_size=image_size,
                      out_dir=out_dir,
                      progress=None if as_json else lambda message: click.echo(message, err=True))
    if as_json:
        echo_json(result)
    else:
        click.echo(open(result["results_md"]).read())


# -- backbones ---------------------------------------------------------------------------------------------
@main.command(short_help="List the available backbones.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def backbones(as_json):
    """Backbones with their default input size, stored feature shape, bytes per image and stages (extract --stages)."""
    from featurebank.backbones import available_backbones

    rows = [spec.as_dict() for spec in available_backbones()]
    if as_json:
        echo_json({"backbones": rows})
    else:
        echo_lines([describe.backbone_line(row) for row in rows])


# -- demo --------------------------------------------------------------------------------------------------
@main.command(short_help="Run the whole job offline: extract, train heads and an SVM, print a results table.")
@click.option("--data", default=None, type=click.Path(file_okay=False),
              help="Image folder [default: a generated sample of recyclables]; e.g. ../shared/datasets/trashnet.")
@click.option("--backbone", default="efficientnet-lite0", show_default=True, type=click.Choice(backbone_names()),
              help="Backbone; efficientnet-lite0's pretrained weights come from the package registry (no network).")
@click.option("--weights", default="imagenet", show_default=True, help="As for extract.")
@stacked(CACHE_OPTION, RUNS_DIR_OPTION)
@click.option("--per-class", default=20, show_default=True, type=click.IntRange(3), help="Generated images per class.")
@click.option("--input-size", type=SizeType(), default=None, help="Resize images to HxW [backbone default].")
@JSON_OPTION
def demo(data, backbone, weights, cache, runs_dir, per_class, input_size, as_json):
    """Extract features once, train two dense heads and an SVM on them, and print their test results."""
    from classifiers.demo import format_table, run_demo

    result = run_demo(data, cache=cache, backbone=backbone, weights=weights, per_class=per_class,
                      input_size=input_size, runs_dir=runs_dir,
                      progress=lambda message: click.echo(message, err=True))
    click.echo(json.dumps(result, default=str) if as_json else format_table(result))


if __name__ == "__main__":
    main(prog_name="featurebank")
