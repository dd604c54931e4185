"""`--engine ray` vs `--engine local` on the same TrashNet subset, and a two-node Ray cluster on this machine, in one run.

    python bench/ray_extract.py [--data ../shared/datasets/trashnet] [--limit 120] [--backbone efficientnet-lite0]

1. Local engine, then Ray engine (a local Ray instance using every core), each into a fresh cache,
   from the CLI as a user runs them (process start and model build included in both): img/s and
   their ratio, and whether the two caches hold the same features bit for bit.
2. A two-node cluster on this machine (Ray's `ray.cluster_utils.Cluster`: a head and a second
   node, each its own raylet with 2 logical CPUs, so that each runs an embedding actor), then
   `--engine ray --ray-address` it: how many nodes committed shards.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import TRASHNET, machine, subset_folder

import featurebank


def cli_extract(data: Path, cache: Path, backbone: str, *extra: str) -> tuple[dict, float]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cli", "extract", "--backbone", backbone, "--data", str(data),
                           "--cache", str(cache), "--json", "--quiet", *extra], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(done.stderr)
    return json.loads(done.stdout), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=TRASHNET)
    parser.add_argument("--limit", type=int, default=120)
    parser.add_argument("--backbone", default="efficientnet-lite0")
    args = parser.parse_args()
    data = subset_folder(args.data, args.limit)
    work = Path(tempfile.mkdtemp(prefix="featurebank-ray-"))
    print(f"Machine: {machine()}")
    try:
        local, local_s = cli_extract(data, work / "local", args.backbone)
        remote, remote_s = cli_extract(data, work / "ray", args.backbone, "--engine", "ray")
        local_x = featurebank.load(work / "local", args.backbone).X
        remote_x = featurebank.load(work / "ray", args.backbone).X
        difference = float(np.abs(local_x - remote_x).max())
        print(f"{local['new']} images, {args.backbone}: local {local['new'] / local_s:.2f} img/s ({local_s:.1f} s), "
              f"ray {remote['new'] / remote_s:.2f} img/s ({remote_s:.1f} s, {remote['workers']} actors) = "
              f"{local_s / remote_s:.2f} of local; features identical: {np.array_equal(local_x, remote_x)} "
              f"(largest difference {difference:.3g})")
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
        cluster.add_node(num_cpus=2)  # logical CPUs: two embedding actors, one per node (SPREAD)
        try:
            two, two_s = cli_extract(data, work / "two-nodes", args.backbone, "--engine", "ray", "--ray-address",
                                     cluster.address)
            print(f"two-node cluster on this machine (ray.cluster_utils.Cluster, 2 logical CPUs each): {two['new']} images in "
                  f"{two_s:.1f} s, {two['workers']} actor(s), shards committed by {two['nodes']} node(s)")
        finally:
            cluster.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
