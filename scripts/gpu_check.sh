#!/usr/bin/env bash
# GPU check: time the paper's schedule and run the benchmark on this machine's CUDA GPU, and
# write the results to a folder. Needs PyTorch with CUDA, torchvision, numpy, pandas and
# Pillow (no fvcore, no matplotlib, no internet: put CIFAR-10 in $DATA_DIR first).
#
#   bash scripts/gpu_check.sh            (or: make gpu-check)
#
# 1. probes: PROBE_EPOCHS whole epochs of the paper's recipe with bf16 autocast, channels_last
#    and torch.compile, once per compile mode in MODES (default, then reduce-overhead, which
#    replays the step as CUDA graphs; the log says whether they were really recorded). A probe
#    stopped by its timeout still counts: its record, written after every epoch, gives the
#    steady rate of its whole epochs after warm-up (summary.json: train_images_per_s).
# 2. the paper's schedule (64k iterations, an evaluation every epoch) in the faster mode;
#    past PAPER_TIMEOUT it is stopped, and its record gives the rate for the full schedule.
# 3. `python -m resnet_cifar bench` on the device: bench-<device>.json, the record that the
#    book's Performance appendix shows once copied to book/records/.
# Results in $OUT (default gpu-check/): check.log (every step, the environment), probe-<mode>.log,
# paper.log, paper-history.csv, bench.log, bench-<device>.json, check.json (the figures).
#
# Every setting is an environment variable (relative paths are from the project's root). A dry
# run on a CPU, in a minute or two:
#   DEVICE=cpu MODES=eager PROBE_EPOCHS=1 TRAIN_ARGS="--depth 8 --subset 640 --batch-size 32" \
#   PAPER_ARGS="--iterations 40" BENCH_ARGS="--quick --depth 8 --batch-size 32 --train-images 256" \
#   bash scripts/gpu_check.sh
set -Eeuo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-gpu-check}
RUNS_DIR=${RUNS_DIR:-$OUT/runs}
DATA_DIR=${DATA_DIR:-${RESNET_CIFAR_DATA:-data}}
MODES=${MODES:-default reduce-overhead}   # torch.compile modes to probe; eager: no compile
PROBE_EPOCHS=${PROBE_EPOCHS:-3}
PROBE_TIMEOUT=${PROBE_TIMEOUT:-240}       # seconds per probe
PAPER_TIMEOUT=${PAPER_TIMEOUT:-1800}      # seconds for the paper's schedule
TRAIN_ARGS=${TRAIN_ARGS:-}                # more `train` flags for probes and the paper run
PAPER_ARGS=${PAPER_ARGS:-}                # more `train` flags for the paper run alone
BENCH_ARGS=${BENCH_ARGS:---variants fp32 tf32 tf32+cl bf16+cl tf32+cl+compile bf16+cl+compile bf16+cl+cudagraphs \
--conventional fp32 bf16+cl --concurrent 3 --concurrent-variant fp32+cl}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-1200}

mkdir -p "$OUT" "$RUNS_DIR"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 RESNET_CIFAR_DATA="$DATA_DIR"
STEP=start
log() { echo "[gpu-check $(date +%H:%M:%S)] $*" | tee -a "$OUT/check.log"; }
fail() {
    echo "[gpu-check] FAILED at step '$STEP': $*; see $OUT/check.log and the step's log in $OUT/" | tee -a "$OUT/check.log" >&2
    exit 1
}
trap 'fail "a command exited with status $?"' ERR

# `timed SECONDS LOG cmd...`: cmd with its output in LOG. Stopped by the timeout it returns 124
# (the caller decides); any other failure fails the check, with the log's end.
timed() {
    local seconds=$1 logfile=$2 rc=0
    shift 2
    timeout "$seconds" "$@" >"$logfile" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ]; then
        tail -n 20 "$logfile" >&2
        fail "exit $rc of: $*"
    fi
    return "$rc"
}

STEP=environment
log "device $DEVICE, python $PYTHON, output $OUT"
"$PYTHON" - "$DEVICE" >>"$OUT/check.log" 2>&1 <<'EOF'
import os, sys, torch, torchvision
device = sys.argv[1]
print("torch", torch.__version__, "torchvision", torchvision.__version__, "cuda", torch.version.cuda,
      "cpus", os.cpu_count())
