#!/usr/bin/env bash
# One command for the first GPU: everything the course runs, on DEVICE (default cuda).
#
# usage: scripts/gpu_check.sh                 on a machine with an NVIDIA GPU and CUDA installed
#        DEVICE=cpu scripts/gpu_check.sh      the same path on the CPU (CI runs it so, which
#                                             tests the script itself)
# env:   DEVICE  cuda | cpu (default cuda)
#        STEPS   copy-task training steps (default 300)
#        OUT     results folder (default runs/gpu-check-<device>-<UTC time>)
#
# Steps, each logged to $OUT/<step>.log:
#   1. build   `cargo build --release` (with `--features cuda` for cuda) and the test binaries
#   2. tests   every chapter's tests (`cargo test --lib`) with the graphs compiled for $DEVICE
#              (the tests read DEVICE; see src/testing.rs)
#   3. pytorch the PyTorch fixtures (`cargo test --test pytorch_fixtures`) on $DEVICE
#   4. copy    `train --task copy --steps $STEPS --cosine-end $STEPS --device $DEVICE`; its final
#              exact-match line must say 100.0 %
#   5. bench   `bench --device $DEVICE`, and `bench --device cpu` beside it when DEVICE is not cpu
# It ends with one summary line, `gpu_check <device>: PASS ...` or `... FAIL ...`, also written
# to $OUT/summary.txt; the exit status is non-zero on FAIL. On one GPU it should take well under
# 10 minutes (on 2 CPU cores, warm: about 3).
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cuda}"
STEPS="${STEPS:-300}"
OUT="${OUT:-runs/gpu-check-$DEVICE-$(date -u +%Y%m%d-%H%M%S)}"
case "$DEVICE" in
    cuda) FEATURES=(--features cuda) ;;
    cpu) FEATURES=() ;;
    *) echo "gpu_check: DEVICE must be cuda or cpu, not '$DEVICE'" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
export DEVICE
echo "gpu_check: device $DEVICE, results in $OUT"
failed=()
start=$SECONDS

# step NAME COMMAND...: run one step, its output in $OUT/NAME.log; a failure is recorded.
step() {
    local name=$1 t=$SECONDS
    shift
    echo "-- $name: $*"
    if "$@" >"$OUT/$name.log" 2>&1; then
        echo "   ok in $((SECONDS - t)) s"
    else
        echo "   FAILED in $((SECONDS - t)) s; last lines of $OUT/$name.log:"
        tail -n 15 "$OUT/$name.log" | sed 's/^/   | /'
        failed+=("$name")
    fi
}

build() {
    cargo build --release "${FEATURES[@]}" &&
        cargo test "${FEATURES[@]}" --lib --test pytorch_fixtures --no-run
}
step build build
if [[ " ${failed[*]} " == *" build "* ]]; then
    echo "gpu_check $DEVICE: FAIL (the build failed; nothing else ran)" | tee "$OUT/summary.txt"
    exit 1
fi
step tests cargo test "${FEATURES[@]}" --lib
step pytorch cargo test "${FEATURES[@]}" --test pytorch_fixtures

BIN="${CARGO_TARGET_DIR:-target}/release/transformer-course"
copy() {
    "$BIN" train --task copy --steps "$STEPS" --cosine-end "$STEPS" --device "$DEVICE" \
        --out "$OUT/copy-run" &&
        grep -F "0 wrong tokens, 100.0 % of 256 fresh sources exact" "$OUT/copy.log" >/dev/null
}
step copy copy
step bench "$BIN" bench --device "$DEVICE"
[ "$DEVICE" = cpu ] || step bench-cpu "$BIN" bench --device cpu

# The numbers for the summary line.
tests=$(grep -Eo "test result: ok. [0-9]+ passed" "$OUT/tests.log" | grep -Eo "[0-9]+" | head -n1)
fixtures=$(grep -Eo "test result: ok. [0-9]+ passed" "$OUT/pytorch.log" | grep -Eo "[0-9]+" | head -n1)
exact=$(grep -Eo "copy: [0-9]+ wrong tokens, [0-9.]+ % of [0-9]+ fresh sources exact" "$OUT/copy.log" | tail -n1)
tok() { [ -f "$OUT/$1.log" ] && tail -n1 "$OUT/$1.log" | awk -F'|' '{gsub(/ /, "", $7); print $7}'; }
bench="bench $DEVICE $(tok bench) tok/s"
[ "$DEVICE" = cpu ] || bench="$bench, cpu $(tok bench-cpu) tok/s"
result=PASS
[ ${#failed[@]} -eq 0 ] || result="FAIL (${failed[*]})"
line="gpu_check $DEVICE: $result; lib tests ${tests:-0} passed, PyTorch fixtures ${fixtures:-0} passed, ${exact:-copy: no result} after $STEPS steps, $bench; $((SECONDS - start)) s"
echo "$line" | tee "$OUT/summary.txt"
[ "$result" = PASS ]
