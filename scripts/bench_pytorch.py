#!/usr/bin/env python3
"""PyTorch eager on the course's reference LM, for a side-by-side speed ratio.

usage: python3 scripts/bench_pytorch.py [--threads N] [--attention manual|sdpa]
                                        [--batch 16] [--seq 128] [--repeats 5] [--check]

An idiomatic `nn.Module` model of the same architecture as the Rust crate, written the way a
PyTorch user would write it: nn.Embedding, nn.Linear(bias=False), torch.nn.RMSNorm (eps 1e-5,
as scripts/make_fixtures.py), pre-norm blocks, interleaved RoPE (pairs (2i, 2i+1), angles
pos * theta^(-2i/d_k) in float64, as make_fixtures.py), SwiGLU W2(SiLU(W1 x) * W3 x), causal
multi-head attention either written out (`--attention manual`: scores, a boolean mask,
softmax) or with `F.scaled_dot_product_attention(is_causal=True)` (`--attention sdpa`), and
the crate's initialisation (truncated normals, chapter 1). The same config: vocab 256, ctx 128,
d_model 128, 4 layers, 4 heads, d_ff 384 (918 656 parameters, as chapter 6's hand count).

Prints tokens/s for a forward pass, for forward + backward (token-mean cross-entropy), and for
a full train step (forward, backward, clip_grad_norm_ to 1.0, torch.optim.AdamW with lr 1e-3,
betas 0.9/0.999, eps 1e-8, weight decay 0.1), median of --repeats after a warm-up, on
torch.set_num_threads(--threads). `--check` prints the parameter count, the initial loss
(about ln 256 = 5.55) and the largest difference between the two attention variants' logits.
scripts/compare_speed.sh runs this (both variants), `examples/forward.rs` and
`transformer-course bench` in alternating rounds.
Needs torch (see scripts/make_fixtures.py); CI does not run it.
"""
import argparse
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-5
THETA = 10000.0


def trunc_normal_(w, std):
    return nn.init.trunc_normal_(w, mean=0.0, std=std, a=-3 * std, b=3 * std)


class Linear(nn.Linear):
    """nn.Linear without bias, initialised as the crate's: N(0, 2 / (in + out)), cut at 3 sigma."""

    def __init__(self, d_in, d_out):
        super().__init__(d_in, d_out, bias=False)
        trunc_normal_(self.weight, math.sqrt(2.0 / (d_in + d_out)))


class Rope(nn.Module):
    """Rotates adjacent pairs (x[2i], x[2i+1]) by pos * theta^(-2i/d_k)."""

    def __init__(self, d_k, context, theta=THETA):
        super().__init__()
        i = torch.arange(d_k // 2, dtype=torch.float64)
        angles = torch.arange(context, dtype=torch.float64)[:, None] * theta ** (-2.0 * i / d_k)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x):  # (batch, heads, seq, d_k)
        s = x.shape[-2]
        cos, sin = self.cos[:s], self.sin[:s]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model, n_heads, context, attention):
        super().__init__()
        self.n_heads, self.attention = n_heads, attention
        self.q_proj, self.k_proj, self.v_proj, self.output_proj = (
            Linear(d_model, d_model) for _ in range(4))
        self.rope = Rope(d_model // n_heads, context)
        mask = torch.tril(torch.ones(context, context, dtype=torch.bool))
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x):
        b, s, d = x.shape
        split = lambda t: t.view(b, s, self.n_heads, d // self.n_heads).transpose(1, 2)
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        q, k = self.rope(q), self.rope(k)
        if self.attention == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
            scores = scores.masked_fill(~self.mask[:s, :s], float("-inf"))
            out = scores.softmax(dim=-1) @ v
        return self.output_proj(out.transpose(1, 2).reshape(b, s, d))


class SwiGLU(nn.Module):
    def __init__(self, d_model, d_ff):
        super().__init__()
        self.w1, self.w2, self.w3 = Linear(d_model, d_ff), Linear(d_ff, d_model), Linear(d_model, d_ff)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, d_model, n_heads, d_ff, context, attention):
        super().__init__()
        self.ln1 = nn.RMSNorm(d_model, eps=EPS)
        self.attn = CausalSelfAttention(d_model, n_heads, context, attention)
        self.ln2 = nn.RMSNorm(d_model, eps=EPS)
        self.ffn = SwiGLU(d_model, d_ff)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.ffn(self.ln2(x))


class TransformerLm(nn.Module):
    def __init__(self, vocab_size, context_length, d_model, n_layers, n_heads, d_ff,
                 attention="sdpa"):
        super().__init__()
        self.token_embeddings = nn.Embedding(vocab_size, d_model)
        trunc_normal_(self.token_embeddings.weight, 1.0)
        self.layers = nn.ModuleList(
            Block(d_model, n_heads, d_ff, context_length, attention) for _ in range(n_layers))
        self.ln_final = nn.RMSNorm(d_model, eps=EPS)
        self.lm_head = Linear(d_model, vocab_size)

    def forward(self, ids):
        x = self.token_embeddings(ids)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.ln_final(x))


REFERENCE = dict(vocab_size=256, context_length=128, d_model=128, n_layers=4, n_heads=4, d_ff=384)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--attention", choices=("manual", "sdpa"), default="sdpa")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = TransformerLm(**REFERENCE, attention=args.attention)
    v = REFERENCE["vocab_size"]
    ids = torch.randint(0, v, (args.batch, args.seq))
    targets = torch.randint(0, v, (args.batch, args.seq))
    tokens = args.batch * args.seq

    def loss_fn():
        return F.cross_entropy(model(ids).flatten(0, 1), targets.flatten())

    if args.check:
        n = sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            loss = loss_fn().item()
            logits = {}
            for kind in ("manual", "sdpa"):
                for layer in model.layers:
                    layer.attn.attention = kind
                logits[kind] = model(ids)
            for layer in model.layers:
                layer.attn.attention = args.attention
        diff = (logits["manual"] - logits["sdpa"]).abs().max().item()
        print(f"parameters: {n}; initial loss {loss:.4f} (ln {v} = {math.log(v):.4f}); "
              f"max |manual - sdpa| logit difference {diff:.2e}")

    def forward():
        with torch.no_grad():
            model(ids)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        loss_fn().backward()

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.1)

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
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
              f"({args.threads} threads, batch {args.batch} x seq {args.seq}, "
              f"attention {args.attention})")


if __name__ == "__main__":
    main()
