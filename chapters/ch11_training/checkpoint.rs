//! Checkpoints: everything a run needs to continue exactly where it stopped, in one
//! safetensors file written atomically.
//!
//! Book page: [Chapter 11](../../../book/ch11_training.html#checkpoints).

use std::collections::HashMap;
use std::path::Path;

use rand::SeedableRng;

use super::config::TrainConfig;
use crate::graph::error::{CourseError, Result};
use crate::graph::init::CourseRng;
use crate::graph::params::{self, StateDict};

/// Marks a file as this course's checkpoint (and its layout version).
pub const FORMAT: &str = "transformer-course-checkpoint/2";
const M_PREFIX: &str = "optimizer.adam_m.";
const V_PREFIX: &str = "optimizer.adam_v.";

// ANCHOR: checkpoint
/// A training run's state: weights, AdamW moments, steps done, the config and the data RNG.
/// Resuming from it continues bit-identically.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// Model weights by state-dict name.
    pub weights: StateDict,
    /// AdamW's first moments, keyed like `weights`.
    pub adam_m: StateDict,
    /// AdamW's second moments, keyed like `weights`.
    pub adam_v: StateDict,
    /// Optimiser steps completed (the next step is `steps_done + 1` in AdamW's count).
    pub steps_done: u64,
    /// The run's settings, so a resume needs nothing else.
    pub config: TrainConfig,
    /// The data sampler's RNG, mid-stream.
    pub data_rng: CourseRng,
}

impl Checkpoint {
    /// Write to `path` atomically (temporary file, fsync, rename): a crash leaves the previous
    /// checkpoint intact. Weights keep their own names; moments are prefixed `optimizer.`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = self.weights.clone();
        for (prefix, dict) in [(M_PREFIX, &self.adam_m), (V_PREFIX, &self.adam_v)] {
            tensors.extend(
                dict.iter()
                    .map(|(k, t)| (format!("{prefix}{k}"), t.clone())),
            );
        }
        let rng = &self.data_rng;
        let seed: String = rng.get_seed().iter().map(|b| format!("{b:02x}")).collect();
        let meta = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("steps_done".to_string(), self.steps_done.to_string()),
            ("config".to_string(), self.config.to_json()),
            ("data_rng.seed".to_string(), seed),
            ("data_rng.stream".to_string(), rng.get_stream().to_string()),
            (
                "data_rng.word_pos".to_string(),
                rng.get_word_pos().to_string(),
            ),
        ]);
        params::write_safetensors(path, &tensors, Some(meta))
    }

    /// Read a checkpoint, naming the file and what is wrong with it if anything is.
    pub fn load(path: &Path) -> Result<Self> {
        let (tensors, meta) = params::read_safetensors_with_metadata(path)?;
        let bad = |problem: String| CourseError::File {
            path: path.to_path_buf(),
            problem,
        };
        let field = |key: &str| {
            meta.get(key)
                .ok_or_else(|| bad(format!("not a course checkpoint: no '{key}' in the header")))
        };
        if field("format")? != FORMAT {
            return Err(bad(format!(
                "checkpoint format '{}', this version reads '{FORMAT}'",
                field("format")?
            )));
        }
        let number = |key: &str| -> Result<u128> {
            field(key)?
                .parse()
                .map_err(|_| bad(format!("'{key}' is not a number")))
        };
        let config = TrainConfig::from_json(field("config")?)
            .map_err(|e| bad(format!("its config is invalid: {e}")))?;
        let seed_hex = field("data_rng.seed")?;
        let seed: Vec<u8> = (0..seed_hex.len() / 2)
            .filter_map(|i| u8::from_str_radix(seed_hex.get(2 * i..2 * i + 2)?, 16).ok())
            .collect();
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| bad("'data_rng.seed' is not 32 hex bytes".into()))?;
        let mut data_rng = CourseRng::from_seed(seed);
        data_rng.set_stream(number("data_rng.stream")? as u64);
        data_rng.set_word_pos(number("data_rng.word_pos")?);
        let (mut weights, mut adam_m, mut adam_v) = Default::default();
        for (name, t) in tensors {
            if let Some(n) = name.strip_prefix(M_PREFIX) {
                StateDict::insert(&mut adam_m, n.to_string(), t);
            } else if let Some(n) = name.strip_prefix(V_PREFIX) {
                StateDict::insert(&mut adam_v, n.to_string(), t);
            } else {
                StateDict::insert(&mut weights, name, t);
            }
        }
        Ok(Self {
            weights,
            adam_m,
            adam_v,
            steps_done: number("steps_done")? as u64,
            config,
            data_rng,
        })
    }
}
// ANCHOR_END: checkpoint
