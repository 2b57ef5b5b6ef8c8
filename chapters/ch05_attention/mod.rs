//! # Chapter 5 — Attention
//!
//! Attention lets every position gather information from other positions. Each query is
//! compared with every key by a scaled dot product, the scores become weights by a softmax,
//! and the output is the weighted mean of the values:
//! `softmax(Q K^T / sqrt(d_k) + mask) V`. This file holds the softmax, the masks and
//! scaled dot-product attention; [`multi_head`] splits the model width into heads.
//!
//! Book page: [Chapter 5](../../book/ch05_attention.html).

use luminal::prelude::*;

use crate::backend::Device;
use crate::graph::dims::{Batch, DHead, Heads, Seq, SrcSeq};

/// Width of the values in [`run_sdpa`], which may differ from the queries' and keys' (`e`).
type DValue = Dyn<'e'>;
use crate::graph::error::Result;
use crate::graph::tensor::{self, HostTensor};

pub mod multi_head;
pub use multi_head::*;

/// Added to the score of a key that may not be attended, standing in for -inf. Finite, so
/// that `0 * bias` and `bias - bias` stay numbers: a row with every key masked must give zeros,
/// not NaN. `exp(-1e9 + s - max)` is exactly 0 in f32 for any score `s` below 1e8.
pub const MASKED_SCORE: f32 = -1e9;

