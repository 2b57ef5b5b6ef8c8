#!/usr/bin/env python3
"""PyTorch eager on the course's reference LM, for a side-by-side speed ratio.

usage: python3 scripts/bench_pytorch.py [--threads N] [--batch 16] [--seq 128] [--repeats 5]

The same architecture as the Rust crate (pre-norm, RMSNorm, interleaved RoPE, SwiGLU, causal
multi-head attention, no biases; the code is scripts/make_fixtures.py's) and the same config:
vocab 256, ctx 128, d_model 128, 4 layers, 4 heads, d_ff 384. Prints tokens/s for a forward
pass, for forward + backward (token-mean cross-entropy), and for a full train step (forward,
backward, clip_grad_norm_ to 1.0, AdamW), median of --repeats after a warm-up.
scripts/compare_speed.sh runs this, `examples/forward.rs` and `transformer-course bench` in
alternating rounds.
Needs torch (see scripts/make_fixtures.py); CI does not run it.
"""
import argparse
import importlib.util
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

spec = importlib.util.spec_from_file_location("fixtures", Path(__file__).with_name("make_fixtures.py"))
fx = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fx)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = dict(vocab_size=256, context_length=128, d_model=128, n_layers=4, n_heads=4, d_ff=384)
    d, f, v = cfg["d_model"], cfg["d_ff"], cfg["vocab_size"]
    w = {"token_embeddings.weight": torch.randn(v, d)}
    for i in range(cfg["n_layers"]):
        fx.block_weights(w, f"layers.{i}", d, f)
    w["ln_final.weight"] = torch.ones(d)
    w["lm_head.weight"] = fx.matrix(v, d)
    for t in w.values():
        t.requires_grad_(True)
    ids = torch.randint(0, v, (args.batch, args.seq))
    targets = torch.randint(0, v, (args.batch, args.seq))
    tokens = args.batch * args.seq

    def forward():
        with torch.no_grad():
            fx.lm(ids, w, cfg)

    def forward_backward():
        for t in w.values():
            t.grad = None
        logits = fx.lm(ids, w, cfg)
        F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()

    opt = torch.optim.AdamW(list(w.values()), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)

    def train_step():
        forward_backward()
        torch.nn.utils.clip_grad_norm_(list(w.values()), 1.0)
        opt.step()

    steps = (("forward", forward), ("forward+backward", forward_backward), ("train step", train_step))
    for name, step in steps:
        step()  # warm-up
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        median = statistics.median(times)
        print(f"pytorch {name}: {median * 1e3:.1f} ms, {tokens / median:.0f} tokens/s "
              f"({args.threads} threads, batch {args.batch} x seq {args.seq})")


if __name__ == "__main__":
    main()
