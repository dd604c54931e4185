"""The benchmark scripts that must run anywhere run here, at a small size (their figures are in BENCHMARKS.md)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import skip_unless_installed

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_gpu_extract_small_setting_on_cpu(tmp_path, make_images):
    make_images(tmp_path / "source", 4)
    out = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, "gpu_extract.py", "--images", "48", "--source", str(tmp_path / "source"),
                           "--backbone", "rgb-stats", "--input-size", "64x48", "--batch-size", "8",
                           "--forward-images", "32", "--compression", "zstd", "--json", str(out)],
                          cwd=BENCH, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    for name in ("forward_img_s", "decode_threads_img_s", "decode_processes_img_s", "write_img_s", "extract_img_s"):
        assert figures[name] > 0, name
    assert figures["decode_img_s"] == figures["decode_threads_img_s"]  # the engine decodes in threads on a CPU
    assert figures["decode_threads_steady_img_s"] > 0  # after its first batch, as the extraction's steady rate
    # nvJPEG needs a CUDA GPU (and TorchCodec or torchvision): measured as not run, with the reason, and the run goes on
    assert figures["decode_nvjpeg_img_s"] == 0 and "--decoder nvjpeg" in figures["decode_nvjpeg_error"]
    assert figures["nvjpeg_vs_pillow"] == figures["decode_nvjpeg_error"]
    assert figures["in_flight_equal"] is True
    assert figures["distinct_files"] == 48  # every file's bytes differ (SHA-256)
    assert figures["extract_steady_img_s"] > 0 and figures["extract_steady_vs_limit"] > 0
    limit = min(figures["forward_img_s"], figures["decode_img_s"], figures["write_img_s"])
    assert abs(figures["extract_vs_limit"] - figures["extract_img_s"] / limit) < 1e-9
    assert figures["sizes"]["batch_size"] == 8 and figures["sizes"]["device"] == "cpu"  # the engine's sizing, as given
    assert set(figures["extract_stage_seconds"]) == {"decode", "backbone", "device", "writer", "write", "commit"}
    phases = figures["extract_phase_seconds"]  # parts of the run's seconds
    assert set(phases) == {"plan", "first_batch", "index"}
    assert figures["warm_up"] is False and figures["helpers_priority"] == "low"  # a CPU: no warm-up, helpers lowered
    assert 0 < phases["plan"] and 0 < phases["first_batch"] and 0 < phases["index"]
    assert phases["plan"] + phases["first_batch"] + phases["index"] < 48 / figures["extract_img_s_with_build"]
    (tmp_path / "runs").mkdir()
    out.rename(tmp_path / "runs" / "lite0-pretrained-zstd.json")
    table = subprocess.run([sys.executable, "gpu_targets.py", str(tmp_path / "runs")], cwd=BENCH, capture_output=True,
                           text=True, timeout=60)
    rows = [line for line in table.stdout.splitlines() if line.startswith("| ")]
    assert table.returncode == 0 and len(rows) == 1 + 14, table.stderr  # a header, then each run gpu_run.sh makes
    assert rows[1].endswith("not run |") and rows[4].endswith("| missed |")  # a CPU does not make 3000 img/s
    assert " / 0 | " in rows[4]  # its nvJPEG decode column: not run here
    assert all(row.endswith("not run |") for row in rows[5:])  # the bfloat16 and nvJPEG runs, the probes
    series = 1 / (1 / figures["forward_img_s"] + 1 / figures["decode_img_s"] + 1 / figures["write_img_s"])
    assert abs(figures["in_series_img_s"] - series) < 1e-9 and f" | {series:.0f} | " in rows[4]
    assert f" | {phases['first_batch']:.2f} | " in rows[4]
    beyond = 48 / figures["extract_img_s"] - (48 - 8) / figures["extract_steady_img_s"]  # the whole run's fixed costs
    assert f" | {phases['first_batch']:.2f} | {beyond:.2f} | " in rows[4]


def test_device_vs_cpu_compares_with_a_child_that_sees_no_accelerator(tmp_path, make_images):
    """On a machine without an accelerator both sides are the CPU: the child ran, and nothing differs."""
    make_images(tmp_path / "data", 2, classes=["glass", "paper"])
    done = subprocess.run([sys.executable, "device_vs_cpu.py", "--backbone", "rgb-stats", "--images", "4",
                           "--source", str(tmp_path / "data"), "--json", str(tmp_path / "figures.json")],
                          cwd=BENCH, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert (figures["images"], figures["device"], figures["reference"]) == (4, "cpu", "cpu")
    assert figures["maps_relative_l2"] == figures["avg_relative_l2"] == figures["float16_values_differing"] == 0
    assert figures["float16_values_beyond_one_step"] == 0


@pytest.mark.parametrize("library", ["torchcodec", "torchvision"])
def test_nvjpeg_check_finds_pillows_pixels_with_either_library_on_the_cpu(tmp_path, make_images, library):
    skip_unless_installed(library, f"--decoder nvjpeg with {library}")
    make_images(tmp_path / "data", 2, classes=["glass", "paper"])
    (tmp_path / "data" / "paper" / "notes.jpg").write_text("not an image")
    done = subprocess.run([sys.executable, "nvjpeg_check.py", "--source", str(tmp_path / "data"), "--size", "64x48",
                           "--repeats", "1", "--library", library], cwd=BENCH, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.splitlines()[-1])
    assert (figures["photos"], figures["to_nvjpeg"], figures["skipped"]) == (4, 4, 0)  # a text file is not scanned
    assert figures["library"] == library
    if figures["device"] == "cpu":  # the library's libjpeg-turbo: Pillow's pixels exactly
        assert figures["identical"] and figures["max_levels"] == 0


def test_claims_bench_runs_both_ways(tmp_path):
    done = subprocess.run([sys.executable, "claims.py", "--folder", str(tmp_path), "--repeats", "1"],
                          cwd=BENCH, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.splitlines()[-1])
    assert figures["buckets"] == 256 and all(ms > 0 for ms in figures["median_ms"].values())
    assert list(tmp_path.iterdir()) == []  # every claim, lease and folder it made is gone


def test_zstd_levels_bench_reads_a_cache_and_compresses_its_maps(small_cache):
    done = subprocess.run([sys.executable, "zstd_levels.py", "--cache", str(small_cache["cache"]), "--images", "8",
                           "--levels", "1,3"], cwd=BENCH, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["maps"] == 8 and figures["shape"] == [2, 2, 2048]
    assert [(row["level"], row["shuffle"]) for row in figures["rows"]] == [(1, False), (1, True), (3, False), (3, True)]
    assert all(0 < row["share_of_raw"] < 1.2 and row["ms_per_map"] > 0 for row in figures["rows"])


def test_extract_throughput_alternates_backbone_passes_and_extractions(tmp_path, make_images):
    make_images(tmp_path / "data", 3)
    out = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, "extract_throughput.py", "--data", str(tmp_path / "data"),
                           "--backbone", "rgb-stats", "--batch-size", "4", "--dtype", "float16",
                           "--compression", "none,zstd", "--repeats", "2", "--report-json", str(out)],
                          cwd=BENCH, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    assert [f["compression"] for f in figures] == ["none", "zstd"]
    for f in figures:
        assert f["images"] == f["new"] == 18 and f["repeats"] == 2
        assert len(f["backbone_img_s_passes"]) == 3 and len(f["extract_img_s_runs"]) == 2  # B N Z B Z N B
        assert abs(f["ratio"] - f["extract_img_s"] / f["backbone_img_s"]) < 1e-9
        assert f["noop_fraction"] < 1


def test_helper_cpu_bench_decodes_and_writes(tmp_path, make_images):
    make_images(tmp_path / "data", 2)
    done = subprocess.run([sys.executable, "helper_cpu.py", "--data", str(tmp_path / "data"), "--images", "8",
                           "--shape", "2,2,8", "--shards", "2"], cwd=BENCH, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["decode"]["images"] == 8 and report["decode"]["cpu_ms"] >= 0
    for compression in ("none", "zstd"):
        assert len(report[f"write_{compression}"]["shards"]) == 2


def test_helper_priority_bench_alternates_the_modes(tmp_path, make_images):
    make_images(tmp_path / "data", 2)
    done = subprocess.run([sys.executable, "helper_priority.py", "--data", str(tmp_path / "data"), "--backbone",
                           "rgb-stats", "--repeats", "2", "--modes", "nice10,idle"], cwd=BENCH, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rates = json.loads(done.stdout.splitlines()[-1])
    assert [len(rates[k]) for k in ("backbone", "nice10", "idle")] == [3, 2, 2]
    assert "nice10: extraction / backbone" in done.stdout and "idle: extraction / backbone" in done.stdout


def test_helper_priority_modes_reach_every_helper(monkeypatch):
    """Each module binds lower_thread_priority as it imports it: a mode must reach the writer and the pools too."""
    from featurebank import array_pool, cache, decoding, gpu_decoding, images, pipeline

    modules = (array_pool, cache, decoding, gpu_decoding, images, pipeline)
    for module in modules:  # put back after the test
        monkeypatch.setattr(module, "lower_thread_priority", module.lower_thread_priority)
    monkeypatch.syspath_prepend(str(BENCH))
    from helper_priority import use_mode

    use_mode("nice19")
    assert len({module.lower_thread_priority for module in modules}) == 1
    assert images.lower_thread_priority.__qualname__ == "priority_setter.<locals>.lower"


def test_decoder_priority_bench_alternates_the_ways(tmp_path, make_images):
    make_images(tmp_path / "data", 2)
    out = tmp_path / "priority.json"
    done = subprocess.run([sys.executable, "decoder_priority.py", "--data", str(tmp_path / "data"), "--photos", "12",
                           "--seconds", "0.3", "--repeats", "2", "--workers", "1", "--decode-size", "32x32",
                           "--json", str(out)], cwd=BENCH, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert [len(figures["runs"][way]) for way in ("none", "normal", "low")] == [2, 2, 2]
    assert figures["medians"]["none"]["decode_img_s"] == 0  # no decoding beside the engine thread
    assert figures["medians"]["normal"]["decode_img_s"] > 0 and figures["medians"]["low"]["decode_img_s"] > 0
    assert "decoders at nice 10 against nice 0: engine thread ×" in done.stdout


def test_the_normal_priority_probe_gives_extraction_its_helpers_back_and_returns(tmp_path, make_images, monkeypatch):
    """bench/common.helpers_at_normal_priority (gpu_extract.py --helpers-at-normal-priority), then the engine's way."""
    import featurebank
    from featurebank import pipeline

    monkeypatch.syspath_prepend(str(BENCH))
    from common import helpers_at_normal_priority

    make_images(tmp_path / "data", 1)
    seen, original = [], pipeline.decoded_batches
    monkeypatch.setattr(pipeline, "decoded_batches", lambda *a, **k: seen.append(k["priority"]) or original(*a, **k))
    for normal, cache in ((True, "probe"), (False, "engine")):
        helpers_at_normal_priority(normal)
        featurebank.extract(tmp_path / "data", backbone="rgb-stats", cache=tmp_path / cache, weights="none")
    assert seen == ["normal", "low"]


