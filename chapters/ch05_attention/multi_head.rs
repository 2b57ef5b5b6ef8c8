//! Multi-head attention: self-attention (with or without RoPE) and cross-attention.
//!
//! The model width is split into `n_heads` heads of `d_head = d_model / n_heads` features;
//! each head attends on its own, and the heads' outputs are concatenated and projected.
//! Book page: [Chapter 5](../../../book/ch05_attention.html#multi-head-attention).

use luminal::prelude::*;

use super::{causal_mask, key_padding_mask, scaled_dot_product_attention, sdpa_ref};
use crate::backend::Device;
use crate::ch01_linear::{linear_ref, Linear};
use crate::ch04_rope::{rope_ref, Rope};
use crate::graph::dims::{Batch, DHead, DModel, Heads, MaxSeq, Seq, SrcSeq};
use crate::graph::error::{CourseError, Result};
use crate::graph::init::CourseRng;
use crate::graph::params::{self, Parameters, Visitor};
use crate::graph::tensor::{self, HostTensor};

// ANCHOR: mha_ref
/// `(b, len, d)` -> `(b * heads, len, d_head)`: head `h` takes features `h*d_head ..`.
/// (Chapter 8's backprop by hand splits heads with it too.)
pub(crate) fn split_heads(m: &[f32], [len, d]: [usize; 2], heads: usize) -> Vec<f32> {
    // ANCHOR: learn_split_heads ch05: element (row = bi * len + p, feature f) of m (b * len, d) goes to ((bi * heads + f / d_head) * len + p, f % d_head): (b, len, d) -> (b * heads, len, d_head)
    let dk = d / heads;
    let mut out = vec![0.0; m.len()];
    for (i, v) in m.iter().enumerate() {
        let (row, f) = (i / d, i % d); // row = bi * len + p
        let (bi, p, h, c) = (row / len, row % len, f / dk, f % dk);
        out[((bi * heads + h) * len + p) * dk + c] = *v;
    }
    out
    // ANCHOR_END: learn_split_heads
}

/// Multi-head attention as loops. `x` (b, s, d) gives the queries, `memory` (b, t, d) the
/// keys and values (pass `x` again for self-attention); `w` = [q, k, v, output] projections,
/// each (d, d); `mask` (b, s, t), true = may attend; RoPE on q and k if `rope_theta` is set.
pub fn mha_ref(
    x: &[f32],
    memory: &[f32],
    w: [&[f32]; 4],
    mask: &[bool],
    [b, s, t, d]: [usize; 4],
    heads: usize,
    rope_theta: Option<f32>,
) -> Vec<f32> {
    // ANCHOR: learn_mha_ref ch05: q = x Wq^T, k = memory Wk^T, v = memory Wv^T (linear_ref), split_heads, RoPE (rope_ref) on q and k if rope_theta, sdpa_ref per (batch, head) with its sequence mask, heads concatenated back to (b, s, d), then times Wo^T
    let dk = d / heads;
    let mut q = split_heads(&linear_ref(x, w[0], b * s, d, d), [s, d], heads);
    let mut k = split_heads(&linear_ref(memory, w[1], b * t, d, d), [t, d], heads);
    let v = split_heads(&linear_ref(memory, w[2], b * t, d, d), [t, d], heads);
    if let Some(theta) = rope_theta {
        let pos_q: Vec<usize> = (0..b * heads * s).map(|r| r % s).collect();
        let pos_k: Vec<usize> = (0..b * heads * t).map(|r| r % t).collect();
        q = rope_ref(&q, &pos_q, dk, theta);
        k = rope_ref(&k, &pos_k, dk, theta);
    }
    // Every head of a sequence uses the sequence's mask.
    let mask: Vec<bool> = (0..b * heads)
        .flat_map(|bh| mask[(bh / heads) * s * t..][..s * t].iter().copied())
        .collect();
    let att = sdpa_ref(&q, &k, &v, &mask, [b * heads, s, t, dk, dk]); // (b*h, s, dk)
    let mut merged = vec![0.0; b * s * d]; // heads concatenated: (b, s, d)
    for (i, val) in att.iter().enumerate() {
        let (bh, p, c) = (i / (s * dk), (i / dk) % s, i % dk);
        merged[((bh / heads) * s + p) * d + (bh % heads) * dk + c] = *val;
    }
    linear_ref(&merged, w[3], b * s, d, d)
    // ANCHOR_END: learn_mha_ref
}
// ANCHOR_END: mha_ref

