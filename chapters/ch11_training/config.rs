//! Every setting of a run in one place: which model, which task, the optimiser, the schedule,
//! sizes and seed, and the two experiments' settings. Saved in checkpoints as JSON.
//!
//! Book page: [Chapter 11](../../../book/ch11_training.html#the-loop).

use super::data::{book_corpus, ByteTokenizer, CopyTask, TaskData};
use crate::ch04_rope::ROPE_THETA;
use crate::ch06_transformer::{Seq2SeqConfig, TransformerConfig};
use crate::ch09_optimizers::AdamWConfig;
use crate::ch10_schedule::CosineSchedule;
use crate::graph::error::{CourseError, Result};

/// Which model to train, with its sizes (stored in checkpoints as JSON).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelConfig {
    /// Decoder-only language model (chapter 6).
    Lm(TransformerConfig),
    /// Encoder-decoder (chapter 6), e.g. for the copy task.
    Seq2Seq(Seq2SeqConfig),
}

impl ModelConfig {
    /// The model's vocabulary size, whichever model it is.
    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Lm(c) => c.vocab_size,
            ModelConfig::Seq2Seq(c) => c.vocab_size,
        }
    }

    /// Check the sizes of whichever model it is.
    pub fn validate(&self) -> Result<()> {
        match self {
            ModelConfig::Lm(c) => c.validate(),
            ModelConfig::Seq2Seq(c) => c.validate(),
        }
    }
}

// ANCHOR: config
/// What to learn.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// The copy task, with the encoder-decoder.
    Copy(CopyTask),
    /// Next-token prediction on a token stream, windows of `context` tokens.
    Lm {
        /// Input tokens per sequence, at most the model's context_length.
        context: usize,
    },
}

/// One run's settings: model, task, optimiser, schedule, sizes and seed. Saved in checkpoints.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Which model, with its sizes.
    pub model: ModelConfig,
    /// What to learn (which also fixes the data).
    pub task: Task,
    /// Sequences per optimiser step.
    pub batch_size: usize,
    /// Optimiser steps in the whole run.
    pub steps: u64,
    /// AdamW's hyperparameters (chapter 9).
    pub adamw: AdamWConfig,
    /// Learning-rate warmup and cosine decay (chapter 10).
    pub schedule: CosineSchedule,
    /// Gradient clipping: the global L2 norm is scaled down to at most this (chapter 10);
    /// `None` (`null` in JSON) switches clipping off.
    pub max_grad_norm: Option<f32>,
    /// Seeds the weights (`seed`) and the data sampler (`seed + 1`).
    pub seed: u64,
}

/// The most steps a run may have (10^12, centuries of training here): step counters stay far
/// from overflow, whatever a file says.
pub const MAX_STEPS: u64 = 1_000_000_000_000;

impl TrainConfig {
    /// Every part valid, and the task fits the model.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.adamw.validate()?;
        self.schedule.validate()?;
        let bad = |m: String| Err(CourseError::Config(m));
        if self.batch_size == 0 || self.steps == 0 {
            return bad("batch_size and steps must be at least 1".into());
        }
        if self.steps > MAX_STEPS {
            return bad(format!(
                "steps must be at most {MAX_STEPS}; got {}",
                self.steps
            ));
        }
        if let Some(m) = self.max_grad_norm {
            if !(m > 0.0 && m.is_finite()) {
                return bad(format!(
                    "max_grad_norm must be positive and finite, or null for no clipping; got {m}"
                ));
            }
        }
        match (&self.task, &self.model) {
            (Task::Copy(t), ModelConfig::Seq2Seq(m)) => {
                if t.data_tokens == 0 || t.source_len == 0 {
                    return bad("the copy task needs data_tokens and source_len >= 1".into());
                }
                if m.vocab_size < t.vocab_size() || m.context_length < t.target_len() {
                    return bad(format!(
                        "the copy task needs vocab_size >= {} and context_length >= {}; the model has {} and {}",
                        t.vocab_size(), t.target_len(), m.vocab_size, m.context_length
                    ));
                }
            }
            (Task::Lm { context }, ModelConfig::Lm(m)) => {
                if *context == 0 || *context > m.context_length {
                    return bad(format!(
                        "context {context} must be in 1..={} (the model's context_length)",
                        m.context_length
                    ));
                }
            }
            _ => {
                return bad("task 'copy' needs model 'seq2seq', task 'lm' needs model 'lm'".into())
            }
        }
        Ok(())
    }

    /// Pretty-printed JSON, as stored in checkpoints; [`TrainConfig::from_json`] reads it back.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a config always serialises")
    }

    /// Parse and validate.
    pub fn from_json(text: &str) -> Result<Self> {
        let config: Self = serde_json::from_str(text)
            .map_err(|e| CourseError::Config(format!("cannot parse the config JSON: {e}")))?;
        config.validate()?;
        Ok(config)
    }
}
// ANCHOR_END: config

// ANCHOR: experiments
/// The copy task's run: a small encoder-decoder that learns to copy 32 tokens exactly on two
/// CPU cores in minutes (README: steps and time measured).
pub fn copy_task_config() -> TrainConfig {
    let task = CopyTask::standard();
    let steps = 600;
    TrainConfig {
        model: ModelConfig::Seq2Seq(Seq2SeqConfig {
            vocab_size: task.vocab_size(),
            context_length: task.target_len(),
            d_model: 64,
            n_heads: 4,
            n_encoder_layers: 2,
            n_decoder_layers: 2,
            d_ff: 128,
            rope_theta: ROPE_THETA,
            tie_embeddings: false,
            // Align target and source positions by relative offset (see the book page).
            cross_attention_rope: true,
            // Chapter 6's modern architecture: pre-norm, RMSNorm, RoPE, SwiGLU.
            norm_position: Default::default(),
            norm: Default::default(),
            positions: Default::default(),
            ffn: Default::default(),
        }),
        task: Task::Copy(task),
        batch_size: 32,
        steps,
        adamw: AdamWConfig {
            weight_decay: 0.01,
            ..AdamWConfig::default()
        },
        schedule: CosineSchedule {
            lr_max: 3e-3,
            lr_min: 3e-4,
            warmup: 50,
            cosine_end: steps,
        },
        max_grad_norm: Some(1.0),
        seed: 0,
    }
}

/// The byte-level LM on the book's pages: the reference model's width, 2 layers, context 64
/// (small enough to train in minutes on two cores).
pub fn book_lm_config() -> TrainConfig {
    let model = TransformerConfig {
        context_length: 64,
        n_layers: 2,
        ..TransformerConfig::reference()
    };
    let steps = 1000;
    TrainConfig {
        task: Task::Lm {
            context: model.context_length,
        },
        model: ModelConfig::Lm(model),
        batch_size: 16,
        steps,
        adamw: AdamWConfig {
            weight_decay: 0.1,
            ..AdamWConfig::default()
        },
        schedule: CosineSchedule {
            lr_max: 2e-3,
            lr_min: 2e-4,
            warmup: 100,
            cosine_end: steps,
        },
        max_grad_norm: Some(1.0),
        seed: 0,
    }
}

/// The book corpus as byte tokens, split 90 % / 10 % into training and validation streams.
pub fn book_data() -> TaskData {
    let tokens = ByteTokenizer::encode(&book_corpus());
    let split = tokens.len() * 9 / 10;
    TaskData::Tokens {
        train: Box::new(tokens[..split].to_vec()),
        val: Box::new(tokens[split..].to_vec()),
    }
}
// ANCHOR_END: experiments
