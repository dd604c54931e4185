"""Several writers on one cache, the hash memo, and damage told apart from trouble (the million-image issue)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import FEATUREBANK

import featurebank
import featurebank.index
import featurebank.scan
import featurebank.splits
from featurebank.errors import CacheError
from featurebank.files import HOST, MemoryFile
from featurebank.splits import assign_splits


def extract_command(data, cache, *extra):
    return [*FEATUREBANK, "extract", "--weights", "none", "--input-size", "96x96", "--batch-size", "2",
            "--shard-size", "2", "--data", str(data), "--cache", str(cache), "--json", "--quiet", *extra]


def shards_by(cache, pid) -> list:
    return [p for p in cache.glob("*.shards/*.h5") if f"-{HOST}-{pid}-" in p.name and not p.name.startswith(".")]


def complete_and_unique(cache, total):
    fb = featurebank.load(cache=cache, backbone="resnet50")
    assert len(fb) == total and len(set(fb.paths)) == total and np.isfinite(fb.X).all()
    stored = []
    for shard in cache.glob("*.shards/[!.]*.h5"):  # committed shards, not a killed writer's temporaries
        with h5py.File(shard, "r") as fh:
            stored += fh["sha256"].asstr()[...].tolist()
    return fb, stored


def test_two_concurrent_writers_compute_each_image_once(tmp_path, make_images):
    data, cache = tmp_path / "data", tmp_path / "cache"
    make_images(data, 8)  # 48 distinct images
    first, second = (subprocess.Popen(extract_command(data, cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True) for _ in range(2))
    reports = [json.loads(p.communicate(timeout=300)[0]) for p in (first, second)]
    assert first.returncode == second.returncode == 0
    assert sum(r["new"] for r in reports) == 48  # every image computed once between them
    assert all(r["new"] > 0 for r in reports)  # and both did some of the work
    fb, stored = complete_and_unique(cache, 48)
    assert len(stored) == len(set(stored)) == 48  # no image stored twice


def test_kill_9_of_one_writer_while_the_other_goes_on(tmp_path, make_images):
    data = tmp_path / "data"
    make_images(data, 8)
    reference = tmp_path / "reference"
    subprocess.run(extract_command(data, reference), check=True, capture_output=True, timeout=300)
    expected, _ = complete_and_unique(reference, 48)

    cache = tmp_path / "cache"
    victim = subprocess.Popen(extract_command(data, cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    survivor = subprocess.Popen(extract_command(data, cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not shards_by(cache, victim.pid) and victim.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert shards_by(cache, victim.pid), "the first writer committed nothing before it ended"
    victim.send_signal(signal.SIGKILL)  # it still holds claims on work it has not committed
    victim.wait()
    out, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err
    final, stored = complete_and_unique(cache, 48)  # complete without a re-run: the survivor took the work over
    assert len(stored) == len(set(stored))
    order = {p: i for i, p in enumerate(expected.paths)}
    np.testing.assert_array_equal(final.X, expected.X[[order[p] for p in final.paths]])


def test_memo_skips_unchanged_files_and_catches_same_size_edits(tmp_path, make_images, monkeypatch):
    data, cache = tmp_path / "data", tmp_path / "cache"
    paths = make_images(data, 2)
    past = time.time() - 3600
    for path in paths:
        os.utime(path, (past, past))  # older than the memo's racy window, so the memo keeps them
    options = dict(cache=cache, weights="none", input_size=(64, 64))
    featurebank.extract(data, **options)
    hashed = []
    real_hash = featurebank.scan.hash_file
    monkeypatch.setattr(featurebank.scan, "hash_file", lambda path, *a: hashed.append(Path(path)) or real_hash(path, *a))
    assert featurebank.extract(data, **options).new == 0
    assert hashed == []  # a no-op run reads no image bytes

    edited = paths[3]
    content = bytearray(edited.read_bytes())
    middle = next(i for i in range(len(content) // 2, len(content)) if content[i] not in (0x00, 0xFF)
                  and content[i - 1] != 0xFF and content[i] ^ 0x01 not in (0x00, 0xFF))
    content[middle] ^= 0x01  # inside the JPEG's entropy-coded data: same size, other bytes, still decodable
    edited.write_bytes(bytes(content))
    assert edited.stat().st_size == len(content)
    report = featurebank.extract(data, **options)
    assert hashed == [edited] and report.new == 1
    assert featurebank.extract(data, **options, rehash=True).new == 0
    assert len(hashed) == 1 + 12  # --rehash reads every file


def test_a_missing_or_damaged_shard_is_an_error_never_nans(tmp_path, make_images):
    data, cache = tmp_path / "data", tmp_path / "cache"
    make_images(data, 2)
    featurebank.extract(data, cache=cache, weights="none", input_size=(64, 64), shard_size=4)
    shards = sorted(cache.glob("*.shards/*.h5"))
    shards[0].rename(tmp_path / "moved.h5")
    with pytest.raises(CacheError, match=f"{shards[0].name}: shard is missing.*featurebank extract"):
        featurebank.load(cache=cache)
    (tmp_path / "moved.h5").rename(shards[0])
    shards[1].write_bytes(b"\0" * shards[1].stat().st_size)
    with pytest.raises(CacheError, match=f"{shards[1].name}: shard is damaged"):
        featurebank.load(cache=cache)
    lazy = featurebank.load(cache=cache, lazy=True)
    with pytest.raises(CacheError):
        np.asarray(lazy.X)


HOLD_WRITE_LOCK = """
import sys, time, h5py
with h5py.File(sys.argv[1], "r+"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_lock_error_does_not_quarantine_a_good_shard(tmp_path, make_images):
    data, cache = tmp_path / "data", tmp_path / "cache"
    make_images(data, 1)
    options = dict(cache=cache, weights="none", input_size=(64, 64), shard_size=4)
    featurebank.extract(data, **options)
    shard = sorted(cache.glob("*.shards/*.h5"))[0]
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WRITE_LOCK, str(shard)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "HDF5_USE_FILE_LOCKING": "TRUE"})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(CacheError, match="cannot open shard: HDF5 cannot lock it.*file itself is intact"):
            featurebank.extract(data, **options, verify=True)
    finally:
        holder.kill()
        holder.wait()
    assert shard.exists() and not list(cache.glob("*.shards/*.corrupt"))
    assert featurebank.extract(data, **options, verify=True).new == 0


