//! The original Transformer (Vaswani et al. 2017) as a configuration of the encoder-decoder:
//! four switches, each defaulting to the modern choice the rest of the course uses.
//!
//! Book page: [Chapter 6](../../../book/ch06_transformer.html#the-original-transformer-as-a-configuration).

use crate::ch02_rmsnorm::Norm;
use crate::ch03_feed_forward::Ffn;
use crate::ch04_rope::{Positions, ROPE_THETA};
use crate::graph::error::{CourseError, Result};

use super::Seq2SeqConfig;

// ANCHOR: norm_position
/// Where a block normalises (JSON `"pre"` / `"post"`; pre-norm when absent).
/// Book: [Chapter 6](../../../book/ch06_transformer.html#the-original-transformer-as-a-configuration).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NormPosition {
    /// `x + sublayer(norm(x))`: the residual stream itself is never normalised (GPT-2 onwards).
    #[default]
    #[serde(rename = "pre")]
    Pre,
    /// `norm(x + sublayer(x))`: every sub-layer's sum is normalised (the 2017 paper, and
    /// PyTorch's `nn.Transformer` with `norm_first=False`).
    #[serde(rename = "post")]
    Post,
}
// ANCHOR_END: norm_position

// ANCHOR: architecture
/// The four switches between the course's modern encoder-decoder and the 2017 original.
/// `Architecture::default()` is the modern one: pre-norm, RMSNorm, RoPE, SwiGLU.
/// Book: [Chapter 6](../../../book/ch06_transformer.html#the-original-transformer-as-a-configuration).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Architecture {
    /// Normalise before each sub-layer (pre) or after its residual sum (post).
    pub norm_position: NormPosition,
    /// RMSNorm (gain) or LayerNorm (gain and bias).
    pub norm: Norm,
    /// RoPE inside attention, or sinusoids added to the token embeddings.
    pub positions: Positions,
    /// SwiGLU (`w1`, `w2`, `w3`) or ReLU (`w1`, `w2`) feed-forward network.
    pub ffn: Ffn,
}

impl Architecture {
    /// Vaswani et al. 2017: post-norm, LayerNorm, sinusoidal positions, ReLU.
    pub const ORIGINAL: Self = Self {
        norm_position: NormPosition::Post,
        norm: Norm::Layer,
        positions: Positions::Sinusoidal,
        ffn: Ffn::Relu,
    };

    /// All 16 combinations of the four switches (for tests and ablations).
    pub fn all() -> Vec<Self> {
        let mut out = Vec::new();
        for norm_position in [NormPosition::Pre, NormPosition::Post] {
            for norm in [Norm::Rms, Norm::Layer] {
                for positions in [Positions::Rope, Positions::Sinusoidal] {
                    for ffn in [Ffn::SwiGlu, Ffn::Relu] {
                        out.push(Self {
                            norm_position,
                            norm,
                            positions,
                            ffn,
                        });
                    }
                }
            }
        }
        out
    }
}
// ANCHOR_END: architecture

// ANCHOR: original_transformer
impl Seq2SeqConfig {
    /// The original Transformer's architecture at the given sizes (the paper's base model is
    /// `original_transformer(vocab, ctx, 512, 8, 6, 2048)`): post-norm, LayerNorm, sinusoidal
    /// positions, ReLU FFN, tied embeddings, no biases in the linear layers (the course's
    /// convention; the paper's have them). Like PyTorch's `nn.Transformer`, the encoder and the
    /// decoder each end with a norm, which the paper does not have.
    /// Book: [Chapter 6](../../../book/ch06_transformer.html#the-original-transformer-as-a-configuration).
    pub fn original_transformer(
        vocab_size: usize,
        context_length: usize,
        d_model: usize,
        n_heads: usize,
        n_layers: usize,
        d_ff: usize,
    ) -> Self {
        let a = Architecture::ORIGINAL;
        Self {
            vocab_size,
            context_length,
            d_model,
            n_heads,
            n_encoder_layers: n_layers,
            n_decoder_layers: n_layers,
            d_ff,
            rope_theta: ROPE_THETA, // unused: no RoPE
            tie_embeddings: true, // the paper shares one matrix for both embeddings and the output
            cross_attention_rope: false,
            norm_position: a.norm_position,
            norm: a.norm,
            positions: a.positions,
            ffn: a.ffn,
        }
    }
}
// ANCHOR_END: original_transformer

impl Seq2SeqConfig {
    /// The four switches of this config.
    pub fn architecture(&self) -> Architecture {
        Architecture {
            norm_position: self.norm_position,
            norm: self.norm,
            positions: self.positions,
            ffn: self.ffn,
        }
    }

    /// Set all four switches at once.
    pub fn set_architecture(&mut self, arch: Architecture) {
        self.norm_position = arch.norm_position;
        self.norm = arch.norm;
        self.positions = arch.positions;
        self.ffn = arch.ffn;
    }

    /// Switches that contradict each other, named by field.
    pub(super) fn validate_architecture(&self) -> Result<()> {
        if self.cross_attention_rope && self.positions != Positions::Rope {
            return Err(CourseError::Config(
                "cross_attention_rope needs positions = \"rope\" (sinusoidal positions are added \
                 to the embeddings; there is no rotation to apply in cross-attention)"
                    .into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
