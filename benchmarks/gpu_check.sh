#!/usr/bin/env bash
# Device check of issues 8 and 18 on one GPU, in at most 8 minutes: the GPU tests and
# the benchmark table, each step under `timeout`, then one summary table (PASS / FAIL /
# ERROR against the targets) and one JSON.
#
#   bash benchmarks/gpu_check.sh                # on a CUDA machine (H100 / H200)
#   bash benchmarks/gpu_check.sh --dry-run      # print the steps, run nothing
#   bash benchmarks/gpu_check.sh --cpu-smoke    # toy sizes on CPU (= RH_GPU_CHECK_ALLOW_CPU=1)
#   bash benchmarks/gpu_check.sh --only=pytest_model,mfu_compile   # a rerun of some steps
#
# Steps: preflight (versions, imports); attention (SWA w=128 vs full SDPA at T=32768, bf16,
# B=4, 8 heads of 64; target >= 8x); train (SSSF vs FFFF tokens/s at T=8192, d_model 512,
# 8 heads, w=128; target >= 2x); mfu (gpu-base preset, eager; target >= 25% of the card's
# dense bf16 peak, 989 TFLOP/s for H100 SXM and H200); pytest -m gpu in two steps
# (pytest_kernels: tests/model/test_gpu_kernels.py, with the fla tests; pytest_model:
# tests/model/test_gpu.py and test_detect_gpu.py); mfu_compile (the same with torch.compile);
# recurrent (torch chunked vs flash-linear-attention kernels; information only); scan (issue 18:
# native checkpoints scanned on the CPU and on the GPU in fp32 and bf16, micro_run's tables
# compared (target max |diff| <= 1e-4 in fp32), the sharded scan through torchrun with one
# rank, and the CPU / GPU time of 3 `small`-preset checkpoints (target >= 20x); GPU runs only,
# a CPU smoke leaves it out; docs/GPU.md).
# A failing step does not stop the later ones; steps that the time budget leaves no room
# for are reported as ERROR. Exit status: 0 when every target passed, 1 otherwise (CPU
# smoke: 1 only when a step failed to produce its result), 2 without a GPU.
#
# Environment:
#   OUT                      results folder (default benchmarks/results): gpu_check_<card>.json
#                            (summary + raw step results) and gpu_check_<card>.log (all output)
#   PYTHON                   interpreter (default python3)
#   RH_GPU_CHECK_BUDGET_S    seconds for all steps together (default 450; smoke 240)
#   RH_GPU_CHECK_ALLOW_CPU=1 run the CPU smoke instead of stopping when no GPU is visible
#   RH_GPU_CHECK_COMPILE=0   leave out the torch.compile MFU run
#   RH_GPU_CHECK_TRAIN_ARGS  model of the SSSF-vs-FFFF step (default "--d-model 512 --n-heads 8
#                            --window 128 --batch-size 8")
# Before the steps (GPU runs only; never on CPU, where fla must not be installed): wheels in
# .whl/*.whl and .whl/gpu/*.whl (e.g. fla-core; benchmarks/gpu_wheels.sh downloads them on
# the CPU machine) are installed with pip --no-index --no-deps
# --target into a temporary folder, and that folder, .pydeps/ (pure-Python packages the
# device image lacks, e.g. transformer-lens) and the repo root go on PYTHONPATH (no
# `pip install -e`, which needs a network for its build requirements).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
DRY=0
SMOKE=${RH_GPU_CHECK_ALLOW_CPU:-0}
COMPILE=${RH_GPU_CHECK_COMPILE:-1}
# the SSSF-vs-FFFF model: gpu-base's width (by model FLOPs/token FFFF is only 1.57x SSSF at
# this size and T=8192; the measured ratio also reflects attention's lower FLOP efficiency)
TRAIN_ARGS=${RH_GPU_CHECK_TRAIN_ARGS:---d-model 512 --n-heads 8 --window 128 --batch-size 8}
ONLY=${RH_GPU_CHECK_ONLY:-}
for a in "$@"; do
  case "$a" in
    --dry-run) DRY=1 ;;
    --only=*) ONLY=${a#--only=} ;;
    --cpu-smoke) SMOKE=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown option $a (try --help)" >&2; exit 2 ;;
  esac
