//! Mutation fuzzing of the checkpoint loader: byte flips, truncations, and forged headers
//! (dtypes, shapes, data offsets, config sizes) of a real checkpoint. Whatever the mutation, the
//! library must answer with a clear error or a working model, never panic, and never take long
//! (sizes are checked before anything is allocated). CI runs 48 cases; run more with
//! `PROPTEST_CASES=5000 cargo test --release --test checkpoint_fuzz -- --nocapture`.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use transformer_course::backend::Device;
use transformer_course::ch06_transformer::TransformerConfig;
use transformer_course::ch09_optimizers::AdamWConfig;
use transformer_course::ch10_schedule::CosineSchedule;
use transformer_course::ch11_training::*;

/// The device under test: `DEVICE` from the environment, `cpu` when unset (see
/// `scripts/gpu_check.sh`).
fn device() -> Device {
    Device::from_env().unwrap_or_else(|e| panic!("DEVICE: {e}"))
}

fn config() -> TrainConfig {
    TrainConfig {
        model: ModelConfig::Lm(TransformerConfig {
            vocab_size: 11,
            context_length: 8,
            d_model: 8,
            n_layers: 1,
            n_heads: 2,
            d_ff: 12,
            rope_theta: 10_000.0,
        }),
        task: Task::Lm { context: 6 },
        batch_size: 2,
        steps: 4,
        adamw: AdamWConfig::default(),
        schedule: CosineSchedule {
            lr_max: 1e-2,
            lr_min: 1e-3,
            warmup: 1,
            cosine_end: 4,
        },
        max_grad_norm: Some(1.0),
        seed: 0,
    }
}

fn data() -> TaskData {
    let tokens: Vec<u32> = (0..200).map(|i| i % 11).collect();
    TaskData::Tokens {
        train: Box::new(tokens.clone()),
        val: Box::new(tokens),
    }
}

/// The bytes of a checkpoint after 2 steps, made once.
fn good_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let mut t = Trainer::new(config(), data(), device()).unwrap();
        t.train_step().unwrap();
        t.train_step().unwrap();
        let path = scratch("good");
        t.checkpoint().unwrap().save(&path).unwrap();
        std::fs::read(path).unwrap()
    })
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("course-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!(
        "{name}-{:?}.safetensors",
        std::thread::current().id()
    ))
}

/// How to damage a checkpoint.
#[derive(Clone, Debug)]
enum Mutation {
    /// Set `count` bytes at positions drawn from `seed` to values drawn from it.
    Flip { seed: u64, count: usize },
    /// Keep only the first `fraction` of the file.
    Truncate { fraction: f64 },
    /// Rewrite one tensor's header entry (the n-th), or one number of the stored config.
    Forge {
        target: usize,
        field: Field,
        value: u64,
    },
}

#[derive(Clone, Copy, Debug)]
enum Field {
    Dtype,
    Shape,
    Offsets,
    ConfigNumber,
}

/// Numbers a forger would try: zero, small, large, at the limits of the types.
fn nasty() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(3),
        Just(1000),
        Just(1 << 20),
        Just(1 << 31),
        Just(1 << 62),
        Just(u64::MAX),
        any::<u64>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let field = prop_oneof![
        Just(Field::Dtype),
        Just(Field::Shape),
        Just(Field::Offsets),
        Just(Field::ConfigNumber),
    ];
    prop_oneof![
        (any::<u64>(), 1usize..16).prop_map(|(seed, count)| Mutation::Flip { seed, count }),
        (0.0f64..1.0).prop_map(|fraction| Mutation::Truncate { fraction }),
        (any::<usize>(), field, nasty()).prop_map(|(target, field, value)| Mutation::Forge {
            target,
            field,
            value
        }),
    ]
}

