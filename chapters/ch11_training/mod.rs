//! # Chapter 11 — Training: data, the train step, checkpoints, generation, experiments
//!
//! Everything so far comes together. A batch is sampled from the data; ONE compiled graph runs
//! the forward pass, the loss, the backward pass, gradient clipping and AdamW, with the
//! schedule's learning rate fed in; checkpoints save the whole state so a run can resume
//! bit-identically; generation samples from the trained model. Two experiments: the copy task
//! (encoder-decoder) and a byte-level LM trained on this book's own pages.
//!
//! Book page: [Chapter 11](../../book/ch11_training.html).

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod generate;
pub mod kv_cache;
pub mod limits;
pub mod step;
pub mod train;

pub use checkpoint::Checkpoint;
pub use config::{book_data, book_lm_config, copy_task_config, ModelConfig, Task, TrainConfig};
pub use data::{
    book_corpus, find_out_of_vocabulary, get_batch, ByteTokenizer, CopyTask, LmBatch, Seq2SeqBatch,
    TaskData, TokenFile, TokenRange, TokenSource, TokenWidth,
};
pub use generate::{Generator, Sampling};
pub use kv_cache::{CachedGenerator, CachedSeq2Seq};
pub use step::{GradientGraph, LossGraph, Model, StepStats, TrainBatch, TrainStep};
pub use train::{copy_score, CopyScore, Event, RunOptions, Trainer, EVAL_SEED};

/// A one-paragraph tour of this chapter, printed by `cargo run --release -- tour`: a tiny
/// byte-level LM learns a repeating text in 60 steps.
pub fn training_demo() -> crate::graph::error::Result<String> {
    use crate::ch06_transformer::TransformerConfig;
    let model = TransformerConfig {
        vocab_size: 256,
        context_length: 16,
        d_model: 32,
        n_layers: 1,
        n_heads: 2,
        d_ff: 64,
        rope_theta: crate::ch04_rope::ROPE_THETA,
    };
    let steps = 60;
    let config = TrainConfig {
        model: ModelConfig::Lm(model),
        task: Task::Lm { context: 16 },
        batch_size: 8,
        steps,
        adamw: crate::ch09_optimizers::AdamWConfig::default(),
        schedule: crate::ch10_schedule::CosineSchedule {
            lr_max: 1e-2,
            lr_min: 1e-3,
            warmup: 5,
            cosine_end: steps,
        },
        max_grad_norm: Some(1.0),
        seed: 0,
    };
    let text = ByteTokenizer::encode(&"the cat sat on the mat. ".repeat(40));
    let data = TaskData::Tokens {
        train: Box::new(text.clone()),
        val: Box::new(text),
    };
    let mut trainer = Trainer::new(config, data, crate::backend::Device::Cpu)?;
    let options = RunOptions {
        eval_every: 20,
        eval_batches: 2,
        checkpoint_every: steps,
        checkpoint_path: None,
    };
    let mut evals = vec![];
    trainer.run(&options, |_, event| {
        if let Event::Eval { step, loss } = event {
            evals.push(format!("{step}: {loss:.3}"));
        }
        Ok(())
    })?;
    Ok(format!(
        "a 1-layer byte LM on \"the cat sat on the mat. \" repeated: held-out loss at step {} \
         (ln 256 = {:.3} at random)",
        evals.join(", "),
        256f32.ln()
    ))
}

#[cfg(test)]
mod tests;
