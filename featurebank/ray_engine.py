"""The Ray engine: the same extraction as the local engine, spread over a Ray cluster with Ray Data.

    decode (map_batches, CPU tasks) → embed (map_batches over an actor pool; one GPU per actor
    where the cluster has GPUs) → ShardDatasink (write tasks commit whole shards)

The items are the samples the cache does not hold yet, as the local engine's. Every write task
names its shards ``ray-<write id>-t<task index>-<n>.h5``, so a task that Ray retries replaces its
own shards instead of adding duplicates; the index is consolidated once at the end, as always.
Unreadable files travel through the pipeline as rows with an error and are reported exactly as
the local engine reports them. The data and cache folders must have the same path on every node.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from featurebank.errors import CacheError, FeaturebankError
from featurebank.scan import Skipped
from featurebank.sizing import default_batch_size

INSTALL_HINT = "--engine ray needs Ray Data: pip install -e '.[ray]' (or pip install 'ray[data]')"


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise FeaturebankError(INSTALL_HINT) from None
    return ray


def decode_rows(batch: dict, *, root: str, input_size: tuple[int, int]) -> dict:
    """A Ray Data CPU task: relpaths → uint8 pixels; a file that fails keeps its row, with the reason in ``error``.

    The files are decoded at the helpers' priority, yielding the CPU to the backbone as locally, on a thread of
    the task's own: Ray runs the job's later tasks, the user's too, on the worker's thread that runs this one,
    and a process without privileges cannot raise a thread's priority back once it has lowered it.
    """
    from featurebank.images import lower_thread_priority

    with ThreadPoolExecutor(1, thread_name_prefix="featurebank-decode", initializer=lower_thread_priority) as thread:
        return thread.submit(_decoded_rows, batch, root, input_size).result()


def _decoded_rows(batch: dict, root: str, input_size: tuple[int, int]) -> dict:
    from featurebank.decoding import decode_files

    pixels = np.zeros((len(batch["relpath"]), *input_size, 3), np.uint8)
    errors = []
    for i, outcome in enumerate(decode_files([Path(root, str(r)) for r in batch["relpath"]], input_size)):
        if isinstance(outcome, str):
            errors.append(outcome)
        else:
            pixels[i] = outcome
            errors.append("")
    return {**batch, "pixels": pixels, "error": np.array(errors, dtype=object)}


class EmbedActor:
    """A Ray Data actor: builds the embedder once (on its GPU, if any) and embeds the decodable rows of each batch.

    ``warm_up`` (actors on GPUs) pays the first call's one-off costs while the actor starts, as the
    local engine does while its first batch decodes (``Embedder.warm_up``), while Ray Data's tasks decode.
    Every forward pass, the warm-up's too, runs on one thread of the actor's own: Ray Data calls an
    actor on a thread other than the one that built it (Ray 2.60), and PyTorch keeps cuDNN's handles
    and execution plans per thread, so a warm-up made on the building thread would not serve the calls.
    """

    def __init__(self, manifest: dict, weights: str, batch_size: int, threads: int, warm_up: bool = False):
        from featurebank.embed import Embedder

        # Ray starts workers with OMP_NUM_THREADS=1; the backbone gets its share of the node's cores, as the
        # local engine's backbone gets the machine's (helpers run at lower priority in both engines).
        os.environ["OMP_NUM_THREADS"] = str(threads)
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:
            pass
        self.embedder = Embedder.for_manifest(manifest, weights=weights, batch_size=batch_size)
        self.device_thread = ThreadPoolExecutor(1, thread_name_prefix="featurebank-device")
        if warm_up:
            self.device_thread.submit(self.embedder.warm_up, batch_size, tuple(manifest["input_size"])).result()

    def __call__(self, batch: dict) -> dict:
        ok = np.array([not e for e in batch["error"]], dtype=bool)
        out = {k: v for k, v in batch.items() if k != "pixels"}
        if ok.any():
            embedded = self.device_thread.submit(self.embedder, batch["pixels"][ok]).result()
            if embedded.maps is not None:
                maps = np.zeros((len(ok), *embedded.maps.shape[1:]), embedded.maps.dtype)
                maps[ok] = embedded.maps
                out["maps"] = maps
            for name in embedded.pooled:  # avg and max, and stages where the cache stores them
                vectors = np.zeros((len(ok), embedded.pooled[name].shape[1]), np.float32)
                vectors[ok] = embedded.pooled[name]
                out[f"pooled_{name}"] = vectors
        return out


def _shard_datasink(base):
    """The Datasink class, defined once Ray is imported (it subclasses ray.data.Datasink)."""

    class ShardDatasink(base):
        """Each write task commits whole shards under names fixed by (write id, task index)."""

        def __init__(self, store, *, classes: list[str], compression: str, shard_size: int):
            self.store = store
            self.classes = classes
            self.compression = compression
            self.shard_size = shard_size
            self.write_id = uuid.uuid4().hex[:10]
            self.results: list[dict] = []

        def write(self, blocks, ctx) -> dict:
            import ray
            from ray.data.block import BlockAccessor

            writer = None
            stored, failures = 0, []
            for block in blocks:
                columns = BlockAccessor.for_block(block).to_numpy()
                if not len(columns.get("relpath", ())):
                    continue
                ok = np.array([not e for e in columns["error"]], dtype=bool)
                failures += [(str(p), str(e)) for p, e in zip(columns["relpath"][~ok], columns["error"][~ok])]
                if not ok.any():
                    continue
                maps = columns["maps"][ok] if "maps" in columns else None
                if writer is None:
                    writer = self.store.shard_writer(feature_shape=maps.shape[1:] if maps is not None else (),
                                                     compression=self.compression, shard_size=self.shard_size,
                                                     classes=self.classes)
                    writer.run_id = f"ray-{self.write_id}-t{ctx.task_idx:05d}"  # a retried task replaces its shards
                pooled = {c.removeprefix("pooled_"): v[ok] for c, v in columns.items() if c.startswith("pooled_")}
                writer.write(maps, pooled,
                             [str(d) for d in columns["sha256"][ok]], [str(p) for p in columns["relpath"][ok]],
                             [int(v) for v in columns["label"][ok]], [str(s) for s in columns["split"][ok]])
                stored += int(ok.sum())
            if writer is not None:
                writer.close()
            return {"stored": stored, "failures": failures, "node": ray.get_runtime_context().get_node_id()}

        def on_write_complete(self, write_result) -> None:
            returns = getattr(write_result, "write_returns", write_result)
            self.results = [r for r in returns if r]

    return ShardDatasink


def check_shared_paths(ray, folders: dict[str, Path]) -> int:
    """Fail with one line if any alive node cannot see the data folder or write the cache; returns the node count."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def probe(paths: dict) -> str:
        for name, path in paths.items():
            if not os.path.isdir(path):
                return f"cannot see the {name} {path}"
        probe_file = Path(paths["cache folder"]) / f".probe-{uuid.uuid4().hex[:8]}"
        try:
            probe_file.write_bytes(b"ok")
            probe_file.unlink()
        except OSError as exc:
            return f"cannot write the cache folder {paths['cache folder']}: {exc.strerror or exc}"
        return ""

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    paths = {k: str(v) for k, v in folders.items()}
    answers = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                       .remote(paths) for n in nodes])
    for node, answer in zip(nodes, answers):
        if answer:
            raise CacheError(f"Ray node {node.get('NodeManagerAddress', node['NodeID'])}: {answer}; the data and cache "
                             "folders must be reachable under the same path on every node (shared storage)")
    return len(nodes)