// ANCHOR: mha
/// Multi-head attention with projections `q_proj`, `k_proj`, `v_proj` and `output_proj`, each
/// (d_model, d_model), rows grouped by head.
#[derive(Clone, Copy)]
pub struct MultiHeadAttention<D: Dimension = DModel> {
    /// (d_model, d_model): input to queries.
    pub q_proj: Linear<D, D>,
    /// (d_model, d_model): memory to keys.
    pub k_proj: Linear<D, D>,
    /// (d_model, d_model): memory to values.
    pub v_proj: Linear<D, D>,
    /// (d_model, d_model): concatenated heads back to the residual stream.
    pub output_proj: Linear<D, D>,
    /// Number of heads; d_model must divide by it.
    pub n_heads: usize,
    /// Model width; each head gets `d_model / n_heads` features.
    pub d_model: usize,
    /// Rotates queries and keys by position (self-attention, and cross-attention when the
    /// encoder-decoder asks for it: chapter 6); `None` leaves positions out.
    pub rope: Option<Rope<MaxSeq, DHead>>,
}

impl<D: Dimension> MultiHeadAttention<D> {
    /// Add the four projections to `cx`.
    pub fn new(
        cx: &mut Graph,
        d_model: usize,
        n_heads: usize,
        rope: Option<Rope<MaxSeq, DHead>>,
    ) -> Result<Self> {
        if n_heads == 0 || d_model % n_heads != 0 {
            return Err(CourseError::Config(format!(
                "MultiHeadAttention: d_model ({d_model}) must be a positive multiple of n_heads ({n_heads})"
            )));
        }
        let d_head = d_model / n_heads;
        if let Some(r) = rope {
            if r.d_head != d_head {
                return Err(CourseError::Config(format!(
                    "MultiHeadAttention: RoPE tables are for heads of {} features, but d_model / n_heads = {d_head}",
                    r.d_head
                )));
            }
        }
        let what = format!("MultiHeadAttention({d_model}, {n_heads} heads)");
        tensor::bind_dim::<Heads>(cx, n_heads, &what)?;
        tensor::bind_dim::<DHead>(cx, d_head, &what)?;
        Ok(Self {
            q_proj: Linear::new(cx, d_model, d_model)?,
            k_proj: Linear::new(cx, d_model, d_model)?,
            v_proj: Linear::new(cx, d_model, d_model)?,
            output_proj: Linear::new(cx, d_model, d_model)?,
            n_heads,
            d_model,
            rope,
        })
    }

    /// The projections in state-dict order: q, k, v, output.
    pub fn projections(&self) -> [Linear<D, D>; 4] {
        [self.q_proj, self.k_proj, self.v_proj, self.output_proj]
    }

    /// Truncated-normal init of the four projections.
    pub fn init(&self, rng: &mut CourseRng) -> Result<()> {
        self.projections().iter().try_for_each(|p| p.init(rng))
    }

    /// Queries from `x` (b, s, d), keys and values from `memory` (b, t, d), `allowed` (b, s, t)
    /// -> (b, s, d). Self-attention passes `x` as `memory`.
    pub fn attend<B: Dimension, S: Dimension, T: Dimension>(
        &self,
        x: GraphTensor<(B, S, D)>,
        memory: GraphTensor<(B, T, D)>,
        allowed: GraphTensor<(B, S, T)>,
    ) -> GraphTensor<(B, S, D)> {
        // ANCHOR: learn_attend ch05: q, k, v = heads(proj.forward(..)) (b, h, len, d_head), rope on q and k if set, scaled_dot_product_attention with allowed expanded over the heads axis, permuted to (b, s, h, d_head) and reshaped to (b, s, d), then output_proj
        let mut q = heads(self.q_proj.forward(x)); // (b, h, s, d_head)
        let mut k = heads(self.k_proj.forward(memory)); // (b, h, t, d_head)
        let v = heads(self.v_proj.forward(memory)); // (b, h, t, d_head)
        if let Some(rope) = self.rope {
            q = rope.forward(q);
            k = rope.forward(k);
        }
        let allowed = allowed.expand::<(B, Heads, S, T), Axis<1>>(); // same mask for every head
        let att = scaled_dot_product_attention(q, k, v, allowed, self.d_model / self.n_heads);
        let merged = att
            .permute::<(B, S, Heads, DHead), Axes4<0, 2, 1, 3>>() // (b, s, h, d_head)
            .reshape::<(B, S, D)>(); // (b, s, d): heads side by side (reshape copies the view)
        self.output_proj.forward(merged)
        // ANCHOR_END: learn_attend
    }

