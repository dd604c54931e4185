"""The one decoding pool, on threads or on processes writing into shared memory: same pixels, same failures."""

import glob
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import FEATUREBANK, nice_of

import featurebank
from featurebank import decoding, sizing
from featurebank.decoding import decoded_batches
from featurebank.errors import FeaturebankError
from featurebank.images import ImageDecodeError

DECODERS = ("threads", "processes")


@pytest.fixture
def mixed_files(tmp_path, make_images):
    """Good JPEGs of two sizes with a missing file, a text file and a truncated JPEG among them."""
    good = make_images(tmp_path / "a", 3) + make_images(tmp_path / "b", 2, size=(40, 70))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good[0].read_bytes()[:300])
    (tmp_path / "notes.jpg").write_text("not an image")
    return good[:4] + [tmp_path / "missing.jpg", tmp_path / "notes.jpg"] + good[4:9] + [truncated] + good[9:]


def decode_all(files, decoder):
    failures = []
    batches = [(list(items), pixels.copy()) for items, pixels in decoded_batches(
        files, lambda p: p, (32, 24), batch_size=7, workers=2, failures=failures, decoder=decoder)]
    return batches, failures


def own_rings():
    return glob.glob(os.path.join(sizing.SHARED_MEMORY, f"featurebank-decode-{os.getpid()}-*"))


def test_threads_and_processes_give_the_same_pixels_and_failures_in_the_same_order(mixed_files):
    threads, thread_failures = decode_all(mixed_files, "threads")
    processes, process_failures = decode_all(mixed_files, "processes")
    good = [p for p in mixed_files if p.name not in ("missing.jpg", "notes.jpg", "truncated.jpg")]
    assert [item for items, _ in threads for item in items] == good
    assert [item for items, _ in processes for item in items] == good
    assert [len(items) for items, _ in threads] == [7, 7, 7, 7, 2]  # threads fill batches up from later files
    assert [len(items) for items, _ in processes] == [5, 6, 7, 7, 5]  # processes close up the failed files' holes
    for name, batches in (("threads", threads), ("processes", processes)):
        assert all(len(items) == len(pixels) for items, pixels in batches), name
        assert all(pixels.dtype == np.uint8 and pixels.shape[1:] == (32, 24, 3) for _, pixels in batches), name
    np.testing.assert_array_equal(np.concatenate([p for _, p in processes]), np.concatenate([p for _, p in threads]))
    assert [p.name for p, _ in thread_failures] == ["missing.jpg", "notes.jpg", "truncated.jpg"]
    assert process_failures == thread_failures
    assert "cannot identify image file" in dict(thread_failures)[mixed_files[5]]
    assert not own_rings()  # the shared-memory ring is removed at the end


@pytest.mark.parametrize("decoder", DECODERS)
def test_without_a_failure_list_the_first_bad_file_raises_naming_it(mixed_files, decoder):
    with pytest.raises(ImageDecodeError, match=r"missing\.jpg: cannot"):
        for _ in decoded_batches(mixed_files, lambda p: p, (32, 24), batch_size=5, workers=2, decoder=decoder):
            pass
    assert not own_rings()


def test_a_run_stopped_early_leaves_no_ring_and_a_killed_run_s_ring_is_removed(mixed_files):
    stale = os.path.join(sizing.SHARED_MEMORY, "featurebank-decode-999999999-test")  # no such pid
    open(stale, "wb").close()
    batches = decoded_batches(mixed_files, lambda p: p, (32, 24), batch_size=2, workers=1, failures=[],
                              decoder="processes")
    next(batches)
    assert len(own_rings()) == 1 and not os.path.exists(stale)
    batches.close()
    assert not own_rings()


def test_too_little_shared_memory_is_one_clear_error(mixed_files, monkeypatch):
    monkeypatch.setattr(decoding, "shared_memory_free", lambda: 10 * 2**20)
    with pytest.raises(FeaturebankError, match=r"/dev/shm: decoding processes need \d+ MiB .* 10 MiB is free; use "
                                               r"--decoder threads"):
        list(decoded_batches(mixed_files, lambda p: p, (512, 384), batch_size=64, decoder="processes"))


def decoding_processes() -> list[int]:
    """This process's children that are loky workers (not its resource trackers)."""
    pids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            parent = int(open(stat).read().rsplit(")", 1)[1].split()[1])
            command = open(stat.replace("stat", "cmdline")).read()
        except (OSError, ValueError, IndexError):
            continue
        if parent == os.getpid() and "LokyProcess" in command:
            pids.append(int(stat.split("/")[2]))
    return pids


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the workers through /proc")
def test_a_decoding_process_that_dies_stops_the_run_with_one_clear_error(tmp_path, make_images):
    files = make_images(tmp_path, 10)
    batches = decoded_batches(files, lambda p: p, (32, 24), batch_size=2, workers=2, failures=[], decoder="processes")
    next(batches)
    workers = decoding_processes()
    assert workers
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(FeaturebankError, match=r"\.jpg: a decoding process died"):
        for _ in batches:
            pass
    assert not own_rings()


