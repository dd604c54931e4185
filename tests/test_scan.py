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