    /// The attention weights themselves, (b, h, s, t): how much each query takes from each
    /// key (rows sum to 1). For pictures; [`Self::attend`] computes them inside.
    pub fn attention_weights<B: Dimension, S: Dimension, T: Dimension>(
        &self,
        x: GraphTensor<(B, S, D)>,
        memory: GraphTensor<(B, T, D)>,
        allowed: GraphTensor<(B, S, T)>,
    ) -> GraphTensor<(B, Heads, S, T)> {
        // ANCHOR: learn_attention_weights ch05: as in attend but without V: masked_softmax(q k^T / sqrt(d_model / n_heads), allowed expanded over heads) -> (b, h, s, t)
        let mut q = heads(self.q_proj.forward(x));
        let mut k = heads(self.k_proj.forward(memory));
        if let Some(rope) = self.rope {
            q = rope.forward(q);
            k = rope.forward(k);
        }
        let scale = 1.0 / ((self.d_model / self.n_heads) as f32).sqrt();
        let scores = q.matmul(k.permute::<_, Axes4<0, 1, 3, 2>>()) * scale; // (b, h, s, t)
        super::masked_softmax(scores, allowed.expand::<(B, Heads, S, T), Axis<1>>())
        // ANCHOR_END: learn_attention_weights
    }
}

/// `(b, len, d)` -> `(b, h, len, d_head)`: split features into heads, heads before positions.
/// (Chapter 11's KV cache splits its one new position with it too.)
pub(crate) fn heads<B: Dimension, L: Dimension, D: Dimension>(
    x: GraphTensor<(B, L, D)>,
) -> GraphTensor<(B, Heads, L, DHead)> {
    // ANCHOR: learn_heads ch05: reshape (b, len, d) to (b, len, h, d_head), then swap axes 1 and 2 (a permute view) -> (b, h, len, d_head)
    // (b, len, h, d_head), then (b, h, len, d_head): the permute is a view
    x.reshape::<(B, L, Heads, DHead)>()
        .permute::<_, Axes4<0, 2, 1, 3>>()
    // ANCHOR_END: learn_heads
}

// ANCHOR_END: mha

/// Which keys each query may see in [`run_attention`].
#[derive(Clone, Debug, Default)]
pub struct MaskSpec {
    /// Query `i` sees keys `j <= i` only (self-attention only).
    pub causal: bool,
    /// (batch, t): true = a real key, false = padding that no query may attend.
    pub key_padding: Option<Vec<bool>>,
}

impl MaskSpec {
    /// The mask as booleans, (b, s, t), for the references.
    pub fn to_bools(&self, b: usize, s: usize, t: usize) -> Vec<bool> {
        (0..b * s * t)
            .map(|i| {
                let (bi, qi, kj) = (i / (s * t), (i / t) % s, i % t);
                let causal_ok = !self.causal || kj <= qi;
                let pad_ok = self.key_padding.as_ref().map_or(true, |p| p[bi * t + kj]);
                causal_ok && pad_ok
            })
            .collect()
    }
}

/// A multi-head attention layer named `attn` with the given projections (RoPE tables for
/// `max_len` positions if `rope_theta` is set), and the input `x` (b, s, d) set.
/// An attention layer and its input, ready to run.
type AttentionAndInput = (
    MultiHeadAttention<DModel>,
    GraphTensor<(Batch, Seq, DModel)>,
);

fn attention_with_input(
    cx: &mut Graph,
    x: &[f32],
    weights: [&[f32]; 4],
    [b, s, d]: [usize; 3],
    max_len: usize,
    n_heads: usize,
    rope_theta: Option<f32>,
) -> Result<AttentionAndInput> {
    let rope = match rope_theta {
        Some(theta) if n_heads > 0 => Some(Rope::new(cx, max_len, d / n_heads, theta)?),
        _ => None,
    };
    let attn = MultiHeadAttention::<DModel>::new(cx, d, n_heads, rope)?;
    params::label_inputs(cx, &attn, "attn");
    for (p, w) in attn.projections().iter().zip(weights) {
        p.load(w.to_vec())?;
    }
    let xt = tensor::input::<(Batch, Seq, DModel)>(cx, "x");
    tensor::set(xt, &[b, s, d], x.to_vec())?;
    Ok((attn, xt))
}

