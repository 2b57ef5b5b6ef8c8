//! # Chapter 6 — The transformer
//!
//! Everything so far, stacked. A pre-norm block adds attention and a feed-forward network to
//! a residual stream, each applied to a normalised copy of it:
//! `h = x + attn(ln1(x))`, `out = h + ffn(ln2(h))`. A decoder-only language model
//! ([`lm`]) embeds tokens, runs N causal blocks, normalises and projects to vocabulary logits.
//! An encoder-decoder ([`seq2seq`]) encodes a source sequence and decodes a target that
//! cross-attends to it: the architecture of the original transformer and of the copy task.
//!
//! Book page: [Chapter 6](../../book/ch06_transformer.html).

use luminal::prelude::*;

use crate::ch02_rmsnorm::{norm_ref_named, NormLayer};
use crate::ch03_feed_forward::{ffn_ref_named, FfnLayer};
use crate::ch04_rope::Rope;
use crate::ch05_attention::{mha_ref, MultiHeadAttention};
use crate::graph::dims::{DFf, DHead, DModel, MaxSeq};
use crate::graph::error::{CourseError, Result};
use crate::graph::init::CourseRng;
use crate::graph::params::{Param, Parameters, StateDict, Visitor};

mod decoder;
pub mod lm;
pub mod original;
pub mod seq2seq;
mod seq2seq_ref;
pub use decoder::*;
pub use lm::*;
pub use original::*;
pub use seq2seq::*;
pub use seq2seq_ref::*;

/// Checks shared by both model configs, each failure naming the setting. The head size must
/// be even only when `rope` rotates pairs.
fn validate_sizes(
    sizes: &[(&str, usize)],
    d_model: usize,
    n_heads: usize,
    theta: f32,
    rope: bool,
) -> Result<()> {
    if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
        return Err(CourseError::Config(format!("{name} must be positive")));
    }
    if d_model % n_heads != 0 {
        return Err(CourseError::Config(format!(
            "d_model ({d_model}) must be divisible by n_heads ({n_heads})"
        )));
    }
    if rope && (d_model / n_heads) % 2 != 0 {
        return Err(CourseError::Config(format!(
            "the head size d_model / n_heads = {} must be even: RoPE rotates pairs",
            d_model / n_heads
        )));
    }
    if !(theta > 1.0 && theta.is_finite()) {
        return Err(CourseError::Config(format!(
            "rope_theta ({theta}) must be a finite number > 1"
        )));
    }
    Ok(())
}

// ANCHOR: block_ref
/// A block as loops, weights from `dict` under `prefix` (e.g. `layers.0`): `x` (b, s, d) with
/// `mask` (b, s, s) -> (b, s, d). `arch` picks pre/post-norm, the norm and the FFN; positions
/// come in through `rope_theta` (None: no rotation).
pub fn block_ref(
    x: &[f32],
    dict: &StateDict,
    prefix: &str,
    mask: &[bool],
    [b, s, d, heads, d_ff]: [usize; 5],
    rope_theta: Option<f32>,
    arch: Architecture,
) -> Vec<f32> {
    // ANCHOR: learn_block_ref ch06: pre-norm h = x + attn(ln1(x)), out = h + ffn(ln2(h)); post-norm h = ln1(x + attn(x)), out = ln2(h + ffn(h)); mha_ref, ffn_ref_named, norm_ref_named with the block's weight names; x (b, s, d) -> (b, s, d)
    let w = |name: &str| &dict[&format!("{prefix}.{name}.weight")].data[..];
    let projections =
        ["q_proj", "k_proj", "v_proj", "output_proj"].map(|p| w(&format!("attn.{p}")));
    let attn = |x: &[f32]| mha_ref(x, x, projections, mask, [b, s, s, d], heads, rope_theta);
    let ffn = |x: &[f32]| {
        ffn_ref_named(
            arch.ffn,
            x,
            dict,
            &format!("{prefix}.ffn"),
            [b * s, d, d_ff],
        )
    };
    let norm =
        |x: &[f32], name: &str| norm_ref_named(arch.norm, x, dict, &format!("{prefix}.{name}"), d);
    match arch.norm_position {
        NormPosition::Pre => {
            let h = add(x, &attn(&norm(x, "ln1"))); // x + attn(ln1(x))
            add(&h, &ffn(&norm(&h, "ln2"))) // h + ffn(ln2(h))
        }
        NormPosition::Post => {
            let h = norm(&add(x, &attn(x)), "ln1"); // ln1(x + attn(x))
            norm(&add(&h, &ffn(&h)), "ln2") // ln2(h + ffn(h))
        }
    }
    // ANCHOR_END: learn_block_ref
}

