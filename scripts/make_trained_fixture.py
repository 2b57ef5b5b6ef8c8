#!/usr/bin/env python3
"""Train a tiny decoder-only LM in PyTorch and write what tests/cli.rs samples from it.

usage: python3 scripts/make_trained_fixture.py   (writes tests/fixtures/trained_lm.*)

Needs torch and safetensors, like scripts/make_fixtures.py (whose plain-PyTorch `lm` forward,
written from the book's conventions, is reused); CI does not: the outputs are committed.

The model (CS336 state-dict names) learns a few sentences over a 28-symbol alphabet for 300
AdamW steps. It is saved twice, as PyTorch saves models: in float32 and in bfloat16
(`save_file` of `v.bfloat16()`). For each file the script records PyTorch's greedy
continuation of a prompt, run past the context length so that the sliding window is used:

- f32: greedy decoding of the float32 model;
- bf16: greedy decoding of the bf16 weights converted to float32 (the crate converts bf16 to
  f32 at load and computes in f32, so this is the computation it must reproduce; running
  PyTorch in bf16 arithmetic would be a different, lower-precision computation).

Every greedy step's top logit must lead the runner-up by at least MIN_MARGIN, so that float
differences between the crate and PyTorch (~1e-5 here) cannot flip a token; the margins are
stored too.
"""
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import OUT, THETA, block_weights, gain, lm, matrix  # noqa: E402

ALPHABET = "abcdefghijklmnopqrstuvwxyz ."
TEXT = (
    "the cat sat on the mat. the dog sat on the log. a cat and a dog ran to the mat. "
    "the sun is up. the dog is on the log and the cat is on the mat. "
)
MIN_MARGIN = 1e-2
CFG = dict(vocab_size=32, context_length=16, d_model=32, num_layers=2, num_heads=2, d_ff=64,
           rope_theta=THETA)
PROMPT = "the d"
NEW = 30  # prompt + new = 35 tokens > context 16: the window slides


def encode(s):
    return [ALPHABET.index(c) for c in s]


def greedy(w, prompt, new):
    cfg = dict(n_layers=CFG["num_layers"], n_heads=CFG["num_heads"])
    ids, margins = list(prompt), []
    for _ in range(new):
        window = torch.tensor([ids[-CFG["context_length"]:]])
        last = lm(window, w, cfg)[0, -1]
        top = torch.topk(last, 2).values
        margins.append((top[0] - top[1]).item())
        ids.append(int(last.argmax()))
    return ids, min(margins)


def main():
    torch.manual_seed(20261206)
    d, d_ff, v = CFG["d_model"], CFG["d_ff"], CFG["vocab_size"]
    w = {"token_embeddings.weight": torch.randn(v, d)}
    for i in range(CFG["num_layers"]):
        block_weights(w, f"layers.{i}", d, d_ff)
    w["ln_final.weight"] = gain(d)
    w["lm_head.weight"] = matrix(v, d)
    for t in w.values():
        t.requires_grad_(True)

    data = torch.tensor(encode(TEXT * 4))
    n = CFG["context_length"]
    cfg = dict(n_layers=CFG["num_layers"], n_heads=CFG["num_heads"])
    opt = torch.optim.AdamW(list(w.values()), lr=3e-3, weight_decay=0.1)
    for step in range(300):
        starts = torch.randint(0, len(data) - n - 1, (16,))
        x = torch.stack([data[s : s + n] for s in starts])  # (batch, seq)
        y = torch.stack([data[s + 1 : s + n + 1] for s in starts])
        loss = F.cross_entropy(lm(x, w, cfg).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"trained 300 steps, last batch loss {loss.item():.4f}")

    f32 = {k: t.detach().clone() for k, t in w.items()}
    bf16 = {k: t.bfloat16() for k, t in f32.items()}
    expected = {"prompt_ids": encode(PROMPT), "final_loss": loss.item()}
    with torch.no_grad():
        for name, weights in (("f32", f32), ("bf16", {k: t.float() for k, t in bf16.items()})):
            ids, margin = greedy(weights, encode(PROMPT), NEW)
            assert margin >= MIN_MARGIN, f"{name}: near tie ({margin:.2e}): change the seed"
            text = "".join(ALPHABET[i] for i in ids)
            print(f"{name}: {text!r} (smallest top-2 margin {margin:.3f})")
            expected[name] = {"ids": ids, "text": text, "min_margin": margin}
    save_file({k: t.contiguous() for k, t in f32.items()}, OUT / "trained_lm_f32.safetensors")
    save_file({k: t.contiguous() for k, t in bf16.items()}, OUT / "trained_lm_bf16.safetensors")
    (OUT / "trained_lm.config.json").write_text(json.dumps(CFG, indent=2) + "\n")
    expected["alphabet"] = ALPHABET
    (OUT / "trained_lm.expected.json").write_text(json.dumps(expected, indent=2) + "\n")


if __name__ == "__main__":
    main()
