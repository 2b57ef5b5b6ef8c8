//! The command line: `train`, `generate`, `bench`, `inspect` (and `tour`, `config`).
//! Infrastructure around chapter 11: argument parsing, progress, files. No lesson here.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};

use crate::run_dir;
use indicatif::{ProgressBar, ProgressStyle};

use transformer_course::backend::Device;
use transformer_course::ch11_training::*;
use transformer_course::graph::error::{CourseError, Result};
use transformer_course::graph::files::write_atomic;
use transformer_course::graph::init;
use transformer_course::plot;

/// Build and train a transformer, step by step, on luminal.
#[derive(Parser, Debug)]
#[command(name = "transformer-course", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model (default: the copy task), with checkpoints and a loss curve in --out.
    Train(TrainArgs),
    /// Sample from a checkpoint.
    Generate(GenerateArgs),
    /// Train-step tokens/s of the reference config (vocab 256, ctx 128, d_model 128, 4 layers,
    /// 4 heads, d_ff 384, batch 16).
    Bench(BenchArgs),
    /// Show what a checkpoint (or any .safetensors weights file) holds.
    Inspect {
        /// A course checkpoint or a PyTorch-style .safetensors file.
        checkpoint: PathBuf,
    },
    /// Turn a text file into a token file for `train --data`: one token per UTF-8 byte
    /// (vocabulary 256), little-endian u16.
    Tokenize {
        /// The text to read.
        text: PathBuf,
        /// The token file to write (atomically).
        out: PathBuf,
    },
    /// Print a task's default config as JSON (edit it and pass it to `train --config`).
    Config {
        #[arg(value_enum, default_value = "copy")]
        task: TaskName,
    },
    /// Run each chapter's demo and print what it computes.
    Tour,
    /// The learner track: write the chapters yourself in learn/, checked by the course's tests.
    Learn {
        #[command(subcommand)]
        action: crate::learn_cli::LearnAction,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum TaskName {
    /// The copy task (encoder-decoder).
    Copy,
    /// A byte-level LM on the book's pages (or --data).
    Lm,
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// What to learn (default: copy).
    #[arg(long, value_enum)]
    pub task: Option<TaskName>,
    /// A JSON config (see `config`); flags below override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue from this checkpoint (its config is used; --steps may extend the run).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Optimiser steps in the whole run. Only the run's length: the learning-rate schedule is
    /// --warmup and --cosine-end, so a run extended later with --resume --steps is the run that
    /// was planned that long from the start.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Learning-rate warmup steps (default: the config's; 0 starts at the peak).
    #[arg(long)]
    pub warmup: Option<u64>,
    /// The step where the cosine decay reaches lr_min (default: the config's); later steps run
    /// at lr_min. Usually equal to --steps.
    #[arg(long)]
    pub cosine_end: Option<u64>,
    /// Sequences per step.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate (after warmup).
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f32>,
    /// Seeds the weights (seed) and the batches (seed + 1).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Token ids for the LM task: a raw file of little-endian ids (width: --data-width; make
    /// one from text with `tokenize`), or a NumPy .npy 1-D array of uint16/uint32/int32/int64.
    /// The first 90 % trains, the last 10 % validates. Default: the book's pages as bytes.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Bytes per id in a raw --data file (a .npy header says its own).
    #[arg(long, value_enum, default_value = "u16")]
    pub data_width: Width,
    /// Where the checkpoint and the loss curve go (default: runs/<task>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Start a new run in --out even if it holds one (which is then replaced).
    #[arg(long)]
    pub force: bool,
    /// Stop after this step, saving a checkpoint, although the run (and its schedule) is
    /// planned for --steps: `--resume` then continues it exactly as if it had never stopped.
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// With --resume: continue on data other than the data the checkpoint records.
    #[arg(long, requires = "resume")]
    pub allow_other_data: bool,
    /// Evaluate (validation loss and a sample) every this many steps.
    #[arg(long, default_value_t = 250)]
    pub eval_every: u64,
    /// Save a checkpoint every this many steps (and at the end).
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: u64,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where the graphs run: cpu (default), cuda (a build with `--features cuda` and a GPU),
    /// cpu-stock or interpreter (slow references).
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: Device,
}

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum Width {
    /// Two bytes per id (vocabularies up to 65 536).
    #[default]
    U16,
    /// Four bytes per id.
    U32,
}

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// A course checkpoint (or use --weights with --config).
    #[arg(required_unless_present = "weights", conflicts_with_all = ["weights", "config"])]
    pub checkpoint: Option<PathBuf>,
    /// A decoder-only LM's weights under CS336's state-dict names, e.g. saved from PyTorch with
    /// safetensors' `save_file` (F32, F16, BF16 or F64; `_orig_mod.` prefixes are fine).
    #[arg(long, requires = "config")]
    pub weights: Option<PathBuf>,
    /// The model's sizes as JSON: vocab_size, context_length, d_model, n_layers (or
    /// num_layers), n_heads (or num_heads), d_ff, rope_theta.
    #[arg(long, requires = "weights")]
    pub config: Option<PathBuf>,
    /// LM: the text to continue (as bytes; for a byte-level vocabulary). Copy task: ignored
    /// (random sources are copied).
    #[arg(long, default_value = "The ")]
    pub prompt: String,
    /// LM: the prompt as token ids, e.g. `15,496,11` (for any tokenizer); the output is ids too.
    #[arg(long, value_delimiter = ',', conflicts_with = "prompt")]
    pub prompt_ids: Option<Vec<u32>>,
    /// Tokens to generate.
    #[arg(long, default_value_t = 200)]
    pub max_new: usize,
    /// Softmax temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Sample only among the k most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sample only among the most likely tokens whose probabilities sum to p.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Seeds the sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// LM: stop after this character (a single byte, e.g. a newline).
    #[arg(long)]
    pub stop: Option<char>,
    /// Where the graphs run: cpu (default), cuda (a build with `--features cuda` and a GPU),
    /// cpu-stock or interpreter (slow references).
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: Device,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    pub steps: u64,
    /// Use luminal's stock CPU ops instead of the fast backend (very slow).
    #[arg(long)]
    pub stock: bool,
    /// Also print the time per op kind over the timed steps (timing adds a little overhead).
    #[arg(long)]
    pub profile: bool,
    /// Instead of the train step, time greedy generation of up to this many tokens with and
    /// without the KV cache (the reference model, its context widened to fit).
    #[arg(long, conflicts_with_all = ["stock", "profile"])]
    pub generate: Option<usize>,
    /// Where the graphs run: cpu (default), cuda (a build with `--features cuda` and a GPU),
    /// cpu-stock or interpreter (slow references).
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: Device,
}

