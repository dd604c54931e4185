#!/usr/bin/env bash
# The GPU stage's figures (issue 11) in one device call, after bench/gpu_prepare.sh ran here:
#   run(command="bash bench/gpu_run.sh", carry=[".whl", ".gpu-source"], timeout_s=590)
# (On an H200 on 2026-11-28, the machine's start not counted: 439 s for the host probe, eight rows, two
# device_vs_cpu.py runs, nvjpeg_check.py and decode_parent.py; in the fourth session, nine rows (two of them under
# py-spy), compute_dtype.py for both backbones and three of four device_vs_cpu.py runs took the whole 590 s. Now by
# default the host probe, eight rows, the float32 ceiling (~50 s) and the hashing probe, ~540 s expected, not run yet;
# BENCHMARKS.md has the figures. The steps not
# run by default answered their questions: STEPS=arithmetic,vs-cpu bash bench/gpu_run.sh runs two of them again)
# Each line runs bench/gpu_extract.py (forward, decode, write and end-to-end img/s on IMAGES distinct JPEGs
# re-encoded from .gpu-source); the figures land in $RESULTS, packed after each step into $OUT/results.tgz (the
# device call returns at most 8 files, so one archive, complete up to the last finished step if time runs out).
# It also runs here, on a CPU, at small size:
#   IMAGES=64 FORWARD=32 CEILING='--images 4 --batch-size 2 --input-size 128x96' OUT=/tmp/gpu-out \
#     RESULTS=/tmp/gpu-results bash bench/gpu_run.sh
# STEPS (probe,rows,ceiling,hashing,arithmetic,vs-cpu,nvjpeg,parent,gil,priority or all; the first four by default) and ROWS (a regular expression
# of row names) pick
# what runs, for a second call after the first: STEPS=rows ROWS='lite0-.*' bash bench/gpu_run.sh
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" KERAS_BACKEND=${KERAS_BACKEND:-jax} PYTHONUNBUFFERED=1
export PATH="/tmp/site/bin:$PATH"  # py-spy, from its wheel
OUT=${OUT:-/tmp/gpu-out}; RESULTS=${RESULTS:-/tmp/gpu-results}; mkdir -p "$OUT" "$RESULTS"
pack() { tar czf /tmp/results.tgz -C "$RESULTS" . && mv /tmp/results.tgz "$OUT/results.tgz"; }
IMAGES=${IMAGES:-10000}; FORWARD=${FORWARD:-4096}  # 1,024 timed too few: below the extraction's own rate
source=.gpu-source; [ -d "$source" ] || source=../shared/datasets/trashnet
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee "$RESULTS/device.txt"
STEPS=${STEPS:-probe,rows,ceiling,hashing}  # the others answered their questions on 2026-11-28 (BENCHMARKS.md)
step() { [[ ",$STEPS," == *,all,* || ",$STEPS," == *",$1,"* ]]; }  # STEPS: a comma list, or all
# Rows not run by default: resnet50-pooled, lite0-pretrained-zstd-bfloat16 and resnet50-float16-zstd (measured on
# 2026-11-27 and -28, and their twins run), resnet50-float16-none-tf32 (the arithmetic step times TF32 against
# IEEE float32 more directly), resnet50-pooled-bfloat16-no-warm-up (resnet50-pooled-bfloat16 of 2026-11-28 ran
# without the warm-up too), lite0-pretrained-none and lite0-pretrained-zstd-helpers-normal (their questions answered
# in 2026-11-28's fourth session) and resnet50-pooled-bfloat16-profiled (JAX's stages overlapped); ROWS='.*' runs
# every one
default_rows='resnet50-float16-none|resnet50-float16-none-bfloat16|lite0-pretrained-zstd|lite0-pretrained-zstd-no-warm-up'
default_rows+='|resnet50-pooled-bfloat16|resnet50-pooled-bfloat16-nvjpeg|lite0-pretrained-zstd-nvjpeg'
ROWS=${ROWS:-$default_rows|lite0-pretrained-zstd-profiled}
run() {  # name, then gpu_extract.py options; ROWS (a regular expression) picks the rows that run
  local name=$1; shift
  step rows && [[ "$name" =~ ^($ROWS)$ ]] || return 0
  echo "== $name"
  timeout 130 python3 bench/gpu_extract.py --images "$IMAGES" --forward-images "$FORWARD" --source "$source" \
    --data-dir /tmp/gpu-jpegs \
    --json "$RESULTS/$name.json" "$@" 2>&1 | tee -a "$RESULTS/log.txt" | grep -v -E '^(I|W|E)0000|oneDNN|cuda_' | tail -5
  pack
}
if step probe; then
  echo "== host probe"  # what fresh memory, pinned copies and a process pool cost on this machine
  timeout 60 python3 bench/host_probe.py 2>&1 | tee -a "$RESULTS/log.txt" | grep -v -E '^(I|W|E)0000' | tail -2
