//! Sizes before allocation: what a config will cost, worked out from its numbers alone, so that
//! a config read from a file (a checkpoint's header, `--config`, a flag) is refused before it
//! asks for more memory than the machine has, or for more tensors than the file holds.
//!
//! Book page: [Chapter 11](../../../book/ch11_checkpoints.html#checkpoints).

use super::config::{ModelConfig, Task, TrainConfig};
use crate::ch02_rmsnorm::Norm;
use crate::ch03_feed_forward::Ffn;
use crate::ch04_rope::Positions;
use crate::ch06_transformer::Seq2SeqConfig;
use crate::graph::error::{CourseError, Result};
use crate::graph::files::memory_available;

// Counts in u128 with saturating arithmetic: a forged size (2^62 layers) must give a huge
// number to refuse, never wrap around to a small one that passes.
fn mul(xs: &[usize]) -> u128 {
    xs.iter().fold(1u128, |a, &x| a.saturating_mul(x as u128))
}

fn sum(xs: &[u128]) -> u128 {
    xs.iter().fold(0u128, |a, &x| a.saturating_add(x))
}

/// Tensors per norm (LayerNorm: gain and bias) and weights per FFN (ReLU: no `w3`) of an
/// encoder-decoder config (chapter 6's architecture switches).
fn seq2seq_switches(c: &Seq2SeqConfig) -> (usize, usize) {
    let per_norm = if c.norm == Norm::Layer { 2 } else { 1 };
    let ffn = if c.ffn == Ffn::Relu { 2 } else { 3 };
    (per_norm, ffn)
}

impl ModelConfig {
    /// How many tensors the state dict has (chapter 6's names), without building the model.
    pub fn num_tensors(&self) -> u128 {
        match self {
            // embedding, 9 per block (2 norms, 4 projections, 3 FFN weights), final norm, head
            ModelConfig::Lm(c) => sum(&[3, mul(&[9, c.n_layers])]),
            // decoder blocks have 3 norms, 8 projections, 3 FFN weights; a tied head adds none;
            // chapter 6's switches: a LayerNorm has 2 tensors, a ReLU FFN 2 weights
            ModelConfig::Seq2Seq(c) => {
                let head = u128::from(!c.tie_embeddings);
                let (per_norm, ffn) = seq2seq_switches(c);
                sum(&[
                    (1 + 2 * per_norm) as u128 + head,
                    mul(&[2 * per_norm + 4 + ffn, c.n_encoder_layers]),
                    mul(&[3 * per_norm + 8 + ffn, c.n_decoder_layers]),
                ])
            }
        }
    }

    /// How many values the parameters hold, without building the model.
    pub fn num_params(&self) -> u128 {
        // A block: `attentions` x 4 projections (d, d), `ffn` FFN weights (d, f), `norms`
        // vectors (d) (a gain, or a gain and a bias).
        let blocks = |n: usize, d, f, attentions, norms, ffn| {
            let one = sum(&[
                mul(&[attentions, 4, d, d]),
                mul(&[ffn, d, f]),
                mul(&[norms, d]),
            ]);
            one.saturating_mul(n as u128)
        };
        match self {
            ModelConfig::Lm(c) => {
                let (v, d) = (c.vocab_size, c.d_model);
                // embedding + head (v, d) each, the blocks, the final norm
                sum(&[
                    mul(&[2, v, d]),
                    blocks(c.n_layers, d, c.d_ff, 1, 2, 3),
                    d as u128,
                ])
            }
            ModelConfig::Seq2Seq(c) => {
                let (v, d) = (c.vocab_size, c.d_model);
                let head = if c.tie_embeddings { 0 } else { mul(&[v, d]) };
                let (per_norm, ffn) = seq2seq_switches(c);
                sum(&[
                    mul(&[v, d]),
                    blocks(c.n_encoder_layers, d, c.d_ff, 1, 2 * per_norm, ffn),
                    blocks(c.n_decoder_layers, d, c.d_ff, 2, 3 * per_norm, ffn),
                    mul(&[2 * per_norm, d]),
                    head,
                ])
            }
        }
    }

    /// A lower bound on the bytes a forward pass over `batch` sequences of `seq` tokens holds:
    /// the weights, the RoPE tables, and per block the activations (queries, keys, values,
    /// output, the FFN's two hidden tensors, the attention scores).
    pub fn forward_bytes(&self, batch: usize, seq: usize) -> u128 {
        let (layers, d, f, heads, ctx) = match self {
            ModelConfig::Lm(c) => (c.n_layers, c.d_model, c.d_ff, c.n_heads, c.context_length),
            ModelConfig::Seq2Seq(c) => (
                c.n_encoder_layers.saturating_add(c.n_decoder_layers),
                c.d_model,
                c.d_ff,
                c.n_heads,
                c.context_length,
            ),
        };
        let per_block = sum(&[mul(&[4, d]), mul(&[2, f]), mul(&[heads, seq])]);
        let activations = mul(&[batch, seq, layers]).saturating_mul(per_block);
        let rope = match self {
            ModelConfig::Seq2Seq(c) if c.positions == Positions::Sinusoidal => 0,
            _ => mul(&[2, ctx, d / heads.max(1)]),
        };
        4u128.saturating_mul(sum(&[self.num_params(), rope, activations]))
    }

    /// Refuse a model whose forward pass over `batch` x `seq` tokens would need more memory
    /// than the machine has available, naming the sizes and the estimate.
    pub fn check_memory(&self, batch: usize, seq: usize, what: &str) -> Result<()> {
        check(self.forward_bytes(batch, seq), || {
            format!(
                "{what} ({} parameters, batch {batch} x {seq} tokens)",
                self.num_params()
            )
        })
    }
}

impl TrainConfig {
    /// A lower bound on the bytes a train step holds: the forward pass, its gradients, and the
    /// weights' gradients, two AdamW moments and updated copies (4 more copies of the weights).
    pub fn train_bytes(&self) -> u128 {
        let seq = match &self.task {
            Task::Copy(t) => t.source_len.saturating_add(t.target_len()),
            Task::Lm { context } => *context,
        };
        let forward = self.model.forward_bytes(self.batch_size, seq);
        forward
            .saturating_mul(2)
            .saturating_add(16u128.saturating_mul(self.model.num_params()))
    }

    /// Refuse a run that would need more memory than the machine has available.
    pub fn check_memory(&self) -> Result<()> {
        check(self.train_bytes(), || {
            format!(
                "training this config ({} parameters, batch_size {})",
                self.model.num_params(),
                self.batch_size
            )
        })
    }
}

fn check(need: u128, what: impl Fn() -> String) -> Result<()> {
    let Some(have) = memory_available() else {
        return Ok(()); // not Linux: no reading to compare with
    };
    if need > have as u128 {
        return Err(CourseError::Config(format!(
            "{} needs at least {} of memory; this machine has {} available",
            what(),
            gib(need),
            gib(have as u128)
        )));
    }
    Ok(())
}

fn gib(bytes: u128) -> String {
    let g = bytes as f64 / (1u64 << 30) as f64;
    if g >= 1e6 {
        format!("{g:.1e} GiB")
    } else {
        format!("{g:.1} GiB")
    }
}