/// `--device NAME`, with the reason when it cannot be used here.
fn parse_device(name: &str) -> std::result::Result<Device, String> {
    name.parse::<Device>().map_err(|e| e.to_string())
}

/// Run the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        None => train(default_train_args()),
        Some(Command::Train(a)) => train(a),
        Some(Command::Generate(a)) => generate(a),
        Some(Command::Bench(a)) => bench(a),
        Some(Command::Inspect { checkpoint }) => inspect(&checkpoint),
        Some(Command::Tokenize { text, out }) => tokenize(&text, &out),
        Some(Command::Config { task }) => {
            println!("{}", default_config(task).to_json());
            Ok(())
        }
        Some(Command::Tour) => tour(),
        Some(Command::Learn { action }) => crate::learn_cli::run(action),
    }
}

/// `train` with every flag at its default: the job `cargo run --release` runs. (Parsed, so the
/// defaults are clap's, not `Default`'s zeros.)
pub fn default_train_args() -> TrainArgs {
    match Cli::parse_from(["transformer-course", "train"]).command {
        Some(Command::Train(a)) => a,
        _ => unreachable!("'train' parses as the train command"),
    }
}

fn default_config(task: TaskName) -> TrainConfig {
    match task {
        TaskName::Copy => copy_task_config(),
        TaskName::Lm => book_lm_config(),
    }
}

/// The data for `config`'s task: the copy task samples its own; the LM reads `--data` or the
/// book's pages (90 % training, 10 % validation).
fn task_data(config: &TrainConfig, data: Option<&Path>, width: Width) -> Result<TaskData> {
    match (&config.task, data) {
        (Task::Copy(_), _) => Ok(TaskData::Copy),
        (Task::Lm { .. }, None) => Ok(book_data()),
        (Task::Lm { .. }, Some(path)) => {
            let w = match width {
                Width::U16 => TokenWidth::U16,
                Width::U32 => TokenWidth::U32,
            };
            // Mapped, not read: batches page in only the windows they touch.
            let file = std::sync::Arc::new(TokenFile::open(path, w)?);
            let (n, split) = (file.len(), file.len() * 9 / 10);
            Ok(TaskData::Tokens {
                train: Box::new(TokenRange::new(file.clone(), 0, split)),
                val: Box::new(TokenRange::new(file, split, n)),
            })
        }
    }
}