fi
# Most telling first: what comes back if the call runs out of time is what it finished. Decoding alone
# on threads (923-1,360 img/s on the H200, not the engine's choice there) is measured in the first run only.
run resnet50-float16-none --backbone resnet50 --compression none
if step ceiling; then  # are the engine's IEEE float32 forwards (773 and 2,281 img/s on 2026-11-28) the GPU's limits?
  echo "== ResNet50 and Lite0 on cuDNN: the engine's setting, IEEE float32 tuned, TF32 and bfloat16"
  timeout 120 python3 bench/fp32_ceiling.py ${CEILING:---images 2048} --repeats 2 --json "$RESULTS/fp32_ceiling.json" 2>&1 \
    | tee "$RESULTS/fp32_ceiling.txt" | grep -v '^{' | tail -12
  pack
fi
if step hashing; then  # the plan phase of every row is hashing its 10,000 files: 0.6-0.7 s on one thread (2026-11-28)
  echo "== hashing the rows' files on 1, 4 and 15 threads (a first scan: every file read and hashed)"
  timeout 60 python3 bench/hashing.py --data "$source" --distinct "$IMAGES" --data-dir /tmp/gpu-jpegs --workers 1,4,15 \
    --repeats 3 2>>"$RESULTS/log.txt" | tee "$RESULTS/hashing.json"  # the JSON line alone; the libraries' logs apart
  pack
fi
# A probe: the same in mixed bfloat16 (a key of its own), where the IEEE float32 forward bounded the row
run resnet50-float16-none-bfloat16 --backbone resnet50 --compression none --compute-dtype bfloat16 --decode-only processes
later="--decode-only processes,nvjpeg"
# JPEGs decoded on the GPU (extract --decoder nvjpeg: a cache key of its own) for the two targets the host's
# decoders bounded, the pooled one with the backbone in mixed bfloat16 (--compute-dtype: a key of its own).
run resnet50-pooled-bfloat16-nvjpeg --backbone resnet50 --store pooled --compute-dtype bfloat16 --decoder nvjpeg $later
run lite0-pretrained-zstd-nvjpeg --backbone efficientnet-lite0 --weights imagenet --compression zstd --decoder nvjpeg \
  $later
# A probe: Lite0's zstd runs came out at about the rate of their stages one after another; without compression threads?
run lite0-pretrained-none --backbone efficientnet-lite0 --weights imagenet --compression none $later
run resnet50-pooled --backbone resnet50 --store pooled $later
run lite0-pretrained-zstd --backbone efficientnet-lite0 --weights imagenet --compression zstd $later
# A probe: the same without the warm-up, which now runs on the engine's thread while another thread decodes the
# first batch (PyTorch keeps cuDNN's execution plans per thread: on the build thread it was paid twice)
run lite0-pretrained-zstd-no-warm-up --backbone efficientnet-lite0 --weights imagenet --compression zstd --no-warm-up \
  $later
# A probe: the same with the decoders and compression threads at normal priority, as before 2026-11-28's third
# session; the engine now runs them at nice 10 next to a GPU too, so that they yield to its thread
run lite0-pretrained-zstd-helpers-normal --backbone efficientnet-lite0 --weights imagenet --compression zstd \
  --helpers-at-normal-priority $later
run resnet50-pooled-bfloat16 --backbone resnet50 --store pooled --compute-dtype bfloat16 $later
# A probe: the same without the first call's warm-up on the build thread (what that overlap buys; not by default)
run resnet50-pooled-bfloat16-no-warm-up --backbone resnet50 --store pooled --compute-dtype bfloat16 --no-warm-up $later
run lite0-pretrained-zstd-bfloat16 --backbone efficientnet-lite0 --weights imagenet --compression zstd \
  --compute-dtype bfloat16 $later
