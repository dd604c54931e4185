"""featurebank's command line: thin click commands over the featurebank and classifiers libraries."""

from __future__ import annotations

import json
import os
import sys

import click

import featurebank
from featurebank.errors import FeaturebankError


class FriendlyGroup(click.Group):
    """Turns library errors (user mistakes, bad files) into one clean line instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (FeaturebankError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("Interrupted; everything committed so far is kept in the cache.", err=True)
            sys.exit(130)


class SizeType(click.ParamType):
    name = "HxW"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        from featurebank.backbones import input_size_from_text

        try:
            return input_size_from_text(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class FractionsType(click.ParamType):
    name = "TRAIN/VAL/TEST"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        from featurebank.splits import parse_fractions

        try:
            return parse_fractions(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def echo_json(payload: dict) -> None:
    click.echo(json.dumps(payload, indent=None, default=str))


class TqdmProgress(featurebank.extraction.Progress):
    def __init__(self, unit: str = "img"):
        self.unit = unit
        self.bar = None

    def start(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit=self.unit, file=sys.stderr, dynamic_ncols=True, smoothing=0.1)

    def advance(self, count: int) -> None:
        self.bar.update(count)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
@click.option("--cache", default="cache", show_default=True, type=click.Path(file_okay=False),
              help="Cache folder.")
@click.option("--weights", default="imagenet", show_default=True,
              help="'imagenet' (downloaded by Keras, hash-checked), 'none' (random, for tests) or a local weights file.")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1), help="Images per forward pass.")
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "float16"]),
              help="Stored precision (float16 halves the size).")
@click.option("--compression", default="none", show_default=True,
              type=click.Choice(["none", "lzf", "gzip", "zstd"]), help="HDF5 compression of stored features.")
@click.option("--input-size", type=SizeType(), default=None, help="Resize images to HxW [backbone default: 512x384].")
@click.option("--split", "split_fractions", type=FractionsType(), default="70/15/15", show_default=True,
              help="Train/val/test proportions.")
@click.option("--split-seed", default=0, show_default=True, type=int, help="Seed of the content-hash split.")
@click.option("--balanced", type=click.IntRange(1), default=None, help="Keep N images per class (the study: 127).")
@click.option("--shard-size", default=256, show_default=True, type=click.IntRange(1),
              help="Images per shard file; a crash loses at most the shard being written.")
@click.option("--workers", "decode_workers", type=click.IntRange(1), default=None,
              help="Decoding threads [default: CPU count, at most 8].")
@click.option("--rebuild", is_flag=True, help="Delete this cache key's stored features and start over.")
@click.option("--strict", is_flag=True, help="Exit with status 1 if any file was skipped.")
@click.option("--quiet", is_flag=True, help="No progress bar or summary.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout; human text goes to stderr.")
def extract(data, backbone, cache, weights, batch_size, dtype, compression, input_size, split_fractions,
            split_seed, balanced, shard_size, decode_workers, rebuild, strict, quiet, as_json):
    """Run the frozen backbone once per image of DATA and store the features in the cache.

    Images already in the cache (same bytes, same backbone, weights, size and dtype) are not
    recomputed; unusable files are skipped with a reason and do not stop the run.
    """
    show_progress = not quiet and sys.stderr.isatty()
    report = featurebank.extract(
        data, backbone=backbone, cache=cache, weights=weights, batch_size=batch_size, dtype=dtype,
        input_size=input_size, split_seed=split_seed, split_fractions=split_fractions, balanced=balanced,
        compression=compression, shard_size=shard_size, decode_workers=decode_workers, rebuild=rebuild,
        progress=TqdmProgress() if show_progress else None,
        warn=lambda message: click.echo(f"warning: {message}", err=True),
    )
    if as_json:
        echo_json(report.as_dict())
    if not quiet:
        for item in report.skipped:
            click.echo(f"skipped {item.path}: {item.reason}", err=True)
        click.echo(
            f"{report.new} new, {report.cached} already cached, {len(report.skipped)} skipped in "
            f"{report.seconds:.1f} s ({report.images_per_s:.1f} images/s) → {report.cache_file}",
            err=True,
        )
    if strict and report.skipped:
        sys.exit(1)


# -- info --------------------------------------------------------------------------------------------------
@main.command(short_help="List the feature caches in a cache folder.")
@click.option("--cache", default="cache", show_default=True, type=click.Path(file_okay=False), help="Cache folder.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def info(cache, as_json):
    """List every cache in CACHE: backbone, weights, dtype, input size, images and bytes on disk."""
    from featurebank.cache import find_indexes
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
    for row in rows:
        shape = "x".join(map(str, row["feature_shape"]))
        click.echo(
            f"{os.path.basename(row['cache_file'])}  backbone={row['backbone']} weights={row['weights'][:23]} "
            f"dtype={row['dtype']} input={'x'.join(map(str, row['input_size']))} features={shape} "
            f"images={row['images']} size={row['bytes'] / 1e6:.1f} MB"
        )
    for message in broken:
        click.echo(f"error: {message}", err=True)


if __name__ == "__main__":
    main()
