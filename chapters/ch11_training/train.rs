//! The training loop's state: config, data, schedule, the compiled train step, evaluation.
//!
//! Book page: [Chapter 11](../../../book/ch11_training.html#the-loop).

use super::checkpoint::Checkpoint;
use super::config::{Task, TrainConfig};
use super::data::{find_out_of_vocabulary, get_batch, CopyTask, TaskData};
use super::generate::{Generator, Sampling};
use super::step::{LossGraph, StepStats, TrainBatch, TrainStep};
use crate::backend::Device;
use crate::graph::error::{CourseError, Result};
use crate::graph::init::{self, CourseRng};

// ANCHOR: trainer
/// A run in progress: the compiled train step, the data, the schedule and the step count.
pub struct Trainer {
    /// The run's settings.
    pub config: TrainConfig,
    /// The compiled train step, holding the weights and AdamW's state.
    pub step: TrainStep,
    /// Where training (and evaluation) batches come from.
    pub data: TaskData,
    /// Draws the training batches; saved in checkpoints so a resume draws the same ones.
    pub data_rng: CourseRng,
    /// Optimiser steps taken so far.
    pub steps_done: u64,
    /// What the data is ([`TaskData::fingerprint`]), stored in checkpoints.
    pub data_fingerprint: Option<String>,
    eval: Option<LossGraph>,
    device: Device,
}

impl Trainer {
    /// A fresh run: weights from `config.seed`, data RNG from `seed + 1`.
    pub fn new(config: TrainConfig, data: TaskData, device: Device) -> Result<Self> {
        config.validate()?;
        config.check_memory()?; // before anything is allocated
        let weights = config.model.init_weights(&mut init::rng(config.seed))?;
        let step = Self::compile(&config, &weights, device)?;
        let data_rng = init::rng(config.seed.wrapping_add(1)); // u64::MAX + 1 -> 0, no panic
        Self::check_data(&config, &data)?;
        Ok(Self {
            config,
            step,
            data_fingerprint: data.fingerprint()?,
            data,
            data_rng,
            steps_done: 0,
            eval: None,
            device,
        })
    }

    /// Continue a run from a checkpoint (weights, moments, step, data RNG). The data must be
    /// the data the checkpoint records (set `ckpt.data = None` to waive the check).
    pub fn resume(ckpt: &Checkpoint, data: TaskData, device: Device) -> Result<Self> {
        ckpt.config.validate()?;
        ckpt.config.check_memory()?;
        Self::check_data(&ckpt.config, &data)?;
        let data_fingerprint = data.fingerprint()?;
        if let Some(recorded) = &ckpt.data {
            if data_fingerprint.as_ref() != Some(recorded) {
                return Err(CourseError::Config(format!(
                    "the checkpoint was trained on data of {recorded}, but this data is {}; \
                     resuming on other data would not continue the same run (the command \
                     line's --allow-other-data waives this check)",
                    data_fingerprint.as_deref().unwrap_or("the copy task's")
                )));
            }
        }
        let mut step = Self::compile(&ckpt.config, &ckpt.weights, device)?;
        step.restore(
            &ckpt.weights,
            &ckpt.adam_m,
            &ckpt.adam_v,
            ckpt.steps_done + 1,
        )?;
        Ok(Self {
            config: ckpt.config.clone(),
            step,
            data,
            data_rng: ckpt.data_rng.clone(),
            steps_done: ckpt.steps_done,
            data_fingerprint,
            eval: None,
            device,
        })
    }

    fn compile(
        config: &TrainConfig,
        weights: &crate::graph::params::StateDict,
        device: Device,
    ) -> Result<TrainStep> {
        TrainStep::new(
            &config.model,
            weights,
            config.adamw,
            config.max_grad_norm,
            device,
        )
    }