fn read_config(path: &Path) -> Result<TrainConfig> {
    let text = std::fs::read_to_string(path).map_err(|source| CourseError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    TrainConfig::from_json(&text).map_err(|e| CourseError::File {
        path: path.to_path_buf(),
        problem: e.to_string(),
    })
}

/// `train`: build or resume the run, step with a progress line, evaluate, checkpoint.
pub fn train(a: TrainArgs) -> Result<()> {
    if a.eval_every == 0 || a.checkpoint_every == 0 {
        return Err(CourseError::Config(
            "--eval-every and --checkpoint-every must be at least 1".into(),
        ));
    }
    transformer_course::backend::fast_cpu::keep_freed_memory();
    if let Some(t) = a.threads {
        transformer_course::backend::fast_cpu::set_threads(t);
    }
    refuse_flags_that_do_not_apply(&a)?;
    let resumed = a.resume.as_deref().map(Checkpoint::load).transpose()?;
    let mut config = match (&resumed, &a.config) {
        (Some(c), _) => c.config.clone(),
        (None, Some(path)) => read_config(path)?,
        (None, None) => default_config(a.task.unwrap_or(TaskName::Copy)),
    };
    if let Some(s) = a.steps {
        config.steps = s;
    }
    if resumed.is_none() {
        if let Some(b) = a.batch_size {
            config.batch_size = b;
        }
        if let Some(lr) = a.lr {
            config.schedule.lr_max = lr;
            config.schedule.lr_min = config.schedule.lr_min.min(lr);
        }
        if let Some(s) = a.seed {
            config.seed = s;
        }
    }
    if resumed.is_none() {
        if let Some(w) = a.warmup {
            config.schedule.warmup = w;
        }
        if let Some(e) = a.cosine_end {
            config.schedule.cosine_end = e;
        }
    }
    // The schedule is never fitted to --steps behind the user's back (a run stopped at 20 and
    // extended to 40 must be the 40-step run); a mismatch is only pointed out.
    if config.steps != config.schedule.cosine_end {
        let end = config.schedule.cosine_end;
        let tail = if config.steps < end {
            format!(
                "the run stops at step {} before the decay ends (at lr {:.1e})",
                config.steps,
                config.schedule.lr(config.steps)
            )
        } else {
            format!(
                "steps {}..{} run at lr_min {:.1e}",
                end + 1,
                config.steps,
                config.schedule.lr_min
            )
        };
        let fix = if resumed.is_some() {
            "the schedule is the run's own, fixed when it started".to_string()
        } else {
            format!(
                "pass --cosine-end {} to decay over the whole run",
                config.steps
            )
        };
        eprintln!("note: the cosine ends at step {end}, so {tail}; {fix}.");
    }
    config.validate()?;
    let task_name = match config.task {
        Task::Copy(_) => "copy",
        Task::Lm { .. } => "lm",
    };
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| Path::new("runs").join(task_name));
    if matches!(config.task, Task::Copy(_)) && a.data.is_some() {
        return Err(CourseError::Config(
            "--data is for the LM task; the copy task makes its own data".into(),
        ));
    }
    let ckpt_path = out.join("checkpoint.safetensors");
    if let Some(c) = &resumed {
        if c.steps_done >= config.steps {
            eprintln!(
                "already at step {} of {}: nothing to do (pass a larger --steps to go on)",
                c.steps_done, config.steps
            );
            return Ok(());
        }
    }
    // Claim the folder before any work: a bad --out, or a run already there, is found now,
    // not at the first save 500 steps later.
    let run_dir = run_dir::RunDir::claim(&out)?;
    let resuming_here = a
        .resume
        .as_deref()
        .is_some_and(|r| same_file(r, &ckpt_path));
    if ckpt_path.exists() && !resuming_here && !a.force {
        return Err(CourseError::File {
            path: out.clone(),
            problem: format!(
                "already holds a run; continue it with --resume {}, replace it with --force, or \
                 choose another --out",
                ckpt_path.display()
            ),
        });
    }
    let data = task_data(&config, a.data.as_deref(), a.data_width)?;
    let prompt = eval_prompt(&data);
    let device = a.device;
    let started = Instant::now();
    let mut trainer = match &resumed {
        Some(c) => {
            let mut c = c.clone();
            c.config = config.clone();
            if a.allow_other_data {
                c.data = None;
            }
            Trainer::resume(&c, data, device)?
        }
        None => Trainer::new(config.clone(), data, device)?,
    };
    let mut generator = Generator::new(&config.model, device)?;
    eprintln!(
        "training {task_name}: {} of batch {}, lr warmup {} then cosine to step {}, {}, graphs \
         compiled in {:.1} s; output in {}",
        plural(config.steps, "step"),
        config.batch_size,
        config.schedule.warmup,
        config.schedule.cosine_end,
        plural(
            transformer_course::backend::fast_cpu::threads() as u64,
            "thread"
        ),
        started.elapsed().as_secs_f64(),
        out.display()
    );
    let tokens_per_step = match &config.task {
        Task::Copy(t) => config.batch_size * (t.source_len + t.target_len()),
        Task::Lm { context } => config.batch_size * context,
    } as f64;
    // The history of the run so far (a resumed run's curve starts at step 0, not at the resume).
    let (mut losses, mut evals): (run_dir::Curve, run_dir::Curve) = if resuming_here {
        run_dir.read_history(trainer.steps_done)?
    } else {
        Default::default()
    };
    run_dir::catch_interrupt();
    // On a terminal, a progress bar with the latest numbers; in a log, a line every 50 steps.
    let tty = std::io::stderr().is_terminal();
    let bar = if tty {
        ProgressBar::new(config.steps)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("[{bar:20}] {msg} [{elapsed_precise}, eta {eta_precise}]")
            .expect("a valid template")
            .progress_chars("#>."),
    );
    bar.set_position(trainer.steps_done);
    let say = |line: String| {
        if tty {
            bar.println(line);
        } else {
            eprintln!("{line}");
        }
    };
    let options = RunOptions {
        eval_every: a.eval_every,
        eval_batches: 4,
        checkpoint_every: a.checkpoint_every,
        checkpoint_path: Some(ckpt_path.clone()),
    };
    let (t0, first) = (Instant::now(), trainer.steps_done);
    let save_curves = |losses: &[(f32, f32)], evals: &[(f32, f32)]| -> Result<()> {
        run_dir.write_history(losses, evals)?;
        let svg = plot::line_chart_log_y(
            &format!("{task_name}: loss"),
            "step",
            "cross-entropy (log scale)",
            &[
                plot::Series::line("train (batch)", losses.to_vec()),
                plot::Series::dots("eval", evals.to_vec()),
            ],
        );
        write_atomic(&out.join("loss.svg"), svg.as_bytes())
    };
    let result = trainer.run(&options, |trainer, event| {
        match event {
            Event::Step { step, stats } => {
                losses.push((step as f32, stats.loss));
                if run_dir::interrupted() || a.stop_after == Some(step) {
                    trainer.checkpoint()?.save(&ckpt_path)?;
                    save_curves(&losses, &evals)?;
                    return Err(CourseError::Interrupted(step));
                }
                let rate = (step - first) as f64 * tokens_per_step / t0.elapsed().as_secs_f64();
                let line = format!(
                    "step {step:>6}/{} loss {:.4} lr {:.2e} |g| {:.3} {rate:>7.0} tok/s",
                    config.steps, stats.loss, stats.lr, stats.grad_norm
                );
                bar.set_position(step);
                if tty {
                    bar.set_message(line);
                } else if step % 50 == 0 || step == 1 {
                    eprintln!("{line}");
                }
            }
            Event::Eval { step, loss } => {
                evals.push((step as f32, loss));
                generator.load(&trainer.step.weights()?)?;
                let n = if step == config.steps { 256 } else { 64 };
                let sample = show_sample(&mut generator, &config, &prompt, n)?;
                say(format!("  step {step}: eval loss {loss:.4} | {sample}"));
            }
            Event::Saved { .. } => save_curves(&losses, &evals)?,
        }
        Ok(())
    });
    bar.finish_and_clear();
    if let (Err(CourseError::Interrupted(step)), Some(stop)) = (&result, a.stop_after) {
        if *step == stop && !run_dir::interrupted() {
            eprintln!(
                "stopped after step {step} of {} as asked; continue with --resume {}",
                config.steps,
                ckpt_path.display()
            );
            return Ok(());
        }
    }
    if let Err(e) = result {
        if let CourseError::Interrupted(step) = e {
            eprintln!(
                "interrupted at step {step}: checkpoint saved; continue with --resume {}",
                ckpt_path.display()
            );
        }
        if matches!(e, CourseError::NonFinite(_)) {
            eprintln!("stopping: {e}");
            if ckpt_path.exists() {
                eprintln!("the last good checkpoint is kept: {}", ckpt_path.display());
            }
        }
        return Err(e);
    }
    eprintln!(
        "done: {} in {:.1} s; checkpoint {}, loss curve {}",
        plural(trainer.steps_done - first, "step"),
        t0.elapsed().as_secs_f64(),
        ckpt_path.display(),
        out.join("loss.svg").display()
    );
    if let Task::Copy(task) = &config.task {
        show_copies(&mut generator, task, 3)?;
    }
    Ok(())
}

