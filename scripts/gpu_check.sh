#!/usr/bin/env bash
# GPU check: on this machine's CUDA GPU, within one time budget, measure what the book needs most,
# most telling figures first, and write the results to a folder. Needs PyTorch with CUDA,
# torchvision, numpy, pandas and Pillow (no fvcore, no matplotlib, no internet: put CIFAR-10 in
# $DATA_DIR first).
#
#   BUDGET=540 bash scripts/gpu_check.sh     (or: BUDGET=540 make gpu-check)
#
# BUDGET (seconds, default 540: a 10-minute borrowed GPU with its start-up) bounds the whole check:
# each step gets a share of the time left when it starts and is cut by `timeout`; a cut step keeps
# its partial figure where it has one, and the check ends within BUDGET (plus a few seconds).
# 1. environment, then probes: PROBE_EPOCHS whole epochs of the paper's recipe with bf16 autocast,
#    channels_last and torch.compile, once per compile mode in MODES (default, then reduce-overhead,
#    which replays the step as CUDA graphs; the log says whether they were really recorded), in
#    PROBE_SHARE % of the time left. A cut probe still counts: its record, written after every
#    epoch, gives the steady rate of its whole epochs after warm-up.
# 2. the fused benchmark, `bench --fused FUSED` (BENCH_SHARE %): K models trained as one against one
#    alone, with GPU memory, in bench-<device>.json, the record that the book's Performance appendix
#    shows once copied to book/records/; its `fused K: X× solo` lines, printed first, count if it is cut.
# 3. one run alone of the paper's schedule (64k iterations) in the faster mode (PAPER_SHARE %): cut,
#    its record gives the rate for the full schedule.
# 4. the time left: `run --profile PLAN --fuse FUSE` (the plan's runs trained fused) into
#    PLAN_RUNS_DIR, stopped cleanly at the budget's end: its finished runs stay usable and the next
#    check resumes it (PLAN=none leaves it out; without `run --fuse`: skipped, "needs run --fuse").
# Results in $OUT (default gpu-check/): check.log (every step, the environment), probe-<mode>.log,
# paper.log, paper-history.csv, bench.log, bench-<device>.json, plan.log, check.json (the figures,
# the budget and each step's limit, seconds and outcome). A step after the environment that fails is
# recorded and the check goes on; the exit status is then 1.
#
# Every setting is an environment variable (relative paths are from the project's root). A dry
# run on a CPU, in a minute:
#   BUDGET=60 DEVICE=cpu MODES=eager PROBE_EPOCHS=1 TRAIN_ARGS="--depth 8 --subset 640 --batch-size 32" \
#   PAPER_ARGS="--iterations 40" FUSED="1 2" BENCH_ARGS="--quick --depth 8 --batch-size 32 --train-images 256" \
#   PLAN=smoke bash scripts/gpu_check.sh
set -Eeuo pipefail
cd "$(dirname "$0")/.."

BUDGET=${BUDGET:-540}
MIN_BUDGET=30                             # below this not even the environment and one probe fit
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-gpu-check}
RUNS_DIR=${RUNS_DIR:-$OUT/runs}
DATA_DIR=${DATA_DIR:-${RESNET_CIFAR_DATA:-data}}
MODES=${MODES:-default reduce-overhead}   # torch.compile modes to probe; eager: no compile
PROBE_EPOCHS=${PROBE_EPOCHS:-3}
PROBE_SHARE=${PROBE_SHARE:-25}            # % of the time left, for all probes together
BENCH_SHARE=${BENCH_SHARE:-35}            # % of the time left then, for the benchmark
PAPER_SHARE=${PAPER_SHARE:-40}            # % of the time left then, for the paper run; the plan gets the rest
TRAIN_ARGS=${TRAIN_ARGS:-}                # more `train` flags for probes and the paper run
PAPER_ARGS=${PAPER_ARGS:-}                # more `train` flags for the paper run alone
FUSED=${FUSED:-1 4 16 64}                 # models trained as one, for `bench --fused`
BENCH_ARGS=${BENCH_ARGS:---quick --variants fp32 bf16+cl --conventional fp32 bf16+cl --workers 0 4}
PLAN=${PLAN:-quick}                       # the plan's profile for the time left; none: no plan step
FUSE=${FUSE:-64}
PLAN_RUNS_DIR=${PLAN_RUNS_DIR:-$RUNS_DIR}
RESERVE=5                                 # seconds kept for the summary at the end
GRACE=5                                   # seconds a stopped run gets to record itself as interrupted

