//! # Chapter 7 — The loss
//!
//! A language model outputs logits: one unnormalised score per vocabulary entry and position.
//! Training makes the score of the token that really came next as large as possible relative
//! to the others: the cross-entropy `-log softmax(x)[target]`, averaged over the positions
//! that count (padding does not). Perplexity `exp(mean CE)` reads the same number as "how many
//! tokens the model hesitates between".
//!
//! Book page: [Chapter 7](../../book/ch07_loss.html).

use luminal::prelude::*;

use crate::backend::Device;
use crate::ch01_linear::one_hot;
use crate::ch06_transformer::{Seq2Seq, TransformerLm};
use crate::graph::dims::{Batch, Seq, Vocab};
use crate::graph::error::{CourseError, Result};
use crate::graph::tensor::{self, HostTensor};

// ANCHOR: cross_entropy_ref
/// Cross-entropy of one row of logits against the target index, by log-sum-exp:
/// `-x[t] + m + ln(sum_j e^(x_j - m))` with `m = max_j x_j`, so no `exp` overflows.
pub fn cross_entropy_ref(logits: &[f32], target: usize) -> f32 {
    // ANCHOR: learn_cross_entropy_ref ch07: -x[target] + m + ln(sum_j exp(x_j - m)) with m = max_j x_j (log-sum-exp, no overflow); logits (v) -> scalar
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|x| (x - m).exp()).sum();
    -logits[target] + m + sum.ln()
    // ANCHOR_END: learn_cross_entropy_ref
}
// ANCHOR_END: cross_entropy_ref

// ANCHOR: masked_mean_ref
/// How a masked mean weighs positions (the two options of x-transformers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Weighting {
    /// Every unmasked token in the batch counts the same: sum / number of unmasked tokens.
    #[default]
    Token,
    /// Every sequence counts the same: the mean over sequences of each one's own masked mean.
    Sequence,
}

/// The mean of `losses` (b, s) over positions where `mask` is true, weighted per `w`.
/// A sequence (or batch) with nothing unmasked contributes 0 instead of 0 / 0.
pub fn masked_mean_ref(losses: &[f32], mask: &[bool], [b, s]: [usize; 2], w: Weighting) -> f32 {
    // ANCHOR: learn_masked_mean_ref ch07: Token: sum of the unmasked losses / their count; Sequence: the mean over the b rows of each row's own masked mean; losses, mask (b, s) -> scalar; a count of 0 divides by 1
    let kept = |r: usize| (0..s).filter(move |&j| mask[r * s + j]);
    match w {
        Weighting::Token => {
            let n = mask.iter().filter(|&&m| m).count();
            let total: f32 = (0..b)
                .flat_map(|r| kept(r).map(move |j| (r, j)))
                .map(|(r, j)| losses[r * s + j])
                .sum();
            total / n.max(1) as f32
        }
        Weighting::Sequence => {
            let per_seq = (0..b).map(|r| {
                let n = kept(r).count();
                kept(r).map(|j| losses[r * s + j]).sum::<f32>() / n.max(1) as f32
            });
            per_seq.sum::<f32>() / b as f32
        }
    }
    // ANCHOR_END: learn_masked_mean_ref
}
// ANCHOR_END: masked_mean_ref

// ANCHOR: teacher_forcing
/// Teacher forcing: a sequence `t` becomes the model's input `t[..n-1]` and the prediction
/// target `t[1..]`: at every position the model sees the true past and predicts the next token.
/// For the LM, `t` is a window of text; for seq2seq, the target sequence starting with the
/// start token.
pub fn teacher_forcing(sequence: &[u32]) -> Result<(Vec<u32>, Vec<u32>)> {
    // ANCHOR: learn_teacher_forcing ch07: input = sequence[..n-1], target = sequence[1..]; fewer than 2 tokens is a CourseError::OutOfRange
    if sequence.len() < 2 {
        return Err(CourseError::OutOfRange {
            what: format!("a sequence of {} tokens", sequence.len()),
            problem: "teacher forcing needs at least 2 tokens (one input, one target)".into(),
        });
    }
    let n = sequence.len();
    Ok((sequence[..n - 1].to_vec(), sequence[1..].to_vec()))
    // ANCHOR_END: learn_teacher_forcing
}
// ANCHOR_END: teacher_forcing