run resnet50-float16-zstd --backbone resnet50 --compression zstd $later
# A probe: what the engine's IEEE float32 costs against TF32, the libraries' default (whose features differed from
# a CPU's by more than float16 rounding on the H200, 2026-11-28)
run resnet50-float16-none-tf32 --backbone resnet50 --compression none --tf32 $later
# Where each thread's time goes (py-spy; the sampling slows these runs, so their figures are not the targets'): a
# PyTorch row, whose stages ran one after another on 2026-11-28, and a JAX row, whose stages overlapped
run lite0-pretrained-zstd-profiled --backbone efficientnet-lite0 --weights imagenet --compression zstd $later \
  --profile "$RESULTS/profile-lite0-pretrained-zstd.txt"
run resnet50-pooled-bfloat16-profiled --backbone resnet50 --store pooled --compute-dtype bfloat16 $later \
  --profile "$RESULTS/profile-resnet50-pooled-bfloat16.txt"
for profile in "$RESULTS"/profile-*.txt; do
  [ -f "$profile" ] && python3 bench/profile_summary.py "$profile" | tee "${profile%.txt}-summary.txt" | head -8
done
if step arithmetic; then  # the forward alone in IEEE float32 (the engine's), bfloat16 and TF32 (the libraries' default)
  echo "== the backbones' arithmetic: IEEE float32, bfloat16 and TF32"
  timeout 150 python3 bench/compute_dtype.py --images "${ARITHMETIC_IMAGES:-512}" --repeats 3 --tf32 --source "$source" \
    2>&1 | tee "$RESULTS/arithmetic.txt" | grep -v -E '^(I|W|E)0000|oneDNN|cuda_' | grep -v '^{' | tail -4
  pack
fi
step vs-cpu && echo "== the device's float32 features against the CPU's (a cache key does not record the device)"
step vs-cpu && for backbone_weights in resnet50:none efficientnet-lite0:imagenet; do
  for tf32 in "" --tf32; do
    timeout 120 python3 bench/device_vs_cpu.py --backbone "${backbone_weights%%:*}" --weights "${backbone_weights#*:}" \
      --images 16 --source "$source" $tf32 --json "$RESULTS/vs-cpu-${backbone_weights%%:*}${tf32}.json" 2>&1 \
      | tee -a "$RESULTS/log.txt" | grep -v -E '^(I|W|E)0000|oneDNN|cuda_' | tail -2
    pack
  done
done
step nvjpeg && echo "== nvJPEG's pixels against Pillow's on every source photo, through TorchCodec and through torchvision"
step nvjpeg && for library in torchcodec torchvision; do
  timeout 60 python3 bench/nvjpeg_check.py --source "$source" --workers 15 --repeats 1 --library $library 2>&1 \
    | tee "$RESULTS/nvjpeg_check-$library.txt" | tail -1
done
step gil && echo "== zstd beside a Python-heavy engine thread, 8 compression threads: per-row tasks against one call a batch"
step gil && timeout 60 python3 bench/compression_gil.py --threads 8 --seconds 3 --repeats 2 --json "$RESULTS/compression_gil.json" \
  2>&1 | tee "$RESULTS/compression_gil.txt" | tail -4
step priority && echo "== a Python-bound engine thread beside 15 decoding processes at nice 0 and at nice 10"
step priority && timeout 90 python3 bench/decoder_priority.py --workers 15 --seconds 3 --repeats 2 --data "$source" \
  --json "$RESULTS/decoder_priority.json" 2>&1 | tee "$RESULTS/decoder_priority.txt" | tail -5
step parent && echo "== the engine's process per image decoded by 15 processes"  # 0.25-0.28 ms before ring batches
step parent && timeout 60 python3 bench/decode_parent.py --images "$IMAGES" --workers 15 --repeats 2 --source "$source" 2>&1 \
  | tee "$RESULTS/decode_parent.txt" | tail -2
pack
python3 bench/gpu_targets.py "$RESULTS" | tee "$RESULTS/targets.md"
pack; cp "$RESULTS/targets.md" "$OUT/targets.md"