def test_cleanup_touches_only_this_hosts_dead_temporaries(tmp_path, make_images):
    data, cache = tmp_path / "data", tmp_path / "cache"
    make_images(data, 1)
    options = dict(cache=cache, weights="none", input_size=(64, 64))
    report = featurebank.extract(data, **options)
    shard_dir = cache / (os.path.basename(report.cache_file)[:-3] + ".shards")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    mine_dead = shard_dir / f".tmp~{HOST}~{dead.stdout.strip()}~abcd1234~x.h5"
    mine_alive = shard_dir / f".tmp~{HOST}~{os.getpid()}~abcd1234~y.h5"
    other_host = shard_dir / ".tmp~another-host~1~abcd1234~z.h5"
    for path in (mine_dead, mine_alive, other_host):
        path.write_bytes(b"half-written")
    featurebank.extract(data, **options)
    assert not mine_dead.exists() and mine_alive.exists() and other_host.exists()


def test_noop_run_opens_no_shard_and_keeps_the_index_but_a_move_rewrites_it(tmp_path, make_images, monkeypatch):
    data, cache = tmp_path / "data", tmp_path / "cache"
    paths = make_images(data, 2)
    past = time.time() - 3600
    for path in paths:
        os.utime(path, (past, past))
    options = dict(cache=cache, weights="none", input_size=(64, 64))
    featurebank.extract(data, **options)
    index = next(cache.glob("resnet50-*.h5"))
    written = index.stat().st_ino, index.stat().st_mtime_ns
    opened = []
    real_open = featurebank.index.open_shard
    monkeypatch.setattr(featurebank.index, "open_shard", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k))
    report = featurebank.extract(data, **options)
    assert (report.new, report.cached, report.images) == (0, 12, 12)
    assert opened == [] and (index.stat().st_ino, index.stat().st_mtime_ns) == written  # nothing read, nothing written

    moved = data / "paper" / "glass0.jpg"
    (data / "glass" / "glass0.jpg").rename(moved)  # same bytes, same time, another class: not a no-op
    report = featurebank.extract(data, **options)
    assert (report.new, report.images) == (0, 12)
    fb = featurebank.load(cache=cache)
    assert fb.classes[fb.y[list(fb.paths).index("paper/glass0.jpg")]] == "paper"
    assert "glass/glass0.jpg" not in fb.paths
    assert featurebank.extract(data, **options, split_seed=1).images == 12  # other splits: index rewritten
    reseeded = featurebank.load(cache=cache)
    assert reseeded.split.tolist() != fb.split.tolist()
    assert reseeded.split.tolist() == assign_splits(reseeded.sha256.tolist(), seed=1).tolist()


