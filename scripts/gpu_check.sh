#!/usr/bin/env bash
# The GPU checks in one unattended command: `make gpu-check` on a CUDA machine, from a fresh clone.
#
#   make gpu-check               # DEVICE=cuda: venv from the CUDA lock, tests on CUDA, both benchmarks
#                                # at the real 7B / 13B shapes (random weights, float16), figures written
#                                # to results/bench/*_cuda.*
#   make gpu-check DEVICE=cpu    # the dry run: the same steps at reduced sizes on the CPU venv,
#                                # figures to a temporary folder (tests/test_gpu_check.py runs it)
#
# Environment: DEVICE (cuda | cpu), PY (the python to use; default .venv/bin/python), OUT (figures),
# LOGS (step logs), GPU_CHECK_VENV=0 (skip `make venv`: PY is already the environment to test).
#
# Every step runs under `timeout` and its log goes to $LOGS. A failing setup step (no GPU, venv,
# probe) stops the script at once with one line naming it; a failing test or benchmark step is
# named in one line (with its log's tail) and the remaining steps still run, so one failure does
# not cost the other figures; the exit status is then 1. It never hangs and never reports a
# partial run as a pass. Budget on a CUDA machine: under 8 minutes after the environment exists; creating
# the environment (`make venv LOCK=cuda`, a ~3 GB download) has its own limit, VENV_LIMIT seconds.
set -uo pipefail

DEVICE=${DEVICE:-cuda}
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-$ROOT/.venv/bin/python}
LOGS=${LOGS:-$(mktemp -d -t gpu-check-logs.XXXXXX)}
VENV_LIMIT=${VENV_LIMIT:-600}
mkdir -p "$LOGS"

fail() { echo "gpu-check: $*" >&2; exit 1; }
FAILED=()

# step [--go-on] NAME LIMIT_S COMMAND...: run under timeout, log to $LOGS/NAME.log; on failure stop,
# or with --go-on note it and carry on.
step() {
    local go_on=0
    if [ "$1" = --go-on ]; then go_on=1 && shift; fi
    local name=$1 limit=$(($2 * SLACK)) start rc why
    shift 2
    start=$(date +%s)
    echo "gpu-check: $name (limit ${limit}s) ..."
    timeout --kill-after=15 "$limit" "$@" >"$LOGS/$name.log" 2>&1
    rc=$?
    if [ "$rc" -ne 0 ]; then
        tail -n 25 "$LOGS/$name.log" >&2
        why="failed with exit status $rc"
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then why="timed out after ${limit}s"; fi
        [ "$go_on" = 1 ] || fail "step '$name' $why (log: $LOGS/$name.log)"
        echo "gpu-check: step '$name' $why (log: $LOGS/$name.log); going on" >&2
        FAILED+=("$name")
        return
    fi
    echo "gpu-check: $name ok in $(($(date +%s) - start)) s"
}

case "$DEVICE" in
cuda)
    command -v nvidia-smi >/dev/null 2>&1 || fail "no CUDA GPU here (nvidia-smi not found); use DEVICE=cpu for the dry run"
    timeout 30 nvidia-smi -L >/dev/null 2>&1 || fail "no CUDA GPU here (nvidia-smi -L failed); use DEVICE=cpu for the dry run"
    LOCK=cuda
    SLACK=1
    OUT=${OUT:-$ROOT/results/bench}
    # Real shapes: LLaVA-1.5-7B and LLaVA-NeXT-13B widths, CLIP-L with its 24 layers, float16.
    SEL_7B=(--device cuda --dtype float16 --repeats 20 --warmup 3 --tag 7b)
    SEL_13B=(--device cuda --dtype float16 --repeats 20 --warmup 3 --llm-width 5120 --tag 13b)
    PRE_7B=(--device cuda --dtype float16 --family llava --llm-shape 7b --vision-layers 24 --budgets 576 192 64 --tag 7b)
    PRE_13B=(--device cuda --dtype float16 --family llava_next --llm-shape 13b --vision-layers 24 --budgets 640 160 --tag 13b)
    ;;
