#!/usr/bin/env bash
# GPU speed check (issue 5): the paper's 64k-iteration schedule timed on one GPU, then
# `python -m resnet_cifar bench --device cuda`. For a session that is lent a GPU machine.
#
#   1. here, once:   bash scripts/gpu_check.sh prepare
#      copies ../shared/data (the JPEG q75 CIFAR-10 archive and its builder) and wheels of
#      fvcore and its small pure-Python dependencies into .device/ (git-ignored): the GPU
#      machine has PyTorch but no fvcore, cannot download anything, and does not get ../shared.
#   2. on the device (the `run` tool), with carry [".device"] and timeout_s 600:
#      bash scripts/gpu_check.sh
#      About 8 minutes at most: setup ~30 s, the paper run capped at 200 s, the benchmark
#      capped at 300 s. Results under $OUT (at most 8 files come back):
#        gpu.txt             nvidia-smi and torch's view of the device
#        paper_run.log       the run's log lines (one per epoch) and its end
#        paper_summary.json  its summary.json: wall_time_s, iterations_done, images/s ...
#        paper_history.csv   per-epoch wall time and errors
#        bench.txt, bench.json   the benchmark's table (partial progress lines if it was cut)
#   3. put the figures, with the device name, into book/appendix_performance.ipynb.
set -uo pipefail
cd "$(dirname "$0")/.."
DEV=.device

if [ "${1:-}" = "prepare" ]; then
    PY=${PYTHON:-/work/venv/bin/python}
    mkdir -p "$DEV/shared" "$DEV/wheels"
    cp ../shared/data/cifar10-jpeg.npz ../shared/data/make_cifar10_batches.py "$DEV/shared/"
    "$PY" -m pip wheel --quiet --no-deps -w "$DEV/wheels" fvcore==0.1.5.post20221221 iopath==0.1.10 yacs==0.1.8 \
        termcolor portalocker
    du -sh "$DEV"
    exit 0
fi

OUT=${OUT:-$DEV/out}
WORK=${WORK:-/tmp/resnet-cifar-gpu-check}  # data and the run record: outside .device, which travels
mkdir -p "$OUT" "$WORK"
# Overridable for a dry run on a CPU, e.g.
#   PY=/work/venv/bin/python DEVICE=cpu TRAIN_ARGS="--iterations 4 --subset 512 --batch-size 32" \
#   BENCH_ARGS="--quick --batch-size 32 --train-images 256 --variants fp32 bf16" bash scripts/gpu_check.sh
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
TRAIN_ARGS=${TRAIN_ARGS:-}
BENCH_ARGS=${BENCH_ARGS:---seconds 1.0 --variants fp32 fp32+cl fp64 bf16 bf16+cl fp32+cl+compile bf16+cl+compile}
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1
export RESNET_CIFAR_DATA="$WORK/data"
log() { echo "[gpu_check $(date +%H:%M:%S)] $*" | tee -a "$OUT/gpu.txt"; }

log "setup"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >>"$OUT/gpu.txt" 2>&1
"$PY" -c "import fvcore" 2>/dev/null ||
    "$PY" -m pip install --quiet --no-index --no-deps "$DEV"/wheels/*.whl >>"$OUT/gpu.txt" 2>&1 || log "wheel install failed"
"$PY" - >>"$OUT/gpu.txt" 2>&1 <<'EOF'
import torch, torchvision, os
print("torch", torch.__version__, "torchvision", torchvision.__version__, "cuda", torch.version.cuda,
      "cpus", os.cpu_count())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
EOF
if [ ! -d "$RESNET_CIFAR_DATA/cifar-10-batches-py" ]; then
    "$PY" "$DEV/shared/make_cifar10_batches.py" "$RESNET_CIFAR_DATA" >>"$OUT/gpu.txt" 2>&1 || log "data build failed"
fi

# 1. the paper's schedule (64k iterations, batch 128, lr drops at 32k/48k, an evaluation of
# val+test every epoch) with everything on: device-resident data, on-device augmentation,
# channels_last, bf16 autocast, torch.compile. The target is under 3 minutes; past 200 s the
# run is stopped and its record (written every epoch) gives the rate to extrapolate from.
log "paper schedule: bf16 autocast + channels_last + compile"
start=$(date +%s)
timeout 200 "$PY" -m resnet_cifar train --device "$DEVICE" --dtype bfloat16 --channels-last --compile \
    $TRAIN_ARGS --progress log --runs-dir "$WORK/runs" --name paper-bf16-cl-compile --force >"$OUT/paper_run.log" 2>&1
rc=$?
log "paper run exit $rc after $(( $(date +%s) - start )) s wall (including start-up, compilation, evaluations)"
cp "$WORK/runs/paper-bf16-cl-compile/summary.json" "$OUT/paper_summary.json" 2>/dev/null
cp "$WORK/runs/paper-bf16-cl-compile/history.csv" "$OUT/paper_history.csv" 2>/dev/null
OUT="$OUT" "$PY" - >>"$OUT/gpu.txt" 2>&1 <<'EOF'
import json, os
p = os.path.join(os.environ["OUT"], "paper_summary.json")
if os.path.exists(p):
    s = json.load(open(p))
    done, wall = s["iterations_done"], s["wall_time_s"] or float("nan")
    print(f"paper run: {s['status_detail']}, {done} of {s['iterations']} iterations in {wall:.1f} s of steps "
          f"-> 64k iterations take {wall / max(done, 1) * 64000:.0f} s of steps; test error {s['final_test_error']}")
EOF

# 2. the benchmark: library vs the conventional DataLoader pipeline, variants, peak share.
log "benchmark"
timeout 300 "$PY" -m resnet_cifar bench --device "$DEVICE" $BENCH_ARGS --json "$OUT/bench.json" >"$OUT/bench.txt" 2>&1
log "benchmark exit $?"
tail -n 5 "$OUT/gpu.txt"
