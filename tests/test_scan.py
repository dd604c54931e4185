from pathlib import Path

import pytest

from featurebank.errors import DatasetError
from featurebank.scan import scan_folder, sniff_image_format


def test_classes_are_sorted_folder_names_and_images_found_by_content(tmp_path, make_images):
    make_images(tmp_path, 2, classes=["paper", "glass"])
    (tmp_path / "glass" / "renamed.TXT").write_bytes((tmp_path / "glass" / "glass0.jpg").read_bytes())
    (tmp_path / "paper" / "notes.jpg").write_text("not really a jpeg")
    (tmp_path / "paper" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "README.txt").write_text("stray file at the root")
    scan = scan_folder(tmp_path)
    assert scan.classes == ["glass", "paper"]
    found = sorted(s.relpath for s in scan.samples)
    assert found == ["glass/glass0.jpg", "glass/glass1.jpg", "glass/renamed.TXT", "paper/paper0.jpg", "paper/paper1.jpg"]
    assert {s.label for s in scan.samples if s.relpath.startswith("paper")} == {1}
    reasons = {Path(s.path).name: s.reason for s in scan.skipped}
    assert reasons["notes.jpg"].startswith("not an image")
    assert reasons[".DS_Store"] == "hidden or system file"
    assert reasons["README.txt"] == "file outside any class folder"


def test_identical_bytes_share_a_hash(tmp_path, make_images):
    make_images(tmp_path, 1, classes=["a"])
    (tmp_path / "a" / "copy.jpg").write_bytes((tmp_path / "a" / "a0.jpg").read_bytes())
    digests = {s.relpath: s.sha256 for s in scan_folder(tmp_path).samples}
    assert digests["a/a0.jpg"] == digests["a/copy.jpg"]
    assert len(digests["a/a0.jpg"]) == 64


@pytest.mark.parametrize(
    "header, fmt",
    [(b"\xff\xd8\xff\xe0", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF89a", "GIF"), (b"BM", "BMP"),
     (b"RIFF\0\0\0\0WEBPVP8 ", "WEBP"), (b"hello", None)],
)
def test_sniff_image_format(header, fmt):
    assert sniff_image_format(header) == fmt


def test_missing_or_classless_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        scan_folder(tmp_path / "nope")
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.raises(DatasetError, match="no class folders"):
        scan_folder(tmp_path)


def test_hash_memo_learns_new_files_in_a_delta_and_folds_it_into_a_new_base(tmp_path, monkeypatch):
    import os
    import time

    import featurebank.scan
    import hashlib

    from featurebank.memo import HashMemo, memo_path

    data, memo_dir = tmp_path / "data", tmp_path / "cache"
    memo_dir.mkdir()
    past = time.time() - 3600  # older than the memo's racy window, so the memo keeps every file

    def write(relpath: str, payload: bytes) -> Path:
        path = data / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + payload)
        os.utime(path, (past, past))
        return path

    for i in range(8):
        write(f"{'ab'[i % 2]}/{i}.png", bytes([i]) * 16)
    monkeypatch.setattr(HashMemo, "DELTA_MIN_ROWS", 2)
    base, delta = memo_path(memo_dir, data.resolve()), memo_path(memo_dir, data.resolve()).with_suffix(".delta.npz")
    scan_folder(data, memo_dir=memo_dir)
    written = base.stat().st_ino, base.stat().st_mtime_ns
    assert not delta.exists()

    hashed = []
    real_hash = featurebank.scan.hash_file
    monkeypatch.setattr(featurebank.scan, "hash_file", lambda path, *a: hashed.append(Path(path).name) or real_hash(path, *a))
    write("a/8.png", b"new"), write("b/9.png", b"newer")
    scan_folder(data, memo_dir=memo_dir)
    assert sorted(hashed) == ["8.png", "9.png"] and delta.exists()
    assert (base.stat().st_ino, base.stat().st_mtime_ns) == written  # the base is not rewritten for two new files

    hashed.clear()
    scan = scan_folder(data, memo_dir=memo_dir)
    assert hashed == []  # base and delta together know every file
    assert scan.sha256s == [hashlib.sha256((data / p).read_bytes()).hexdigest() for p in scan.relpaths]

    edited = write("a/0.png", bytes([99]) * 16)  # same size, other bytes and time: the base's entry is stale
    os.utime(edited, (past + 5, past + 5))
    scan = scan_folder(data, memo_dir=memo_dir)
    assert hashed == ["0.png"]  # a third new entry outgrows the delta: folded into a new base
    assert not delta.exists() and (base.stat().st_ino, base.stat().st_mtime_ns) != written
    hashed.clear()
    scan = scan_folder(data, memo_dir=memo_dir)
    assert hashed == [] and scan.sha256s == [hashlib.sha256((data / p).read_bytes()).hexdigest() for p in scan.relpaths]


def test_hashing_threads_give_one_threads_hashes_formats_and_skipped_files(tmp_path, monkeypatch):
    import hashlib
    import os
    import threading

    import numpy as np

    import featurebank.scan

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    expected = {}
    for i in range(150):  # three chunks of the hashing threads and more; sizes around the threads' threshold
        folder = data / ("glass", "paper")[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        body = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")[i % 2] + rng.bytes(int(rng.integers(20_000, 90_000)))
        (folder / f"{i:03d}.img").write_bytes(body)
        expected[f"{folder.name}/{i:03d}.img"] = hashlib.sha256(body).hexdigest()
    for i in (7, 70, 140):  # broken files among them, in every chunk
        (data / "glass" / f"{i:03d}-empty.jpg").write_bytes(b"")
        (data / "paper" / f"{i:03d}-text.jpg").write_text("not a photo")
        (data / "glass" / f"{i:03d}-dangling.jpg").symlink_to(data / "nowhere.jpg")
        os.mkfifo(data / "paper" / f"{i:03d}-pipe.jpg")
    threads = set()
    hash_file = featurebank.scan.hash_file

    def recorded(path):
        threads.add(threading.current_thread().name)
        return hash_file(path)

    monkeypatch.setattr(featurebank.scan, "hash_file", recorded)
    one = scan_folder(data, hash_workers=1)
    assert threads == {threading.current_thread().name}
    assert dict(zip(one.relpaths, one.sha256s)) == expected
    assert {s.reason for s in one.skipped} == {"empty file (0 bytes)", "broken symbolic link", "not a regular file",
                                                "not an image (content is not JPEG, PNG, WebP, GIF or BMP)"}
    threads.clear()
    four = scan_folder(data, hash_workers=4)
    assert threads and all(name.startswith("featurebank-hash") for name in threads)
    assert (four.relpaths, four.labels, four.sha256s, four.formats, four.skipped) == \
           (one.relpaths, one.labels, one.sha256s, one.formats, one.skipped)

    monkeypatch.setattr(featurebank.scan, "usable_cores", lambda: 3)  # the choice, on any machine
    threads.clear()
    assert scan_folder(data).sha256s == one.sha256s  # files of ~55 KB on average: threads
    assert threads and all(name.startswith("featurebank-hash") for name in threads)
    small = tmp_path / "small" / "a"
    small.mkdir(parents=True)
    for i in range(100):
        (small / f"{i}.jpg").write_bytes(b"\xff\xd8\xff" + rng.bytes(2000))
    threads.clear()
    assert len(scan_folder(small.parent).sha256s) == 100
    assert threads == {threading.current_thread().name}  # small files: one thread, whose Python is the cost