def run_ray(plan, todo, *, weights: str, batch_size: int | None, compression: str, shard_size: int,
            decode_workers: int | None = None, decoder: str | None = None, lease_seconds: float = 60.0,
            address: str | None = None, progress=None, warn=None) -> dict:
    """Extract ``todo`` on a Ray cluster (``address``: 'auto', 'ray://…', or None for a local instance).

    The same signature as the local engine; ``decode_workers``, ``decoder`` and ``lease_seconds`` do
    not apply (Ray decodes in tasks of its own worker processes, and Ray's task retries replace claims). A batch size of None
    is the local engine's choice for the actors' device (featurebank/sizing.py). Progress is Ray
    Data's own bar (and its dashboard, where one runs).
    """
    ray = import_ray()
    if type(progress).__name__ == "Progress":  # the library's silent default: no Ray Data progress logging
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        # Turning the bars off is this library's choice: Ray Data's notice that they are off (with how to turn
        # them on in Python) would only puzzle a user of the command line.
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
        ray.data.DataContext.get_current().enable_progress_bars = False
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, logging_level=logging.ERROR, include_dashboard=False, log_to_driver=False)
    try:
        check_shared_paths(ray, {"data folder": Path(todo[0].root), "cache folder": plan.store.shard_dir})
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        cpus = int(resources.get("CPU", 1))
        actors = gpus if gpus else max(1, cpus // 2)
        actor_cpus = 0 if gpus else max(1, (cpus - 1) // actors)
        batch_size = batch_size or default_batch_size(bool(gpus))  # the local engine's choice, per actor
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        node_cpus = max(int(n.get("Resources", {}).get("CPU", 1)) for n in nodes)
        threads = max(1, node_cpus // max(1, math.ceil(actors / len(nodes))))
        items = [{"relpath": s.relpath, "sha256": s.sha256, "label": s.label, "split": plan.splits[s.sha256]}
                 for s in todo]
        data = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // batch_size, 4 * actors)))
        # Decoding and writing take a fraction of a CPU each, so that on a small machine they never wait
        # behind the embedding actors for a whole core (Ray's default is one CPU per task).
        # Ray Data's actor pool places the actors by DataContext.scheduling_strategy (SPREAD unless the caller
        # changed it), so every node embeds, and restarts a dead actor and retries its batch (max_restarts and
        # max_task_retries -1 by default; in a probe, a run whose actor was killed ended 0). Ray 2.60 deprecates
        # passing those options to map_batches, ray_remote_args_fn included, so none is passed, and the pool's
        # size goes in `compute` (`concurrency` is deprecated since 2.51). The write tasks are spread explicitly.
        data = data.map_batches(decode_rows, batch_size=batch_size, batch_format="numpy", num_cpus=0.5,
                                fn_kwargs={"root": todo[0].root, "input_size": plan.input_size})
        data = data.map_batches(
            EmbedActor, batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
            fn_constructor_kwargs={"manifest": plan.store.manifest, "weights": weights, "batch_size": batch_size,
                                   "threads": threads, "warm_up": bool(gpus)},
            num_gpus=1 if gpus else 0, num_cpus=actor_cpus)
        sink = _shard_datasink(ray.data.Datasink)(plan.store, classes=plan.classes, compression=compression,
                                                  shard_size=shard_size)
        data.write_datasink(sink, ray_remote_args={"num_cpus": 0.25, "scheduling_strategy": "SPREAD"})
        results = sink.results
    finally:
        if started_here:
            ray.shutdown()
    failures = [Skipped(str(Path(todo[0].root, relpath)), reason) for r in results for relpath, reason in r["failures"]]
    return {"new": sum(r["stored"] for r in results), "failures": failures, "workers": actors,
            "nodes": len({r["node"] for r in results if r["stored"]}), "build_seconds": 0.0}
