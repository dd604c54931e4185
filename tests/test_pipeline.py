"""Where an extraction's time went: the engine's waits per stage and the writer's busy time (ExtractReport.stage_seconds)."""

import time

import pytest

import featurebank
from featurebank import cache
from featurebank.pipeline import STAGES, StageClock, describe_stages


def test_a_run_says_where_its_time_went(tmp_path, make_images, monkeypatch):
    """A writer slowed to 0.1 s a batch shows as ≥ 0.3 s of writing for 3 batches; the engine thread's waits fit the run."""
    make_images(tmp_path / "data", 1)  # 6 images: 3 batches of 2
    original = cache.ShardWriter.write

    def slow_write(self, *args, **kwargs):
        time.sleep(0.1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cache.ShardWriter, "write", slow_write)
    report = featurebank.extract(tmp_path / "data", backbone="rgb-stats", cache=tmp_path / "cache", weights="none",
                                 batch_size=2)
    seconds = report.stage_seconds
    assert report.new == 6 and set(seconds) == set(STAGES) and min(seconds.values()) >= 0
    assert seconds["write"] >= 0.3
    engine_thread = sum(seconds[s] for s in ("decode", "backbone", "device", "writer", "commit"))
    assert engine_thread <= report.seconds
    assert report.as_dict()["stage_seconds"] == seconds
    line = describe_stages(seconds)
    assert line.startswith("time: waited ") and f"busy {seconds['write']:.1f} s" in line
    phases = report.phase_seconds  # the scan and the cache's state, the first batch, the index: parts of the run
    assert set(phases) == {"plan", "first_batch", "index"} and min(phases.values()) > 0
    assert sum(phases.values()) <= report.seconds
    assert f"first batch {phases['first_batch']:.1f} s after" in describe_stages(seconds, phases)


def test_the_clock_times_each_item_fetched_and_closes_what_it_wraps():
    clock, closed = StageClock(), []

    def slow_items():
        try:
            for i in range(3):
                time.sleep(0.05)
                yield i
        finally:
            closed.append(True)

    inner = slow_items()  # still referenced here: only an explicit close runs its clean-up now
    items = clock.iterate("decode", inner)
    assert next(items) == 0 and next(items) == 1
    items.close()  # stopped early, as a failed run stops its batches
    assert closed == [True] and clock.seconds["decode"] >= 0.1 and clock.seconds["writer"] == 0


def test_the_backbone_builds_while_the_first_files_decode_and_a_failed_build_is_raised(tmp_path, make_images,
                                                                                          monkeypatch):
    """The first file's decode waits (up to 30 s) for the build to have begun: built only after the first batch,
    as before, it never would. A build that fails raises its own error from the run."""
    import dataclasses
    import threading

    from featurebank import backbones, decoding
    from featurebank.errors import WeightsError

    make_images(tmp_path / "data", 1)
    building, saw_build = threading.Event(), []
    spec = backbones.get_backbone("rgb-stats")
    monkeypatch.setitem(backbones._REGISTRY, spec.name,
                        dataclasses.replace(spec, build=lambda *a: building.set() or spec.build(*a)))
    load_image = decoding.load_image

    def decode_once_building(path, size):
        if not saw_build:
            saw_build.append(building.wait(30))
        return load_image(path, size)

    monkeypatch.setattr(decoding, "load_image", decode_once_building)
    report = featurebank.extract(tmp_path / "data", backbone="rgb-stats", cache=tmp_path / "cache", weights="none",
                                 batch_size=2)
    assert report.new == 6 and saw_build == [True]

    def failing(*args):
        raise WeightsError("weights.h5: not the weights of rgb-stats")

    monkeypatch.setitem(backbones._REGISTRY, spec.name, dataclasses.replace(spec, build=failing))
    make_images(tmp_path / "more", 1)
    with pytest.raises(WeightsError, match="weights.h5: not the weights"):
        featurebank.extract(tmp_path / "more", backbone="rgb-stats", cache=tmp_path / "cache2", weights="none")
    assert not [t for t in threading.enumerate() if t.name == "featurebank-build"]


