#!/usr/bin/env bash
# Side-by-side speed of the course's CPU backend and PyTorch eager on the reference LM
# (vocab 256, ctx 128, d_model 128, 4 layers, 4 heads, d_ff 384, batch 16 x 128 tokens).
#
# usage: scripts/compare_speed.sh [THREADS...]      (default: 1 2; ROUNDS=3 rounds each)
#
# Each round runs, one after the other with the same thread count: the crate
# (`examples/forward` for forward and forward + backward, `transformer-course bench` for the
# train step), PyTorch's nn.Module with attention written out (scripts/bench_pytorch.py
# --attention manual), and the same with F.scaled_dot_product_attention (--attention sdpa).
# It prints each round's tokens/s and the crate / PyTorch ratios: these machines drift by 2-3x
# over an hour, so only ratios within a round mean much. Needs a Python with torch: set PYTHON
# (default: ~/.cache/transformer-course/torch-venv/bin/python, see scripts/make_fixtures.py).
# Environment variables reach the crate's binaries (e.g. COURSE_SGEMM=matrixmultiply).
# Run it on an idle machine; never during a build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$HOME/.cache/transformer-course/torch-venv/bin/python}"
ROUNDS="${ROUNDS:-3}"
cargo build --quiet --release --example forward --bin transformer-course
threads_list=("$@")
[ ${#threads_list[@]} -gt 0 ] || threads_list=(1 2)
# tokens/s figures of a bench_pytorch.py run: forward, forward+backward, train step
figures() { grep -o '[0-9]* tokens/s' <<<"$1" | awk '{printf "%s ", $1} END {print ""}'; }
for threads in "${threads_list[@]}"; do
    for round in $(seq "$ROUNDS"); do
        rust=$(./target/release/examples/forward --threads "$threads" --run-backward --repeats 5 | tail -n1)
        # the last column of bench's table row is the train step's tokens/s
        rs=$(./target/release/transformer-course bench --threads "$threads" | tail -n1 | awk -F'|' '{gsub(/ /, "", $7); print $7}')
        manual=$("$PYTHON" scripts/bench_pytorch.py --threads "$threads" --attention manual --repeats 5)
        sdpa=$("$PYTHON" scripts/bench_pytorch.py --threads "$threads" --attention sdpa --repeats 5)
        read -r rf rb < <(grep -o '[0-9]* tokens/s' <<<"$rust" | awk '{printf "%s ", $1} END {print ""}')
        read -r mf mb ms < <(figures "$manual")
        read -r sf sb ss < <(figures "$sdpa")
        awk -v t="$threads" -v r="$round" -v rf="$rf" -v rb="$rb" -v rs="$rs" \
            -v mf="$mf" -v mb="$mb" -v ms="$ms" -v sf="$sf" -v sb="$sb" -v ss="$ss" 'BEGIN {
            printf "threads %s round %s | train step: crate %6d, pytorch manual %6d, sdpa %6d | ratio vs manual %.2f, vs sdpa %.2f (tokens/s)\n",
                t, r, rs, ms, ss, rs / ms, rs / ss
            printf "threads %s round %s |   forward: crate %6d, pytorch manual %6d, sdpa %6d (ratios %.2f, %.2f) | fwd+bwd: crate %6d, manual %6d, sdpa %6d (ratios %.2f, %.2f)\n",
                t, r, rf, mf, sf, rf / mf, rf / sf, rb, mb, sb, rb / mb, rb / sb }'
    done
done