/// Perplexity from a mean cross-entropy (in nats).
pub fn perplexity(mean_cross_entropy: f32) -> f32 {
    // ANCHOR: learn_perplexity ch07: exp(mean cross-entropy in nats)
    mean_cross_entropy.exp()
    // ANCHOR_END: learn_perplexity
}

// ANCHOR: cross_entropy
/// Per-position cross-entropy: `logits` (b, s, v), `targets` (b, s) ids as floats -> (b, s).
///
/// The target's logit is picked by a one-hot product built with `less_than` (chapter 1), not
/// with luminal's `equals` + gather chain, which 0.2.0 miscompiles.
pub fn cross_entropy<B: Dimension, S: Dimension, V: Dimension>(
    logits: GraphTensor<(B, S, V)>,
    targets: GraphTensor<(B, S)>,
) -> GraphTensor<(B, S)> {
    // ANCHOR: learn_cross_entropy ch07: max over axis 2, log_sum = ln(sum exp(logits - max)), target logit = sum over v of logits * one_hot(targets); (max - target_logit) + log_sum; logits (b, s, v), targets (b, s) -> (b, s)
    let max = logits.max_reduce::<(B, S), Axis<2>>(); // (b, s)
    let shifted = logits - max.expand::<(B, S, V), Axis<2>>(); // every entry <= 0
    let log_sum = shifted.exp().sum_reduce::<(B, S), Axis<2>>().ln(); // (b, s), in [0, ln v]
    let target_logit = (logits * one_hot::<B, S, V>(targets)).sum_reduce::<(B, S), Axis<2>>();
    // (max - target) first: two large, close numbers subtract exactly; adding ln(sum) to the
    // max first would round at the logits' scale (an error of ~1e-4 for logits ~3000).
    (max - target_logit) + log_sum
    // ANCHOR_END: learn_cross_entropy
}
// ANCHOR_END: cross_entropy

// ANCHOR: masked_mean
/// The masked mean of `losses` (b, s) with `mask` (b, s) of 1.0 / 0.0, to a scalar.
pub fn masked_mean<B: Dimension, S: Dimension>(
    losses: GraphTensor<(B, S)>,
    mask: GraphTensor<(B, S)>,
    weighting: Weighting,
) -> GraphTensor<()> {
    // ANCHOR: learn_masked_mean ch07: losses * mask; Token: total / at_least_one(mask total); Sequence: per-row sum / at_least_one(per-row count), then the mean over rows; (b, s) -> scalar
    let masked = losses * mask;
    match weighting {
        Weighting::Token => {
            let total = masked.sum_reduce::<(), Axes2<0, 1>>();
            total / at_least_one(mask.sum_reduce::<(), Axes2<0, 1>>())
        }
        Weighting::Sequence => {
            let per_seq = masked.sum_reduce::<(B,), Axis<1>>()
                / at_least_one(mask.sum_reduce::<(B,), Axis<1>>());
            per_seq.mean_reduce::<(), Axis<0>>()
        }
    }
    // ANCHOR_END: learn_masked_mean
}
// ANCHOR_END: masked_mean

// ANCHOR: model_losses
/// The decoder-only LM's training loss: the masked mean cross-entropy of its logits for
/// `ids` (b, s) against `targets` (b, s) (the ids shifted by one: teacher forcing).
pub fn lm_loss<B: Dimension, S: Dimension>(
    model: &TransformerLm,
    ids: GraphTensor<(B, S)>,
    targets: GraphTensor<(B, S)>,
    mask: GraphTensor<(B, S)>,
    weighting: Weighting,
) -> GraphTensor<()> {
    // ANCHOR: learn_lm_loss ch07: masked_mean of cross_entropy(model.forward(ids), targets) under mask: ids, targets (b, s) -> scalar
    masked_mean(cross_entropy(model.forward(ids), targets), mask, weighting)
    // ANCHOR_END: learn_lm_loss
}