def test_next_to_a_gpu_the_first_call_is_warmed_up_on_the_engines_thread_while_the_first_batch_decodes(
        tmp_path, make_images, monkeypatch):
    """Accelerated sizes: one warm-up of the run's batch shape, on the thread that submits the batches (PyTorch
    keeps cuDNN's plans per thread), made while another thread decodes the first batch, before that batch is
    submitted; the same cache as without it. On a CPU (the sizes as chosen here) none."""
    import dataclasses
    import threading

    import numpy as np

    from featurebank import decoding, extraction
    from featurebank.embed import Embedder

    make_images(tmp_path / "data", 1)  # 6 images: 3 batches of 2
    # With a GPU's sizes the first decode and the warm-up wait for each other: run one after the other (in either
    # order), one of them would wait in vain (30 s) and record False.
    events, decoding_started, warm_up_started, handshake = [], threading.Event(), threading.Event(), []
    load_image = decoding.load_image

    def first_decode_waits(*args, **kwargs):
        if handshake and not decoding_started.is_set():
            decoding_started.set()
            events.append(("decoding saw the warm-up", warm_up_started.wait(30)))
        return load_image(*args, **kwargs)

    monkeypatch.setattr(decoding, "load_image", first_decode_waits)

    def warm_up(self, batch, size):
        warm_up_started.set()
        events.append(("warm-up", threading.current_thread().name, batch, size, decoding_started.wait(30)))

    monkeypatch.setattr(Embedder, "warm_up", warm_up)
    submit = Embedder.submit
    monkeypatch.setattr(Embedder, "submit", lambda self, images: events.append(
        ("submit", threading.current_thread().name, len(images))) or submit(self, images))
    options = dict(backbone="rgb-stats", weights="none", batch_size=2, input_size=(40, 32))
    featurebank.extract(tmp_path / "data", cache=tmp_path / "cpu", **options)
    engine_thread = threading.current_thread().name
    assert events[:1] == [("submit", engine_thread, 2)] and "warm-up" not in {e[0] for e in events}

    choose_sizes = extraction.choose_sizes
    monkeypatch.setattr(extraction, "choose_sizes",
                        lambda *a, **k: dataclasses.replace(choose_sizes(*a, **k), device="gpu: a test's"))
    events.clear()
    handshake.append(True)
    report = featurebank.extract(tmp_path / "data", cache=tmp_path / "gpu", **options)
    assert report.sizes["device"] == "gpu: a test's" and report.new == 6
    assert sorted(events[:2], key=str) == [("decoding saw the warm-up", True), ("warm-up", engine_thread, 2, (40, 32), True)]
    assert events[2:] == [("submit", engine_thread, 2)] * 3
    cpu, gpu = (featurebank.load(tmp_path / name, backbone="rgb-stats", pooling="avg") for name in ("cpu", "gpu"))
    np.testing.assert_array_equal(cpu.X, gpu.X)


def test_next_to_a_gpu_decoding_processes_start_beside_the_warm_up(tmp_path, make_images, monkeypatch):
    """The engine's decoder next to a GPU: its pool starts on the first batch's thread (loky's processes, the
    shared-memory ring), and the rest of the run goes on from the engine's thread, to the same cache."""
    import dataclasses
    import threading

    import numpy as np

    from featurebank import extraction
    from featurebank.embed import Embedder

    make_images(tmp_path / "data", 1)
    warmed = []
    monkeypatch.setattr(Embedder, "warm_up", lambda self, batch, size: warmed.append(threading.current_thread().name))
    options = dict(backbone="rgb-stats", weights="none", batch_size=2, input_size=(40, 32), decoder="processes",
                   decode_workers=2)
    featurebank.extract(tmp_path / "data", cache=tmp_path / "cpu", **options)
    choose_sizes = extraction.choose_sizes
    monkeypatch.setattr(extraction, "choose_sizes",
                        lambda *a, **k: dataclasses.replace(choose_sizes(*a, **k), device="gpu: a test's"))
    report = featurebank.extract(tmp_path / "data", cache=tmp_path / "gpu", **options)
    assert report.new == 6 and report.sizes["decoder"] == "processes"
    assert warmed == [threading.current_thread().name]
    assert not [t for t in threading.enumerate() if t.name == "featurebank-first-batch"]
    cpu, gpu = (featurebank.load(tmp_path / name, backbone="rgb-stats", pooling="avg") for name in ("cpu", "gpu"))
    np.testing.assert_array_equal(cpu.X, gpu.X)


