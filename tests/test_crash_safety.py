"""kill -9 mid-extraction, readers during writes, changed files, damaged caches, full and read-only disks."""

import random
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import featurebank
from featurebank.errors import CacheError
from conftest import FEATUREBANK

SIZE = "256x192"  # big enough that extraction lasts a few seconds, small enough for CI


def extract_command(data, cache, *extra):
    return [*FEATUREBANK, "extract", "--weights", "none", "--input-size", SIZE, "--batch-size", "4",
            "--shard-size", "4", "--data", str(data), "--cache", str(cache), "--quiet", *extra]


def committed_shards(cache: Path) -> int:
    return sum(1 for p in cache.glob("*.shards/*.h5") if not p.name.startswith("."))


def committed_images(cache: Path) -> set:
    digests = set()
    for shard in cache.glob("*.shards/[!.]*.h5"):
        with h5py.File(shard, "r") as fh:
            digests |= set(fh["sha256"].asstr()[...])
    return digests


def wait_for_new_shard(cache: Path, process, before: int, timeout=120) -> bool:
    """Wait until the running extraction commits a shard beyond the ``before`` that existed."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if committed_shards(cache) > before:
            return True
        time.sleep(0.01)
    return False


def check_consistent(cache: Path, expected_total: int | None = None):
    """The cache opens and loads; rows are finite, unique, and (optionally) complete."""
    fb = featurebank.load(cache=cache, backbone="resnet50")
    assert np.isfinite(fb.X).all()
    assert len(set(fb.sha256)) == len(fb) and len(set(fb.paths)) == len(fb)
    if expected_total is not None:
        assert len(fb) == expected_total
    return fb


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_nothing_committed(tmp_path, make_images):
    data = tmp_path / "data"
    make_images(data, 8)
    reference = tmp_path / "reference"
    subprocess.run(extract_command(data, reference), check=True, timeout=300)
    expected = check_consistent(reference, 48)

    cache = tmp_path / "cache"
    rng = random.Random(1234)
    kills = 0
    for _ in range(3):  # each run commits at least one shard (4 of 48 images) before it is killed
        before = committed_shards(cache)
        process = subprocess.Popen(extract_command(data, cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if wait_for_new_shard(cache, process, before):
            time.sleep(rng.uniform(0.0, 0.02))  # a random moment, soon enough that 40+ images are still to do
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
        # A killed run leaves a cache that opens and loads, with every committed image in it: at most the
        # shard being written is lost.
        assert len(check_consistent(cache)) == len(committed_images(cache))
    assert kills >= 2
    subprocess.run(extract_command(data, cache), check=True, timeout=300)
    final = check_consistent(cache, 48)
    order = {p: i for i, p in enumerate(expected.paths)}
    aligned = np.array([order[p] for p in final.paths])
    np.testing.assert_allclose(final.X, expected.X[aligned], rtol=1e-4, atol=1e-4)
    assert not list(cache.glob("**/.tmp~*"))


@pytest.mark.slow
def test_reader_during_extraction_sees_only_complete_rows(tmp_path, make_images):
    data, cache = tmp_path / "data", tmp_path / "cache"
    make_images(data, 6)
    process = subprocess.Popen(extract_command(data, cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sizes = []
    while process.poll() is None:
        try:
            sizes.append(len(check_consistent(cache)))
        except CacheError as exc:
            assert "no feature cache matches" in str(exc)  # nothing committed yet
        time.sleep(0.05)
    assert process.returncode == 0
    sizes.append(len(check_consistent(cache, 36)))
    assert len(sizes) >= 2 and sizes == sorted(sizes)


def test_changed_and_deleted_images(tmp_path, make_images):
    from PIL import Image

    data, cache = tmp_path / "data", tmp_path / "cache"
    make_images(data, 2)
    options = dict(cache=cache, weights="none", input_size=(64, 64))
    featurebank.extract(data, **options)
    before = featurebank.load(cache=cache)
    changed, deleted = data / "glass" / "glass0.jpg", data / "metal" / "metal1.jpg"
    old_digest = before.sha256[list(before.paths).index("glass/glass0.jpg")]
    Image.new("RGB", (64, 48), (5, 5, 5)).save(changed)
    deleted.unlink()
    report = featurebank.extract(data, **options)
    assert (report.new, report.cached, report.images) == (1, 10, 11)
    after = featurebank.load(cache=cache)
    assert "metal/metal1.jpg" not in after.paths
    assert old_digest not in after.sha256
    row = list(after.paths).index("glass/glass0.jpg")
    assert not np.allclose(after.X[row], before.X[list(before.paths).index("glass/glass0.jpg")])


def test_damaged_index_is_reported_and_rebuilt(tmp_path, make_images):
    data, cache = tmp_path / "data", tmp_path / "cache"
    make_images(data, 1)
    options = dict(cache=cache, weights="none", input_size=(64, 64))
    report = featurebank.extract(data, **options)
    Path(report.cache_file).write_bytes(b"garbage" * 100)
    with pytest.raises(CacheError, match="not a readable featurebank cache index.*extract"):
        featurebank.load(report.cache_file)
    assert featurebank.extract(data, **options).new == 0  # rebuilt from the shards, nothing recomputed
    check_consistent(cache, 6)


def test_damaged_shard_is_set_aside_and_recomputed(tmp_path, make_images):
    data, cache = tmp_path / "data", tmp_path / "cache"
    make_images(data, 2)
    options = dict(cache=cache, weights="none", input_size=(64, 64), shard_size=4)
    featurebank.extract(data, **options)
    shard = sorted(cache.glob("*.shards/*.h5"))[0]
    shard.write_bytes(shard.read_bytes()[:1000])
    warnings = []
    report = featurebank.extract(data, **options, warn=warnings.append)
    assert report.new == 4 and "unreadable shard moved aside" in warnings[0]
    check_consistent(cache, 12)


def test_rebuild_starts_over(tmp_path, make_images):
    data, cache = tmp_path / "data", tmp_path / "cache"
    make_images(data, 1)
    options = dict(cache=cache, weights="none", input_size=(64, 64))
    featurebank.extract(data, **options)
    assert featurebank.extract(data, **options, rebuild=True).new == 6


def test_cache_path_under_a_file_gives_one_clean_line(tmp_path, make_images):
    make_images(tmp_path / "data", 1)
    (tmp_path / "blocker").write_text("a file where a folder should be")
    done = subprocess.run(extract_command(tmp_path / "data", tmp_path / "blocker" / "cache"), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"Error: {tmp_path / 'blocker' / 'cache'}: cannot write the cache folder: not a directory"]


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 3 MiB tmpfs (root only); skipped where mounting is not allowed."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_gives_one_clear_error_and_keeps_committed_shards(tiny_filesystem, tmp_path, make_images):
    data = tmp_path / "data"
    make_images(data, 20)  # 120 images × 32 KiB of float32 features: more than 3 MiB
    done = subprocess.run([*FEATUREBANK, "extract", "--weights", "none", "--input-size", "64x64", "--shard-size", "8",
                           "--dtype", "float32", "--compression", "none",
                           "--data", str(data), "--cache", str(tiny_filesystem / "cache"), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "no space left on device" in done.stderr and "Traceback" not in done.stderr
    assert str(tiny_filesystem / "cache") in done.stderr  # the error names the folder
    assert not list(tiny_filesystem.glob("cache/**/.tmp~*"))
    shards = list(tiny_filesystem.glob("cache/*.shards/*.h5"))
    assert shards, "no shard was committed before the disk filled up"
    for shard in shards:
        with h5py.File(shard, "r") as fh:
            assert np.isfinite(fh["features"][...]).all()


def test_read_only_cache_folder(tiny_filesystem, tmp_path, make_images):
    make_images(tmp_path / "data", 1)
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_filesystem)], check=True)
    with pytest.raises(CacheError, match="cannot write the cache folder: read-only file system"):
        featurebank.extract(tmp_path / "data", cache=tiny_filesystem / "cache", weights="none", input_size=(64, 64))
