#!/usr/bin/env python3
"""Write the PyTorch reference fixtures that tests/pytorch_fixtures.rs compares against.

usage: python3 scripts/make_fixtures.py        (writes tests/fixtures/*.safetensors)
       python3 scripts/make_fixtures.py seq2seq_original   (writes only that fixture)

Needs torch and safetensors (`python3 -m venv .venv && .venv/bin/pip install torch safetensors`);
CI does not: the fixtures are committed. Regenerate only when a convention changes, and review
the diff of tests/pytorch_fixtures.rs results.

Everything here is plain PyTorch written from the CS336 conventions the book states (layouts, names), independent of
the Rust code: Linear y = x W^T (W: out x in, no bias); RMSNorm with eps 1e-5 inside the root;
SwiGLU W2(SiLU(W1 x) * W3 x); RoPE on adjacent pairs (x[2k], x[2k+1]) with angle
pos * theta^(-2k/d); attention via F.scaled_dot_product_attention with a boolean mask
(True = may attend); pre-norm blocks; the encoder-decoder of chapter 6.

Each fixture file holds inputs named `in.*`, outputs named `out.*`, weights under their
state-dict names, and the sizes in the header metadata. Token ids and masks are stored as
float32 (exact for small integers): the course's reader only reads F32.
"""
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
EPS = 1e-5
THETA = 10000.0


def linear(x, w):
    return x @ w.T


def rms_norm(x, g):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * g


def swiglu(x, w1, w2, w3):
    return linear(F.silu(linear(x, w1)) * linear(x, w3), w2)


def rope(x, theta=THETA):
    """x (..., seq, d): rotate adjacent pairs by pos * theta^(-2k/d); angles in float64."""
    s, d = x.shape[-2:]
    k = torch.arange(d // 2, dtype=torch.float64)
    angles = torch.arange(s, dtype=torch.float64)[:, None] * theta ** (-2.0 * k / d)
    cos, sin = angles.cos().float(), angles.sin().float()
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)


def mha(x, memory, w, prefix, heads, mask, use_rope):
    """x (b, s, d) queries; memory (b, t, d) keys/values; mask (b, s, t) bool."""
    b, s, d = x.shape
    t = memory.shape[1]
    dk = d // heads
    split = lambda m, n: m.view(b, n, heads, dk).transpose(1, 2)  # (b, h, n, dk)
    q = split(linear(x, w[f"{prefix}.q_proj.weight"]), s)
    k = split(linear(memory, w[f"{prefix}.k_proj.weight"]), t)
    v = split(linear(memory, w[f"{prefix}.v_proj.weight"]), t)
    if use_rope:
        q, k = rope(q), rope(k)
    att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
    return linear(att.transpose(1, 2).reshape(b, s, d), w[f"{prefix}.output_proj.weight"])


def block(x, w, p, heads, mask):
    n = rms_norm(x, w[f"{p}.ln1.weight"])
    h = x + mha(n, n, w, f"{p}.attn", heads, mask, True)
    ffn = [w[f"{p}.ffn.w{i}.weight"] for i in (1, 2, 3)]
    return h + swiglu(rms_norm(h, w[f"{p}.ln2.weight"]), *ffn)


def causal(b, s):
    return torch.tril(torch.ones(s, s, dtype=torch.bool)).expand(b, s, s)


def lm(ids, w, cfg):
    b, s = ids.shape
    x = w["token_embeddings.weight"][ids]
    for i in range(cfg["n_layers"]):
        x = block(x, w, f"layers.{i}", cfg["n_heads"], causal(b, s))
    return linear(rms_norm(x, w["ln_final.weight"]), w["lm_head.weight"])


def seq2seq(src, keep, tgt, w, cfg):
    (b, t), s = src.shape, tgt.shape[1]
    heads, table = cfg["n_heads"], w["token_embeddings.weight"]
    enc_mask = keep[:, None, :].expand(b, t, t)
    m = table[src]
    for i in range(cfg["n_encoder_layers"]):
        m = block(m, w, f"encoder.layers.{i}", heads, enc_mask)
    m = rms_norm(m, w["encoder.ln_final.weight"])
    x = table[tgt]
    for i in range(cfg["n_decoder_layers"]):
        p = f"decoder.layers.{i}"
        n = rms_norm(x, w[f"{p}.ln1.weight"])
        x = x + mha(n, n, w, f"{p}.self_attn", heads, causal(b, s), True)
        n = rms_norm(x, w[f"{p}.ln2.weight"])
        x = x + mha(n, m, w, f"{p}.cross_attn", heads, keep[:, None, :].expand(b, s, t), False)
        ffn = [w[f"{p}.ffn.w{j}.weight"] for j in (1, 2, 3)]
        x = x + swiglu(rms_norm(x, w[f"{p}.ln3.weight"]), *ffn)
    x = rms_norm(x, w["decoder.ln_final.weight"])
    head = table if cfg["tie_embeddings"] else w["lm_head.weight"]
    return linear(x, head)


