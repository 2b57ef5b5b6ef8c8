//! Generation: pick the next token from the logits (greedy, temperature, top-k, top-p), append
//! it, run the model again.
//!
//! Book page: [Chapter 11](../../../book/ch11_generation.html#generation).

use luminal::prelude::*;
use rand::Rng;

use super::config::ModelConfig;
use super::step::Model;
use crate::backend::Device;
use crate::graph::dims::{Batch, Seq, SrcSeq, Vocab};
use crate::graph::error::{CourseError, Result};
use crate::graph::init::CourseRng;
use crate::graph::params::{self, Param, Parameters, StateDict};
use crate::graph::tensor;

// ANCHOR: sampling
/// How to turn logits into the next token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// 0 means greedy (argmax); otherwise logits are divided by it before the softmax.
    pub temperature: f32,
    /// Keep only the k most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probabilities sum to at least p.
    pub top_p: Option<f32>,
}

impl Sampling {
    /// Always the most likely token (temperature 0, no top-k or top-p).
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
        }
    }

    /// temperature >= 0, k >= 1, 0 < p <= 1.
    pub fn validate(&self) -> Result<()> {
        let ok = self.temperature >= 0.0
            && self.top_k.map_or(true, |k| k >= 1)
            && self.top_p.map_or(true, |p| p > 0.0 && p <= 1.0);
        if !ok {
            return Err(CourseError::Config(format!(
                "sampling needs temperature >= 0, top_k >= 1 and 0 < top_p <= 1; got {self:?}"
            )));
        }
        Ok(())
    }

    /// The distribution this sampling draws from: `(token, probability)`, most likely first,
    /// after temperature, top-k and top-p (renormalised). Empty when `logits` is.
    pub fn distribution(&self, logits: &[f32]) -> Vec<(u32, f32)> {
        // ANCHOR: learn_sampling_distribution ch11: ids sorted by logit, highest first (stable); temperature 0 -> [(best, 1)]; else softmax(logits / T), keep the top_k, then the smallest prefix with mass >= top_p, renormalise -> (id, p) pairs
        if logits.is_empty() {
            return vec![];
        }
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        // Most likely first; ties keep the lower id first (a stable sort).
        order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        if self.temperature == 0.0 {
            return vec![(order[0], 1.0)];
        }
        let max = logits[order[0] as usize];
        let mut probs: Vec<(u32, f32)> = order
            .iter()
            .map(|&i| (i, ((logits[i as usize] - max) / self.temperature).exp()))
            .collect();
        let total: f32 = probs.iter().map(|p| p.1).sum();
        probs.iter_mut().for_each(|p| p.1 /= total);
        if let Some(k) = self.top_k {
            probs.truncate(k);
        }
        if let Some(p) = self.top_p {
            let mut sum = 0.0;
            // The smallest prefix reaching p (at least one token).
            let keep = probs
                .iter()
                .position(|q| {
                    sum += q.1;
                    sum >= p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
        }
        let total: f32 = probs.iter().map(|p| p.1).sum();
        probs.iter_mut().for_each(|p| p.1 /= total);
        probs
        // ANCHOR_END: learn_sampling_distribution
    }

    /// Draw the next token from `logits` (one row). An error for invalid settings, an empty
    /// row, or a NaN or infinite logit (a diverged model; picking "a" token would hide it).
    pub fn sample(&self, logits: &[f32], rng: &mut CourseRng) -> Result<u32> {
        // ANCHOR: learn_sampling_sample ch11: validate, refuse non-finite logits; u = rng.gen::<f32>(); walk distribution(logits) until the cumulative p exceeds u (the last id if rounding never does)
        self.validate()?;
        if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
            return Err(CourseError::NonFinite(format!(
                "logit {} for token {i}; the model's weights may have diverged",
                logits[i]
            )));
        }
        let probs = self.distribution(logits);
        let Some(&(last, _)) = probs.last() else {
            return Err(CourseError::Config(
                "cannot sample from an empty row of logits".into(),
            ));
        };
        let u: f32 = rng.gen();
        let mut sum = 0.0;
        for &(token, p) in &probs {
            sum += p;
            if u < sum {
                return Ok(token);
            }
        }
        // rounding left u >= sum
        Ok(last)
        // ANCHOR_END: learn_sampling_sample
    }
}
// ANCHOR_END: sampling

/// The encoder-decoder's source ids and keep-mask inputs.
type SourceInputs = (GraphTensor<(Batch, SrcSeq)>, GraphTensor<(Batch, SrcSeq)>);

/// The model's forward pass compiled once for inference; reruns with growing sequences.
pub struct Generator {
    cx: Box<Graph>,
    model: Model,
    /// LM: the ids; encoder-decoder: the decoder input.
    ids: GraphTensor<(Batch, Seq)>,
    src: Option<SourceInputs>,
    logits: GraphTensor<(Batch, Seq, Vocab)>,
    params: Vec<Param>,
    config: ModelConfig,
}