// ANCHOR: softmax_ref
/// Softmax of one row, stable: subtracting the row's maximum keeps every `exp` in (0, 1], so
/// nothing overflows however large the scores are, and the result is unchanged
/// (`e^(x - m) / sum e^(x - m) = e^x / sum e^x`).
pub fn softmax_ref(row: &[f32]) -> Vec<f32> {
    // ANCHOR: learn_softmax_ref ch05: m = max(row), p_j = exp(row_j - m) / sum_k exp(row_k - m): row (len) -> (len), every exp in (0, 1] so nothing overflows
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = row.iter().map(|x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
    // ANCHOR_END: learn_softmax_ref
}
// ANCHOR_END: softmax_ref

// ANCHOR: sdpa_ref
/// Scaled dot-product attention as loops, for `n` independent (batch, head) slices:
/// `q` (n, s, dk), `k` (n, t, dk), `v` (n, t, dv), `mask` (n, s, t) with true = may attend
/// -> (n, s, dv). A query row with no allowed key outputs zeros (our definition; a plain
/// softmax, and PyTorch's SDPA before its 2024 "safe softmax" change, give NaN there).
pub fn sdpa_ref(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &[bool],
    [n, s, t, dk, dv]: [usize; 5],
) -> Vec<f32> {
    // ANCHOR: learn_sdpa_ref ch05: out[b, i] = sum over allowed j of softmax_j(q[b, i] . k[b, j] / sqrt(dk)) * v[b, j]; q (n, s, dk), k (n, t, dk), v (n, t, dv), mask (n, s, t) -> (n, s, dv); a row with no allowed key stays 0
    let scale = 1.0 / (dk as f32).sqrt();
    let mut out = vec![0.0; n * s * dv];
    for b in 0..n {
        for i in 0..s {
            let allowed: Vec<usize> = (0..t).filter(|&j| mask[(b * s + i) * t + j]).collect();
            let scores: Vec<f32> = allowed
                .iter()
                .map(|&j| {
                    let qi = &q[(b * s + i) * dk..][..dk];
                    let kj = &k[(b * t + j) * dk..][..dk];
                    qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale
                })
                .collect();
            // Masked keys are simply left out: the same as a score of -inf.
            for (&j, w) in allowed.iter().zip(softmax_ref(&scores)) {
                for c in 0..dv {
                    out[(b * s + i) * dv + c] += w * v[(b * t + j) * dv + c];
                }
            }
        }
    }
    out
    // ANCHOR_END: learn_sdpa_ref
}
// ANCHOR_END: sdpa_ref

// ANCHOR: masks
/// The causal mask, (s, s): query `i` may attend key `j` iff `j <= i` (1.0 = allowed).
/// Built from two aranges and a `LessThan`, so it costs no input and fits any length.
pub fn causal_mask<S: Dimension>(cx: &mut Graph) -> GraphTensor<(S, S)> {
    // ANCHOR: learn_causal_mask ch05: (s, s) of 1.0 where key j <= query i: arange::<S>() expanded along axis 1 (row index i) and along axis 0 (column index j), then j.less_than(i + 0.5)
    let query = cx.arange::<S>().expand::<(S, S), Axis<1>>(); // row index i
    let key = cx.arange::<S>().expand::<(S, S), Axis<0>>(); // column index j

    // j < i + 1/2  <=>  j <= i
    key.less_than(query + 0.5)
    // ANCHOR_END: learn_causal_mask
}

/// A key-padding mask, (batch, t) of 1.0 (real token) / 0.0 (padding), broadcast to every
/// query: (batch, s, t).
pub fn key_padding_mask<B: Dimension, S: Dimension, T: Dimension>(
    keep: GraphTensor<(B, T)>,
) -> GraphTensor<(B, S, T)> {
    // ANCHOR: learn_key_padding_mask ch05: keep (b, t) is the same for every query: expand it along a new query axis 1 -> (b, s, t)
    keep.expand::<(B, S, T), Axis<1>>()
    // ANCHOR_END: learn_key_padding_mask
}
// ANCHOR_END: masks

// ANCHOR: masked_softmax
/// Softmax over the last axis (keys) of `scores` (b, h, s, t), where `allowed` is 1.0 / 0.0.
///
/// Masked scores get [`MASKED_SCORE`] before the max is taken; the exponentials are
/// multiplied by the mask again so that a row with no allowed key sums to 0, and that 0 is
/// divided by 1 instead (every other row sums to at least 1: its max term is e^0).
pub fn masked_softmax<B: Dimension, H: Dimension, S: Dimension, T: Dimension>(
    scores: GraphTensor<(B, H, S, T)>,
    allowed: GraphTensor<(B, H, S, T)>,
) -> GraphTensor<(B, H, S, T)> {
    // ANCHOR: learn_masked_softmax ch05: scores + (allowed - 1) * 1e9 (-MASKED_SCORE), minus the max over axis 3, exp, times allowed, divided by the row sum (a sum of 0 becomes 1, via less_than); (b, h, s, t) -> (b, h, s, t)
    let biased = scores + (allowed - 1.0) * -MASKED_SCORE; // masked: score - 1e9
    let max = biased.max_reduce::<(B, H, S), Axis<3>>(); // (b, h, s)
    let exps = (biased - max.expand::<(B, H, S, T), Axis<3>>()).exp() * allowed;
    let sum = exps.sum_reduce::<(B, H, S), Axis<3>>(); // (b, h, s)
    let half = sum.graph().constant(0.5).expand::<(B, H, S), _>();
    let safe_sum = sum + sum.less_than(half); // an all-masked row: 0 -> 1
    exps / safe_sum.expand::<(B, H, S, T), Axis<3>>()
    // ANCHOR_END: learn_masked_softmax
}
// ANCHOR_END: masked_softmax

// ANCHOR: sdpa
/// Scaled dot-product attention: `q` (b, h, s, dk), `k` (b, h, t, dk), `v` (b, h, t, dv),
/// `allowed` (b, h, s, t) -> (b, h, s, dv).
pub fn scaled_dot_product_attention<
    B: Dimension,
    H: Dimension,
    S: Dimension,
    T: Dimension,
    K: Dimension,
    V: Dimension,
>(
    q: GraphTensor<(B, H, S, K)>,
    k: GraphTensor<(B, H, T, K)>,
    v: GraphTensor<(B, H, T, V)>,
    allowed: GraphTensor<(B, H, S, T)>,
    d_k: usize,
) -> GraphTensor<(B, H, S, V)> {
    // ANCHOR: learn_scaled_dot_product_attention ch05: masked_softmax(q K^T / sqrt(d_k), allowed) V with K^T a permuted view of k; q (b, h, s, dk), k (b, h, t, dk), v (b, h, t, dv) -> (b, h, s, dv)
    let k_t = k.permute::<(B, H, K, T), Axes4<0, 1, 3, 2>>(); // K^T: a view
    let scores = q.matmul(k_t) * (1.0 / (d_k as f32).sqrt()); // (b, h, s, t)

    // softmax over the keys, then the weights times the values: (b, h, s, dv)
    masked_softmax(scores, allowed).matmul(v)
    // ANCHOR_END: learn_scaled_dot_product_attention
}
// ANCHOR_END: sdpa

/// Run [`masked_softmax`] on `scores` (b, h, s, t); `allowed` defaults to every key.
pub fn run_softmax(
    scores: &[f32],
    shape: [usize; 4],
    allowed: Option<&[bool]>,
    device: Device,
) -> Result<HostTensor> {
    let mut cx = Graph::new();
    let mut x = tensor::input::<(Batch, Heads, Seq, SrcSeq)>(&mut cx, "scores");
    let mut a = tensor::input::<(Batch, Heads, Seq, SrcSeq)>(&mut cx, "allowed");
    let mut y = masked_softmax(x, a).retrieve();
    device.compile(&mut cx, (&mut x, &mut a, &mut y));
    tensor::set(x, &shape, scores.to_vec())?;
    let n = scores.len();
    let flags = allowed.map_or(vec![1.0; n], |m| {
        m.iter().map(|&k| k as u8 as f32).collect()
    });
    tensor::set(a, &shape, flags)?;
    tensor::execute(&mut cx)?;
    tensor::read(y)
}

/// Run [`scaled_dot_product_attention`]: `q` (b, h, s, dk), `k` (b, h, t, dk),
/// `v` (b, h, t, dv), `allowed` (b, h, s, t) -> (b, h, s, dv). For 3-D inputs pass h = 1.
pub fn run_sdpa(
    [q, k, v]: [&[f32]; 3],
    allowed: &[bool],
    [b, h, s, t, dk, dv]: [usize; 6],
    device: Device,
) -> Result<HostTensor> {
    let mut cx = Graph::new();
    let mut qt = tensor::input::<(Batch, Heads, Seq, DHead)>(&mut cx, "q");
    let mut kt = tensor::input::<(Batch, Heads, SrcSeq, DHead)>(&mut cx, "k");
    let mut vt = tensor::input::<(Batch, Heads, SrcSeq, DValue)>(&mut cx, "v");
    let mut at = tensor::input::<(Batch, Heads, Seq, SrcSeq)>(&mut cx, "allowed");
    let mut y = scaled_dot_product_attention(qt, kt, vt, at, dk).retrieve();
    device.compile(&mut cx, (&mut qt, &mut kt, &mut vt, &mut at, &mut y));
    tensor::set(qt, &[b, h, s, dk], q.to_vec())?;
    tensor::set(kt, &[b, h, t, dk], k.to_vec())?;
    tensor::set(vt, &[b, h, t, dv], v.to_vec())?;
    let flags = allowed.iter().map(|&a| a as u8 as f32).collect();
    tensor::set(at, &[b, h, s, t], flags)?;
    tensor::execute(&mut cx)?;
    tensor::read(y)
}

#[cfg(test)]
mod tests;