/// The encoder-decoder's training loss: decoder input `tgt_in` (b, s), prediction targets
/// `tgt_out` (b, s), padding masked by `tgt_mask`; the source `src` (b, t) with `src_keep`.
#[allow(clippy::too_many_arguments)]
pub fn seq2seq_loss<B: Dimension, T: Dimension, S: Dimension>(
    model: &Seq2Seq,
    src: GraphTensor<(B, T)>,
    src_keep: GraphTensor<(B, T)>,
    tgt_in: GraphTensor<(B, S)>,
    tgt_out: GraphTensor<(B, S)>,
    tgt_mask: GraphTensor<(B, S)>,
    weighting: Weighting,
) -> GraphTensor<()> {
    // ANCHOR: learn_seq2seq_loss ch07: masked_mean of cross_entropy(model.forward(src, src_keep, tgt_in), tgt_out) under tgt_mask -> scalar
    let logits = model.forward(src, src_keep, tgt_in);
    masked_mean(cross_entropy(logits, tgt_out), tgt_mask, weighting)
    // ANCHOR_END: learn_seq2seq_loss
}
// ANCHOR_END: model_losses

/// The mean cross-entropy of `logits` (b, s, v) against `targets` (b, s) where `mask` is true.
pub fn run_loss(
    logits: &[f32],
    [b, s, v]: [usize; 3],
    targets: &[u32],
    mask: &[bool],
    weighting: Weighting,
    device: Device,
) -> Result<f32> {
    if let Some((i, &t)) = targets.iter().enumerate().find(|(_, &t)| t as usize >= v) {
        return Err(CourseError::OutOfRange {
            what: format!("target id {t} at position {i}"),
            problem: format!("the logits have {v} classes"),
        });
    }
    let mut cx = Graph::new();
    let mut x = tensor::input::<(Batch, Seq, Vocab)>(&mut cx, "logits");
    let mut t = tensor::input::<(Batch, Seq)>(&mut cx, "targets");
    let mut m = tensor::input::<(Batch, Seq)>(&mut cx, "mask");
    let mut loss = masked_mean(cross_entropy(x, t), m, weighting).retrieve();
    device.compile(&mut cx, (&mut x, &mut t, &mut m, &mut loss));
    tensor::set(x, &[b, s, v], logits.to_vec())?;
    tensor::set(t, &[b, s], targets.iter().map(|&i| i as f32).collect())?;
    tensor::set(m, &[b, s], mask.iter().map(|&k| k as u8 as f32).collect())?;
    tensor::execute(&mut cx)?;
    Ok(tensor::read(loss)?.data[0])
}

/// Per-position losses (b, s) as a host tensor, for tables and plots.
pub fn run_cross_entropy(
    logits: &[f32],
    [b, s, v]: [usize; 3],
    targets: &[u32],
    device: Device,
) -> Result<HostTensor> {
    let mut cx = Graph::new();
    let mut x = tensor::input::<(Batch, Seq, Vocab)>(&mut cx, "logits");
    let mut t = tensor::input::<(Batch, Seq)>(&mut cx, "targets");
    let mut y = cross_entropy(x, t).retrieve();
    device.compile(&mut cx, (&mut x, &mut t, &mut y));
    tensor::set(x, &[b, s, v], logits.to_vec())?;
    tensor::set(t, &[b, s], targets.iter().map(|&i| i as f32).collect())?;
    tensor::execute(&mut cx)?;
    tensor::read(y)
}

/// This chapter in a few lines, for the tour.
pub fn loss_demo() -> Result<String> {
    // Uniform logits over 4 classes: CE = ln 4 = 1.3863, perplexity 4.
    let ce = run_loss(
        &[0.0; 4],
        [1, 1, 4],
        &[2],
        &[true],
        Weighting::Token,
        Device::Cpu,
    )?;
    // Two sequences of 3; the second has 2 masked positions. Losses 1..6:
    let losses = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let mask = [true, true, true, true, false, false];
    Ok(format!(
        "uniform logits over 4 classes: cross-entropy {ce:.4} = ln 4, perplexity {:.2}\n\
         losses [[1, 2, 3], [4, -, -]]: token-centric mean {:.3}, sequence-centric mean {:.3}",
        perplexity(ce),
        masked_mean_ref(&losses, &mask, [2, 3], Weighting::Token),
        masked_mean_ref(&losses, &mask, [2, 3], Weighting::Sequence),
    ))
}

/// `max(n, 1)` for whole-number counts `n`: adds 1 exactly where the count is 0.
fn at_least_one<S: Shape>(n: GraphTensor<S>) -> GraphTensor<S> {
    // ANCHOR: learn_at_least_one ch07: n + (n < 0.5): adds 1 exactly where a whole-number count is 0
    n + n.less_than(n.graph().constant(0.5).expand())
    // ANCHOR_END: learn_at_least_one
}

#[cfg(test)]
mod tests;
