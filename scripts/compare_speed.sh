#!/usr/bin/env bash
# Side-by-side speed of the course's CPU backend and PyTorch eager on the reference LM
# (vocab 256, ctx 128, d_model 128, 4 layers, 4 heads, d_ff 384, batch 16 x 128 tokens).
#
# usage: scripts/compare_speed.sh [THREADS...]      (default: 1 2)
#
# Runs the two in alternating rounds (A, B, A, B, ...) with the same thread count and prints
# each round's tokens/s and the Rust / PyTorch ratio: these machines drift by 2-3x over an
# hour, so only ratios within a round mean much. Needs a Python with torch: set PYTHON
# (default: ~/.cache/transformer-course/torch-venv/bin/python, see scripts/make_fixtures.py).
# Run it on an idle machine; never during a build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$HOME/.cache/transformer-course/torch-venv/bin/python}"
ROUNDS="${ROUNDS:-3}"
cargo build --quiet --release --example forward --bin transformer-course
threads_list=("$@")
[ ${#threads_list[@]} -gt 0 ] || threads_list=(1 2)
for threads in "${threads_list[@]}"; do
    for round in $(seq "$ROUNDS"); do
        torch=$("$PYTHON" scripts/bench_pytorch.py --threads "$threads" --repeats 5)
        rust=$(./target/release/examples/forward --threads "$threads" --run-backward --repeats 5 | tail -n1)
        # the last column of bench's table row is the train step's tokens/s
        rs=$(./target/release/transformer-course bench --threads "$threads" | tail -n1 | awk -F'|' '{gsub(/ /, "", $7); print $7}')
        # tokens/s figures: forward, forward+backward (, train step)
        read -r tf tb ts < <(grep -o '[0-9]* tokens/s' <<<"$torch" | awk '{printf "%s ", $1} END {print ""}')
        read -r rf rb < <(grep -o '[0-9]* tokens/s' <<<"$rust" | awk '{printf "%s ", $1} END {print ""}')
        awk -v t="$threads" -v r="$round" -v tf="$tf" -v tb="$tb" -v ts="$ts" -v rf="$rf" -v rb="$rb" -v rs="$rs" 'BEGIN {
            printf "threads %s round %s | forward: rust %6d pytorch %6d ratio %.2f | fwd+bwd: rust %6d pytorch %6d ratio %.2f | train step: rust %6d pytorch %6d ratio %.2f (tokens/s)\n",
                t, r, rf, tf, rf / tf, rb, tb, rb / tb, rs, ts, rs / ts }'
    done
done
