"""The extraction engine: claimed work → pipeline (decoding pool → embedder → writer thread) → shards → index.

The pipeline (featurebank/pipeline.py) overlaps decoding, the forward pass and writing. Only
images whose content hash has no stored features are decoded at all, and the backbone is built
only when there is something to compute. Work is claimed bucket by bucket (featurebank/claims.py),
so several processes on one cache compute each image once between them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from featurebank.backbones import Backbone, available_backbones, get_backbone, weights_identity
from featurebank.array_pool import sized_array_pool
from featurebank.cache import COMPUTE_DTYPES, DTYPES, STORES, describe_os_error, make_manifest
from featurebank.claims import WorkClaims, bucket_of
from featurebank.decoding import pixel_decoder
from featurebank.embed import AUGMENTS, Embedder
from featurebank.gpu_decoding import import_jpeg_library
from featurebank.errors import CacheError, InvalidArgument
from featurebank.index import FeatureStore, IndexRows, inputs_digest
from featurebank.pipeline import LazyEmbedder, StageClock, run_pipeline
from featurebank.progress import Progress
from featurebank.scan import Sample, ScanResult, Skipped, scan_folder
from featurebank.sizing import BFLOAT16_CPU_FLAGS, choose_sizes, cpu_has_bfloat16
from featurebank.splits import DEFAULT_FRACTIONS, SplitOf, balanced_subset
from featurebank.stored_state import StoredState

ENGINES = ("local", "ray")
# The decoders and the compression threads run at low OS priority (featurebank.images.HELPER_NICE) on every
# device: on a CPU they yield the cores to the backbone's compute threads; next to a GPU, to the engine's
# thread, which launches the backbone's work from Python and hands batches on (bench/decoder_priority.py).
# 'normal' is there for gpu_extract.py's probe of the other way (--helpers-at-normal-priority).
HELPERS_PRIORITY = "low"


@dataclass
class ExtractReport:
    """What one extraction run did."""

    cache_file: str
    backbone: str
    key: str
    images: int  # images in the index after this run
    new: int
    cached: int
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    classes: list[str] = field(default_factory=list)
    build_seconds: float = 0.0  # waiting for the backbone's build (overlapping decoding's start), in ``seconds``
    engine: str = "local"
    workers: int = 1  # processes that computed features in this run (Ray: actors)
    nodes: int = 1  # machines whose processes committed shards in this run
    sizes: dict | None = None  # batch, decoding and compression threads the engine ran with (None: nothing to do)
    stage_seconds: dict | None = None  # where the local engine's time went (featurebank.pipeline.STAGES)
    # in ``seconds``: scanning the folder and reading the cache ("plan"), from the local engine's start to its
    # first batch handed to the writer ("first_batch"; None elsewhere), writing the index ("index")
    phase_seconds: dict | None = None

    @property
    def images_per_s(self) -> float:
        return self.new / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line for people: what the run did, how fast, and where the features are."""
        return (f"{self.new} new, {self.cached} already cached, {len(self.skipped)} skipped in {self.seconds:.1f} s "
                f"({self.images_per_s:.1f} images/s) → {self.cache_file}")

    def as_dict(self) -> dict:
        return {
            "cache_file": self.cache_file, "backbone": self.backbone, "key": self.key, "images": self.images,
            "new": self.new, "cached": self.cached, "skipped": [s.as_dict() for s in self.skipped],
            "seconds": round(self.seconds, 3), "images_per_s": round(self.images_per_s, 2), "classes": self.classes,
            "build_seconds": round(self.build_seconds, 3), "engine": self.engine, "workers": self.workers,
            "nodes": self.nodes, "sizes": self.sizes, "stage_seconds": self.stage_seconds,
            "phase_seconds": self.phase_seconds,
        }