# ---- weights ------------------------------------------------------------------------------
def matrix(out_f, in_f):
    return torch.randn(out_f, in_f) / math.sqrt(in_f)


def gain(d):
    return 1.0 + 0.1 * torch.randn(d)  # not all ones, so a wrong gain shows


def attn_weights(w, prefix, d):
    for name in ("q_proj", "k_proj", "v_proj", "output_proj"):
        w[f"{prefix}.{name}.weight"] = matrix(d, d)


def block_weights(w, p, d, d_ff, cross=False):
    w[f"{p}.ln1.weight"] = gain(d)
    attn_weights(w, f"{p}.self_attn" if cross else f"{p}.attn", d)
    w[f"{p}.ln2.weight"] = gain(d)
    if cross:
        attn_weights(w, f"{p}.cross_attn", d)
        w[f"{p}.ln3.weight"] = gain(d)
    w[f"{p}.ffn.w1.weight"] = matrix(d_ff, d)
    w[f"{p}.ffn.w2.weight"] = matrix(d, d_ff)
    w[f"{p}.ffn.w3.weight"] = matrix(d_ff, d)


def with_grads(w, forward, targets, mask):
    """Logits, the token-centric masked mean cross-entropy, and d loss / d every weight
    (named `grad.<state-dict name>`)."""
    for v in w.values():
        v.requires_grad_(True)
    with torch.enable_grad():
        logits = forward()
        per_token = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        loss = (per_token * mask.flatten()).sum() / mask.sum()
        loss.backward()
    grads = {f"grad.{k}": v.grad for k, v in w.items()}
    for v in w.values():
        v.requires_grad_(False)
        v.grad = None
    return logits.detach(), loss.detach().reshape(1), grads


def save(name, tensors, meta):
    OUT.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().contiguous() for k, v in tensors.items()}
    save_file(tensors, OUT / f"{name}.safetensors", metadata={"config": json.dumps(meta)})
    print(f"{name}: {sum(v.numel() for v in tensors.values())} values")