def test_host_probe_and_decode_parent_benches_run_small(tmp_path, make_images):
    probe = subprocess.run([sys.executable, "host_probe.py", "--megabytes", "8", "--repeats", "2"], cwd=BENCH,
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    figures = json.loads(probe.stdout.strip().splitlines()[-1])
    assert figures["fresh_gb_s"] > 0 and figures["reused_gb_s"] > 0 and figures["loky_start_s"] > 0
    if Path("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list").is_file():  # Linux: read, not guessed
        assert figures["threads_per_core"] >= 1 and figures["cpu_model"]
    make_images(tmp_path, 2)
    done = subprocess.run([sys.executable, "decode_parent.py", "--images", "12", "--batch-size", "4", "--repeats", "1",
                           "--source", str(tmp_path)], cwd=BENCH, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "12 images, 1 decoding processes, up to 32 files a task: parent CPU" in done.stdout


def test_gpu_extract_refuses_more_images_than_its_photos_make_distinct(tmp_path, make_images):
    make_images(tmp_path / "source", 1, classes=["glass"])  # 1 photo: 36 qualities, 36 distinct files
    done = subprocess.run([sys.executable, "gpu_extract.py", "--images", "37", "--source", str(tmp_path / "source"),
                           "--backbone", "rgb-stats"], cwd=BENCH, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "1 photos make at most 36 distinct JPEGs, and --images asks for 37" in done.stderr


TF32_PROBE = """
import numpy as np
import torch
from common import allow_tf32
from featurebank.backbones import get_backbone
allow_tf32()
features = get_backbone("efficientnet-lite0").build("none", (64, 64), 2)
seen = []
first_conv = next(m for m in features.model.modules() if isinstance(m, torch.nn.Conv2d))
first_conv.register_forward_hook(lambda *_: seen.append(torch.backends.cudnn.conv.fp32_precision))
features.embed(np.zeros((2, 64, 64, 3), dtype=np.uint8), np.float16)
allow_tf32(False)  # the engine's way back (compute_dtype.py --tf32 alternates the two)
features.embed(np.zeros((2, 64, 64, 3), dtype=np.uint8), np.float16)
print(seen)
"""


def test_the_tf32_probe_leaves_the_libraries_default_to_float32_backbones():
    """bench/common.allow_tf32 (gpu_extract.py and device_vs_cpu.py --tf32): what the engine's IEEE float32 costs."""
    pytest.importorskip("efficientnet_lite_pytorch", reason="needs the offline extra")
    import torch

    if not hasattr(torch.backends.cudnn, "conv"):
        pytest.skip("torch < 2.9 names its TF32 settings otherwise")
    done = subprocess.run([sys.executable, "-c", TF32_PROBE], cwd=BENCH, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "['tf32', 'ieee']"  # torch's default, then the engine's


def test_float16_steps_between_two_caches_are_counted_from_the_larger_value(monkeypatch):
    import numpy as np

    monkeypatch.syspath_prepend(str(BENCH))
    from device_vs_cpu import beyond_one_float16_step

    reference = np.array([1.0, 1.5, 2.0, -3.0, 0.0], np.float16)
    one_step = np.nextafter(reference, np.float16(np.inf))  # a value and the next float16: within rounding
    assert beyond_one_float16_step(one_step, reference) == 0.0
    assert beyond_one_float16_step(np.nextafter(one_step, np.float16(np.inf)), reference) == 1.0


def test_profile_summary_adds_up_threads_and_where_the_engine_thread_ended(tmp_path):
    """bench/profile_summary.py on py-spy's collapsed stacks (the lines gpu_extract.py --profile writes)."""
    (tmp_path / "profile.txt").write_text(
        "thread (11): MainThread;0x7f00 (libc.so.6);main (gpu_extract.py:250);submit (device.py:103);"
        "__memmove_avx_unaligned (libc.so.6) 30\n"
        "thread (11): MainThread;0x7f00 (libc.so.6);main (gpu_extract.py:250);fetch (device.py:131);"
        "take_gil (libpython3.12.so);0x7f01 (libc.so.6) 10\n"
        "thread (12): featurebank-array_0;worker (thread.py:89) 5\n"
        "thread (13): featurebank-array_1;worker (thread.py:89) 7\n")
    done = subprocess.run([sys.executable, "profile_summary.py", str(tmp_path / "profile.txt")], cwd=BENCH,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "samples per thread name: MainThread 40, featurebank-array 12"
    assert lines[1] == "MainThread: 40 samples; where they ended:"
    assert lines[2].split() == ["75.0%", "submit", "(device.py:103)", ">", "__memmove_avx_unaligned"]
    assert lines[3].split() == ["25.0%", "fetch", "(device.py:131)", ">", "take_gil"]

    # gpu_extract.py runs extraction on a thread of its own (featurebank-engine_0): that one is summed up by default
    (tmp_path / "engine.txt").write_text(
        "thread (11): MainThread;main (gpu_extract.py:250);result (_base.py:451) 40\n"
        "thread (14): featurebank-engine_0;extract (extraction.py:269);submit (device.py:103) 9\n")
    done = subprocess.run([sys.executable, "profile_summary.py", str(tmp_path / "engine.txt")], cwd=BENCH,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:3] == ["featurebank-engine: 9 samples; where they ended:",
                                             "  100.0%  submit (device.py:103)"]


def test_compression_gil_runs_its_three_ways(tmp_path):
    """bench/compression_gil.py at a tiny setting: each way ran, and the batch way gave per-row's frames (it asserts)."""
    pytest.importorskip("efficientnet_lite_pytorch", reason="needs the offline extra")
    out = tmp_path / "gil.json"
    done = subprocess.run([sys.executable, "compression_gil.py", "--seconds", "0.3", "--repeats", "1", "--json", str(out)],
                          cwd=BENCH, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    medians = json.loads(out.read_text())["medians"]
    assert medians["none"]["batches_per_s"] == 0 and min(m["forwards_per_s"] for m in medians.values()) > 0
    assert medians["per-row"]["batches_per_s"] > 0 and medians["batch"]["batches_per_s"] > 0


def test_hashing_bench_hashes_each_way_to_the_same_result(tmp_path, make_images):
    make_images(tmp_path / "source", 2)
    done = subprocess.run([sys.executable, "hashing.py", "--data", str(tmp_path / "source"), "--distinct", "40",
                           "--data-dir", str(tmp_path / "jpegs"), "--workers", "1,2", "--repeats", "1"],
                          cwd=BENCH, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.splitlines()[-1])
    assert figures["files"] == 40 and figures["same_results"] is True
    assert set(figures["ways"]) == {"1", "2"} and figures["ways"]["1"]["speed_vs_1"] == 1.0
    assert all(way["files_s"] > 0 and len(way["runs_seconds"]) == 1 for way in figures["ways"].values())


def test_sift_pool_bench_times_both_pools_and_finds_the_same_descriptors(tmp_path, make_images):
    make_images(tmp_path / "source", 1, size=(96, 128))
    done = subprocess.run([sys.executable, "sift_pool.py", "--data", str(tmp_path / "source"), "--image-size", "96x128",
                           "--repeats", "1"], cwd=BENCH, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.splitlines()[-1])
    assert figures["photos"] == 6 and figures["identical"] is True
    assert set(figures["seconds"]) == {"own-pool", "array-pool"} and all(v > 0 for v in figures["seconds"].values())


def test_audit_bench_times_the_pixel_statistics_without_a_cache(tmp_path, make_images):
    written = make_images(tmp_path / "source", 3)
    broken = written[0].with_name("broken.jpg")  # a JPEG's start: the scan keeps it, decoding fails
    broken.write_bytes(written[0].read_bytes()[:200])
    done = subprocess.run([sys.executable, "audit.py", "--pixel-statistics", "--data", str(tmp_path / "source"),
                           "--repeats", "2"], cwd=BENCH, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    timed = [line for line in done.stdout.splitlines() if line.startswith("pixel statistics of")]
    assert len(timed) == 2 and all("(1 unreadable)" in line for line in timed), done.stdout
    missing = subprocess.run([sys.executable, "audit.py"], cwd=BENCH, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "--cache is required" in missing.stderr


def test_fp32_ceiling_times_every_way_of_both_backbones_at_a_small_size(tmp_path):
    skip_unless_installed("torchvision", "the float32 ceiling probe runs torchvision's ResNet50")
    skip_unless_installed("efficientnet-lite-pytorch", "the float32 ceiling probe runs EfficientNet-Lite0")
    out = tmp_path / "ceiling.json"
    done = subprocess.run([sys.executable, "fp32_ceiling.py", "--images", "4", "--batch-size", "2", "--input-size",
                           "128x96", "--repeats", "1", "--json", str(out)], cwd=BENCH, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    assert figures["images_per_pass"] == 4 and list(figures["models"]) == ["resnet50", "efficientnet-lite0"]
    resnet, lite = figures["models"]["resnet50"], figures["models"]["efficientnet-lite0"]
    # the maps a cache stores: 2048 and 1280 channels at a 32nd of the input
    assert resnet["map_shape"] == [2048, 4, 3] and lite["map_shape"] == [1280, 4, 3]
    ways = {"engine", "float32-nchw", "float32-channels-last", "tf32-channels-last", "bfloat16-channels-last"}
    for model in (resnet, lite):
        assert set(model["img_s"]) == ways and all(rate > 0 for rate in model["img_s"].values())
        ieee = {way: model["img_s"][way] for way in ("engine", "float32-nchw", "float32-channels-last")}
        assert model["ieee_float32_best_img_s"] == max(ieee.values()) == ieee[model["ieee_float32_best_way"]]
    # Keras's ResNet v1 (the stride on each stage's first 1x1), not torchvision's v1.5: Keras's 30.22 GFLOP at
    # 512x384, and every layer's maps 16 times smaller here (torch's counter: 1,888,616,448 FLOP)
    assert resnet["gflop_per_image"] == pytest.approx(1.888616448, rel=1e-9)
    (tmp_path / "runs").mkdir()
    out.rename(tmp_path / "runs" / "fp32_ceiling.json")  # as gpu_run.sh leaves it, beside the rows' files
    table = subprocess.run([sys.executable, "gpu_targets.py", str(tmp_path / "runs")], cwd=BENCH, capture_output=True,
                           text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    for model, floor in ((resnet, "below the 1400 img/s floor of full ResNet50 maps"),
                         (lite, "below the 3000 img/s floor of compressed Lite0 maps")):
        assert f"IEEE float32 at best: {model['ieee_float32_best_img_s']:.0f} img/s" in table.stdout
        assert floor in table.stdout
    keras = subprocess.run([sys.executable, "fp32_ceiling.py", "--keras-flops", "--input-size", "128x96"], cwd=BENCH,
                           capture_output=True, text=True, timeout=300)
    assert keras.returncode == 0 and "at 128x96: 1.89 GFLOP an image" in keras.stdout, keras.stderr  # 30.22 / 16
    assert f"{resnet['gflop_per_image']:.2f} GFLOP" in keras.stdout  # the trunk timed does Keras's arithmetic
