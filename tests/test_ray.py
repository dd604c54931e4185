"""`extract --engine ray` on a local Ray instance: the same cache as the local engine, and a killed worker recovered."""

import contextlib
import json
import logging
import signal
import subprocess
import time
import warnings

import numpy as np
import pytest
from conftest import FEATUREBANK, nice_of

import featurebank

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]'); the Ray engine tests skip")
psutil = pytest.importorskip("psutil", reason="psutil comes with Ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def messy_folder(root, make_images):
    make_images(root, 3)
    (root / "glass" / "truncated.jpg").write_bytes((root / "glass" / "glass0.jpg").read_bytes()[:300])
    (root / "metal" / "notes.jpg").write_text("not an image")
    return root


@contextlib.contextmanager
def ray_notices():
    """Collects what Ray says meanwhile: Ray Data's logged warnings, and any warning that something is deprecated.

    Ray logs many notices once per process (``log_once``); they are made due again, so that a notice an earlier
    Ray run in this process already logged is still seen."""
    import ray.data  # noqa: F401 (Ray Data sets up its loggers on import, which would drop a handler added before)
    from ray.util.debug import reset_log_once

    reset_log_once()

    notices = []

    class Collect(logging.Handler):
        def emit(self, record):
            notices.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    logging.getLogger("ray.data").addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield notices
        notices.extend(f"{w.filename}: {w.message}" for w in caught if "deprecated" in str(w.message))
    finally:
        logging.getLogger("ray.data").removeHandler(handler)


def test_a_ray_decoding_task_yields_the_cpu_without_lowering_the_workers_thread(tmp_path, make_images, monkeypatch):
    """decode_rows runs its files at nice 10 on a thread of its own: the Ray worker's thread, which runs the job's
    later tasks, keeps its priority (a process without privileges could not raise it back)."""
    import os
    import threading

    from featurebank import decoding
    from featurebank.images import HELPER_NICE
    from featurebank.ray_engine import decode_rows

    def nice_of_this_thread() -> int:
        return nice_of(os.getpid(), threading.get_native_id())

    if not os.path.isfile("/proc/self/stat"):
        pytest.skip("reads nice values from Linux's /proc")
    make_images(tmp_path, 1)
    decoded_at, original = [], decoding.decode_files
    monkeypatch.setattr(decoding, "decode_files", lambda *a: decoded_at.append(nice_of_this_thread()) or original(*a))
    before = nice_of_this_thread()
    rows = decode_rows({"relpath": np.array(["glass/glass0.jpg", "metal/missing.jpg"], dtype=object)},
                       root=str(tmp_path), input_size=(32, 24))
    assert nice_of_this_thread() == before and decoded_at == [max(before, HELPER_NICE)]
    assert rows["pixels"].shape == (2, 32, 24, 3) and rows["pixels"][0].any() and not rows["pixels"][1].any()
    assert rows["error"][0] == "" and "No such file" in rows["error"][1]  # a failure keeps its row


def test_ray_and_local_engines_give_the_same_cache(tmp_path, make_images, local_ray):
    data = messy_folder(tmp_path / "data", make_images)
    options = dict(weights="none", input_size=(64, 64), batch_size=4, shard_size=5)
    local = featurebank.extract(data, cache=tmp_path / "local", **options)
    with ray_notices() as notices:
        remote = featurebank.extract(data, cache=tmp_path / "ray", engine="ray", **options)
    # Ray 2.64 removes what 2.60 deprecates; Ray's own settings (its context.py) may still warn about themselves.
    assert [n for n in notices if "deprecated" in n and "ray/data/context.py" not in n] == []
    assert not [n for n in notices if "Progress bars disabled" in n]  # the library turned them off: no notice of it
    assert (remote.engine, local.engine) == ("ray", "local") and remote.workers >= 1
    assert remote.new == local.new == 18
    assert sorted(s.as_dict().items() for s in remote.skipped) == sorted(s.as_dict().items() for s in local.skipped)
    assert any("truncated.jpg" in s.path for s in remote.skipped)  # found at decode time, inside a Ray task
    a, b = featurebank.load(tmp_path / "local"), featurebank.load(tmp_path / "ray")
    for name in ("paths", "y", "split", "sha256"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_array_equal(a.X, b.X)  # bit for bit
    np.testing.assert_array_equal(featurebank.load(tmp_path / "local", pooling="avg+max").X,
                                  featurebank.load(tmp_path / "ray", pooling="avg+max").X)
    assert all(p.name.startswith("ray-") for p in (tmp_path / "ray").glob("*.shards/*.h5"))


def test_ray_and_local_engines_store_the_same_stage_vectors(tmp_path, make_images, local_ray):
    pytest.importorskip("efficientnet_lite_pytorch", reason="the EfficientNet-Lite backbones need the [offline] extra")
    make_images(tmp_path / "data", 2)
    options = dict(backbone="efficientnet-lite0", weights="none", input_size=(64, 64), batch_size=4, shard_size=5,
                   store="pooled", stages=True)
    featurebank.extract(tmp_path / "data", cache=tmp_path / "local", **options)
    featurebank.extract(tmp_path / "data", cache=tmp_path / "ray", engine="ray", **options)
    a, b = (featurebank.load(tmp_path / name, "efficientnet-lite0", pooling="avg+stages") for name in ("local", "ray"))
    np.testing.assert_array_equal(a.sha256, b.sha256)
    assert a.X.shape == (12, 1280 + 784)
    np.testing.assert_allclose(a.X, b.X, rtol=1e-5, atol=1e-6)  # batches of 4 in either engine; torch's CPU kernels


def embed_workers() -> list:
    return [p for p in psutil.process_iter(["cmdline"]) if "EmbedActor" in " ".join(p.info["cmdline"] or [])]


def test_a_killed_ray_worker_still_ends_in_a_complete_cache(tmp_path, make_images):
    data = tmp_path / "data"
    make_images(data, 8)
    command = [*FEATUREBANK, "extract", "--engine", "ray", "--weights", "none", "--input-size", "96x96",
               "--batch-size", "2", "--shard-size", "2", "--data", str(data), "--cache", str(tmp_path / "cache"),
               "--json", "--quiet"]
    earlier = {p.pid for p in embed_workers()}  # actors of this module's own Ray instance, left to exit by themselves
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, killed = time.time() + 240, False
    while run.poll() is None and time.time() < deadline and not killed:
        workers = [p for p in embed_workers() if p.pid not in earlier]
        if workers:
            time.sleep(0.5)  # let it start embedding
            for worker in workers:
                with contextlib.suppress(psutil.NoSuchProcess):
                    worker.send_signal(signal.SIGKILL)
                    killed = True
        time.sleep(0.05)
    out, err = run.communicate(timeout=300)
    assert killed, "no Ray embedding worker was seen"
    if run.returncode != 0:  # Ray could not retry: a re-run completes the cache from what was committed
        again = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
    fb = featurebank.load(tmp_path / "cache")
    assert len(fb) == 48 and len(set(fb.paths)) == 48 and np.isfinite(fb.X).all()
    reference = featurebank.extract(data, cache=tmp_path / "reference", weights="none", input_size=(96, 96))
    assert reference.new == 48
    expected = featurebank.load(tmp_path / "reference")
    np.testing.assert_array_equal(fb.X, expected.X)
    report = json.loads(out) if run.returncode == 0 else None
    assert report is None or report["engine"] == "ray"


def test_a_ray_actor_on_a_gpu_warms_up_its_first_call_as_it_starts(monkeypatch):
    """run_ray asks actors on GPUs for the local engine's warm-up (Embedder.warm_up), of the run's batch shape."""
    from featurebank.backbones import get_backbone
    from featurebank.embed import Embedder
    from featurebank.extraction import resolve_manifest
    from featurebank.ray_engine import EmbedActor

    calls = []
    monkeypatch.setattr(Embedder, "warm_up", lambda self, batch, size: calls.append((batch, size)))
    manifest = resolve_manifest(get_backbone("rgb-stats"), weights="none", input_size=(64, 48), dtype="float16")
    # An actor sets its process's thread counts; in this one they stay as they are (torch's CPU convolutions give
    # other last bits with other thread counts, and later tests compare caches made before and after)
    torch = pytest.importorskip("torch", reason="needs torch (pip install -e .[offline] installs it)")
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", str(threads))
    EmbedActor(manifest, "none", 4, threads)
    assert calls == []
    EmbedActor(manifest, "none", 4, threads, warm_up=True)
    assert calls == [(4, (64, 48))] and torch.get_num_threads() == threads


def test_ray_data_calls_an_actor_on_another_thread_than_the_one_that_built_it(local_ray):
    """Why EmbedActor runs its warm-up and batches on a thread of its own: Ray Data builds an actor on one thread and
    calls it on another, so a warm-up made in the constructor would not serve PyTorch's per-thread cuDNN plans.
    Should a Ray release call actors on the building thread, this fails and the device thread can go."""
    import threading

    class ThreadProbe:  # defined here, so that Ray's workers get it by value (they cannot import this module)
        def __init__(self):
            self.built_on = threading.get_ident()

        def __call__(self, batch: dict) -> dict:
            return {"same": np.array([threading.get_ident() == self.built_on] * len(batch["id"]))}

    data = ray.data.range(16, override_num_blocks=4).map_batches(
        ThreadProbe, batch_size=4, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0)
    assert {bool(row["same"]) for row in data.take_all()} == {False}


def test_a_ray_actor_embeds_on_the_thread_it_warmed_up_on_whichever_thread_calls_it(monkeypatch):
    """Ray Data calls an actor on a thread other than the one that built it, and PyTorch keeps cuDNN's plans per
    thread: the warm-up and every batch run on the actor's one device thread, and the features are the embedder's."""
    import threading

    from featurebank.backbones import get_backbone
    from featurebank.embed import Embedder
    from featurebank.extraction import resolve_manifest
    from featurebank.ray_engine import EmbedActor

    torch = pytest.importorskip("torch", reason="needs torch (pip install -e .[offline] installs it)")
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", str(threads))
    ran_on = []
    monkeypatch.setattr(Embedder, "warm_up", lambda self, batch, size: ran_on.append(threading.get_ident()))
    call = Embedder.__call__
    monkeypatch.setattr(Embedder, "__call__", lambda self, images: ran_on.append(threading.get_ident())
                        or call(self, images))
    manifest = resolve_manifest(get_backbone("rgb-stats"), weights="none", input_size=(64, 48), dtype="float16")
    actor = EmbedActor(manifest, "none", 4, threads, warm_up=True)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 64, 48, 3), dtype=np.uint8)
    batch = {"relpath": np.array(["a", "b", "c"], dtype=object), "error": np.array(["", "", ""], dtype=object),
             "pixels": pixels}
    outs = []
    for _ in range(2):  # called from two threads, neither the one that built the actor
        caller = threading.Thread(target=lambda: outs.append(actor(batch)))
        caller.start()
        caller.join()
    assert len(ran_on) == 3 and len(set(ran_on)) == 1 and ran_on[0] != threading.get_ident()
    expected = Embedder.for_manifest(manifest, weights="none", batch_size=4)(pixels)
    for out in outs:
        np.testing.assert_array_equal(out["pooled_avg"], expected.pooled["avg"])
