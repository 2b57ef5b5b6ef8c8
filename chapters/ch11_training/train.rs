//! The training loop's state: config, data, schedule, the compiled train step, evaluation.
//!
//! Book page: [Chapter 11](../book/ch11_training.html#the-loop).

use super::checkpoint::Checkpoint;
use super::data::{get_batch, CopyTask, TokenSource};
use super::generate::{Generator, Sampling};
use super::step::{LossGraph, ModelConfig, StepStats, TrainBatch, TrainStep};
use crate::backend::Device;
use crate::ch09_optimizers::AdamWConfig;
use crate::ch10_schedule::CosineSchedule;
use crate::graph::error::{CourseError, Result};
use crate::graph::init::{self, CourseRng};

// ANCHOR: config
/// What to learn.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// The copy task, with the encoder-decoder.
    Copy(CopyTask),
    /// Next-token prediction on a token stream, windows of `context` tokens.
    Lm { context: usize },
}

/// One run's settings: model, task, optimiser, schedule, sizes and seed. Saved in checkpoints.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelConfig,
    pub task: Task,
    pub batch_size: usize,
    pub steps: u64,
    pub adamw: AdamWConfig,
    pub schedule: CosineSchedule,
    pub max_grad_norm: f32,
    /// Seeds the weights (`seed`) and the data sampler (`seed + 1`).
    pub seed: u64,
}

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
        if !(self.max_grad_norm > 0.0 && self.max_grad_norm.is_finite()) {
            return bad(format!(
                "max_grad_norm must be > 0, got {}",
                self.max_grad_norm
            ));
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

/// The data a task trains and evaluates on.
pub enum TaskData {
    /// Fresh samples every batch (training) or from a fixed seed (evaluation).
    Copy,
    /// Token streams: training batches from `train`, evaluation batches from `val`.
    Tokens {
        train: Box<dyn TokenSource>,
        val: Box<dyn TokenSource>,
    },
}

// ANCHOR: trainer
/// A run in progress: the compiled train step, the data, the schedule and the step count.
pub struct Trainer {
    pub config: TrainConfig,
    pub step: TrainStep,
    pub data: TaskData,
    pub data_rng: CourseRng,
    pub steps_done: u64,
    eval: Option<LossGraph>,
    device: Device,
}

impl Trainer {
    /// A fresh run: weights from `config.seed`, data RNG from `seed + 1`.
    pub fn new(config: TrainConfig, data: TaskData, device: Device) -> Result<Self> {
        config.validate()?;
        let weights = config.model.init_weights(&mut init::rng(config.seed))?;
        let step = Self::compile(&config, &weights, device)?;
        let data_rng = init::rng(config.seed + 1);
        Self::check_data(&config, &data)?;
        Ok(Self {
            config,
            step,
            data,
            data_rng,
            steps_done: 0,
            eval: None,
            device,
        })
    }

    /// Continue a run from a checkpoint (weights, moments, step, data RNG).
    pub fn resume(ckpt: &Checkpoint, data: TaskData, device: Device) -> Result<Self> {
        ckpt.config.validate()?;
        Self::check_data(&ckpt.config, &data)?;
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

/// Seeds the held-out batches (a stream the training sampler never uses).
pub const EVAL_SEED: u64 = 0xE7A1;

// ANCHOR: exact_match
/// How well a model copies: over `n` fresh sources, the tokens it gets wrong decoding greedily
/// (as x-transformers' example counts them) and the fraction of sources copied exactly.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CopyScore {
    pub wrong_tokens: usize,
    pub exact: f32,
}

/// Greedy decoding of `source_len` tokens after START for `n` fresh sources.
pub fn copy_score(
    generator: &mut Generator,
    task: &CopyTask,
    n: usize,
    rng: &mut CourseRng,
) -> Result<CopyScore> {
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