@pytest.mark.parametrize("failing_step", ["build", "warm-up"])
def test_next_to_a_gpu_a_failing_build_or_warm_up_is_raised_and_leaves_no_thread(
        tmp_path, make_images, monkeypatch, failing_step):
    """With a GPU's sizes the first batch decodes on a thread of its own while the engine's thread warms up: when the
    build or the warm-up fails, that error comes out of extract, the cache keeps nothing half-written, and neither
    the first batch's thread nor the build thread is left running."""
    import dataclasses
    import threading

    from featurebank import backbones, extraction
    from featurebank.embed import Embedder
    from featurebank.errors import WeightsError

    def failing(*args):
        raise WeightsError("weights.h5: not the weights of rgb-stats")

    spec = backbones.get_backbone("rgb-stats")
    if failing_step == "build":
        monkeypatch.setitem(backbones._REGISTRY, spec.name, dataclasses.replace(spec, build=failing))
    else:
        monkeypatch.setattr(Embedder, "warm_up", failing)
    choose_sizes = extraction.choose_sizes
    monkeypatch.setattr(extraction, "choose_sizes",
                        lambda *a, **k: dataclasses.replace(choose_sizes(*a, **k), device="gpu: a test's"))
    make_images(tmp_path / "data", 1)
    with pytest.raises(WeightsError, match="weights.h5: not the weights"):
        featurebank.extract(tmp_path / "data", backbone="rgb-stats", cache=tmp_path / "cache", weights="none",
                            batch_size=2)
    assert not [t for t in threading.enumerate() if t.name in ("featurebank-build", "featurebank-first-batch")]
    assert not list((tmp_path / "cache").rglob("*.h5"))


def test_a_warm_up_runs_on_the_callers_thread_and_build_time_is_what_outlasted_the_first_batch():
    """warm_up_here warms up on the calling thread, once; of the wait for the build beside the first batch's decoding,
    build_seconds keeps what outlasted that decoding (none while that batch was not there yet); errors in the build
    or the warm-up come out of it."""
    import threading

    from featurebank.pipeline import LazyEmbedder

    warmed = []
    lazy = LazyEmbedder(lambda: time.sleep(0.2) or "embedder",
                        warm_up=lambda e: warmed.append((e, threading.current_thread().name)))
    lazy.built(lambda: None)  # the first batch not decoded yet: the build held nothing up
    lazy.warm_up_here()
    assert lazy.build_seconds == 0.0 and warmed == [("embedder", threading.current_thread().name)]
    assert not lazy.needs_warm_up and lazy.get() == "embedder"
    lazy.warm_up_here()
    assert len(warmed) == 1  # once

    lazy = LazyEmbedder(lambda: time.sleep(0.2) or "embedder", warm_up=lambda e: None)
    lazy.built(lambda: 0.0)  # the first batch was there all along: the whole wait held it up
    assert lazy.build_seconds >= 0.15
    lazy = LazyEmbedder(lambda: time.sleep(0.2) or "embedder")
    lazy.built()  # no first batch decoded elsewhere: the whole wait, as always
    assert lazy.build_seconds >= 0.15 and not lazy.needs_warm_up

    def failing(embedder):
        raise MemoryError("out of device memory")

    lazy = LazyEmbedder(lambda: "embedder", warm_up=failing)
    with pytest.raises(MemoryError, match="out of device memory"):
        lazy.warm_up_here()

    def failing_build():
        raise OSError("weights.h5: unreadable")

    lazy = LazyEmbedder(failing_build, warm_up=lambda e: None)
    with pytest.raises(OSError, match="unreadable"):
        lazy.warm_up_here()
    with pytest.raises(OSError, match="unreadable"):
        lazy.get()