def main():
    torch.manual_seed(20261123)

    x = torch.randn(3, 5)
    w = matrix(4, 5)
    save("linear", {"in.x": x, "linear.weight": w, "out.y": linear(x, w)}, {})

    ids = torch.randint(0, 10, (2, 3))
    table = torch.randn(10, 4)
    save("embedding", {"in.ids": ids, "token_embeddings.weight": table, "out.y": table[ids]}, {})

    x, g = 3 * torch.randn(2, 3, 8), gain(8)
    save("rms_norm", {"in.x": x, "ln.weight": g, "out.y": rms_norm(x, g)}, {})

    x = torch.randn(2, 3, 8)
    ws = {f"ffn.w{i}.weight": m for i, m in ((1, matrix(12, 8)), (2, matrix(8, 12)), (3, matrix(12, 8)))}
    y = swiglu(x, ws["ffn.w1.weight"], ws["ffn.w2.weight"], ws["ffn.w3.weight"])
    save("swiglu", {"in.x": x, **ws, "out.y": y}, {"d_ff": 12})

    x = torch.randn(2, 2, 7, 8)  # (batch, heads, seq, d_head)
    save("rope", {"in.x": x, "out.y": rope(x)}, {"theta": THETA})

    # SDPA with 3-D (batch) and 4-D (batch, heads) leading dims; every query row keeps a key.
    for name, lead in (("sdpa_3d", (2,)), ("sdpa_4d", (2, 3))):
        q, k, v = torch.randn(*lead, 4, 8), torch.randn(*lead, 6, 8), torch.randn(*lead, 6, 5)
        mask = torch.rand(*lead, 4, 6) < 0.6
        mask[..., 0] = True
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        save(name, {"in.q": q, "in.k": k, "in.v": v, "in.mask": mask, "out.y": out}, {})

    # Causal multi-head self-attention with RoPE: d_model 16, 4 heads.
    x, w = torch.randn(2, 5, 16), {}
    attn_weights(w, "attn", 16)
    y = mha(x, x, w, "attn", 4, causal(2, 5), True)
    save("mha_rope_causal", {"in.x": x, **w, "out.y": y}, {"n_heads": 4})

    # One pre-norm block.
    x, w = torch.randn(2, 5, 16), {}
    block_weights(w, "layers.0", 16, 48)
    save("block", {"in.x": x, **w, "out.y": block(x, w, "layers.0", 4, causal(2, 5))},
         {"n_heads": 4, "d_ff": 48})

    # The decoder-only LM.
    cfg = dict(vocab_size=32, context_length=16, d_model=16, n_layers=2, n_heads=2, d_ff=48,
               rope_theta=THETA)
    w = {"token_embeddings.weight": torch.randn(32, 16)}
    for i in range(2):
        block_weights(w, f"layers.{i}", 16, 48)
    w["ln_final.weight"] = gain(16)
    w["lm_head.weight"] = matrix(32, 16)
    ids = torch.randint(0, 32, (2, 10))
    targets = torch.randint(0, 32, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 7:] = False  # the second sequence's last 3 positions are padding
    logits, loss, grads = with_grads(w, lambda: lm(ids, w, cfg), targets, mask)
    save("lm", {"in.ids": ids, "in.targets": targets, "in.mask": mask, **w, "out.logits": logits,
                "out.loss": loss, **grads}, cfg)

    # The encoder-decoder, tied embeddings, with source padding.
    cfg = dict(vocab_size=18, context_length=16, d_model=16, n_heads=2, n_encoder_layers=2,
               n_decoder_layers=2, d_ff=48, rope_theta=THETA, tie_embeddings=True)
    w = {"token_embeddings.weight": torch.randn(18, 16)}
    for i in range(2):
        block_weights(w, f"encoder.layers.{i}", 16, 48)
    w["encoder.ln_final.weight"] = gain(16)
    for i in range(2):
        block_weights(w, f"decoder.layers.{i}", 16, 48, cross=True)
    w["decoder.ln_final.weight"] = gain(16)
    src = torch.randint(2, 18, (2, 7))
    keep = torch.ones(2, 7, dtype=torch.bool)
    keep[1, 4:] = False  # the second source is 4 tokens long, then padding
    src[1, 4:] = 0
    tgt = torch.randint(2, 18, (2, 6))
    tgt[:, 0] = 1
    tgt_out = torch.randint(2, 18, (2, 6))
    tgt_mask = torch.ones(2, 6, dtype=torch.bool)
    tgt_mask[0, 5] = False
    logits, loss, grads = with_grads(w, lambda: seq2seq(src, keep, tgt, w, cfg), tgt_out, tgt_mask)
    save("seq2seq", {"in.src": src, "in.src_keep": keep, "in.tgt": tgt, "in.tgt_out": tgt_out,
                     "in.tgt_mask": tgt_mask, **w, "out.logits": logits, "out.loss": loss, **grads}, cfg)

    # AdamW (torch.optim.AdamW) for 120 steps on a small least-squares problem.
    x, y, w0 = torch.randn(8, 4), torch.randn(8, 3), torch.randn(3, 4)
    w = w0.clone().requires_grad_(True)
    opt = torch.optim.AdamW([w], lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    losses = []
    with torch.enable_grad():
        for _ in range(120):
            opt.zero_grad()
            loss = ((x @ w.T - y) ** 2).mean()
            losses.append(loss.item())
            loss.backward()
            opt.step()
    save("adamw", {"in.x": x, "in.y": y, "in.w0": w0, "out.w": w.detach(), "out.losses": torch.tensor(losses)},
         {"lr": 1e-2, "weight_decay": 0.1, "steps": 120})

    # Global-norm clipping (torch.nn.utils.clip_grad_norm_), clipping and not clipping.
    for name, max_norm in (("clip", 1.0), ("clip_small", 100.0)):
        ps = [torch.zeros(3, 4, requires_grad=True), torch.zeros(5, requires_grad=True), torch.zeros(2, 2, requires_grad=True)]
        for p_ in ps:
            p_.grad = 2.0 * torch.randn_like(p_)
        before = {f"in.g{i}": p_.grad.clone() for i, p_ in enumerate(ps)}
        norm = torch.nn.utils.clip_grad_norm_(ps, max_norm)
        after = {f"out.g{i}": p_.grad.clone() for i, p_ in enumerate(ps)}
        save(name, {**before, **after, "out.norm": norm.reshape(1)}, {"max_norm": max_norm})


# ---- the original Transformer (chapter 6's `Seq2SeqConfig::original_transformer`) -----------
def sinusoids(n, d):
    """The paper's table (n, d): PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(same);
    angles in float64."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    angles = pos * THETA ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    pe = torch.zeros(n, d, dtype=torch.float64)
    pe[:, 0::2], pe[:, 1::2] = angles.sin(), angles.cos()
    return pe.float()


def course_names(model, emb, of=lambda p: p):
    """torch.nn.Transformer's parameters under the course's state-dict names: in_proj_weight
    splits into q/k/v (rows in that order), linear1/linear2 are ffn.w1/w2, normK is lnK, the
    stacks' final norms are ln_final. Linear and attention biases are left out (they are held
    at zero: the course's linear layers have none). Returns name -> of(parameter), e.g. with
    `of=lambda p: p.grad` the gradients under the same names."""
    out = {"token_embeddings.weight": of(emb)}
    for stack in ("encoder", "decoder"):
        for i, layer in enumerate(getattr(model, stack).layers):
            p = f"{stack}.layers.{i}"
            attns = [("self_attn", "attn" if stack == "encoder" else "self_attn")]
            if stack == "decoder":
                attns.append(("multihead_attn", "cross_attn"))
            for torch_name, ours in attns:
                mha_ = getattr(layer, torch_name)
                q, k, v = of(mha_.in_proj_weight).chunk(3)
                for n, w in (("q_proj", q), ("k_proj", k), ("v_proj", v), ("output_proj", of(mha_.out_proj.weight))):
                    out[f"{p}.{ours}.{n}.weight"] = w
            out[f"{p}.ffn.w1.weight"] = of(layer.linear1.weight)
            out[f"{p}.ffn.w2.weight"] = of(layer.linear2.weight)
            for j in (1, 2, 3) if stack == "decoder" else (1, 2):
                norm = getattr(layer, f"norm{j}")
                out[f"{p}.ln{j}.weight"], out[f"{p}.ln{j}.bias"] = of(norm.weight), of(norm.bias)
        norm = getattr(model, stack).norm
        out[f"{stack}.ln_final.weight"], out[f"{stack}.ln_final.bias"] = of(norm.weight), of(norm.bias)
    return out


def seq2seq_original():
    """torch.nn.Transformer itself (post-norm: norm_first=False, LayerNorm with eps 1e-5, ReLU),
    with sinusoids added to tied token embeddings (not scaled by sqrt(d_model), as in the
    course) and the output projection = the embedding table. Logits, loss and gradients."""
    torch.manual_seed(2017)
    d, heads, d_ff, vocab = 16, 2, 48, 18
    cfg = dict(vocab_size=vocab, context_length=16, d_model=d, n_heads=heads, n_encoder_layers=2,
               n_decoder_layers=2, d_ff=d_ff, rope_theta=THETA, tie_embeddings=True,
               norm_position="post", norm="layer_norm", positions="sinusoidal", ffn="relu")
    model = torch.nn.Transformer(d_model=d, nhead=heads, num_encoder_layers=2, num_decoder_layers=2,
                                 dim_feedforward=d_ff, dropout=0.0, activation="relu",
                                 layer_norm_eps=EPS, batch_first=True, norm_first=False)
    # Train mode (dropout is 0) keeps PyTorch off its inference fast path, which would return
    # zeros at padded source positions.
    model.train()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # LayerNorm gains near 1 and biases near 0, not the init's 1 and 0
                p.copy_(gain(d) if name.endswith("weight") else 0.1 * torch.randn(d))
            elif name.endswith("bias"):
                p.zero_()  # the course's linear layers have no bias
                p.requires_grad_(False)
    emb = torch.randn(vocab, d).requires_grad_(True)
    src = torch.randint(2, vocab, (2, 7))
    keep = torch.ones(2, 7, dtype=torch.bool)
    keep[1, 4:] = False  # the second source is 4 tokens long, then padding
    src[1, 4:] = 0
    tgt = torch.randint(2, vocab, (2, 6))
    tgt[:, 0] = 1
    tgt_out = torch.randint(2, vocab, (2, 6))
    tgt_mask = torch.ones(2, 6, dtype=torch.bool)
    tgt_mask[0, 5] = False
    (t, s), pe = (7, 6), sinusoids(16, d)
    with torch.enable_grad():
        # PyTorch's masks say where NOT to attend (True = blocked): the course's, negated.
        out = model(emb[src] + pe[:t], emb[tgt] + pe[:s],
                    tgt_mask=~torch.tril(torch.ones(s, s, dtype=torch.bool)),
                    src_key_padding_mask=~keep, memory_key_padding_mask=~keep)
        logits = out @ emb.T
        per_token = F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), reduction="none")
        loss = (per_token * tgt_mask.flatten()).sum() / tgt_mask.sum()
        loss.backward()
    weights = course_names(model, emb, lambda p: p.detach())
    grads = {f"grad.{k}": g for k, g in course_names(model, emb, lambda p: p.grad).items()}
    save("seq2seq_original", {"in.src": src, "in.src_keep": keep, "in.tgt": tgt, "in.tgt_out": tgt_out,
                              "in.tgt_mask": tgt_mask, **weights, "out.logits": logits,
                              "out.loss": loss.reshape(1), **grads}, cfg)


if __name__ == "__main__":
    import sys
    only = sys.argv[1:]
    with torch.no_grad():
        if not only:
            main()
    if not only or "seq2seq_original" in only:
        seq2seq_original()