cpu)
    LOCK=cpu
    SLACK=4 # a 2-core CPU shared with other jobs: the dry run's limits are four times the GPU run's
    OUT=${OUT:-$(mktemp -d -t gpu-check-out.XXXXXX)}
    # The same steps at reduced sizes: every code path of the CUDA run except the device itself.
    small=(--repeats 1 --warmup 0 --llm-width 256 --vision-width 64 --no-others)
    SEL_7B=(--device cpu "${small[@]}" --cases "llava15 576->64" --tag 7b)
    SEL_13B=(--device cpu "${small[@]}" --cases "llavanext 5x576->5x32" --inputs clustered --tag 13b)
    PRE_7B=(--device cpu --family llava --llm-shape mini --vision-layers 2 --budgets 64 --in-llm --repeats 1 --warmup 0 --tag 7b)
    PRE_13B=(--device cpu --family llava_next --llm-shape mini --vision-layers 2 --budgets 160 --in-llm --repeats 1 --warmup 0 --tag 13b)
    ;;
*) fail "DEVICE must be cuda or cpu, got '$DEVICE'" ;;
esac

echo "gpu-check: DEVICE=$DEVICE, figures -> $OUT, logs -> $LOGS"
if [ "${GPU_CHECK_VENV:-1}" = 1 ]; then
    step venv "$((VENV_LIMIT / SLACK))" make venv LOCK=$LOCK
else
    echo "gpu-check: venv step skipped (GPU_CHECK_VENV=0), using $PY"
fi
[ -x "$PY" ] || fail "no python at $PY after make venv"
step probe 120 "$PY" - "$DEVICE" <<'EOF'
import sys
import torch
device = sys.argv[1]
if device == "cuda":
    if not torch.cuda.is_available():
        sys.exit(f"torch {torch.__version__} sees no CUDA device (built from the CPU lock? rm -rf .venv and rerun)")
    print("cuda", torch.version.cuda, torch.cuda.get_device_name(0))
    x = torch.randn(64, 64, device="cuda")
    torch.testing.assert_close((x @ x).cpu(), x.cpu() @ x.cpu(), rtol=1e-3, atol=1e-3)
else:
    print("cpu", torch.__version__)
EOF
echo "gpu-check: $(cat "$LOGS/probe.log" | tail -n 1)"

# The selection exactness and contract tests, their device tests on $DEVICE. On CUDA the whole files
# run: their CPU tests, the compiled CPU greedy's included (built by this machine's C compiler), too.
TEST_LIMIT=240
if [ "$DEVICE" = cuda ]; then
    step --go-on tests "$TEST_LIMIT" env MMTOK_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider \
        tests/test_selection_mmtok.py tests/test_selection_baselines.py tests/test_selection_text.py
else
    step --go-on tests "$TEST_LIMIT" env MMTOK_TEST_DEVICE=cpu "$PY" -m pytest -q -p no:cacheprovider \
        tests/test_selection_mmtok.py -k "on_device_picks or on_device_batched"
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
step --go-on selection-7b 150 "$PY" scripts/bench_selection.py "${SEL_7B[@]}" --out "$OUT"
step --go-on selection-13b 150 "$PY" scripts/bench_selection.py "${SEL_13B[@]}" --out "$OUT"
step --go-on prefill-7b 150 "$PY" scripts/bench_prefill.py "${PRE_7B[@]}" --out "$OUT"
step --go-on prefill-13b 180 "$PY" scripts/bench_prefill.py "${PRE_13B[@]}" --out "$OUT"

for f in "selection_7b_$DEVICE.md" "selection_13b_$DEVICE.md" "prefill_llava_7b_$DEVICE.md" "prefill_llava_next_13b_$DEVICE.md"; do
    [ -s "$OUT/$f" ] || FAILED+=("missing $f")
done
[ "${#FAILED[@]}" -eq 0 ] || fail "FAILED on $DEVICE: ${FAILED[*]} (logs in $LOGS; figures written so far in $OUT)"
echo "gpu-check: passed on $DEVICE; figures in $OUT (selection_*_$DEVICE.*, prefill_*_$DEVICE.*), logs in $LOGS"
