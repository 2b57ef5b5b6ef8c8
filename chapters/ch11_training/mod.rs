//! # Chapter 11 — Training: data, the train step, checkpoints, generation, experiments
//!
//! Everything so far comes together. A batch is sampled from the data; ONE compiled graph runs
//! the forward pass, the loss, the backward pass, gradient clipping and AdamW, with the
//! schedule's learning rate fed in; checkpoints save the whole state so a run can resume
//! bit-identically; generation samples from the trained model. Two experiments: the copy task
//! (encoder-decoder) and a byte-level LM trained on this book's own pages.
//!
//! Book page: [Chapter 11](../book/ch11_training.html).

pub mod checkpoint;
pub mod data;
pub mod generate;
pub mod step;
pub mod train;

pub use checkpoint::Checkpoint;
pub use data::{
    book_corpus, get_batch, ByteTokenizer, CopyTask, LmBatch, Seq2SeqBatch, TokenFile, TokenRange,
    TokenSource, TokenWidth,
};
pub use generate::{Generator, Sampling};
pub use step::{LossGraph, Model, ModelConfig, StepStats, TrainBatch, TrainStep};
pub use train::{copy_score, CopyScore, Task, TaskData, TrainConfig, Trainer, EVAL_SEED};

use crate::ch04_rope::ROPE_THETA;
use crate::ch06_transformer::{Seq2SeqConfig, TransformerConfig};
use crate::ch09_optimizers::AdamWConfig;
use crate::ch10_schedule::CosineSchedule;

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
        max_grad_norm: 1.0,
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
        max_grad_norm: 1.0,
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

#[cfg(test)]
mod tests;