def resolve_manifest(backbone: Backbone, *, weights: str, input_size, dtype: str, store: str = "maps",
                     augment: str = "none", stages: bool = False, compute_dtype: str = "float32",
                     decoder: str | None = None) -> dict:
    for name, value, allowed in (("dtype", dtype, DTYPES), ("store", store, STORES), ("augment", augment, AUGMENTS),
                                 ("compute_dtype", compute_dtype, COMPUTE_DTYPES)):
        if value not in allowed:
            raise InvalidArgument(f"{name} must be one of {', '.join(allowed)}; received {value!r}")
    if compute_dtype not in backbone.compute_dtypes:
        raise InvalidArgument(f"--compute-dtype {compute_dtype}: {backbone.name} computes in "
                              f"{' or '.join(backbone.compute_dtypes)} only")
    if stages and not backbone.stages:
        with_stages = ", ".join(b.name for b in available_backbones() if b.stages)
        raise InvalidArgument(f"--stages: {backbone.name} defines no stages; use one of {with_stages}")
    if stages and augment != "none":
        raise InvalidArgument("--stages cannot be combined with --augment (the stage vectors of a mirrored image "
                              "are not computed)")
    pixels = pixel_decoder(decoder)
    return make_manifest(
        backbone=backbone.name, weights=weights_identity(weights, backbone), input_size=input_size,
        preprocessing=backbone.preprocessing, layer=backbone.layer, dtype=dtype,
        library=backbone.library, store=store, augment=augment, stages=backbone.stages if stages else (),
        compute_dtype=compute_dtype, decoder=pixels,
        decoder_library=import_jpeg_library().name if pixels == "nvjpeg" else None,
    )


@dataclass
class ExtractionPlan:
    """A scanned folder against a cache: the images (scan columns), their splits, what is stored and what is left to do."""

    store: FeatureStore
    spec: Backbone
    input_size: tuple[int, int]
    scan: ScanResult  # after --exclude and --balanced
    splits: SplitOf  # sha256 → split name, drawn when first asked for
    state: StoredState
    skipped: list[Skipped]
    index_attrs: dict
    inputs_digest: str  # of the scan's rows and the settings: what the index is written from
    up_to_date: bool  # the index was written from these inputs and every image has features

    @property
    def classes(self) -> list[str]:
        return self.scan.classes

    @property
    def todo(self) -> list[Sample]:
        if self.up_to_date:
            return []
        scan, todo = self.scan, {}
        for i in np.flatnonzero(~self.state.stored_mask(scan.sha256s)).tolist():
            digest = scan.sha256s[i]
            if digest not in todo:
                todo[digest] = Sample(str(scan.root), scan.relpaths[i], scan.labels[i], digest, scan.formats[i])
        return list(todo.values())

    def consolidate(self, warn=None, *, wrote: bool = True) -> int:
        """Write the index for this scan (unless it is up to date and this run wrote nothing); returns its row count."""
        scan = self.scan
        if self.up_to_date and not wrote:
            return len(scan.sha256s)
        rows = IndexRows(scan.relpaths, scan.labels, scan.sha256s)
        attrs = {**self.index_attrs, "skipped": [k.as_dict() for k in self.skipped], "inputs_digest": self.inputs_digest}
        return self.store.consolidate(rows, split_of=self.splits.__getitem__, classes=self.classes, attrs=attrs,
                                      warn=warn, state=self.state)