    fn check_data(config: &TrainConfig, data: &TaskData) -> Result<()> {
        match (&config.task, data) {
            (Task::Copy(_), TaskData::Copy) => Ok(()),
            (Task::Lm { context }, TaskData::Tokens { train, val }) => {
                for (what, d) in [("training", train), ("validation", val)] {
                    if d.len() < context + 1 {
                        return Err(CourseError::OutOfRange {
                            what: format!("the {what} data ({} tokens)", d.len()),
                            problem: format!(
                                "a context of {context} needs at least {} tokens",
                                context + 1
                            ),
                        });
                    }
                    // The whole file, now: not at step 21 050 when a batch first touches it.
                    let vocab = config.model.vocab_size();
                    if let Some((id, at)) = find_out_of_vocabulary(d.as_ref(), vocab)? {
                        return Err(CourseError::OutOfRange {
                            what: format!("token id {id} at {at} ({what} data)"),
                            problem: format!("the model's vocabulary has {vocab} tokens"),
                        });
                    }
                }
                Ok(())
            }
            _ => Err(CourseError::Config(
                "the data does not match the task".into(),
            )),
        }
    }

    /// The next training batch (advances the data RNG).
    pub fn next_batch(&mut self) -> Result<TrainBatch> {
        draw(&self.config, &self.data, Split::Train, &mut self.data_rng)
    }

    /// The learning rate of the next step: the schedule at step `steps_done + 1` (at step 0
    /// warmup gives 0, a step that would move nothing).
    pub fn lr(&self) -> f32 {
        self.config.schedule.lr(self.steps_done + 1)
    }

    /// One optimiser step on the next batch, at the schedule's learning rate.
    pub fn train_step(&mut self) -> Result<StepStats> {
        let batch = self.next_batch()?;
        let stats = self.step.step(&batch, self.lr())?;
        self.steps_done += 1;
        Ok(stats)
    }
    // ANCHOR_END: trainer

    /// The state to save.
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        let (adam_m, adam_v) = self.step.moments()?;
        Ok(Checkpoint {
            data: self.data_fingerprint.clone(),
            weights: self.step.weights()?,
            adam_m,
            adam_v,
            steps_done: self.steps_done,
            config: self.config.clone(),
            data_rng: self.data_rng.clone(),
        })
    }

    /// Mean loss over `batches` held-out batches, always the same ones (seeded), so that
    /// evaluations at different steps are comparable.
    pub fn eval_loss(&mut self, batches: usize) -> Result<f32> {
        if self.eval.is_none() {
            self.eval = Some(LossGraph::new(&self.config.model, self.device)?);
        }
        let weights = self.step.weights()?;
        let eval = self.eval.as_mut().expect("just made");
        eval.load(&weights)?;
        let mut rng = init::rng(EVAL_SEED);
        let mut total = 0.0;
        for _ in 0..batches {
            let batch = draw(&self.config, &self.data, Split::Val, &mut rng)?;
            total += eval.loss(&batch)?;
        }
        Ok(total / batches.max(1) as f32)
    }
}

// ANCHOR: run
/// When [`Trainer::run`] evaluates and saves.
#[derive(Clone, Debug, PartialEq)]
pub struct RunOptions {
    /// Evaluate every this many steps, and after the last step.
    pub eval_every: u64,
    /// Held-out batches averaged per evaluation.
    pub eval_batches: usize,
    /// Save a checkpoint every this many steps, and after the last step.
    pub checkpoint_every: u64,
    /// Where checkpoints go (`None`: never saved).
    pub checkpoint_path: Option<std::path::PathBuf>,
}

/// What happened in a run, as [`Trainer::run`] reports it, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Step `step` (counted from 1) was taken.
    Step {
        /// Steps taken, this one included.
        step: u64,
        /// Its loss, gradient norm and learning rate.
        stats: StepStats,
    },
    /// The held-out loss after `step` steps.
    Eval {
        /// Steps taken before the evaluation.
        step: u64,
        /// Mean token cross-entropy over the held-out batches.
        loss: f32,
    },
    /// The checkpoint after `step` steps was written to `path`.
    Saved {
        /// Steps taken when it was written.
        step: u64,
        /// The checkpoint file.
        path: std::path::PathBuf,
    },
}