done
if [ "$SMOKE" != 1 ]; then SMOKE=0; fi
STEPS_KNOWN=",preflight,attention,train,mfu,pytest_kernels,pytest_model,scan,mfu_compile,recurrent,"
if [ -n "$ONLY" ]; then
  IFS=',' read -r -a _only <<<"$ONLY"
  for s in "${_only[@]}"; do
    if [[ "$STEPS_KNOWN" != *",$s,"* ]]; then
      echo "gpu_check: --only: unknown step '$s'; steps: ${STEPS_KNOWN:1:${#STEPS_KNOWN}-2}" >&2; exit 2
    fi
  done
fi

# ---- the steps: name, time limit (s), command -------------------------------------------
WORK=/tmp/rh_gpu_check_work  # replaced below by a fresh temporary folder (dry runs keep this name)
declare -a NAMES LIMITS CMDS
add_step() {  # name, limit, command; --only keeps the listed steps (and the preflight)
  if [ -n "$ONLY" ] && [ "$1" != preflight ] && [[ ",$ONLY," != *",$1,"* ]]; then return 0; fi
  NAMES+=("$1"); LIMITS+=("$2"); CMDS+=("$3")
}
plan() {
  local W=$1 B="$PY benchmarks/bench_attention.py" T="$PY benchmarks/bench_train.py"
  local PYTEST="$PY -m pytest -m gpu -v -rs --durations=8 -p no:cacheprovider"
  local PT_KERNELS="$PYTEST tests/model/test_gpu_kernels.py --junitxml=$W/pytest_kernels.xml"
  local PT_MODEL="$PYTEST tests/model/test_gpu.py tests/detect/test_detect_gpu.py --junitxml=$W/pytest_model.xml"
  add_step preflight 60 "$PY benchmarks/gpu_check_summary.py --env $W/env.json"
  if [ "$SMOKE" = 1 ]; then
    local K="--kernel-device cpu --kernel-T 256 --kernel-batch 1 --kernel-heads 2 --kernel-dhead 16 --kernel-window 16"
    add_step attention 60 "$B --no-cpu $K --repeats 1 --warmup 0 --threads 1 --out $W/attention.json"
    add_step train 60 "$T --device cpu --layouts SSSF,FFFF --context-len 128 --d-model 32 --n-heads 2 --window 16 --batch-size 1 --warmup 0 --iters 1 --threads 1 --out $W/train.json"
    add_step mfu 60 "$T --device cpu --preset gpu-base --d-model 32 --n-heads 2 --context-len 64 --batch-size 1 --warmup 0 --iters 1 --peak-tflops 1 --threads 1 --out $W/mfu.json"
    add_step pytest_kernels 60 "$PT_KERNELS"
    add_step pytest_model 60 "$PT_MODEL"
    add_step recurrent 60 "$B --no-cpu --no-swa --recurrent $K --recurrent-T 128 --repeats 1 --warmup 0 --threads 1 --out $W/recurrent.json"
  else
    add_step attention 150 "$B --no-cpu --kernel-T 32768 --kernel-batch 4 --kernel-heads 8 --kernel-dhead 64 --kernel-window 128 --kernel-backend flex --warmup 3 --repeats 5 --out $W/attention.json"
    add_step train 150 "$T --device cuda --layouts SSSF,FFFF --context-len 8192 $TRAIN_ARGS --warmup 2 --iters 5 --peak-tflops auto --out $W/train.json"
    add_step mfu 120 "$T --device cuda --preset gpu-base --batch-size 16 --warmup 2 --iters 5 --peak-tflops auto --out $W/mfu.json"
    add_step pytest_kernels 150 "$PT_KERNELS"
    add_step pytest_model 150 "$PT_MODEL"
    add_step scan 150 "$PY benchmarks/gpu_check_summary.py --scan-check $W/scan.json"
    if [ "$COMPILE" = 1 ]; then
      add_step mfu_compile 150 "$T --device cuda --preset gpu-base --batch-size 16 --warmup 2 --iters 5 --peak-tflops auto --compile --out $W/mfu_compile.json"
    fi
    add_step recurrent 90 "$B --no-cpu --no-swa --recurrent --kernel-T 8192 --kernel-batch 4 --kernel-heads 8 --kernel-dhead 64 --warmup 2 --repeats 5 --out $W/recurrent.json"
  fi
}

if [ "$DRY" = 1 ]; then
  plan "$WORK"
  echo "gpu_check --dry-run ($([ "$SMOKE" = 1 ] && echo 'CPU smoke' || echo GPU)); steps:"
  for i in "${!NAMES[@]}"; do echo "  [${NAMES[$i]}, timeout ${LIMITS[$i]}s] ${CMDS[$i]}"; done
  exit 0
fi