/// `1 step`, `2 steps`.
fn plural(n: u64, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// Flags that a resumed run or a config file already fixes: refused, never silently ignored.
fn refuse_flags_that_do_not_apply(a: &TrainArgs) -> Result<()> {
    let given = |flag: &str, set: bool| set.then(|| flag.to_string());
    let fixed_by = |source: &str, flags: Vec<Option<String>>| -> Result<()> {
        let flags: Vec<String> = flags.into_iter().flatten().collect();
        if flags.is_empty() {
            return Ok(());
        }
        Err(CourseError::Config(format!(
            "{} cannot be changed with {source} (the run's config fixes it); \
             edit a config file instead (see `config`)",
            flags.join(", ")
        )))
    };
    if a.resume.is_some() {
        fixed_by(
            "--resume",
            vec![
                given("--task", a.task.is_some()),
                given("--config", a.config.is_some()),
                given("--lr", a.lr.is_some()),
                given("--batch-size", a.batch_size.is_some()),
                given("--seed", a.seed.is_some()),
                given("--warmup", a.warmup.is_some()),
                given("--cosine-end", a.cosine_end.is_some()),
            ],
        )?;
    }
    if a.config.is_some() {
        fixed_by("--config", vec![given("--task", a.task.is_some())])?;
    }
    Ok(())
}

/// Whether two paths name the same existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The LM's sample prompt: the first 4 tokens of the validation data, so it is in the
/// vocabulary of any data set (a fixed text such as "The " is not, for a vocabulary under 105).
fn eval_prompt(data: &TaskData) -> Vec<u32> {
    match data {
        TaskData::Tokens { val, .. } => {
            let mut prompt = vec![0; val.len().min(4)];
            match val.read(0, &mut prompt) {
                Ok(()) => prompt,
                Err(_) => Vec::new(),
            }
        }
        TaskData::Copy => Vec::new(),
    }
}

/// A one-line sample: the copy task's exact-match score, or an LM continuation of `prompt`.
fn show_sample(
    g: &mut Generator,
    config: &TrainConfig,
    prompt: &[u32],
    n: usize,
) -> Result<String> {
    match &config.task {
        Task::Copy(task) => {
            let s = copy_score(g, task, n, &mut init::rng(EVAL_SEED + 1))?;
            Ok(format!(
                "copy: {} wrong tokens, {:.1} % of {n} fresh sources exact",
                s.wrong_tokens,
                100.0 * s.exact
            ))
        }
        Task::Lm { .. } => {
            let sampling = Sampling {
                temperature: 0.8,
                top_k: None,
                top_p: Some(0.95),
            };
            let out = g.generate(prompt, 60, None, &sampling, &mut init::rng(0))?;
            let all = [prompt, &out[..]].concat();
            // Byte-level data reads as text; other ids are shown as numbers.
            Ok(if config.model.vocab_size() <= 256 {
                format!("{:?}", ByteTokenizer::decode(&all))
            } else {
                format!("{:?}", &all[..all.len().min(16)])
            })
        }
    }
}

/// Print `n` fresh sources and the model's greedy copies.
fn show_copies(g: &mut Generator, task: &CopyTask, n: usize) -> Result<()> {
    let mut rng = init::rng(EVAL_SEED + 2);
    let batch = task.sample(n, &mut rng);
    let out = g.generate_seq2seq(
        &batch.src,
        n,
        CopyTask::START,
        task.source_len,
        &Sampling::greedy(),
        &mut rng,
    )?;
    let t = task.source_len;
    for r in 0..n {
        let (src, copy) = (&batch.src[r * t..(r + 1) * t], &out[r * t..(r + 1) * t]);
        let mark = if src == copy { "exact" } else { "WRONG" };
        println!(
            "source {}\ncopy   {}  {mark}",
            CopyTask::show(src),
            CopyTask::show(copy)
        );
    }
    Ok(())
}

/// `generate`: load a checkpoint and sample.
pub fn generate(a: GenerateArgs) -> Result<()> {
    let (model, weights, task) = match (&a.checkpoint, &a.weights, &a.config) {
        (Some(path), _, _) => {
            let ckpt = Checkpoint::load(path)?;
            (ckpt.config.model, ckpt.weights, ckpt.config.task)
        }
        (None, Some(weights), Some(config)) => {
            let text = std::fs::read_to_string(config).map_err(|source| CourseError::Io {
                path: config.clone(),
                source,
            })?;
            let c: transformer_course::ch06_transformer::TransformerConfig =
                serde_json::from_str(&text).map_err(|e| CourseError::File {
                    path: config.clone(),
                    problem: format!("not a model config ({e})"),
                })?;
            let context = c.context_length;
            let weights = transformer_course::graph::params::read_safetensors(weights)?;
            (ModelConfig::Lm(c), weights, Task::Lm { context })
        }
        _ => {
            return Err(CourseError::Config(
                "give a checkpoint, or --weights with --config".into(),
            ))
        }
    };
    let mut g = Generator::new(&model, a.device)?;
    g.load(&weights)?;
    let sampling = Sampling {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
    };
    sampling.validate()?;
    match &task {
        Task::Copy(task) => show_copies(&mut g, task, 3),
        Task::Lm { .. } if a.prompt_ids.is_some() => {
            let prompt = a.prompt_ids.clone().unwrap_or_default();
            let out = g.generate(&prompt, a.max_new, None, &sampling, &mut init::rng(a.seed))?;
            let ids: Vec<String> = [prompt, out].concat().iter().map(u32::to_string).collect();
            println!("{}", ids.join(","));
            Ok(())
        }
        Task::Lm { .. } => {
            let prompt = ByteTokenizer::encode(&a.prompt);
            let stop = match a.stop {
                Some(c) if c.is_ascii() => Some(c as u32),
                Some(c) => {
                    return Err(CourseError::Config(format!(
                        "--stop must be a one-byte (ASCII) character, got {c:?}"
                    )))
                }
                None => None,
            };
            let out = g.generate(&prompt, a.max_new, stop, &sampling, &mut init::rng(a.seed))?;
            println!("{}{}", a.prompt, ByteTokenizer::decode(&out));
            Ok(())
        }
    }
}

/// `bench`: train-step tokens/s of the reference config on random bytes.
pub fn bench(a: BenchArgs) -> Result<()> {
    transformer_course::backend::fast_cpu::keep_freed_memory();
    if let Some(t) = a.threads {
        transformer_course::backend::fast_cpu::set_threads(t);
    }
    if let Some(n) = a.generate {
        return bench_generation(n, a.device);
    }
    // The reference model and batch, whatever the book LM's own settings are.
    let model = transformer_course::ch06_transformer::TransformerConfig::reference();
    let config = TrainConfig {
        task: Task::Lm {
            context: model.context_length,
        },
        model: ModelConfig::Lm(model),
        batch_size: 16,
        ..book_lm_config()
    };
    let device = if a.stock { Device::CpuStock } else { a.device };
    let t = Instant::now();
    let mut trainer = Trainer::new(config.clone(), book_data(), device)?;
    let compile = t.elapsed().as_secs_f64();
    // Stock ops take minutes a step: say what is happening, on stderr (stdout is the table).
    let note = |what: String| {
        if a.stock {
            eprintln!("{what}");
        }
    };
    note(format!(
        "compiled in {compile:.1} s; warm-up step (stock ops: minutes)..."
    ));
    trainer.train_step()?; // warm-up: first-run allocations
    if a.profile {
        trainer.step.profile_ops();
        transformer_course::backend::fast_cpu::PROFILE
            .lock()
            .expect("profile lock")
            .clear();
    }
    let t = Instant::now();
    for i in 0..a.steps {
        note(format!("timed step {} of {}...", i + 1, a.steps));
        trainer.train_step()?;
    }
    let per_step = t.elapsed().as_secs_f64() / a.steps.max(1) as f64;
    let Task::Lm { context } = config.task else {
        unreachable!("the LM config")
    };
    let tokens = (config.batch_size * context) as f64;
    println!("| device | threads | batch x ctx | compile | train step | tokens/s |");
    println!("|--------|---------|-------------|---------|------------|----------|");
    println!(
        "| {} | {} | {} x {context} | {compile:.1} s | {:.1} ms | {:.0} |",
        device.name(),
        transformer_course::backend::fast_cpu::threads(),
        config.batch_size,
        per_step * 1e3,
        tokens / per_step
    );
    if a.profile {
        let table = transformer_course::backend::fast_cpu::PROFILE
            .lock()
            .expect("profile lock")
            .clone();
        let mut rows: Vec<_> = table.into_iter().collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1 .1));
        println!("\n| op kind | ops per step | ms per step |\n|---|---|---|");
        let steps = a.steps.max(1) as f64;
        for (kind, (calls, time)) in rows {
            let (per, ms) = (calls as f64 / steps, time.as_secs_f64() * 1e3 / steps);
            println!("| {kind} | {per:.0} | {ms:.1} |");
        }
    }
    std::io::stdout().flush().ok();
    Ok(())
}