impl Generator {
    /// Build the model's forward pass for `config` and compile it for `device`; load weights next.
    pub fn new(config: &ModelConfig, device: Device) -> Result<Self> {
        config.validate()?;
        let context = match config {
            ModelConfig::Lm(c) => c.context_length,
            ModelConfig::Seq2Seq(c) => c.context_length,
        };
        config.check_memory(1, context, "generating with this model")?;
        let mut cx = Box::new(Graph::new());
        let mut model = Model::new(&mut cx, config)?;
        let mut params = model.params();
        let mut ids = tensor::input::<(Batch, Seq)>(&mut cx, "ids");
        let (mut src, mut logits) = match &model {
            Model::Lm(m) => (None, m.forward(ids)),
            Model::Seq2Seq(m) => {
                let src = tensor::input::<(Batch, SrcSeq)>(&mut cx, "src");
                let keep = tensor::input::<(Batch, SrcSeq)>(&mut cx, "src_keep");
                (Some((src, keep)), m.forward(src, keep, ids))
            }
        };
        logits = logits.retrieve();
        let mut src_inputs: Vec<GraphTensor<(Batch, SrcSeq)>> =
            src.iter().flat_map(|&(s, k)| [s, k]).collect();
        device.compile(
            &mut cx,
            (
                &mut model,
                &mut ids,
                &mut logits,
                &mut params,
                &mut src_inputs,
            ),
        );
        if let Some((s, k)) = &mut src {
            (*s, *k) = (src_inputs[0], src_inputs[1]);
        }
        Ok(Self {
            cx,
            model,
            ids,
            src,
            logits,
            params,
            config: config.clone(),
        })
    }

    /// Load the weights to generate with (e.g. a checkpoint's); every parameter must be present.
    pub fn load(&mut self, weights: &StateDict) -> Result<()> {
        params::load_state_dict(&mut self.cx, &self.params, weights)
    }

    /// Logits of the last position of every row of `ids` (batch, len): (batch, vocab).
    fn last_logits(&mut self, ids: &[u32], [b, len]: [usize; 2]) -> Result<Vec<Vec<f32>>> {
        self.cx.tensors.remove(&(self.logits.id, 0));
        match &self.model {
            Model::Lm(m) => m.set_ids(self.ids, [b, len], ids)?,
            Model::Seq2Seq(m) => m.set_ids(self.ids, [b, len], ids)?,
        }
        tensor::execute(&mut self.cx)?;
        let all = tensor::read(self.logits)?; // (b, len, vocab)
        let v = self.config.vocab_size();
        Ok((0..b)
            .map(|r| all.data[((r + 1) * len - 1) * v..(r + 1) * len * v].to_vec())
            .collect())
    }

    // ANCHOR: generate_lm
    /// Continue `prompt` by up to `max_new` tokens, stopping after `stop` if given. The model
    /// sees at most its context: longer sequences are cropped to the most recent tokens.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        stop: Option<u32>,
        sampling: &Sampling,
        rng: &mut CourseRng,
    ) -> Result<Vec<u32>> {
        // ANCHOR: learn_generate_lm ch11: for the LM only, non-empty prompt; up to max_new times: last_logits of the last context_length tokens, sample, append, stop after `stop`; return the new tokens only
        sampling.validate()?;
        let ModelConfig::Lm(c) = &self.config else {
            return Err(CourseError::Config(
                "generate() is for the LM; use generate_seq2seq".into(),
            ));
        };
        if prompt.is_empty() {
            return Err(CourseError::Config(
                "generation needs a prompt of at least one token".into(),
            ));
        }
        let context = c.context_length;
        let mut seq = prompt.to_vec();
        for _ in 0..max_new {
            let window = &seq[seq.len().saturating_sub(context)..];
            let logits = self.last_logits(window, [1, window.len()])?;
            let next = sampling.sample(&logits[0], rng)?;
            seq.push(next);
            if Some(next) == stop {
                break;
            }
        }
        Ok(seq[prompt.len()..].to_vec())
        // ANCHOR_END: learn_generate_lm
    }
    // ANCHOR_END: generate_lm

    /// Encoder-decoder: for each row of `src` (batch, t), decode `len` tokens after `start`.
    pub fn generate_seq2seq(
        &mut self,
        src: &[u32],
        batch: usize,
        start: u32,
        len: usize,
        sampling: &Sampling,
        rng: &mut CourseRng,
    ) -> Result<Vec<u32>> {
        // ANCHOR: learn_generate_seq2seq ch11: set src (batch, t) and an all-ones src_keep; rows start as [start]; for step 1..=len: last_logits of the rows so far (batch, step), sample one token per row; return the rows without start, (batch, len)
        sampling.validate()?;
        {
            let (Model::Seq2Seq(m), Some((src_t, keep_t))) = (&self.model, self.src) else {
                return Err(CourseError::Config(
                    "generate_seq2seq() is for the encoder-decoder; use generate".into(),
                ));
            };
            let t = src.len() / batch.max(1);
            m.set_ids(src_t, [batch, t], src)?;
            tensor::set(keep_t, &[batch, t], vec![1.0; src.len()])?;
        }
        let mut rows: Vec<Vec<u32>> = vec![vec![start]; batch];
        for step in 1..=len {
            let ids: Vec<u32> = rows.iter().flatten().copied().collect();
            let logits = self.last_logits(&ids, [batch, step])?;
            for (row, l) in rows.iter_mut().zip(&logits) {
                row.push(sampling.sample(l, rng)?);
            }
        }
        Ok(rows.into_iter().flat_map(|r| r[1..].to_vec()).collect())
        // ANCHOR_END: learn_generate_seq2seq
    }
}