def test_a_run_that_adds_images_draws_splits_for_those_only(tmp_path, make_images, monkeypatch):
    data, cache = tmp_path / "data", tmp_path / "cache"
    make_images(data, 2)
    options = dict(cache=cache, weights="none", input_size=(64, 64))
    featurebank.extract(data, **options)
    make_images(data, 1, start=2)  # one more image per class
    draws = []
    real_draw = featurebank.splits.hash_uniform
    monkeypatch.setattr(featurebank.splits, "hash_uniform", lambda *a: draws.append(a[0]) or real_draw(*a))
    report = featurebank.extract(data, **options)
    fb = featurebank.load(cache=cache)
    assert report.new == 6 and len(fb) == 18
    assert sorted(draws) == sorted(set(draws)) and len(draws) == 6  # the new images' splits, each drawn once
    assert fb.split.tolist() == assign_splits(fb.sha256.tolist()).tolist()

    with h5py.File(next(cache.glob("resnet50-*.h5")), "a") as index:  # as an index of an older version wrote it
        del index["stored_split"]
    make_images(data, 1, start=3)
    assert featurebank.extract(data, **options).new == 6
    fb = featurebank.load(cache=cache)
    assert len(fb) == 24 and fb.split.tolist() == assign_splits(fb.sha256.tolist()).tolist()


def test_claims_are_hard_links_to_the_lease_and_void_once_their_writer_is_gone(tmp_path, monkeypatch):
    import os

    from featurebank.claims import WorkClaims

    first, second = WorkClaims(tmp_path).__enter__(), WorkClaims(tmp_path).__enter__()
    claim = tmp_path / "claims" / "ab"
    assert first.claim("ab") and claim.stat().st_ino == first.lease.stat().st_ino
    assert claim.read_text().strip() == first.lease.name
    assert not second.claim("ab")  # its owner's lease is alive
    first.lease.unlink()  # the owner is gone (crashed, its lease forgotten)
    assert second.claim("ab") and claim.read_text().strip() == second.lease.name
    first.__exit__(None, None, None)
    assert claim.exists()  # a writer leaving never removes a claim another writer took over
    second.__exit__(None, None, None)
    assert not claim.exists() and not second.lease.exists()

    def no_links(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)  # a file system without hard links
    with WorkClaims(tmp_path) as third:
        assert third.claim("cd")
        other = tmp_path / "claims" / "cd"
        assert other.read_text() == third.lease.name and other.stat().st_ino != third.lease.stat().st_ino
    assert not other.exists()


def write_shard_like(memory: MemoryFile, path, rows: int) -> np.ndarray:
    """An HDF5 file shaped like a shard (one map per chunk, an odd-sized string column), committed through ``memory``."""
    maps = np.random.default_rng(rows).standard_normal((rows, 3, 5, 7)).astype(np.float16)
    fh = memory.new_h5()
    features = fh.create_dataset("features", shape=(0, 3, 5, 7), maxshape=(None, 3, 5, 7), dtype=np.float16,
                                 chunks=(1, 3, 5, 7))
    for start in range(0, rows, 4):  # appended batch by batch, as the writer does
        features.resize(min(rows, start + 4), axis=0)
        features[start : start + 4] = maps[start : start + 4]
    fh.create_dataset("paths", data=[f"photo-{i}.jpg" for i in range(rows)], dtype=h5py.string_dtype("utf-8"))
    memory.commit(fh, path)
    return maps


