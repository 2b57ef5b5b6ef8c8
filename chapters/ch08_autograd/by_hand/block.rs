//! One pre-norm decoder block of chapter 6 (`block_ref`), forward and backward by hand: the
//! forward keeps the activations the backward pass reads, the backward walks the block from
//! its output back to its input, one composite rule per layer.

use super::ops::{
    attention_backward, attention_forward, linear_backward, rms_norm_backward, rope_backward,
    swiglu_backward,
};
use crate::ch01_linear::linear_ref;
use crate::ch02_rmsnorm::{rms_norm_ref, NORM_EPS};
use crate::ch03_feed_forward::swiglu_ref;
use crate::ch04_rope::rope_ref;
use crate::ch05_attention::multi_head::split_heads;
use crate::graph::params::StateDict;
use crate::graph::tensor::HostTensor;

/// `(b * heads, len, d_head)` -> `(b, len, d)`: the inverse of chapter 5's [`split_heads`]
/// (the heads concatenated). Each is the other's backward: a permutation's gradient is its inverse.
fn merge_heads(m: &[f32], [len, d]: [usize; 2], heads: usize) -> Vec<f32> {
    let dk = d / heads;
    let mut out = vec![0.0; m.len()];
    for (i, v) in m.iter().enumerate() {
        let (bh, p, c) = (i / (len * dk), (i / dk) % len, i % dk);
        out[((bh / heads) * len + p) * d + (bh % heads) * dk + c] = *v;
    }
    out
}

fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(a, b)| a + b).collect()
}

/// What [`block_forward`] keeps for [`block_backward`]: the inputs of every layer whose
/// backward needs them. Heads are split: (b * heads, s, d_head).
/// Book: [the whole block](../../../book/ch08_autograd.html#the-whole-block-by-hand).
pub struct BlockActivations {
    /// The block's input, (b, s, d).
    pub x: Vec<f32>,
    /// `ln1(x)`, the attention's input, (b, s, d).
    pub normed1: Vec<f32>,
    /// Queries and keys after RoPE, and values, each (b * heads, s, d_head).
    pub qkv: [Vec<f32>; 3],
    /// Attention probabilities, (b * heads, s, s), 0 where masked.
    pub probs: Vec<f32>,
    /// The heads' outputs concatenated, the output projection's input, (b, s, d).
    pub merged: Vec<f32>,
    /// The residual stream after attention, `x + attn(ln1(x))`, (b, s, d).
    pub h: Vec<f32>,
    /// `ln2(h)`, the feed-forward network's input, (b, s, d).
    pub normed2: Vec<f32>,
    /// The block's output, `h + ffn(ln2(h))`, (b, s, d): the same numbers as `block_ref`.
    pub out: Vec<f32>,
}

/// The weight `{prefix}.{name}.weight` of `dict`, as loaded by chapter 6's `block_ref`.
fn weight<'a>(dict: &'a StateDict, prefix: &str, name: &str) -> &'a [f32] {
    &dict[&format!("{prefix}.{name}.weight")].data
}

/// Chapter 6's `block_ref`, step for step, keeping its activations: `x` (b, s, d), `mask`
/// (b, s, s) with true = may attend, weights from `dict` under `prefix` (e.g. `layers.0`).
/// The course's LM block: pre-norm, RMSNorm, SwiGLU (chapter 6's other architectures, post-norm,
/// LayerNorm or ReLU, are not covered here).
/// Book: [the whole block](../../../book/ch08_autograd.html#the-whole-block-by-hand).
pub fn block_forward(
    x: &[f32],
    dict: &StateDict,
    prefix: &str,
    mask: &[bool],
    [b, s, d, heads, d_ff]: [usize; 5],
    rope_theta: Option<f32>,
) -> BlockActivations {
    let w = |name: &str| weight(dict, prefix, name);
    let (n, d_head) = (b * s, d / heads);
    let normed1 = rms_norm_ref(x, w("ln1"), d, NORM_EPS);
    // Each projection, split into heads: (b * heads, s, d_head).
    let project = |name: &str| split_heads(&linear_ref(&normed1, w(name), n, d, d), [s, d], heads);
    let (mut q, mut k, v) = (
        project("attn.q_proj"),
        project("attn.k_proj"),
        project("attn.v_proj"),
    );
    if let Some(theta) = rope_theta {
        let positions: Vec<usize> = (0..b * heads * s).map(|r| r % s).collect();
        q = rope_ref(&q, &positions, d_head, theta);
        k = rope_ref(&k, &positions, d_head, theta);
    }
    // Every head of a sequence uses the sequence's mask: (b * heads, s, s).
    let head_mask: Vec<bool> = (0..b * heads)
        .flat_map(|bh| mask[(bh / heads) * s * s..][..s * s].iter().copied())
        .collect();
    let (att, probs) = attention_forward(&q, &k, &v, &head_mask, [b * heads, s, s, d_head, d_head]);
    let merged = merge_heads(&att, [s, d], heads); // (b, s, d)
    let h = add(x, &linear_ref(&merged, w("attn.output_proj"), n, d, d)); // residual
    let normed2 = rms_norm_ref(&h, w("ln2"), d, NORM_EPS);
    let ffn = [w("ffn.w1"), w("ffn.w2"), w("ffn.w3")];
    let out = add(&h, &swiglu_ref(&normed2, ffn, n, d, d_ff)); // residual
    BlockActivations {
        x: x.to_vec(),
        normed1,
        qkv: [q, k, v],
        probs,
        merged,
        h,
        normed2,
        out,
    }
}

