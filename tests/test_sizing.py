"""The engine sizes its batch and pools from the device and the cores; the user's values win; the CLI shows them."""

import json
import subprocess
from dataclasses import replace

import pytest
from conftest import FEATUREBANK

from featurebank.errors import InvalidArgument
from featurebank.sizing import CPU_BATCH, GPU_BATCH, choose_sizes


def test_sizes_follow_the_device_and_the_cores():
    gpu = choose_sizes("torch", compression="zstd", device="cuda: NVIDIA H200", cores=16)
    assert (gpu.batch_size, gpu.decode_workers, gpu.compression_workers) == (GPU_BATCH, 15, 8)
    cpu = choose_sizes("keras", compression="zstd", device="cpu", cores=2)
    assert (cpu.batch_size, cpu.decode_workers, cpu.compression_workers) == (CPU_BATCH, 1, 2)
    assert choose_sizes("keras", compression="none", device="cpu", cores=2).compression_workers == 0
    given = choose_sizes("torch", compression="zstd", device="cuda: x", cores=16, batch_size=7, decode_workers=3,
                         compression_workers=5)
    assert (given.batch_size, given.decode_workers, given.compression_workers) == (7, 3, 5)
    assert choose_sizes("numpy", compression="none", cores=4).device == "cpu"  # numpy backbones never ask a GPU
    nvjpeg = replace(choose_sizes("torch", compression="zstd", device="cuda: x", cores=16, decoder="nvjpeg"),
                     jpeg_library="torchcodec")  # as the local engine fills it in
    described = nvjpeg.describe()
    assert f"batch {GPU_BATCH}, JPEGs decoded by nvJPEG (torchcodec), 15 reading threads, 8 compression" in described
    with pytest.raises(InvalidArgument, match="decoder must be one of threads, processes, nvjpeg; received 'gpu'"):
        choose_sizes("torch", compression="none", device="cpu", cores=2, decoder="gpu")


def test_extract_reports_and_prints_what_it_ran_with(tmp_path, make_images):
    make_images(tmp_path / "data", 1)
    command = [*FEATUREBANK, "extract", "--backbone", "rgb-stats", "--weights", "none", "--data", str(tmp_path / "data"),
               "--cache", str(tmp_path / "cache"), "--workers", "2"]
    done = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=120)
    sizes = json.loads(done.stdout)["sizes"]
    assert sizes["device"] == "cpu" and sizes["batch_size"] == CPU_BATCH and sizes["decode_workers"] == 2
    assert f"engine: cpu, {sizes['cores']} cores: batch {CPU_BATCH}, 2 decoding threads" in done.stderr
    again = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=120)
    assert json.loads(again.stdout)["sizes"] is None and "engine:" not in again.stderr  # nothing to do, nothing sized
