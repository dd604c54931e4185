"""Messy real-world folders: every valid image is cached, every broken file reported, nothing stops the run."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featurebank
from featurebank.images import load_image
from conftest import FEATUREBANK

SIZE = (64, 64)


def write_odd_but_valid(folder):
    """Valid images in awkward modes, sizes and names; returns their names."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (60, 40, 3), dtype=np.uint8))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "rgba.png")
    rgb.convert("P", palette=Image.ADAPTIVE).save(folder / "palette.png", transparency=0)
    rgb.convert("P", palette=Image.ADAPTIVE).save(folder / "palette.gif")
    rgb.convert("L").save(folder / "gray.png")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((rng.integers(0, 65535, (30, 20))).astype(np.uint16)).save(folder / "sixteen-bit.png")
    rgb.resize((8, 8)).save(folder / "tiny.jpg")
    Image.new("RGB", (4000, 3000), (90, 120, 30)).save(folder / "huge.jpg", quality=70)
    rgb.resize((300, 200)).save(folder / "landscape.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb.rotate(90, expand=True).save(folder / "exif-rotated.jpg", exif=exif)
    rgb.save(folder / "UPPER.JPG")
    rgb.save(folder / "name with spaces.jpeg")
    rgb.save(folder / "café crème ✓.jpg")
    rgb.save(folder / "photo.webp")
    return sorted(p.name for p in folder.iterdir())


def write_broken(folder):
    """Files that look like images but are not usable; returns {name: expected reason fragment}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    good = folder / "_tmp.jpg"
    Image.fromarray(np.full((64, 64, 3), 100, np.uint8)).save(good)
    (folder / "truncated.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    good.unlink()
    (folder / "text.jpg").write_text("hello, I am not a JPEG")
    (folder / "random.png").write_bytes(np.random.default_rng(1).bytes(2048))
    (folder / "dangling.jpg").symlink_to(folder / "does-not-exist.jpg")
    os.mkfifo(folder / "pipe.jpg")
    return {"empty.jpg": "empty file", "truncated.jpg": "truncated", "text.jpg": "not an image",
            "random.png": "not an image", "dangling.jpg": "broken symbolic link", "pipe.jpg": "not a regular file"}


@pytest.fixture
def messy(tmp_path):
    data = tmp_path / "data"
    valid = write_odd_but_valid(data / "glass")
    broken = write_broken(data / "metal")
    Image.new("RGB", (50, 50), (1, 2, 3)).save(data / "metal" / "fine.jpg")
    (data / "paper").mkdir()  # empty class folder
    (data / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (data / "glass" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (data / "notes.txt").write_text("stray file at the root")
    (data / "metal" / "README.txt").write_text("stray text in a class folder")
    return data, valid, broken


def test_every_valid_image_cached_every_broken_file_reported(messy, tmp_path):
    data, valid, broken = messy
    report = featurebank.extract(data, cache=tmp_path / "cache", weights="none", input_size=SIZE, batch_size=4)
    fb = featurebank.load(cache=tmp_path / "cache")
    cached = {p.split("/", 1)[1] for p in fb.paths}
    assert cached == set(valid) | {"fine.jpg"}
    assert fb.classes == ["glass", "metal", "paper"]
    reasons = {os.path.basename(s.path): s.reason for s in report.skipped}
    for name, fragment in broken.items():
        assert fragment in reasons[name], (name, reasons.get(name))
    for name in (".DS_Store", "Thumbs.db", "notes.txt", "README.txt"):
        assert name in reasons
    assert np.isfinite(fb.X).all()
    assert json.loads(fb.attrs["skipped"]) == [s.as_dict() for s in report.skipped]  # failure log in the cache


def test_cli_exit_status_zero_unless_strict(messy, tmp_path):
    data, _, broken = messy
    common = [*FEATUREBANK, "extract", "--weights", "none", "--input-size", "64x64", "--data", str(data),
              "--cache", str(tmp_path / "cache"), "--json"]
    done = subprocess.run(common, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert {os.path.basename(s["path"]) for s in payload["skipped"]} >= set(broken)
    assert "Traceback" not in done.stderr
    strict = subprocess.run(common + ["--strict"], capture_output=True, text=True, timeout=300)
    assert strict.returncode == 1


def test_decoding_rules(tmp_path):
    upright = np.zeros((80, 40, 3), np.uint8)
    upright[:40] = (255, 0, 0)
    upright[40:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90° clockwise
    Image.fromarray(upright).rotate(90, expand=True).save(tmp_path / "r.jpg", exif=exif, quality=95)
    decoded = load_image(tmp_path / "r.jpg", (80, 40))
    assert decoded[:30, :, 0].mean() > 200 and decoded[50:, :, 2].mean() > 200

    Image.fromarray(np.full((10, 10), 65535, np.uint16)).save(tmp_path / "white16.png")
    assert load_image(tmp_path / "white16.png", (16, 16)).min() == 255

    clear = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    clear.save(tmp_path / "clear.png")
    assert load_image(tmp_path / "clear.png", (16, 16)).min() == 255  # transparent → white

    assert load_image(tmp_path / "white16.png", (512, 384)).shape == (512, 384, 3)


def test_unreadable_file_is_skipped(tmp_path, make_images, monkeypatch):
    """A file the OS refuses to read is skipped with the reason, and the run goes on.

    As root, permissions do not stop reads, so the refusal is the OS error itself, injected where
    the file is opened; as any other user, the file's permissions are really removed.
    """
    import builtins

    from featurebank.scan import scan_folder

    make_images(tmp_path / "data", 2, classes=["a"])
    locked = tmp_path / "data" / "a" / "a0.jpg"
    if os.geteuid() == 0:
        real_open = builtins.open

        def refusing_open(file, *args, **kwargs):
            if str(file) == str(locked):
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", refusing_open)
    else:
        locked.chmod(0)
    result = scan_folder(tmp_path / "data")
    assert [(os.path.basename(s.path), s.reason) for s in result.skipped] == [
        ("a0.jpg", "cannot read file: permission denied")]
    assert [s.relpath for s in result.samples] == ["a/a1.jpg"]
    report = featurebank.extract(tmp_path / "data", cache=tmp_path / "cache", weights="none", input_size=(64, 64))
    assert (report.new, [os.path.basename(s.path) for s in report.skipped]) == (1, ["a0.jpg"])


def test_train_cnn_skips_files_that_went_bad_after_extraction(small_cache, tmp_path):
    """train-cnn decodes pixels itself, with extract's rules: a file broken since is reported and left out."""
    import shutil

    from classifiers.jobs import train_cnn

    data = tmp_path / "data"
    shutil.copytree(small_cache["data"], data)
    fb = featurebank.load(small_cache["cache"])
    broken = data / fb.paths[fb.split == "train"][0]
    broken.write_bytes(broken.read_bytes()[:200])
    result = train_cnn(small_cache["cache"], data=data, image_size=(64, 48), epochs=1, runs_dir=tmp_path / "runs")
    assert [(s["path"], "truncated" in s["reason"] or "cannot decode" in s["reason"]) for s in result["skipped"]] == [
        (str(broken), True)]
    config = json.loads((Path(result["run_dir"]) / "run.json").read_text())
    assert config["split_sizes"]["train"] == (fb.split == "train").sum() - 1
