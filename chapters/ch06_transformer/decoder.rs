//! The encoder-decoder's decoder block: causal self-attention, cross-attention, feed-forward.
//!
//! Book page: [Chapter 6](../../../book/ch06_transformer.html#the-encoder-decoder).

use luminal::prelude::*;

use super::{Architecture, NormPosition};
use crate::ch02_rmsnorm::NormLayer;
use crate::ch03_feed_forward::FfnLayer;
use crate::ch04_rope::Rope;
use crate::ch05_attention::MultiHeadAttention;
use crate::graph::dims::{DFf, DHead, DModel, MaxSeq};
use crate::graph::error::Result;
use crate::graph::params::{Parameters, Visitor};

// ANCHOR: decoder_block
/// A decoder block: causal self-attention, cross-attention to the encoder's output,
/// feed-forward; pre-norm (each on a normalised copy of the residual stream) or post-norm
/// (each residual sum normalised).
#[derive(Clone, Copy)]
pub struct DecoderBlock {
    /// Norm of the self-attention half.
    pub ln1: NormLayer<DModel>,
    /// Causal self-attention over the target (with RoPE unless positions are sinusoidal).
    pub self_attn: MultiHeadAttention<DModel>,
    /// Norm of the cross-attention half.
    pub ln2: NormLayer<DModel>,
    /// Queries from the target, keys and values from the encoder's output.
    pub cross_attn: MultiHeadAttention<DModel>,
    /// Norm of the feed-forward half.
    pub ln3: NormLayer<DModel>,
    /// Feed-forward network: SwiGLU or ReLU.
    pub ffn: FfnLayer<DModel, DFf>,
    /// Where the norms sit.
    pub norm_position: NormPosition,
}

impl DecoderBlock {
    /// Add the block's weights to `cx`: `ln1`, `self_attn`, `ln2`, `cross_attn`, `ln3`, `ffn`.
    pub fn new(
        cx: &mut Graph,
        [d_model, n_heads, d_ff]: [usize; 3],
        rope: Option<Rope<MaxSeq, DHead>>,
        cross_rope: Option<Rope<MaxSeq, DHead>>,
        arch: Architecture,
    ) -> Result<Self> {
        Ok(Self {
            ln1: NormLayer::new(cx, arch.norm, d_model)?,
            self_attn: MultiHeadAttention::new(cx, d_model, n_heads, rope)?,
            ln2: NormLayer::new(cx, arch.norm, d_model)?,
            // RoPE across sequences only on request (see `Seq2SeqConfig::cross_attention_rope`).
            cross_attn: MultiHeadAttention::new(cx, d_model, n_heads, cross_rope)?,
            ln3: NormLayer::new(cx, arch.norm, d_model)?,
            ffn: FfnLayer::new(cx, arch.ffn, d_model, d_ff)?,
            norm_position: arch.norm_position,
        })
    }

    /// `x` (b, s, d), `memory` (b, t, d), `causal` (b, s, s), `src_allowed` (b, s, t) -> (b, s, d).
    pub fn forward<B: Dimension, S: Dimension, T: Dimension>(
        &self,
        x: GraphTensor<(B, S, DModel)>,
        memory: GraphTensor<(B, T, DModel)>,
        causal: GraphTensor<(B, S, S)>,
        src_allowed: GraphTensor<(B, S, T)>,
    ) -> GraphTensor<(B, S, DModel)> {
        // ANCHOR: learn_decoder_block_forward ch06: three residual sublayers: causal self-attention, cross-attention (queries from h, keys/values from memory (b, t, d), src_allowed), ffn; pre-norm: h + f(ln(h)), post-norm: ln(h + f(h))
        match self.norm_position {
            NormPosition::Pre => {
                let normed = self.ln1.forward(x);
                let h = x + self.self_attn.attend(normed, normed, causal);
                let h = h + self
                    .cross_attn
                    .attend(self.ln2.forward(h), memory, src_allowed);
                h + self.ffn.forward(self.ln3.forward(h))
            }
            NormPosition::Post => {
                let h = self.ln1.forward(x + self.self_attn.attend(x, x, causal));
                let h = self
                    .ln2
                    .forward(h + self.cross_attn.attend(h, memory, src_allowed));
                self.ln3.forward(h + self.ffn.forward(h))
            }
        }
        // ANCHOR_END: learn_decoder_block_forward
    }
}
// ANCHOR_END: decoder_block

impl Parameters for DecoderBlock {
    fn visit<'a>(&'a mut self, v: &mut Visitor<'a>) {
        v.module("ln1", &mut self.ln1);
        v.module("self_attn", &mut self.self_attn);
        v.module("ln2", &mut self.ln2);
        v.module("cross_attn", &mut self.cross_attn);
        v.module("ln3", &mut self.ln3);
        v.module("ffn", &mut self.ffn);
    }
}

impl ToIdsMut for DecoderBlock {
    fn to_ids_mut(&mut self) -> Vec<&mut NodeIndex> {
        self.handles()
    }
}