/// `bench --generate N`: greedy generation of N/8, N/4, N/2 and N tokens from a 4-token prompt,
/// re-running the window for every token vs one cached step per token; the same tokens both
/// ways (checked). Random weights: speed does not depend on them.
fn bench_generation(n: usize, device: Device) -> Result<()> {
    if n < 8 {
        return Err(CourseError::Config(format!(
            "--generate must be at least 8 tokens, got {n}"
        )));
    }
    let prompt = [84u32, 104, 101, 32]; // "The "
    let config = transformer_course::ch06_transformer::TransformerConfig {
        context_length: prompt.len() + n,
        ..transformer_course::ch06_transformer::TransformerConfig::reference()
    };
    let model = ModelConfig::Lm(config.clone());
    let weights = model.init_weights(&mut init::rng(0))?;
    let mut plain = Generator::new(&model, device)?;
    plain.load(&weights)?;
    let mut cached = CachedGenerator::new(&config, device)?;
    cached.load(&weights)?;
    let greedy = Sampling::greedy();
    let threads = transformer_course::backend::fast_cpu::threads();
    println!(
        "reference LM (d_model {}, {} layers, context {}), {}, greedy from a 4-token prompt\n",
        config.d_model,
        config.n_layers,
        config.context_length,
        plural(threads as u64, "thread")
    );
    println!("| new tokens | without cache | with KV cache | speed-up | same tokens |");
    println!("|-----------:|--------------:|--------------:|---------:|:-----------:|");
    for len in [n / 8, n / 4, n / 2, n] {
        eprint!("generating {len} tokens...\r");
        let t = Instant::now();
        let a = plain.generate(&prompt, len, None, &greedy, &mut init::rng(0))?;
        let without = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let b = cached.generate(&prompt, len, None, &greedy, &mut init::rng(0))?;
        let with = t.elapsed().as_secs_f64();
        let rate = |s: f64| len as f64 / s;
        println!(
            "| {len} | {without:.2} s ({:.0} tok/s) | {with:.2} s ({:.0} tok/s) | {:.1}x | {} |",
            rate(without),
            rate(with),
            without / with,
            if a == b { "yes" } else { "NO" }
        );
    }
    std::io::stdout().flush().ok();
    Ok(())
}