if device.startswith("cuda"):
    if not torch.cuda.is_available():
        sys.exit(f"DEVICE={device} but torch.cuda.is_available() is False: no usable CUDA GPU here")
    print("gpu", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
EOF
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >>"$OUT/check.log" 2>&1 || true
fi

STEP=data
if [ ! -d "$DATA_DIR/cifar-10-batches-py" ]; then
    log "no CIFAR-10 in $DATA_DIR: downloading it (needs internet; or set DATA_DIR to a folder holding" \
        "cifar-10-batches-py/)"
    "$PYTHON" -m resnet_cifar download --data-dir "$DATA_DIR" >>"$OUT/check.log" 2>&1
fi

# `flags MODE`: the train flags of a probe or paper run in compile mode MODE.
flags() {
    echo "--device $DEVICE --dtype bfloat16 --channels-last --progress log --runs-dir $RUNS_DIR --force $TRAIN_ARGS"
    [ "$1" = eager ] || echo "--compile --compile-mode $1"
}
# `rate NAME`: train_images_per_s from the run's summary.json (empty if it has none yet).
rate() {
    "$PYTHON" -c 'import json, sys; r = json.load(open(sys.argv[1])).get("train_images_per_s")
print(f"{r:.1f}" if r else "")' "$RUNS_DIR/$1/summary.json" 2>/dev/null || true
}

STEP=probes
per_epoch=$("$PYTHON" - $TRAIN_ARGS <<'EOF'
import argparse, sys
from resnet_cifar.cli import add_config_arguments
parser = argparse.ArgumentParser()
add_config_arguments(parser)
a, _ = parser.parse_known_args(sys.argv[1:])  # a subset takes n // 10 images of each class
print(max(1, (a.subset // 10 * 10 if a.subset else 50_000 - a.val_size) // a.batch_size))
EOF
)
best_mode="" best_rate=0
for mode in $MODES; do
    iterations=$((PROBE_EPOCHS * per_epoch))
    log "probe $mode: $PROBE_EPOCHS epochs ($iterations iterations), at most $PROBE_TIMEOUT s"
    start=$SECONDS rc=0
    TORCH_LOGS=${TORCH_LOGS:-cudagraphs} timed "$PROBE_TIMEOUT" "$OUT/probe-$mode.log" \
        "$PYTHON" -m resnet_cifar train $(flags "$mode") --iterations "$iterations" --name "probe-$mode" || rc=$?
    r=$(rate "probe-$mode")
    log "probe $mode: $([ "$rc" -eq 124 ] && echo "stopped by its timeout" || echo done) after $((SECONDS - start)) s;" \
        "steady rate ${r:-not recorded} images/s"
    if [ "$mode" = reduce-overhead ]; then
        skips=$(grep -c "skipping cudagraphs" "$OUT/probe-$mode.log" || true)
        if [ "$skips" -gt 0 ]; then
            log "reduce-overhead: CUDA graphs were NOT recorded for every graph ($skips 'skipping cudagraphs' lines):"
            grep "skipping cudagraphs" "$OUT/probe-$mode.log" | sort | uniq -c | head -n 5 | tee -a "$OUT/check.log"
        else
            log "reduce-overhead: no 'skipping cudagraphs' in the log: the compiled step runs as CUDA graphs"
        fi
    fi
    if [ -n "$r" ] && "$PYTHON" -c "import sys; sys.exit(not float('$r') > float('$best_rate'))"; then
        best_mode=$mode best_rate=$r
    fi
done
[ -n "$best_mode" ] || fail "no probe recorded a steady rate: raise PROBE_TIMEOUT or PROBE_EPOCHS"
log "faster mode: $best_mode ($best_rate images/s)"

STEP=paper
log "paper schedule in mode $best_mode, at most $PAPER_TIMEOUT s"
start=$SECONDS rc=0
timed "$PAPER_TIMEOUT" "$OUT/paper.log" "$PYTHON" -m resnet_cifar train $(flags "$best_mode") $PAPER_ARGS --name paper \
    || rc=$?
log "paper run: $([ "$rc" -eq 124 ] && echo "stopped by its timeout" || echo done) after $((SECONDS - start)) s wall"
[ -n "$(rate paper)" ] || fail "the paper run recorded no steady rate within PAPER_TIMEOUT=$PAPER_TIMEOUT s"
cp "$RUNS_DIR/paper/history.csv" "$OUT/paper-history.csv"

STEP=benchmark
name="bench-${DEVICE%%:*}"
log "benchmark -> $OUT/$name.json"
timed "$BENCH_TIMEOUT" "$OUT/bench.log" "$PYTHON" -m resnet_cifar bench --device "$DEVICE" $BENCH_ARGS \
    --json "$OUT/$name.json" || fail "the benchmark did not finish within BENCH_TIMEOUT=$BENCH_TIMEOUT s"

STEP=summary
"$PYTHON" - "$RUNS_DIR" "$OUT" "$best_mode" $MODES <<'EOF' | tee -a "$OUT/check.log"
import json, sys
from pathlib import Path
runs, out, best, modes = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
keys = ("status", "iterations", "iterations_done", "train_images_per_s", "warmup_time_s", "wall_time_s",
        "eval_time_s", "final_test_error", "device_name", "numerics", "git_commit")
summary = lambda name: {k: v for k, v in json.loads((runs / name / "summary.json").read_text()).items() if k in keys}
paper = summary("paper")
batch = json.loads((runs / "paper" / "config.json").read_text())["batch_size"]
steps_s = paper["iterations"] * batch / paper["train_images_per_s"] if paper.get("train_images_per_s") else None
evals_s = paper["eval_time_s"] / max(paper["iterations_done"], 1) * paper["iterations"]
check = dict(probes={m: summary(f"probe-{m}") for m in modes}, mode=best, paper=paper,
             paper_schedule_s=dict(steps=steps_s, evaluations=evals_s, warmup=paper["warmup_time_s"],
                                   total=steps_s + evals_s + paper["warmup_time_s"] if steps_s else None))
(out / "check.json").write_text(json.dumps(check, indent=1))
s = check["paper_schedule_s"]
print(f"paper schedule ({paper['iterations']:,} iterations, mode {best}): {paper['status']} after "
      f"{paper['iterations_done']:,}; steady {paper.get('train_images_per_s') or float('nan'):,.0f} images/s -> "
      f"steps {s['steps'] or float('nan'):,.0f} s + evaluations {s['evaluations']:,.0f} s + warm-up "
      f"{s['warmup']:,.0f} s")
EOF
log "done: $OUT"
