#!/usr/bin/env bash
# Pre-norm vs post-norm, with and without learning-rate warmup, on chapter 11's copy task
# (book chapter 6, "The original Transformer as a configuration").
#
# usage: scripts/ablation_norm_warmup.sh          (about 3 minutes on 2 cores)
#        LR=0.03 scripts/ablation_norm_warmup.sh  (the same at another peak learning rate, lr_min
#                                                  = LR / 10; results in runs/ablation-lr0.03)
#
# Four runs of the copy task's default config (`transformer-course config copy`), changing only
# the model's `norm_position` ("pre" / "post") and `schedule.warmup` (the default, 50 / 0);
# everything else stays the copy task's: RMSNorm, RoPE, SwiGLU, seed, steps, learning rate.
# Each run evaluates every EVAL_EVERY steps (default 50) on fresh sources. Results go to
# runs/ablation/summary.csv, one row per run:
#   name, norm_position, warmup, first step at which the eval copied 100 % of its sources
#   exactly (empty if never), the last eval's exact-match %, and the last eval and train losses
#   (from the run's losses.csv: `step,kind,loss` lines, kind `train` or `eval`).
# The exact-match rate is not in losses.csv: it is read from the eval lines the CLI prints,
#   "  step N: eval loss L | copy: W wrong tokens, P % of n fresh sources exact",
# saved in runs/ablation/<name>.log (beside the run's folder, which --force replaces).
set -euo pipefail
cd "$(dirname "$0")/.."
EVAL_EVERY="${EVAL_EVERY:-50}"
LR="${LR:-}"
OUT=runs/ablation${LR:+-lr$LR}
BIN=./target/release/transformer-course

cargo build --release
mkdir -p "$OUT"
"$BIN" config copy > "$OUT/copy_default.json"
default_warmup=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["schedule"]["warmup"])' "$OUT/copy_default.json")

runs=()
for norm in pre post; do
    for warmup in "$default_warmup" 0; do
        name="${norm}norm_warmup${warmup}"
        python3 - "$OUT/copy_default.json" "$OUT/$name.json" "$norm" "$warmup" "$LR" <<'PY'
import json, sys
src, dst, norm, warmup, lr = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
cfg = json.load(open(src))
(model,) = cfg["model"].values()  # the copy task's encoder-decoder config (key "seq2_seq")
assert "n_encoder_layers" in model, "the copy task's model is no longer an encoder-decoder"
model["norm_position"] = norm
cfg["schedule"]["warmup"] = warmup
if lr:
    cfg["schedule"]["lr_max"], cfg["schedule"]["lr_min"] = float(lr), float(lr) / 10
json.dump(cfg, open(dst, "w"), indent=2)
PY
        runs+=("$name")
    done
done

for name in "${runs[@]}"; do
    echo "== $name"
    "$BIN" train --config "$OUT/$name.json" --out "$OUT/$name" --force --eval-every "$EVAL_EVERY" \
        2>&1 | tee "$OUT/$name.log"
done

python3 - "$OUT" "${runs[@]}" <<'PY'
import csv, json, re, sys
from pathlib import Path
out, names = Path(sys.argv[1]), sys.argv[2:]
line = re.compile(r"step (\d+): eval loss ([0-9.eE+-]+|NaN|inf) \| copy: (\d+) wrong tokens, ([0-9.]+) % of")
rows = []
for name in names:
    cfg = json.load(open(out / f"{name}.json"))
    evals = [(int(m[1]), float(m[4])) for m in line.finditer((out / f"{name}.log").read_text())]
    first_exact = next((step for step, pct in evals if pct >= 100.0), "")
    last = {}
    for step, kind, loss in csv.reader(open(out / name / "losses.csv")):
        if step.isdigit():  # skip a header line if there is one
            last[kind] = loss
    rows.append({
        "name": name,
        "norm_position": next(iter(cfg["model"].values())).get("norm_position", "pre"),
        "warmup": cfg["schedule"]["warmup"],
        "first_step_100pct_exact": first_exact,
        "final_exact_pct": evals[-1][1] if evals else "",
        "final_eval_loss": last.get("eval", ""),
        "final_train_loss": last.get("train", ""),
    })
with open(out / "summary.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
print((out / "summary.csv").read_text(), end="")
PY