/// Run multi-head attention: `x` (b, s, d); `memory` (b, t, d) for cross-attention or `None`
/// for self-attention; `weights` = [q, k, v, output]; `rope_theta` for RoPE (self-attention).
#[allow(clippy::too_many_arguments)]
pub fn run_attention(
    x: &[f32],
    memory: Option<(&[f32], usize)>,
    weights: [&[f32]; 4],
    [b, s, d]: [usize; 3],
    n_heads: usize,
    mask: &MaskSpec,
    rope_theta: Option<f32>,
    device: Device,
) -> Result<HostTensor> {
    let t = memory.map_or(s, |(_, t)| t);
    if let Some(p) = &mask.key_padding {
        if p.len() != b * t {
            return Err(CourseError::DataLength {
                what: "key padding mask".into(),
                shape: vec![b, t],
                expected: b * t,
                got: p.len(),
            });
        }
    }
    let mut cx = Graph::new();
    let (mut attn, mut xt) = attention_with_input(
        &mut cx,
        x,
        weights,
        [b, s, d],
        s.max(t),
        n_heads,
        rope_theta,
    )?;
    let keep_values = |keep: &[bool]| keep.iter().map(|&k| k as u8 as f32).collect::<Vec<_>>();
    let mut y = match memory {
        None => {
            let mut allowed = cx.constant(1.0).expand::<(Batch, Seq, Seq), _>();
            if mask.causal {
                allowed *= causal_mask::<Seq>(&mut cx).expand::<_, Axis<0>>();
            }
            if let Some(p) = &mask.key_padding {
                let keep = tensor::input::<(Batch, Seq)>(&mut cx, "key_padding");
                tensor::set(keep, &[b, t], keep_values(p))?;
                allowed *= key_padding_mask(keep);
            }
            attn.attend(xt, xt, allowed).retrieve()
        }
        Some((mem, _)) => {
            if mask.causal {
                return Err(CourseError::Config(
                    "a causal mask needs queries and keys from the same sequence".into(),
                ));
            }
            let m = tensor::input::<(Batch, SrcSeq, DModel)>(&mut cx, "memory");
            tensor::set(m, &[b, t, d], mem.to_vec())?;
            let mut allowed = cx.constant(1.0).expand::<(Batch, Seq, SrcSeq), _>();
            if let Some(p) = &mask.key_padding {
                let keep = tensor::input::<(Batch, SrcSeq)>(&mut cx, "key_padding");
                tensor::set(keep, &[b, t], keep_values(p))?;
                allowed *= key_padding_mask(keep);
            }
            attn.attend(xt, m, allowed).retrieve()
        }
    };
    device.compile(&mut cx, (&mut attn, &mut xt, &mut y));
    tensor::execute(&mut cx)?;
    tensor::read(y)
}

/// Self-attention weights (b, h, s, s) for `x` (b, s, d) under `mask`: what the heat maps show.
#[allow(clippy::too_many_arguments)]
pub fn run_attention_weights(
    x: &[f32],
    weights: [&[f32]; 4],
    [b, s, d]: [usize; 3],
    n_heads: usize,
    mask: &MaskSpec,
    rope_theta: Option<f32>,
    device: Device,
) -> Result<HostTensor> {
    let mut cx = Graph::new();
    let (mut attn, mut xt) =
        attention_with_input(&mut cx, x, weights, [b, s, d], s, n_heads, rope_theta)?;
    let flags: Vec<f32> = mask
        .to_bools(b, s, s)
        .iter()
        .map(|&a| a as u8 as f32)
        .collect();
    let allowed = tensor::input::<(Batch, Seq, Seq)>(&mut cx, "allowed");
    tensor::set(allowed, &[b, s, s], flags)?;
    let mut y = attn.attention_weights(xt, xt, allowed).retrieve();
    device.compile(&mut cx, (&mut attn, &mut xt, &mut y));
    tensor::execute(&mut cx)?;
    tensor::read(y)
}

/// This chapter in a few lines, for the tour.
pub fn attention_demo() -> Result<String> {
    // One head, d = 2, identity projections: scores are x_i . x_j / sqrt(2).
    let eye: &[f32] = &[1.0, 0.0, 0.0, 1.0];
    let x = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
    let mask = MaskSpec {
        causal: true,
        key_padding: None,
    };
    let y = run_attention(&x, None, [eye; 4], [1, 3, 2], 1, &mask, None, Device::Cpu)?;
    Ok(format!(
        "causal self-attention over x = [(1, 0), (0, 1), (1, 1)] with identity projections:\n  \
         position 0 sees only itself -> {:.4?}\n  position 2 mixes all three -> {:.4?}",
        &y.data[..2],
        &y.data[4..]
    ))
}

impl<D: Dimension> Parameters for MultiHeadAttention<D> {
    fn visit<'a>(&'a mut self, v: &mut Visitor<'a>) {
        v.module("q_proj", &mut self.q_proj);
        v.module("k_proj", &mut self.k_proj);
        v.module("v_proj", &mut self.v_proj);
        v.module("output_proj", &mut self.output_proj);
        if let Some(rope) = &mut self.rope {
            v.buffers(rope.to_ids_mut()); // shared tables, not parameters
        }
    }
}

impl<D: Dimension> ToIdsMut for MultiHeadAttention<D> {
    fn to_ids_mut(&mut self) -> Vec<&mut NodeIndex> {
        self.handles()
    }
}
