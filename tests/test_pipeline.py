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


def test_next_to_a_gpu_the_first_call_is_warmed_up_on_the_build_thread(tmp_path, make_images, monkeypatch):
    """Accelerated sizes: one warm-up of the run's batch shape, on the build thread, before the first batch is
    submitted, and the same cache as without it; on a CPU (the sizes as chosen here) none."""
    import dataclasses
    import threading

    import numpy as np

    from featurebank import extraction
    from featurebank.embed import Embedder

    make_images(tmp_path / "data", 1)  # 6 images: 3 batches of 2
    events = []
    monkeypatch.setattr(Embedder, "warm_up", lambda self, batch, size: events.append(
        ("warm-up", threading.current_thread().name, batch, size)))
    submit = Embedder.submit
    monkeypatch.setattr(Embedder, "submit", lambda self, images: events.append(("submit", len(images)))
                        or submit(self, images))
    options = dict(backbone="rgb-stats", weights="none", batch_size=2, input_size=(40, 32))
    featurebank.extract(tmp_path / "data", cache=tmp_path / "cpu", **options)
    assert events[:1] == [("submit", 2)] and "warm-up" not in {e[0] for e in events}

    choose_sizes = extraction.choose_sizes
    monkeypatch.setattr(extraction, "choose_sizes",
                        lambda *a, **k: dataclasses.replace(choose_sizes(*a, **k), device="gpu: a test's"))
    events.clear()
    report = featurebank.extract(tmp_path / "data", cache=tmp_path / "gpu", **options)
    assert report.sizes["device"] == "gpu: a test's" and report.new == 6
    assert events[0] == ("warm-up", "featurebank-build", 2, (40, 32)) and events[1:] == [("submit", 2)] * 3
    cpu, gpu = (featurebank.load(tmp_path / name, backbone="rgb-stats", pooling="avg") for name in ("cpu", "gpu"))
    np.testing.assert_array_equal(cpu.X, gpu.X)


def test_a_warm_up_is_not_build_time_and_its_failure_is_raised():
    """build_seconds is the wait for the build alone (the bench leaves it out of a run's rate; a warm-up is the
    run's own first call), get waits for the warm-up, and an error in it comes out of get."""
    from featurebank.pipeline import LazyEmbedder

    warmed = []
    lazy = LazyEmbedder(lambda: time.sleep(0.3) or "embedder", warm_up=lambda e: time.sleep(0.6) or warmed.append(e))
    lazy.start()
    lazy.built()  # the 0.3 s build, not the 0.6 s warm-up after it
    assert 0.25 < lazy.build_seconds < 0.85 and warmed == []
    assert lazy.get() == "embedder" and warmed == ["embedder"] and lazy.build_seconds < 0.85

    def failing(embedder):
        raise MemoryError("out of device memory")

    lazy = LazyEmbedder(lambda: "embedder", warm_up=failing)
    lazy.built()
    with pytest.raises(MemoryError, match="out of device memory"):
        lazy.get()