def plan_extraction(data, *, backbone: str, cache, weights: str, dtype: str, input_size, split_seed: int,
                    split_fractions, balanced: int | None, store: str = "maps", augment: str = "none",
                    stages: bool = False, compute_dtype: str = "float32", decoder: str | None = None,
                    rebuild: bool = False,
                    rehash: bool = False, verify: bool = False,
                    exclude=None, warn=None) -> ExtractionPlan:
    """Scan ``data`` (hashing only files whose size, time or inode changed) and read what the cache holds."""
    spec = get_backbone(backbone)
    size = tuple(input_size or spec.input_size)
    feature_store = FeatureStore(cache, resolve_manifest(spec, weights=weights, input_size=size, dtype=dtype,
                                                         store=store, augment=augment, stages=stages,
                                                         compute_dtype=compute_dtype, decoder=decoder))
    if rebuild:
        feature_store.remove()
    feature_store.prepare()
    scan = scan_folder(data, memo_dir=feature_store.cache_dir, rehash=rehash)
    excluded = 0
    if exclude is not None:
        from featurebank.load import read_exclusions

        listed = read_exclusions(exclude)
        keep = [d not in listed for d in scan.sha256s]
        excluded = keep.count(False)
        scan = _subset(scan, keep)
    if balanced is not None:
        scan = _subset(scan, balanced_subset(scan.sha256s, scan.labels, balanced, seed=split_seed).tolist())
    splits = SplitOf(seed=split_seed, fractions=split_fractions)
    index_attrs = {
        "data_root": str(scan.root), "split_seed": split_seed, "split_fractions": list(split_fractions),
        "balanced": -1 if balanced is None else balanced, "excluded": excluded,
        "weights_source": weights if weights in spec.weights_values else str(Path(weights).expanduser().resolve()),
    }
    skipped = list(scan.skipped)
    digest = inputs_digest(scan.relpaths, scan.labels, scan.sha256s,
                           {**index_attrs, "skipped": [k.as_dict() for k in skipped], "classes": scan.classes})
    # A no-op run stops here: the index says it was written from exactly this scan and holds every image.
    up_to_date = not verify and feature_store.index_is_current(digest, len(scan.sha256s))
    state = StoredState() if up_to_date else feature_store.stored_state(warn, verify=verify)
    if state.index_split_settings != (split_seed, [float(v) for v in split_fractions]):
        state.forget_splits()  # the recorded splits were drawn with other settings
    return ExtractionPlan(feature_store, spec, size, scan, splits, state, skipped, index_attrs, digest, up_to_date)


def _subset(scan: ScanResult, keep: Sequence[bool]) -> ScanResult:
    """The scan's images where ``keep`` is true (skipped files and classes unchanged)."""
    pick = [i for i, k in enumerate(keep) if k]
    return ScanResult(scan.root, scan.classes, [scan.relpaths[i] for i in pick], [scan.labels[i] for i in pick],
                      [scan.sha256s[i] for i in pick], [scan.formats[i] for i in pick], scan.skipped)


