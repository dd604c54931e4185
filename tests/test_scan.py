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
