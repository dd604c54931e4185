"""What the host costs around the GPU: fresh vs reused memory, threads faulting at once, pinned copies, pool start.

    python bench/host_probe.py [--megabytes 100] [--json FILE]

Prints one JSON line:
  kernel            the kernel release (4.4.0 is gVisor's, whose page faults are slow)
  cpu_model, threads_per_core  the CPU, and the hardware threads per core (2: the cores count twice in `cores`)
  fresh_gb_s        filling a freshly allocated array of --megabytes, again and again (each page faults once)
  reused_gb_s       filling one array again and again (no faults)
  fresh_4_threads_gb_s  four threads allocating and filling at once, together (faults serialised or not)
  loky_start_s      starting a pool of (cores - 1) fresh processes and running one task on each
  jax_*             with JAX on a GPU: a jitted step's float16 (128, 16, 12, 2048) output copied to numpy,
                    from device memory (pageable copy) and from pinned host memory (out_shardings), and
                    whether numpy then shares the pinned buffer; and a uint8 (128, 512, 384, 3) batch put on the
                    device from numpy (pageable) and through pinned host memory (as extraction does,
                    device.through_pinned_host): ms on the calling thread, and ms until it is on the device
The extraction pipeline allocates batches of this size (pixels, maps): bench/gpu_run.sh runs this
beside gpu_extract.py, and BENCHMARKS.md says what it showed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time

import numpy as np


def fill_rate(megabytes: int, repeats: int, fresh: bool) -> float:
    size = megabytes << 20
    kept = np.empty(size, np.uint8)
    kept.fill(0)
    started = time.perf_counter()
    for i in range(repeats):
        array = np.empty(size, np.uint8) if fresh else kept
        array.fill(i)
        del array
    return repeats * size / (time.perf_counter() - started) / 1e9


def threads_fill_rate(megabytes: int, repeats: int, threads: int) -> float:
    size = megabytes << 20
    started = time.perf_counter()
    workers = [threading.Thread(target=fill_rate, args=(megabytes, repeats, True)) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return threads * (repeats * size + size) / (time.perf_counter() - started) / 1e9


def loky_start_seconds() -> float:
    from joblib.externals.loky import ProcessPoolExecutor

    workers = max(1, (os.cpu_count() or 2) - 1)
    started = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(abs, range(workers)))
        return time.perf_counter() - started


def jax_copies(repeats: int = 10) -> dict:
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return {}
    device = jax.devices()[0]
    if device.platform != "gpu":
        return {"jax_platform": device.platform}
    on_device = jax.sharding.SingleDeviceSharding(device)
    pinned = on_device.with_memory_kind("pinned_host")
    shape = (128, 16, 12, 2048)
    figures = {}
    for name, sharding in (("device", on_device), ("pinned", pinned)):
        step = jax.jit(lambda x: (x * 1.5).astype(jnp.float16), out_shardings=sharding)
        x = jnp.ones(shape, jnp.float32)
        np.asarray(step(x))  # compile, warm up
        started = time.perf_counter()
        for _ in range(repeats):
            out = step(x)
            out.block_until_ready()
            host = np.asarray(out)
        figures[f"jax_{name}_to_numpy_img_s"] = repeats * shape[0] / (time.perf_counter() - started)
        if name == "pinned":
            try:
                figures["jax_pinned_numpy_shares_buffer"] = host.ctypes.data == out.unsafe_buffer_pointer()
            except Exception as exc:  # noqa: BLE001 (a probe: say what it could not tell)
                figures["jax_pinned_numpy_shares_buffer"] = f"unknown: {type(exc).__name__}"
    from featurebank.device import through_pinned_host

    batch = np.full((128, 512, 384, 3), 7, np.uint8)
    for name, put in (("pageable", lambda x: jax.device_put(x, on_device)), ("pinned", through_pinned_host)):
        put(batch).block_until_ready()  # warm up
        calls = dones = 0.0
        for _ in range(repeats):
            started = time.perf_counter()
            on = put(batch)
            calls += time.perf_counter() - started
            on.block_until_ready()
            dones += time.perf_counter() - started
        figures[f"jax_input_{name}_call_ms"] = 1000 * calls / repeats
        figures[f"jax_input_{name}_done_ms"] = 1000 * dones / repeats
    return figures


def cpu_topology() -> dict:
    """The CPU model, and how many hardware threads share a core (2 where SMT is on: 16 CPUs may be 8 cores)."""
    figures: dict = {"cpu_model": None, "threads_per_core": None}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                figures["cpu_model"] = line.split(":", 1)[1].strip()
                break
        siblings = open("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list").read().strip()
        figures["threads_per_core"] = sum(
            int(part.split("-")[1]) - int(part.split("-")[0]) + 1 if "-" in part else 1 for part in siblings.split(","))
    except (OSError, ValueError, IndexError):
        pass  # not Linux, or a kernel that hides it: recorded as unknown
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    figures = {
        "kernel": platform.release(),
        "cores": os.cpu_count(),
        **cpu_topology(),
        "fresh_gb_s": fill_rate(args.megabytes, args.repeats, True),
        "reused_gb_s": fill_rate(args.megabytes, args.repeats, False),
        "fresh_4_threads_gb_s": threads_fill_rate(args.megabytes, args.repeats, 4),
        "loky_start_s": loky_start_seconds(),
        **jax_copies(),
    }
    line = json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()})
    print(line)
    if args.json:
        with open(args.json, "w") as out:
            out.write(line + "\n")


if __name__ == "__main__":
    main()