usage() { echo "gpu-check: $*" >&2; exit 2; }
[[ "$BUDGET" =~ ^[0-9]+$ ]] && [ "$BUDGET" -gt 0 ] ||
    usage "BUDGET must be a positive whole number of seconds (e.g. BUDGET=540), got '$BUDGET'"
[ "$BUDGET" -ge "$MIN_BUDGET" ] ||
    usage "BUDGET=$BUDGET s is too short to run anything: give it at least $MIN_BUDGET s (540 fits a 10-minute slot)"
for share in PROBE_SHARE BENCH_SHARE PAPER_SHARE; do
    [[ "${!share}" =~ ^[0-9]+$ ]] && [ "${!share}" -ge 1 ] && [ "${!share}" -le 100 ] ||
        usage "$share must be a whole percentage from 1 to 100, got '${!share}'"
done

mkdir -p "$OUT" "$RUNS_DIR"
rm -f "$OUT/steps.tsv" "$OUT/check.json"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 RESNET_CIFAR_DATA="$DATA_DIR"
STEP=start FAILED=""
log() { echo "[gpu-check $(date +%H:%M:%S) +${SECONDS}s] $*" | tee -a "$OUT/check.log"; }
fail() {
    echo "[gpu-check] FAILED at step '$STEP': $*; see $OUT/check.log and the step's log in $OUT/" | tee -a "$OUT/check.log" >&2
    exit 1
}
trap 'fail "a command exited with status $?"' ERR

# Seconds left before the summary's reserve; `share PERCENT`: that share of them.
left() { local s=$((BUDGET - RESERVE - SECONDS)); echo $((s > 0 ? s : 0)); }
share() { echo $(($(left) * $1 / 100)); }
# `record NAME STATUS LIMIT START NOTE`: one step's outcome, for check.json.
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$((SECONDS - $4))" "$5" >>"$OUT/steps.tsv"; }

# `timed SECONDS LOG cmd...`: cmd with its output in LOG, stopped after SECONDS (SIGTERM, then
# SIGKILL GRACE s later). Returns 0, 124 (stopped), 3 (an option this version lacks: the log says
# "unrecognized arguments") or the command's failing status, whose log end it shows.
timed() {
    local seconds=$1 logfile=$2 rc=0
    shift 2
    [ "$seconds" -gt 0 ] || { echo "no time left in the budget" >"$logfile"; return 124; }  # timeout 0: none
    timeout -k "$GRACE" "$seconds" "$@" >"$logfile" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ]; then
        if grep -q "unrecognized arguments" "$logfile"; then return 3; fi
        tail -n 20 "$logfile" >&2
    fi
    return "$rc"
}
# `outcome RC`: status = done, cut, or failed (exit RC), which the exit status remembers.
outcome() {
    case $1 in
        0) status=done ;;
        124 | 137) status=cut ;;
        *) FAILED="$FAILED $STEP" status="failed (exit $1)" ;;
    esac
}

STEP=environment
start=$SECONDS limit=$(left)
log "budget $BUDGET s; device $DEVICE, python $PYTHON, output $OUT"
rc=0
timeout "$limit" "$PYTHON" - "$DEVICE" >>"$OUT/check.log" 2>&1 <<'EOF' || rc=$?
import os, sys, torch, torchvision
device = sys.argv[1]
print("torch", torch.__version__, "torchvision", torchvision.__version__, "cuda", torch.version.cuda,
      "cpus", os.cpu_count())