/// `tokenize`: text -> byte-level token file (u16), the format `train --data` reads.
fn tokenize(text: &Path, out: &Path) -> Result<()> {
    let bytes = std::fs::read(text).map_err(|source| CourseError::Io {
        path: text.to_path_buf(),
        source,
    })?;
    let ids: Vec<u32> = bytes.iter().map(|&b| u32::from(b)).collect();
    TokenFile::write(out, &ids, TokenWidth::U16)?;
    let n = ids.len();
    println!(
        "wrote {n} token{} (vocabulary 256, u16) to {}",
        if n == 1 { "" } else { "s" },
        out.display()
    );
    Ok(())
}

/// `inspect`: config, step, tensors and sizes of a checkpoint.
pub fn inspect(path: &Path) -> Result<()> {
    use transformer_course::graph::params::{self, StateDict};
    let rms = |t: &transformer_course::graph::tensor::HostTensor| {
        (t.data.iter().map(|v| v * v).sum::<f32>() / t.data.len().max(1) as f32).sqrt()
    };
    let list = |d: &StateDict| {
        for (name, t) in d {
            println!(
                "  {name:<40} {:<14} rms {:.4}",
                format!("{:?}", t.shape),
                rms(t)
            );
        }
    };
    let count = |d: &StateDict| d.values().map(|t| t.data.len()).sum::<usize>();
    let file = params::read_safetensors_report(path)?;
    if !file.metadata.contains_key("format") {
        // A plain weights file, e.g. PyTorch's `save_file(model.state_dict(), ...)`.
        println!("weights file {} (not a course checkpoint)", path.display());
        let n = file.tensors.len();
        let tensors = if n == 1 { "tensor" } else { "tensors" };
        println!("{n} float {tensors}, {} values", count(&file.tensors));
        for (name, dtype) in &file.converted {
            println!(
                "  converted to f32: {name} ({dtype}; F16/BF16 exactly, F64 rounded to nearest)"
            );
        }
        for (name, dtype) in &file.skipped {
            println!("  skipped: {name} ({dtype}, not floating point)");
        }
        list(&file.tensors);
        return Ok(());
    }
    let c = Checkpoint::load(path)?;
    println!("checkpoint {}", path.display());
    println!("steps done: {}", c.steps_done);
    println!("config:\n{}", c.config.to_json());
    println!(
        "weights: {} tensors, {} parameters; AdamW moments: {} + {} tensors",
        c.weights.len(),
        count(&c.weights),
        c.adam_m.len(),
        c.adam_v.len()
    );
    list(&c.weights);
    Ok(())
}