impl Trainer {
    /// Train until `config.steps`: after each step, evaluate and save when due, and tell
    /// `on_event` about each of these. The callback gets the trainer too (to read its weights,
    /// say), and stops the run early by returning an error, which `run` returns.
    ///
    /// A non-finite loss, gradient norm or weight stops the run with
    /// [`CourseError::NonFinite`] before anything of that step is saved: the last checkpoint
    /// written stays the last good one.
    pub fn run(
        &mut self,
        options: &RunOptions,
        mut on_event: impl FnMut(&mut Trainer, Event) -> Result<()>,
    ) -> Result<()> {
        if options.eval_every == 0 || options.checkpoint_every == 0 {
            return Err(CourseError::Config(
                "eval_every and checkpoint_every must be at least 1".into(),
            ));
        }
        while self.steps_done < self.config.steps {
            let stats = self.train_step()?;
            let step = self.steps_done;
            on_event(self, Event::Step { step, stats })?;
            let last = step == self.config.steps;
            if step % options.eval_every == 0 || last {
                let loss = self.eval_loss(options.eval_batches)?;
                on_event(self, Event::Eval { step, loss })?;
            }
            if let Some(path) = &options.checkpoint_path {
                if step % options.checkpoint_every == 0 || last {
                    self.checkpoint()?.save(path)?;
                    let path = path.clone();
                    on_event(self, Event::Saved { step, path })?;
                }
            }
        }
        Ok(())
    }
}
// ANCHOR_END: run

/// Seeds the held-out batches (a stream the training sampler never uses).
pub const EVAL_SEED: u64 = 0xE7A1;

// ANCHOR: exact_match
/// How well a model copies: over `n` fresh sources, the tokens it gets wrong decoding greedily
/// (as x-transformers' example counts them) and the fraction of sources copied exactly.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CopyScore {
    /// Generated tokens that differ from the source, over all `n` sources.
    pub wrong_tokens: usize,
    /// Fraction of sources copied without a single wrong token, in [0, 1].
    pub exact: f32,
}

/// Greedy decoding of `source_len` tokens after START for `n` fresh sources.
pub fn copy_score(
    generator: &mut Generator,
    task: &CopyTask,
    n: usize,
    rng: &mut CourseRng,
) -> Result<CopyScore> {
    // ANCHOR: learn_copy_score ch11: n fresh task samples, greedy generate_seq2seq of source_len tokens after START; wrong_tokens = positions differing from src, exact = fraction of rows with none wrong
    let batch = task.sample(n, rng);
    let out = generator.generate_seq2seq(
        &batch.src,
        n,
        CopyTask::START,
        task.source_len,
        &Sampling::greedy(),
        rng,
    )?;
    let t = task.source_len;
    let wrong_per_row: Vec<usize> = (0..n)
        .map(|r| {
            (0..t)
                .filter(|&i| out[r * t + i] != batch.src[r * t + i])
                .count()
        })
        .collect();
    Ok(CopyScore {
        wrong_tokens: wrong_per_row.iter().sum(),
        exact: wrong_per_row.iter().filter(|&&w| w == 0).count() as f32 / n.max(1) as f32,
    })
    // ANCHOR_END: learn_copy_score
}
// ANCHOR_END: exact_match

/// Which token stream a batch comes from.
#[derive(Clone, Copy)]
enum Split {
    Train,
    Val,
}

/// One batch of the configured task: fresh copy-task pairs, or LM windows of the split.
fn draw(
    config: &TrainConfig,
    data: &TaskData,
    split: Split,
    rng: &mut CourseRng,
) -> Result<TrainBatch> {
    let b = config.batch_size;
    Ok(match (&config.task, data) {
        (Task::Copy(t), _) => TrainBatch::Seq2Seq(t.sample(b, rng)),
        (Task::Lm { context }, TaskData::Tokens { train, val }) => {
            let tokens = match split {
                Split::Train => train,
                Split::Val => val,
            };
            TrainBatch::Lm(get_batch(tokens.as_ref(), b, *context, rng)?)
        }
        _ => unreachable!("checked when the trainer was made"),
    })
}