if device.startswith("cuda"):
    if not torch.cuda.is_available():
        sys.exit(f"DEVICE={device} but torch.cuda.is_available() is False: no usable CUDA GPU here")
    print("gpu", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
EOF
[ "$rc" -eq 0 ] || fail "the environment check exited with status $rc (124: not within the budget)"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >>"$OUT/check.log" 2>&1 || true
fi

if [ ! -d "$DATA_DIR/cifar-10-batches-py" ]; then
    STEP=data
    log "no CIFAR-10 in $DATA_DIR: downloading it (needs internet; or set DATA_DIR to a folder holding" \
        "cifar-10-batches-py/)"
    timeout "$(($(left) > 0 ? $(left) : 1))" "$PYTHON" -m resnet_cifar download --data-dir "$DATA_DIR" >>"$OUT/check.log" 2>&1
fi
record environment done "$limit" "$start" ""

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
modes=($MODES)
probe_limit=$(($(share "$PROBE_SHARE") / ${#modes[@]}))
best_mode="" best_rate=0
for mode in "${modes[@]}"; do
    iterations=$((PROBE_EPOCHS * per_epoch))
    log "probe $mode: $PROBE_EPOCHS epochs ($iterations iterations), at most $probe_limit s"
    start=$SECONDS rc=0
    TORCH_LOGS=${TORCH_LOGS:-cudagraphs} timed "$probe_limit" "$OUT/probe-$mode.log" \
        "$PYTHON" -m resnet_cifar train $(flags "$mode") --iterations "$iterations" --name "probe-$mode" || rc=$?
    r=$(rate "probe-$mode")
    outcome "$rc"
    record "probe-$mode" "$status" "$probe_limit" "$start" "${r:+steady $r images/s}"
    shown=${r:+$r images/s}
    log "probe $mode: $status after $((SECONDS - start)) s; steady rate ${shown:-not recorded}"
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
if [ -z "$best_mode" ]; then
    best_mode=${modes[0]}
    log "no probe recorded a steady rate within $probe_limit s (raise BUDGET or PROBE_SHARE): mode $best_mode"
else
    log "faster mode: $best_mode ($best_rate images/s)"
fi

STEP=benchmark
name="bench-${DEVICE%%:*}"
limit=$(share "$BENCH_SHARE")
log "benchmark, fused $FUSED, at most $limit s -> $OUT/$name.json"
start=$SECONDS rc=0
timed "$limit" "$OUT/bench.log" "$PYTHON" -m resnet_cifar bench --device "$DEVICE" $BENCH_ARGS --fused $FUSED \
    --json "$OUT/$name.json" || rc=$?
outcome "$rc"
record benchmark "$status" "$limit" "$start" "$([ -f "$OUT/$name.json" ] && echo "$name.json")"
log "benchmark: $status after $((SECONDS - start)) s"
grep -E "^fused [0-9]+:" "$OUT/bench.log" | tee -a "$OUT/check.log" || true

STEP=paper
limit=$(share "$PAPER_SHARE")
log "paper schedule in mode $best_mode, at most $limit s"
start=$SECONDS rc=0
timed "$limit" "$OUT/paper.log" "$PYTHON" -m resnet_cifar train $(flags "$best_mode") $PAPER_ARGS --name paper || rc=$?
r=$(rate paper)
outcome "$rc"
record paper "$status" "$limit" "$start" "${r:+steady $r images/s}"
shown=${r:+$r images/s}
log "paper run: $status after $((SECONDS - start)) s wall; steady rate ${shown:-not recorded}"
[ ! -f "$RUNS_DIR/paper/history.csv" ] || cp "$RUNS_DIR/paper/history.csv" "$OUT/paper-history.csv"

STEP=plan
if [ "$PLAN" != none ]; then
    limit=$(($(left) - GRACE))
    if [ "$limit" -lt 5 ]; then
        record plan skipped 0 "$SECONDS" "no time left"
        log "plan $PLAN: skipped, no time left"
    else
        log "plan $PLAN fused $FUSE for the time left, $limit s -> $PLAN_RUNS_DIR"
        plan=(-m resnet_cifar run --profile "$PLAN" --device "$DEVICE" --runs-dir "$PLAN_RUNS_DIR")
        start=$SECONDS rc=0
        timed "$limit" "$OUT/plan.log" "$PYTHON" "${plan[@]}" --fuse "$FUSE" || rc=$?
        if [ "$rc" -eq 3 ]; then
            record plan skipped 0 "$start" "needs run --fuse"
            log "plan $PLAN: skipped (needs run --fuse)"
        else
            outcome "$rc"
            record plan "$status" "$limit" "$start" "$(grep -c '^\[runner [0-9:]*\] finished ' "$OUT/plan.log" || true) runs finished"
            log "plan $PLAN: $status after $((SECONDS - start)) s; it resumes where it stopped next time"
        fi
    fi
fi

STEP=summary
"$PYTHON" - "$RUNS_DIR" "$OUT" "$best_mode" "$BUDGET" "$name" "$SECONDS" $MODES <<'EOF' | tee -a "$OUT/check.log"
import json, re, sys
from pathlib import Path
runs, out, best, budget, name, elapsed, modes = (Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]),
                                                 sys.argv[5], int(sys.argv[6]), sys.argv[7:])
keys = ("status", "iterations", "iterations_done", "train_images_per_s", "warmup_time_s", "wall_time_s",
        "eval_time_s", "final_test_error", "device_name", "numerics", "git_commit")

def read(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None

def summary(run):
    s = read(runs / run / "summary.json")
    return {k: v for k, v in s.items() if k in keys} if s else None

steps = {}
for line in (out / "steps.tsv").read_text().splitlines():
    step, status, limit, seconds, note = line.split("\t")
    steps[step] = dict(status=status, limit_s=int(limit), seconds=int(seconds), note=note or None)
paper, config = summary("paper"), read(runs / "paper" / "config.json")
schedule = None
if paper and config and paper.get("train_images_per_s"):
    steps_s = paper["iterations"] * config["batch_size"] / paper["train_images_per_s"]
    evals_s = (paper.get("eval_time_s") or 0) / max(paper.get("iterations_done") or 1, 1) * paper["iterations"]
    warm = paper.get("warmup_time_s") or 0
    schedule = dict(steps=steps_s, evaluations=evals_s, warmup=warm, total=steps_s + evals_s + warm)
bench = read(out / f"{name}.json")
fused = (bench or {}).get("fused")
if not fused and (out / "bench.log").exists():  # a cut benchmark: the lines it printed
    fused = [dict(n=int(m[1]), ratio=float(m[2])) for m in
             re.finditer(r"^fused (\d+): ([\d.]+)\s*[×x]\s*solo", (out / "bench.log").read_text(), re.M)]
check = dict(budget_s=budget, elapsed_s=elapsed, steps=steps, probes={m: summary(f"probe-{m}") for m in modes},
             mode=best, paper=paper, paper_schedule_s=schedule, bench=f"{name}.json" if bench else None, fused=fused)
(out / "check.json").write_text(json.dumps(check, indent=1))
print("steps: " + "; ".join(f"{k} {v['status']} {v['seconds']} s" for k, v in steps.items())
      + f"; {elapsed} of {budget} s")
if schedule:
    print(f"paper schedule ({paper['iterations']:,} iterations, mode {best}): {paper['status']} after "
          f"{paper['iterations_done']:,}; steady {paper['train_images_per_s']:,.0f} images/s -> steps "
          f"{schedule['steps']:,.0f} s + evaluations {schedule['evaluations']:,.0f} s + warm-up {schedule['warmup']:,.0f} s")
else:
    print("paper schedule: no steady rate recorded within its share of the budget")
for f in fused:
    print(f"fused {f['n']}: {f['ratio']:.2f}x solo")
EOF
STEP=${FAILED# }
[ -z "$FAILED" ] || fail "step(s)$FAILED failed (the others ran; check.json has what they measured)"
log "done: $OUT"