def extract(
    data: str | os.PathLike,
    *,
    backbone: str = "resnet50",
    cache: str | os.PathLike = "cache",
    weights: str = "imagenet",
    batch_size: int | None = None,
    dtype: str = "float16",
    input_size: tuple[int, int] | None = None,
    split_seed: int = 0,
    split_fractions: Sequence[float] = DEFAULT_FRACTIONS,
    balanced: int | None = None,
    compression: str = "none",
    shard_size: int = 256,
    decode_workers: int | None = None,
    decoder: str | None = None,
    store: str = "maps",
    augment: str = "none",
    stages: bool = False,
    compute_dtype: str = "float32",
    rebuild: bool = False,
    exclude: str | os.PathLike | None = None,
    rehash: bool = False,
    verify: bool = False,
    lease_seconds: float = 60.0,
    engine: str = "local",
    ray_address: str | None = None,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
) -> ExtractReport:
    """Compute and store the features of every image under ``data`` that the cache does not have yet.

    Returns an ExtractReport; files that are not usable images are listed in ``report.skipped``
    with the reason, and never stop the run. Several processes may run this on the same cache at
    once: they split the work by claims, and each image is computed once between them.
    ``stages=True`` also stores the avg-pooled output of each stage of the backbone (``pooled_stages``;
    ``load(pooling='avg+stages')``), in a cache of its own key.
    ``compute_dtype='bfloat16'`` runs the backbone in mixed bfloat16 (faster on GPUs and on CPUs with
    bfloat16 instructions; features within 1-10% of float32 ones, BENCHMARKS.md), in a cache of its own key.
    ``engine='ray'`` runs the same extraction on a Ray cluster (``ray_address``; a local one if None).
    ``batch_size``, ``decode_workers`` and ``decoder`` ('threads' or 'processes') left as None are
    chosen from the device and the cores (featurebank/sizing.py); ``report.sizes`` says what ran.
    ``decoder='nvjpeg'`` decodes the JPEGs on a CUDA GPU (needs TorchCodec or torchvision), in a cache of its own key.
    """
    started = time.perf_counter()
    plan = plan_extraction(data, backbone=backbone, cache=cache, weights=weights, dtype=dtype,
                           input_size=input_size, split_seed=split_seed, split_fractions=split_fractions,
                           balanced=balanced, store=store, augment=augment, stages=stages,
                           compute_dtype=compute_dtype, decoder=decoder, rebuild=rebuild,
                           rehash=rehash, verify=verify, exclude=exclude, warn=warn)
    feature_store, todo = plan.store, plan.todo
    planned = time.perf_counter()
    if engine not in ENGINES:
        raise InvalidArgument(f"engine must be one of {', '.join(ENGINES)}; received {engine!r}")
    if engine == "ray" and decoder == "nvjpeg":
        raise InvalidArgument("--decoder nvjpeg runs with the local engine only (Ray's workers decode with Pillow)")
    outcome = {"new": 0, "failures": [], "workers": 0, "build_seconds": 0.0}
    try:
        if todo:
            if engine == "ray":
                from featurebank.ray_engine import run_ray as run
            else:
                run = run_local
            outcome = run(plan, todo, weights=weights, batch_size=batch_size, compression=compression,
                          shard_size=shard_size, decode_workers=decode_workers, decoder=decoder,
                          lease_seconds=lease_seconds,
                          address=ray_address, progress=progress or Progress(), warn=warn)
            plan.skipped.extend(outcome["failures"])
        indexing = time.perf_counter()
        images = plan.consolidate(warn, wrote=bool(todo))
    except OSError as exc:
        raise CacheError(f"{feature_store.cache_dir}: cannot write the cache: {describe_os_error(exc)}; "
                         "features committed before this are kept") from None
    new, build_seconds = outcome["new"], outcome.get("build_seconds", 0.0)
    finished = time.perf_counter()
    phases = {"plan": round(planned - started, 3), "first_batch": outcome.get("first_batch_seconds"),
              "index": round(finished - indexing, 3)}
    return ExtractReport(
        cache_file=str(feature_store.index_path), backbone=plan.spec.name, key=feature_store.key, images=images,
        new=new, cached=images - new if images >= new else 0, skipped=plan.skipped,
        seconds=finished - started, classes=plan.classes, build_seconds=build_seconds,
        engine=engine, workers=outcome["workers"], nodes=outcome.get("nodes", 1), sizes=outcome.get("sizes"),
        stage_seconds=outcome.get("stage_seconds"), phase_seconds=phases,
    )