@pytest.mark.parametrize("refuse_direct", [False, True], ids=["o-direct", "o-direct-refused"])
def test_shards_written_past_the_page_cache_are_exactly_what_hdf5_wrote(tmp_path, monkeypatch, refuse_direct):
    """Shards go to disk with O_DIRECT from a reused, padded buffer; the file is cut to HDF5's size, byte for byte
    what the buffered write gives, and a file system that refuses O_DIRECT gets the buffered write instead."""
    if refuse_direct:
        real_open = os.open

        def open_refusing_direct(path, flags, *args):
            if flags & getattr(os, "O_DIRECT", 0):
                raise OSError(22, "Invalid argument")  # what tmpfs on older kernels and some FUSE file systems say
            return real_open(path, flags, *args)

        monkeypatch.setattr("featurebank.files.os.open", open_refusing_direct)
    direct, buffered = MemoryFile(direct=True), MemoryFile()
    for rows in (37, 5):  # the second file is smaller: nothing of the first may survive in the reused buffer
        maps = write_shard_like(direct, tmp_path / f"direct-{rows}.h5", rows)
        write_shard_like(buffered, tmp_path / f"buffered-{rows}.h5", rows)
        assert (tmp_path / f"direct-{rows}.h5").read_bytes() == (tmp_path / f"buffered-{rows}.h5").read_bytes()
        with h5py.File(tmp_path / f"direct-{rows}.h5", "r") as fh:
            np.testing.assert_array_equal(fh["features"][...], maps)
            assert fh["paths"].asstr()[...].tolist() == [f"photo-{i}.jpg" for i in range(rows)]
    assert os.path.getsize(tmp_path / "direct-37.h5") % 4096 != 0  # cut to size, not left padded
    assert not list(tmp_path.glob(".tmp~*"))


def _write_rows(writer, start: int, count: int) -> None:
    rows = np.arange(start * 2, (start + count) * 2, dtype=np.float16).reshape(count, 2)
    writer.write(rows, {"avg": rows.astype(np.float32), "max": rows.astype(np.float32)},
                 [f"{i:064x}" for i in range(start, start + count)], [f"a/{i}.jpg" for i in range(start, start + count)],
                 [0] * count, ["train"] * count)


def test_a_full_shard_goes_to_disk_while_the_next_fills_and_close_waits_for_it(tmp_path, monkeypatch):
    import threading

    from featurebank.cache import ShardWriter

    release, writing = threading.Event(), []
    write_out = MemoryFile.write_out

    def held_write_out(self, path):
        writing.append(path.name)
        assert release.wait(30)
        write_out(self, path)

    monkeypatch.setattr(MemoryFile, "write_out", held_write_out)
    writer = ShardWriter(tmp_path, feature_shape=(2,), dtype="float16", compression="none", shard_size=4, key="k",
                         classes=["a"])
    _write_rows(writer, 0, 4)  # a full shard, handed to the committer thread, which is held
    _write_rows(writer, 4, 3)  # the next shard fills meanwhile, in the other buffer
    assert len(writing) == 1 and not list(tmp_path.glob("*.h5"))
    release.set()
    writer.close()
    shards = sorted(tmp_path.glob("*.h5"))
    assert len(shards) == 2 and not list(tmp_path.glob(".tmp~*"))
    with h5py.File(shards[0]) as first, h5py.File(shards[1]) as second:
        stored = np.concatenate([first["features"][...], second["features"][...]])
    np.testing.assert_array_equal(stored, np.arange(14, dtype=np.float16).reshape(7, 2))


def test_a_failed_write_out_is_raised_by_close_and_earlier_shards_are_kept(tmp_path, monkeypatch):
    import errno

    from featurebank.cache import ShardWriter

    write_out = MemoryFile.write_out

    def second_fails(self, path):
        if path.name.endswith("-00001.h5"):
            raise OSError(errno.ENOSPC, "No space left on device")
        write_out(self, path)

    monkeypatch.setattr(MemoryFile, "write_out", second_fails)
    writer = ShardWriter(tmp_path, feature_shape=(2,), dtype="float16", compression="none", shard_size=4, key="k",
                         classes=["a"])
    _write_rows(writer, 0, 8)
    with pytest.raises(OSError, match="No space"):
        writer.close()
    assert [p.name[-9:] for p in tmp_path.glob("*.h5")] == ["-00000.h5"]
