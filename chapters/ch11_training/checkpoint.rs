//! Checkpoints: everything a run needs to continue exactly where it stopped, in one
//! safetensors file written atomically.
//!
//! Book page: [Chapter 11](../../../book/ch11_checkpoints.html#checkpoints).

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
    /// Which data the run trains on ([`TaskData::fingerprint`]); a resume on other data is
    /// refused. `None`: not recorded (the copy task), or the check waived.
    ///
    /// [`TaskData::fingerprint`]: super::data::TaskData::fingerprint
    pub data: Option<String>,
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
            ("data".to_string(), self.data.clone().unwrap_or_default()),
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
        // Each number in its real type: "2^64" steps is an error, not a wrapped 0.
        let u64_field = |key: &str| -> Result<u64> {
            let text = field(key)?;
            text.parse().map_err(|_| {
                bad(format!(
                    "'{key}' is '{text}', not a whole number below 2^64"
                ))
            })
        };
        let config = TrainConfig::from_json(field("config")?)
            .map_err(|e| bad(format!("its config is invalid: {e}")))?;
        let seed_hex = field("data_rng.seed")?;
        let seed: [u8; 32] = (seed_hex.len() == 64 && seed_hex.is_ascii())
            .then(|| {
                (0..32)
                    .map(|i| u8::from_str_radix(&seed_hex[2 * i..2 * i + 2], 16).ok())
                    .collect::<Option<Vec<u8>>>()
            })
            .flatten()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad("'data_rng.seed' is not 64 hex digits (32 bytes)".into()))?;
        let mut data_rng = CourseRng::from_seed(seed);
        data_rng.set_stream(u64_field("data_rng.stream")?);
        let word_pos = field("data_rng.word_pos")?;
        data_rng.set_word_pos(
            word_pos
                .parse::<u128>()
                .map_err(|_| bad(format!("'data_rng.word_pos' is '{word_pos}', not a number")))?,
        );
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
        let steps_done = u64_field("steps_done")?;
        if steps_done > config.steps {
            return Err(bad(format!(
                "it says {steps_done} steps are done of a run of {}",
                config.steps
            )));
        }
        // The config's sizes against the tensors actually present, before anyone builds a
        // model from them: 100 000 layers in the header of a 39-tensor file is refused here.
        let expected = config.model.num_tensors();
        for (what, n) in [
            ("weights", weights.len()),
            ("AdamW m", adam_m.len()),
            ("AdamW v", adam_v.len()),
        ] {
            if n as u128 != expected {
                return Err(bad(format!(
                    "its config describes a model of {expected} tensors, but it holds {n} {what}"
                )));
            }
        }
        let data = meta.get("data").filter(|d| !d.is_empty()).cloned();
        Ok(Self {
            data,
            weights,
            adam_m,
            adam_v,
            steps_done,
            config,
            data_rng,
        })
    }
}
// ANCHOR_END: checkpoint