def test_processes_are_picked_next_to_an_accelerator_with_many_cores(monkeypatch):
    monkeypatch.setattr(sizing, "shared_memory_free", lambda: 8 << 30)
    assert sizing.choose_sizes("torch", compression="none", device="cuda: H200", cores=16).decoder == "processes"
    assert sizing.choose_sizes("torch", compression="none", device="cuda: H200", cores=4).decoder == "threads"
    assert sizing.choose_sizes("keras", compression="none", device="cpu", cores=64).decoder == "threads"
    assert sizing.choose_sizes("torch", compression="none", device="cuda: H200", cores=16,
                               decoder="threads").decoder == "threads"
    monkeypatch.setattr(sizing, "shared_memory_free", lambda: 64 << 20)  # docker's default /dev/shm
    assert sizing.choose_sizes("torch", compression="none", device="cuda: H200", cores=16).decoder == "threads"
    sizes = sizing.choose_sizes("torch", compression="none", device="cpu", cores=2, decoder="processes")
    assert "1 decoding process," in sizes.describe()


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_extraction_with_either_decoder_stores_the_same_features(tmp_path, make_images, backend):
    """The same end-to-end run under each decoder (the CLI, bad files included), outputs compared; on JAX too, as
    the GPU machines run it, where the batches are views of the decoders' shared ring until the step has them."""
    if backend == "jax":
        pytest.importorskip("jax", reason="needs jax (pip install -e .[test] installs it)")
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu", "XDG_CACHE_HOME": str(tmp_path / "home")}
    data = tmp_path / "data"
    make_images(data, 4)
    (data / "glass" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    features, skipped = {}, {}
    for decoder in DECODERS:
        done = subprocess.run([*FEATUREBANK, "extract", "--backbone", "resnet50", "--weights", "none", "--input-size",
                               "64x64", "--data", str(data), "--cache", str(tmp_path / decoder), "--decoder", decoder,
                               "--workers", "2", "--batch-size", "4", "--json"], capture_output=True, text=True,
                              timeout=300, env=env)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["sizes"]["decoder"] == decoder and f"2 decoding {decoder}" in done.stderr
        skipped[decoder] = report["skipped"]
        loaded = featurebank.load(tmp_path / decoder, split=None)
        features[decoder] = dict(zip(loaded.paths, loaded.X))
    assert skipped["threads"] == skipped["processes"] and len(skipped["threads"]) == 1
    assert sorted(features["threads"]) == sorted(features["processes"]) and len(features["threads"]) == 24
    for path, vector in features["threads"].items():
        np.testing.assert_array_equal(vector, features["processes"][path])


@pytest.mark.parametrize("device", ["cpu", "cuda: a GPU"])
def test_helpers_yield_the_cpu_on_every_device(tmp_path, make_images, monkeypatch, device):
    """Decoders and compression threads run at low priority on a CPU (for the backbone) and next to a GPU (for the
    engine's thread, which launches the backbone's work: bench/decoder_priority.py)."""
    from featurebank import extraction, pipeline

    make_images(tmp_path / "data", 1)
    chosen, seen, pools = extraction.choose_sizes, [], []
    monkeypatch.setattr(extraction, "choose_sizes", lambda *a, **k: chosen(*a, **{**k, "device": device}))
    original = pipeline.decoded_batches
    monkeypatch.setattr(pipeline, "decoded_batches", lambda *a, **k: seen.append(k["priority"]) or original(*a, **k))
    sized = extraction.sized_array_pool
    monkeypatch.setattr(extraction, "sized_array_pool",
                        lambda workers, low_priority: pools.append(low_priority) or sized(workers, low_priority=low_priority))
    report = featurebank.extract(tmp_path / "data", backbone="rgb-stats", cache=tmp_path / "cache", weights="none",
                                 decoder="threads", compression="zstd")
    assert report.new == 6 and report.sizes["device"] == device and seen == ["low"] and pools == [True]


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads nice values from Linux's /proc")
def test_after_an_extraction_the_array_pool_is_sized_as_before(tmp_path, make_images, monkeypatch):
    """An extraction sizes the array pool for its run (its compression threads at nice 10); load's casts, the audit's
    statistics and SIFT after it, in the same process, run on the pool as it was before, at its own priority."""
    import threading

    from featurebank import array_pool
    from featurebank.sizing import usable_cores

    def pool_threads() -> set:
        """(threads of the pool, nice value) as its tasks see them."""
        return set(array_pool.map_in_order(lambda _: (array_pool._array_pool()._max_workers,
                                                      nice_of(os.getpid(), threading.get_native_id())), range(8)))

    make_images(tmp_path / "data", 1)
    array_pool._resize((0, False))  # the default (every usable core), whatever earlier tests in this process left
    before, seen_in_run = pool_threads(), []
    original = array_pool._array_pool

    def watched():
        pool = original()
        seen_in_run.append(array_pool._POOL_SETTINGS[1])
        return pool

    monkeypatch.setattr(array_pool, "_array_pool", watched)  # sees the pool the run's zstd frames are compressed on
    featurebank.extract(tmp_path / "data", backbone="rgb-stats", cache=tmp_path / "cache", weights="none",
                        decoder="threads", compression="zstd", decode_workers=1)
    assert seen_in_run and all(seen_in_run)  # the run's compression threads yielded the CPU
    assert pool_threads() == before == {(usable_cores(), nice_of(os.getpid(), threading.get_native_id()))}


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads nice values from Linux's /proc")
@pytest.mark.parametrize("decoder", ["threads", "processes", "nvjpeg"])
def test_low_priority_decoders_run_at_the_helpers_nice(tmp_path, make_images, monkeypatch, decoder):
    """What the kernel schedules: each decoding thread, each decoding process, or each of nvJPEG's reading threads,
    at HELPER_NICE under the caller."""
    import threading

    from featurebank import decoding, gpu_decoding
    from featurebank.images import HELPER_NICE

    if nice_of(os.getpid()) >= HELPER_NICE:
        pytest.skip(f"this process already runs at nice {nice_of(os.getpid())}")
    paths = sorted(make_images(tmp_path / "data", 4))
    seen: dict[int, int] = {}

    def noting(function):  # a helper thread notes its own nice (the caller's thread may decode files too)
        def noted(path, size):
            if threading.current_thread().name.startswith(("featurebank-decode", "featurebank-read")):
                seen[threading.get_native_id()] = nice_of(os.getpid(), threading.get_native_id())
            return function(path, size)
        return noted

    monkeypatch.setattr(decoding, "load_image", noting(decoding.load_image))
    if decoder == "nvjpeg":  # its code path, on the CPU's JPEG decoder
        try:
            gpu_decoding.import_jpeg_library()
        except FeaturebankError as error:
            pytest.skip(str(error))
        monkeypatch.setattr(gpu_decoding, "DEVICE", "cpu")
        monkeypatch.setattr(gpu_decoding, "read_for_gpu", noting(gpu_decoding.read_for_gpu))
    batches = decoded_batches(paths, lambda p: p, (8, 8), batch_size=4, workers=2, decoder=decoder, priority="low")
    next(batches)
    deadline = time.monotonic() + 60
    while decoder == "processes":  # the pool's two processes, children of this one, each lowered as it starts
        seen = {pid: nice_of(pid) for pid in _decoding_processes()}
        if (len(seen) == 2 and set(seen.values()) == {HELPER_NICE}) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    batches.close()
    assert seen and set(seen.values()) == {HELPER_NICE} and nice_of(os.getpid(), threading.get_native_id()) < HELPER_NICE


def _decoding_processes() -> list[int]:
    """This process's children that are loky's workers (not its resource trackers)."""
    found = []
    for folder in Path("/proc").iterdir():
        try:
            if folder.name.isdigit() and f"PPid:\t{os.getpid()}\n" in (folder / "status").read_text() \
                    and b"LokyProcess" in (folder / "cmdline").read_bytes():
                found.append(int(folder.name))
        except OSError:  # a process that ended meanwhile
            continue
    return found


def test_files_no_decoder_has_started_are_decoded_by_the_reader_instead_of_waited_for(tmp_path, make_images,
                                                                                     monkeypatch):
    """Decoders that are all busy (or starved at low priority) do not stall the reader: it decodes what is queued."""
    import threading

    files = make_images(tmp_path, 4)
    release = threading.Event()
    made = decoding._ThreadDecoding.__init__

    def made_busy(self, *args):
        made(self, *args)
        self.executor.submit(release.wait, 60)  # the one decoder is busy until released (or 60 s pass)

    monkeypatch.setattr(decoding._ThreadDecoding, "__init__", made_busy)
    decoded_by, load_image = [], decoding.load_image
    monkeypatch.setattr(decoding, "load_image",
                        lambda path, size: decoded_by.append(threading.current_thread()) or load_image(path, size))
    batches = []
    try:
        for items, pixels in decoded_batches(files, lambda p: p, (32, 24), batch_size=5, workers=1, failures=[]):
            batches.append((list(items), pixels.copy()))
            if len(batches) == 5:
                release.set()  # before the pool's shutdown, which waits for its decoder
    finally:
        release.set()
    assert [item for items, _ in batches for item in items] == files and [len(i) for i, _ in batches] == [5, 5, 5, 5, 4]
    assert decoded_by == [threading.current_thread()] * len(files)  # all by the reader, none waited for
    np.testing.assert_array_equal(np.concatenate([p for _, p in batches]),
                                  np.stack([load_image(f, (32, 24)) for f in files]))