# ---- is there a GPU? which card? --------------------------------------------------------
read -r HAS_CUDA CARD < <("$PY" - <<'EOF' 2>/dev/null || echo "0 none"
import re, torch
if torch.cuda.is_available():
    name = torch.cuda.get_device_name(0)
    m = re.search(r"\b([A-Z]\d{2,4}[A-Za-z]*)\b", name)
    print(1, (m.group(1) if m else re.sub(r"[^A-Za-z0-9]+", "-", name)).lower())
else:
    print(0, "cpu")
EOF
)
if [ "$HAS_CUDA" != 1 ] && [ "$SMOKE" != 1 ]; then
  echo "gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False); RH_GPU_CHECK_ALLOW_CPU=1 or --cpu-smoke runs a tiny CPU smoke instead"
  exit 2
fi
if [ "$HAS_CUDA" != 1 ] || [ "$SMOKE" = 1 ]; then SMOKE=1; CARD=cpu; fi  # never install GPU wheels on CPU


# ---- environment: carried wheels and pure-Python packages (GPU runs only) ---------------
PP="$REPO"
ENV_NOTE="no carried wheels installed"
if [ "$SMOKE" = 0 ]; then
  shopt -s nullglob
  wheels=(.whl/*.whl .whl/gpu/*.whl)
  shopt -u nullglob
  if [ "${#wheels[@]}" -gt 0 ]; then
    SITE=/tmp/rh_gpu_check_site
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
         --target "$SITE" "${wheels[@]}" >/tmp/rh_gpu_check_pip.log 2>&1; then
      PP="$PP:$SITE"
      ENV_NOTE="installed ${#wheels[@]} carried wheel(s) into $SITE: ${wheels[*]}"
    else
      ENV_NOTE="installing the carried wheels failed (continuing without them): $(tail -3 /tmp/rh_gpu_check_pip.log)"
    fi
  fi
  if [ -d .pydeps ]; then PP="$PP:$REPO/.pydeps"; fi
fi
export PYTHONPATH="$PP${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if [ "$SMOKE" = 1 ]; then export OMP_NUM_THREADS=1 CUDA_VISIBLE_DEVICES=""; fi

RES=${OUT:-$REPO/benchmarks/results}
mkdir -p "$RES"
WORK=$(mktemp -d /tmp/rh_gpu_check.XXXXXX)
STEM="gpu_check_$CARD${ONLY:+_only}"  # a partial rerun does not overwrite the full run's files
LOG="$RES/$STEM.log"
: >"$LOG"
: >"$WORK/steps.tsv"
plan "$WORK"
BUDGET=${RH_GPU_CHECK_BUDGET_S:-$([ "$SMOKE" = 1 ] && echo 240 || echo 450)}
START=$(date +%s)
DEADLINE=$((START + BUDGET))
echo "gpu_check: card=$CARD smoke=$SMOKE budget=${BUDGET}s work=$WORK results=$RES" | tee -a "$LOG"
echo "gpu_check: $ENV_NOTE; PYTHONPATH=$PYTHONPATH" | tee -a "$LOG"

run_step() {  # index
  local name=${NAMES[$1]} limit=${LIMITS[$1]} cmd=${CMDS[$1]}
  local left=$((DEADLINE - $(date +%s)))
  if [ "$left" -lt 15 ]; then
    printf '%s\tskipped\t0\t%s\n' "$name" "$limit" >>"$WORK/steps.tsv"
    echo "== $name: SKIPPED (time budget spent)" | tee -a "$LOG"
    return 0
  fi
  if [ "$limit" -gt "$left" ]; then limit=$left; fi
  echo "== $name (timeout ${limit}s): $cmd" | tee -a "$LOG"
  local t0 rc
  t0=$(date +%s)
  set +e
  # shellcheck disable=SC2086  # the command is a word list on purpose
  timeout -k 10 "$limit" $cmd 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  set -e
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$limit" >>"$WORK/steps.tsv"
  echo "== $name: exit $rc after $(( $(date +%s) - t0 ))s" | tee -a "$LOG"
}

for i in "${!NAMES[@]}"; do run_step "$i"; done

SMOKE_FLAG=()
if [ "$SMOKE" = 1 ]; then SMOKE_FLAG=(--smoke); fi
set +e
"$PY" benchmarks/gpu_check_summary.py --work "$WORK" --card "$CARD" --out "$RES/$STEM.json" \
  --only "$ONLY" ${SMOKE_FLAG[@]+"${SMOKE_FLAG[@]}"} 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
set -e
echo "gpu_check: total $(( $(date +%s) - START ))s; log $LOG" | tee -a "$LOG"
exit "$rc"