/// Each chapter's demo, in order: (title, result).
fn chapter_demos() -> Vec<(&'static str, Result<String>)> {
    use transformer_course::*;
    vec![
        ("0. Graphs", ch00_graphs::graphs_demo()),
        ("1. Linear and embedding", ch01_linear::linear_demo()),
        ("2. RMSNorm and LayerNorm", ch02_rmsnorm::norm_demo()),
        ("3. Feed-forward (SwiGLU)", ch03_feed_forward::ffn_demo()),
        ("4. Rotary position embedding", ch04_rope::rope_demo()),
        ("5. Attention", ch05_attention::attention_demo()),
        ("6. The transformer", ch06_transformer::transformer_demo()),
        ("7. The loss", ch07_loss::loss_demo()),
        ("8. Autograd", ch08_autograd::autograd_demo()),
        ("9. Optimisers", ch09_optimizers::optimizer_demo()),
        ("10. Schedule and clipping", ch10_schedule::schedule_demo()),
        ("11. Training", ch11_training::training_demo()),
    ]
}

fn tour() -> Result<()> {
    println!("transformer-course: a tour of the chapters\n");
    let mut failed = None;
    for (title, result) in chapter_demos() {
        println!("== {title}");
        match result {
            Ok(text) => println!("{text}\n"),
            Err(e) => {
                println!("error: {e}\n");
                failed = Some(e);
            }
        }
    }
    failed.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The no-argument job uses clap's defaults (an all-zero `Default` once divided by zero).
    #[test]
    fn the_default_job_trains_the_copy_task_with_the_documented_flags() {
        let a = default_train_args();
        assert_eq!((a.eval_every, a.checkpoint_every), (250, 500));
        assert!(a.task.is_none() && a.config.is_none() && a.resume.is_none());
        assert!(matches!(default_config(TaskName::Copy).task, Task::Copy(_)));
        let err = train(TrainArgs {
            eval_every: 0,
            ..default_train_args()
        })
        .unwrap_err();
        assert!(err.to_string().contains("--eval-every"), "{err}");
    }

    /// `--device` takes the names `Device::name` prints; one this build cannot use is refused
    /// with the reason, before anything runs.
    #[test]
    fn devices_are_parsed_by_name_and_unusable_ones_refused() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|c| c.command);
        let Ok(Some(Command::Bench(b))) = parse(&["t", "bench", "--device", "interpreter"]) else {
            panic!("--device interpreter should parse");
        };
        assert_eq!(b.device, Device::Interpreter);
        let Ok(Some(Command::Train(t))) = parse(&["t", "train"]) else {
            panic!("train should parse");
        };
        assert_eq!(t.device, Device::Cpu, "the CPU is the default");
        let err = parse(&["t", "generate", "x", "--device", "gpu"]).unwrap_err();
        assert!(err.to_string().contains("unknown device 'gpu'"), "{err}");
        #[cfg(not(feature = "cuda"))]
        {
            let err = parse(&["t", "train", "--device", "cuda"]).unwrap_err();
            assert!(
                err.to_string().contains("without the `cuda` feature"),
                "{err}"
            );
        }
    }
}