def run_local(plan: ExtractionPlan, todo: Sequence[Sample], *, weights: str, batch_size: int | None,
              compression: str, shard_size: int, decode_workers: int | None = None, decoder: str | None = None,
              lease_seconds: float = 60.0,
              address: str | None = None, progress: Progress | None = None, warn=None) -> dict:
    """The local engine (every engine has this signature): claimed passes through this process's pipeline."""
    progress = progress or Progress()
    sizes = choose_sizes(plan.spec.library, compression=compression, batch_size=batch_size,
                         decode_workers=decode_workers, decoder=decoder)
    if sizes.decoder == "nvjpeg":  # imported here, before the backbone's build may load TensorFlow on another thread
        sizes = replace(sizes, jpeg_library=import_jpeg_library().name)
    batch_size, decode_workers = sizes.batch_size, sizes.decode_workers
    progress.engine(sizes)
    if warn and not sizes.accelerated and plan.store.manifest.get("compute_dtype") == "bfloat16" \
            and cpu_has_bfloat16() is False:
        warn(f"this CPU has no bfloat16 instructions ({', '.join(BFLOAT16_CPU_FLAGS[:2])}): --compute-dtype "
             "bfloat16 is emulated here and likely slower than float32")
    # Next to a GPU the first call is warmed up on this thread while the first batch decodes (run_pipeline); on a
    # CPU that forward pass would take as long as any batch's, and would only compete with that decoding.
    embed = LazyEmbedder(lambda: Embedder.for_manifest(plan.store.manifest, weights=weights, batch_size=batch_size,
                                                       spec=plan.spec),
                         warm_up=(lambda e: e.warm_up(batch_size, plan.input_size)) if sizes.accelerated else None)
    new, failures, clock = 0, [], StageClock()
    progress.start(len(todo))
    try:
        with sized_array_pool(sizes.compression_workers, low_priority=HELPERS_PRIORITY == "low"), \
                WorkClaims(plan.store.shard_dir, lease_seconds=lease_seconds) as claims:
            for work in claimed_passes(todo, claims, plan.store, plan.state, warn):
                stored, failed = run_pipeline(work, embed=embed, store=plan.store, plan=plan, batch_size=batch_size,
                                              compression=compression, shard_size=shard_size,
                                              decode_workers=decode_workers, decoder=sizes.decoder,
                                              decode_priority=HELPERS_PRIORITY,
                                              progress=progress, clock=clock)
                new += stored
                failures += failed
    finally:
        progress.finish()
    return {"new": new, "failures": failures, "workers": 1, "build_seconds": embed.build_seconds,
            "sizes": sizes.as_dict(), "stage_seconds": clock.as_dict(),
            "first_batch_seconds": None if clock.first_batch_seconds is None else round(clock.first_batch_seconds, 3)}


def claimed_passes(todo: Sequence[Sample], claims: WorkClaims, store: FeatureStore, state: StoredState,
                   warn=None, *, poll_seconds: float = 0.2) -> Iterator[Iterator[Sample]]:
    """Passes over the work: each pass yields the samples of every bucket this writer can claim.

    The caller runs and commits each pass before asking for the next, so this writer never waits
    while holding uncommitted work. Between passes it waits for the buckets other live writers
    hold, re-reading the shards they commit, and takes over those whose writer died. Before a
    bucket is handed out, shards committed meanwhile are read when the shard folder changed, so
    work another writer finished is not done again.
    """
    buckets: dict[str, list[Sample]] = {}
    for sample in todo:
        buckets.setdefault(bucket_of(sample.sha256), []).append(sample)
    order = sorted(buckets)
    start = hash((os.getpid(), claims.lease.name)) % len(order)  # writers start at different places
    pending = order[start:] + order[:start]
    seen = [_folder_stamp(store.shard_dir)]

    def one_pass(buckets_now: list[str], waiting: list[str]) -> Iterator[Sample]:
        for bucket in buckets_now:
            if not claims.claim(bucket):
                waiting.append(bucket)
                continue
            stamp = _folder_stamp(store.shard_dir) if claims.others_present() else seen[0]
            if stamp != seen[0]:
                seen[0] = stamp
                store.refresh(state, warn)
            yield from (s for s in buckets[bucket] if s.sha256 not in state)

    while pending:
        waiting: list[str] = []
        yield one_pass(pending, waiting)
        if waiting:
            time.sleep(poll_seconds)
            seen[0] = _folder_stamp(store.shard_dir)  # before reading: a shard committed meanwhile changes it
            store.refresh(state, warn)
        pending = [b for b in waiting if any(s.sha256 not in state for s in buckets[b])]


def _folder_stamp(folder: Path) -> int:
    try:
        return folder.stat().st_mtime_ns
    except OSError:
        return 0