/// Elementwise sum: the residual connection of the loop versions.
fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(a, b)| a + b).collect()
}
// ANCHOR_END: block_ref

// ANCHOR: block
/// A transformer block. Pre-norm (the default): `h = x + attn(ln1(x))`, `out = h + ffn(ln2(h))`;
/// post-norm: `h = ln1(x + attn(x))`, `out = ln2(h + ffn(h))`.
#[derive(Clone, Copy)]
pub struct Block {
    /// Norm before attention (pre-norm) or after its residual sum (post-norm): `ln1`.
    pub ln1: NormLayer<DModel>,
    /// Self-attention (`attn`), masked by the `allowed` given to `forward`.
    pub attn: MultiHeadAttention<DModel>,
    /// Norm of the feed-forward half (`ln2`).
    pub ln2: NormLayer<DModel>,
    /// Feed-forward network (`ffn`): SwiGLU or ReLU.
    pub ffn: FfnLayer<DModel, DFf>,
    /// Where the norms sit.
    pub norm_position: NormPosition,
}

impl Block {
    /// Add a modern block's weights to `cx` (pre-norm, RMSNorm, SwiGLU): `ln1`, `attn`, `ln2`, `ffn`.
    pub fn new(
        cx: &mut Graph,
        sizes: [usize; 3],
        rope: Option<Rope<MaxSeq, DHead>>,
    ) -> Result<Self> {
        Self::with_architecture(cx, sizes, rope, Architecture::default())
    }

    /// Add a block with the norm position, norm and FFN of `arch` (positions are the caller's:
    /// `rope`, or none).
    pub fn with_architecture(
        cx: &mut Graph,
        [d_model, n_heads, d_ff]: [usize; 3],
        rope: Option<Rope<MaxSeq, DHead>>,
        arch: Architecture,
    ) -> Result<Self> {
        Ok(Self {
            ln1: NormLayer::new(cx, arch.norm, d_model)?,
            attn: MultiHeadAttention::new(cx, d_model, n_heads, rope)?,
            ln2: NormLayer::new(cx, arch.norm, d_model)?,
            ffn: FfnLayer::new(cx, arch.ffn, d_model, d_ff)?,
            norm_position: arch.norm_position,
        })
    }

    /// Norm gains to 1 (biases to 0), projections truncated normal.
    pub fn init(&self, rng: &mut CourseRng) -> Result<()> {
        self.ln1.init()?;
        self.attn.init(rng)?;
        self.ln2.init()?;
        self.ffn.init(rng)
    }

    /// `x` (b, s, d), `allowed` (b, s, s) -> (b, s, d).
    pub fn forward<B: Dimension, S: Dimension>(
        &self,
        x: GraphTensor<(B, S, DModel)>,
        allowed: GraphTensor<(B, S, S)>,
    ) -> GraphTensor<(B, S, DModel)> {
        // ANCHOR: learn_block_forward ch06: pre-norm h = x + attn(ln1(x)), h + ffn(ln2(h)); post-norm h = ln1(x + attn(x)), ln2(h + ffn(h)); self.attn.attend(q_in, kv_in, allowed); (b, s, d) -> (b, s, d)
        match self.norm_position {
            NormPosition::Pre => {
                let normed = self.ln1.forward(x);
                let h = x + self.attn.attend(normed, normed, allowed); // (b, s, d)
                h + self.ffn.forward(self.ln2.forward(h)) // (b, s, d)
            }
            NormPosition::Post => {
                let h = self.ln1.forward(x + self.attn.attend(x, x, allowed)); // (b, s, d)
                self.ln2.forward(h + self.ffn.forward(h)) // (b, s, d)
            }
        }
        // ANCHOR_END: learn_block_forward
    }
}
// ANCHOR_END: block