fn apply(bytes: &[u8], m: &Mutation) -> Vec<u8> {
    match *m {
        Mutation::Flip { seed, count } => {
            let mut out = bytes.to_vec();
            let mut x = seed | 1;
            for _ in 0..count {
                // xorshift: positions biased to the header half the time (where parsing lives)
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
                let span = if x % 2 == 0 { header } else { out.len() };
                out[(x >> 8) as usize % span] = (x >> 40) as u8;
            }
            out
        }
        Mutation::Truncate { fraction } => {
            bytes[..(bytes.len() as f64 * fraction) as usize].to_vec()
        }
        Mutation::Forge {
            target,
            field,
            value,
        } => forge(bytes, target, field, value),
    }
}

/// Parse the header, change one thing, write it back with its new length.
fn forge(bytes: &[u8], target: usize, field: Field, value: u64) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let map = header.as_object_mut().unwrap();
    let names: Vec<String> = map
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    let name = &names[target % names.len()];
    match field {
        Field::Dtype => {
            let dtypes = ["F16", "BF16", "F64", "I64", "BOOL", "U8", "F32", "Q4"];
            map[name]["dtype"] = dtypes[value as usize % dtypes.len()].into();
        }
        Field::Shape => {
            let dims = map[name]["shape"].as_array().unwrap().len().max(1);
            map[name]["shape"][(value as usize) % dims] = value.into();
        }
        Field::Offsets => map[name]["data_offsets"][(target / 7) % 2] = value.into(),
        Field::ConfigNumber => {
            let meta = map["__metadata__"].as_object_mut().unwrap();
            let mut config: serde_json::Value =
                serde_json::from_str(meta["config"].as_str().unwrap()).unwrap();
            let keys = [
                "vocab_size",
                "context_length",
                "d_model",
                "n_layers",
                "n_heads",
                "d_ff",
            ];
            let key = keys[target % keys.len()];
            let slot = match target % 3 {
                0 => &mut config["batch_size"],
                1 => &mut config["task"]["lm"]["context"],
                _ => &mut config["model"]["lm"][key],
            };
            *slot = value.into();
            meta.insert("config".into(), config.to_string().into());
        }
    }
    let mut text = serde_json::to_vec(&header).unwrap();
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(data);
    out
}

/// Load, then build the train step and sample from whatever loads. Any error is fine; a panic (the
/// proptest harness reports it as a failure) or a slow case is not.
fn exercise(bytes: &[u8]) -> Result<(), String> {
    let path = scratch("case");
    std::fs::write(&path, bytes).unwrap();
    let ckpt = Checkpoint::load(&path).map_err(|e| e.to_string())?;
    // Building the train step checks and loads every tensor; a step itself is not run: a
    // forged batch_size that fits in memory (a million rows of a tiny model) is a valid, if
    // slow, config, and its cost is the memory estimate's business, tested elsewhere.
    Trainer::resume(&ckpt, data(), device()).map_err(|e| e.to_string())?;
    let mut g = Generator::new(&ckpt.config.model, device()).map_err(|e| e.to_string())?;
    g.load(&ckpt.weights).map_err(|e| e.to_string())?;
    let out = g
        .generate(
            &[1, 2],
            3,
            None,
            &Sampling::greedy(),
            &mut transformer_course::graph::init::rng(0),
        )
        .map_err(|e| e.to_string())?;
    assert_eq!(out.len(), 3);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn damaged_checkpoints_give_errors_not_panics(m in mutation()) {
        let bytes = apply(good_bytes(), &m);
        let t = Instant::now();
        let result = exercise(&bytes);
        let took = t.elapsed();
        if let Err(e) = &result {
            prop_assert!(!e.is_empty());
        }
        prop_assert!(took < Duration::from_secs(20), "{m:?} took {took:?}");
        if std::env::var("FUZZ_LOG").is_ok() {
            eprintln!("{:>8.1} ms {:?} -> {}", took.as_secs_f64() * 1e3, m, match &result {
                Ok(()) => "loads and samples".to_string(),
                Err(e) => e.chars().take(90).collect(),
            });
        }
    }
}

#[test]
fn the_undamaged_checkpoint_loads_and_samples() {
    exercise(good_bytes()).unwrap();
}