/// The result of [`block_backward`].
/// Book: [the whole block](../../../book/ch08_autograd.html#the-whole-block-by-hand).
pub struct BlockGradients {
    /// d loss / d x, (b, s, d).
    pub dx: Vec<f32>,
    /// d loss / d weight for every weight of the block, under its state-dict name
    /// (`{prefix}.attn.q_proj.weight`, ...), shaped like the weight.
    pub weights: StateDict,
    /// The backward pass's steps in the order they ran, one per loop nest over arrays
    /// (`linear_backward`, `rope_backward`, an elementwise `add`, ...): for counting.
    pub steps: Vec<&'static str>,
}

// ANCHOR: block_backward
/// The backward pass of [`block_forward`] by hand: from the upstream gradient `dy` (b, s, d),
/// `dx` and the gradient of every weight, with the same `dict`, `prefix`, sizes and RoPE.
/// Book: [the whole block](../../../book/ch08_autograd.html#the-whole-block-by-hand).
pub fn block_backward(
    acts: &BlockActivations,
    dy: &[f32],
    dict: &StateDict,
    prefix: &str,
    [b, s, d, heads, d_ff]: [usize; 5],
    rope_theta: Option<f32>,
) -> BlockGradients {
    let w = |name: &str| weight(dict, prefix, name);
    let (n, d_head) = (b * s, d / heads);
    let mut steps = Vec::new();
    let mut grads: Vec<(&str, Vec<f32>)> = Vec::new();

    // out = h + ffn(ln2(h)): the residual copies dy to h and into the FFN branch.
    let ffn = [w("ffn.w1"), w("ffn.w2"), w("ffn.w3")];
    let (d_normed2, [dw1, dw2, dw3]) = swiglu_backward(dy, &acts.normed2, ffn, n, d, d_ff);
    let (dh_ffn, d_ln2) = rms_norm_backward(&d_normed2, &acts.h, w("ln2"), d, NORM_EPS);
    let dh = add(dy, &dh_ffn); // both paths into h add up
    steps.extend(["swiglu_backward", "rms_norm_backward", "add"]);
    grads.extend([
        ("ffn.w1", dw1),
        ("ffn.w2", dw2),
        ("ffn.w3", dw3),
        ("ln2", d_ln2),
    ]);

    // h = x + output_proj(merge(attention(rope(q), rope(k), v))): the same walk, backwards.
    let (d_merged, d_out_proj) =
        linear_backward(&dh, &acts.merged, w("attn.output_proj"), [n, d, d]);
    let d_att = split_heads(&d_merged, [s, d], heads); // (b * heads, s, d_head)
    let [q, k, v] = &acts.qkv;
    let dims = [b * heads, s, s, d_head, d_head];
    let [mut dq, mut dk, dv] = attention_backward(&d_att, [q, k, v, &acts.probs], dims);
    steps.extend(["linear_backward", "split_heads", "attention_backward"]);
    if let Some(theta) = rope_theta {
        let positions: Vec<usize> = (0..b * heads * s).map(|r| r % s).collect();
        dq = rope_backward(&dq, &positions, d_head, theta);
        dk = rope_backward(&dk, &positions, d_head, theta);
        steps.extend(["rope_backward", "rope_backward"]);
    }
    grads.push(("attn.output_proj", d_out_proj));

    // q, k and v all read ln1(x): their input gradients add up.
    let mut d_normed1: Option<Vec<f32>> = None;
    for (name, d_heads) in [
        ("attn.q_proj", dq),
        ("attn.k_proj", dk),
        ("attn.v_proj", dv),
    ] {
        let d_proj = merge_heads(&d_heads, [s, d], heads); // (b, s, d)
        let (d_in, d_w) = linear_backward(&d_proj, &acts.normed1, w(name), [n, d, d]);
        steps.extend(["merge_heads", "linear_backward"]);
        d_normed1 = Some(match d_normed1 {
            None => d_in,
            Some(sum) => {
                steps.push("add");
                add(&sum, &d_in)
            }
        });
        grads.push((name, d_w));
    }
    let d_normed1 = d_normed1.expect("three projections");
    let (dx_attn, d_ln1) = rms_norm_backward(&d_normed1, &acts.x, w("ln1"), d, NORM_EPS);
    let dx = add(&dh, &dx_attn); // the residual: dh reaches x directly, too
    steps.extend(["rms_norm_backward", "add"]);
    grads.push(("ln1", d_ln1));

    let weights = grads
        .into_iter()
        .map(|(name, g)| {
            let key = format!("{prefix}.{name}.weight");
            let shape = &dict[&key].shape;
            let tensor = HostTensor::new(shape, g).expect("a gradient is shaped like its weight");
            (key, tensor)
        })
        .collect();
    BlockGradients { dx, weights, steps }
}
// ANCHOR_END: block_backward