// ANCHOR: block_params
// The block names its parts; the visitor prefixes them with the block's own name (`layers.0.`),
// so `ln1`'s gain becomes `layers.0.ln1.weight` without any layer building that string.
impl Parameters for Block {
    fn visit<'a>(&'a mut self, v: &mut Visitor<'a>) {
        v.module("ln1", &mut self.ln1);
        v.module("attn", &mut self.attn);
        v.module("ln2", &mut self.ln2);
        v.module("ffn", &mut self.ffn);
    }
}
// ANCHOR_END: block_params

impl ToIdsMut for Block {
    fn to_ids_mut(&mut self) -> Vec<&mut NodeIndex> {
        self.handles()
    }
}

/// Parameter counts grouped by the first part of their name after any `layers.{i}.`
/// (e.g. `token_embeddings`, `attn`, `ffn`, `ln1`), in first-seen order, with the total.
pub fn param_table(params: &[Param]) -> Vec<(String, usize)> {
    let mut rows: Vec<(String, usize)> = Vec::new();
    for p in params {
        let parts: Vec<&str> = p.name.split('.').collect();
        // Skip "layers.{i}" (and "encoder."/"decoder." prefixes keep their role visible).
        let key = match parts.as_slice() {
            [pre @ ("encoder" | "decoder"), "layers", _, part, ..] => format!("{pre}.{part}"),
            ["layers", _, part, ..] => part.to_string(),
            [first, second, ..] if *second != "weight" => format!("{first}.{second}"),
            [first, ..] => first.to_string(),
            [] => String::new(),
        };
        match rows.iter_mut().find(|(k, _)| *k == key) {
            Some(row) => row.1 += p.numel(),
            None => rows.push((key, p.numel())),
        }
    }
    let total = rows.iter().map(|r| r.1).sum();
    rows.push(("total".into(), total));
    rows
}

/// This chapter in a few lines, for the tour: the reference LM's parameters, and a forward
/// pass of a small seeded LM.
pub fn transformer_demo() -> Result<String> {
    let mut cx = Graph::new();
    let reference = TransformerLm::new(&mut cx, &TransformerConfig::reference())?;
    let table: Vec<String> = param_table(&reference.params())
        .iter()
        .map(|(k, n)| format!("  {k:<18} {n:>8}"))
        .collect();
    let small = TransformerConfig {
        context_length: 16,
        d_model: 32,
        n_layers: 2,
        d_ff: 96,
        ..TransformerConfig::reference()
    };
    let dict = init_lm_weights(&small, 0)?;
    let prompt: Vec<u32> = b"hello".iter().map(|&c| c as u32).collect();
    let logits = run_lm(
        &prompt,
        [1, prompt.len()],
        &dict,
        &small,
        crate::backend::Device::Cpu,
    )?;
    let last = &logits.data[(prompt.len() - 1) * small.vocab_size..];
    let best = (0..last.len())
        .max_by(|&a, &b| last[a].total_cmp(&last[b]))
        .unwrap_or(0);
    Ok(format!(
        "reference LM (vocab 256, ctx 128, d_model 128, 4 layers, 4 heads, d_ff 384):\n{}\n\
         an untrained 2-layer LM reads \"hello\" -> logits of shape {:?}; its (random) next byte: {best}",
        table.join("\n"),
        logits.shape
    ))
}

#[cfg(test)]
mod tests;
