//! The command line, end to end: train, resume, inspect, generate, and each bad input giving a
//! clear error without losing what was saved.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use transformer_course::ch11_training::{Checkpoint, TrainConfig};

fn course(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_transformer-course"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("course-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn train_resume_inspect_generate() {
    let dir = temp_dir("train");
    let out = dir.join("copy");
    let o = course(&[
        "train",
        "--task",
        "copy",
        "--steps",
        "3",
        "--eval-every",
        "2",
        "--out",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let ckpt = out.join("checkpoint.safetensors");
    assert!(ckpt.exists() && out.join("loss.svg").exists());
    assert!(text(&o).contains("eval loss"), "{}", text(&o));
    assert_eq!(Checkpoint::load(&ckpt).unwrap().steps_done, 3);

    let o = course(&[
        "train",
        "--resume",
        s(&ckpt),
        "--steps",
        "5",
        "--out",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = course(&["inspect", s(&ckpt)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("steps done: 5"), "{}", text(&o));
    assert!(text(&o).contains("decoder.layers.1.cross_attn.q_proj.weight"));

    let o = course(&["generate", s(&ckpt)]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(text(&o).matches("source ").count(), 3, "{}", text(&o));
}

/// A run folder holds one run: a second run into it is refused (the first kept), a live
/// process's lock is respected and a dead one's taken over, temporaries of crashed saves are
/// removed, flags a resumed run cannot honour are refused, resuming a finished run writes
/// nothing, and the loss history spans the resume.
#[test]
fn run_folders_are_never_overwritten_or_shared() {
    let dir = temp_dir("rundir");
    let out = dir.join("copy");
    let ckpt = out.join("checkpoint.safetensors");
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--task",
            "copy",
            "--eval-every",
            "1",
            "--out",
            s(&out),
        ];
        args.extend(extra);
        course(&args)
    };
    let o = train(&["--steps", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    let first = std::fs::read(&ckpt).unwrap();

    let o = train(&["--steps", "2"]);
    assert!(
        !o.status.success() && text(&o).contains("already holds a run"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read(&ckpt).unwrap(), first);

    // Our own pid is a live process that is not the child: its lock stands.
    std::fs::write(out.join(".lock"), std::process::id().to_string()).unwrap();
    let resume = |extra: &[&str]| {
        let mut args = vec!["train", "--resume", s(&ckpt), "--out", s(&out)];
        args.extend(extra);
        course(&args)
    };
    let o = resume(&["--steps", "3"]);
    let holder = format!("another run (pid {})", std::process::id());
    assert!(
        !o.status.success() && text(&o).contains(&holder),
        "{}",
        text(&o)
    );
    // A pid above the kernel's limit (2^22) cannot be running: that lock is stale.
    std::fs::write(out.join(".lock"), "4194305").unwrap();
    std::fs::write(
        out.join(".checkpoint.safetensors.tmp12345"),
        vec![0u8; 1000],
    )
    .unwrap();

    let o = resume(&["--lr", "0.1"]);
    assert!(!o.status.success() && text(&o).contains("--lr cannot be changed with --resume"));
    // The schedule is part of the run's plan: changing it on resume would fork the run.
    let o = resume(&["--warmup", "0", "--cosine-end", "9"]);
    assert!(
        !o.status.success()
            && text(&o).contains("--warmup, --cosine-end cannot be changed with --resume"),
        "{}",
        text(&o)
    );
    let o = resume(&["--steps", "2"]);
    assert!(
        o.status.success() && text(&o).contains("already at step 2 of 2"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read(&ckpt).unwrap(), first);

    let o = resume(&["--steps", "4"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!out.join(".checkpoint.safetensors.tmp12345").exists());
    assert!(
        !out.join(".lock").exists(),
        "the lock is released at the end"
    );
    let history = std::fs::read_to_string(out.join("losses.csv")).unwrap();
    let steps: Vec<&str> = (history.lines())
        .filter(|l| l.contains(",train,"))
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(steps, ["1", "2", "3", "4"], "{history}");
}

/// A 6-step run made in two parts ends with exactly the weights, moments and data RNG of 6
/// straight steps, whether it was planned for 6 and stopped after 3 (`--stop-after`), or run
/// for 3 and extended with `--resume --steps 6`: `--steps` is only the run's length, the
/// schedule (`--cosine-end`, here the copy task's 600) does not follow it.
#[test]
fn split_runs_equal_the_straight_run() {
    let dir = temp_dir("split");
    let train = |out: &Path, extra: &[&str]| {
        let mut args = vec!["train", "--out", s(out), "--threads", "1"];
        args.extend(extra);
        let o = course(&args);
        assert!(o.status.success(), "{}", text(&o));
        o
    };
    let straight = dir.join("straight");
    let o = train(&straight, &["--steps", "6"]);
    assert!(
        text(&o).contains("note: the cosine ends at step 600, so the run stops at step 6"),
        "the mismatch is pointed out: {}",
        text(&o)
    );
    let last = |out: &Path| Checkpoint::load(&out.join("checkpoint.safetensors")).unwrap();
    let a = last(&straight);

    let stopped = dir.join("stopped");
    let o = train(&stopped, &["--steps", "6", "--stop-after", "3"]);
    assert!(
        text(&o).contains("stopped after step 3 of 6 as asked"),
        "{}",
        text(&o)
    );
    assert_eq!(last(&stopped).steps_done, 3);
    let extended = dir.join("extended");
    train(&extended, &["--steps", "3"]);
    assert_eq!(last(&extended).steps_done, 3);

    for out in [&stopped, &extended] {
        let ckpt = out.join("checkpoint.safetensors");
        let o = train(out, &["--resume", s(&ckpt), "--steps", "6"]);
        let b = last(out);
        assert_eq!(b.steps_done, 6, "{}", text(&o));
        assert!(a.weights == b.weights && a.adam_m == b.adam_m && a.adam_v == b.adam_v);
        assert_eq!(a.data_rng, b.data_rng);
        // The stored config records the final length, as the straight run's does.
        assert_eq!(a.config, b.config);
    }
    // A different schedule is a different run: the same 6 steps with the decay fitted to them
    // end elsewhere (so the equalities above are not vacuous).
    let fitted = dir.join("fitted");
    train(
        &fitted,
        &["--steps", "6", "--cosine-end", "6", "--warmup", "2"],
    );
    assert!(last(&fitted).weights != a.weights);
}

/// `kill -9` at arbitrary moments of a run that saves every step (so kills land in saves):
/// after each, the checkpoint on disk loads, and the next run takes over the dead run's lock,
/// removes its half-written temporary files and continues.
#[test]
fn kill_9_during_saves_loses_nothing() {
    let dir = temp_dir("kill9");
    let out = dir.join("copy");
    let ckpt = out.join("checkpoint.safetensors");
    for (i, wait_ms) in [700u64, 1100, 900, 1300].into_iter().enumerate() {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_transformer-course"));
        cmd.args(["train", "--out", s(&out), "--checkpoint-every", "1"]);
        cmd.args(["--eval-every", "100000", "--steps", "100000"]);
        if ckpt.exists() {
            cmd.args(["--resume", s(&ckpt)]);
        } else {
            cmd.arg("--force");
        }
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // A busy machine may need longer than `wait_ms` for the graphs and the first save:
        // wait for a checkpoint first (up to 2 minutes), so every kill lands in a saving run.
        let start = std::time::Instant::now();
        while !ckpt.exists() && start.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(wait_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if ckpt.exists() {
            Checkpoint::load(&ckpt).unwrap_or_else(|e| panic!("after kill {i}: {e}"));
        }
    }
    let done = Checkpoint::load(&ckpt)
        .expect("some step was saved")
        .steps_done;
    let more = (done + 1).to_string();
    let o = course(&[
        "train",
        "--resume",
        s(&ckpt),
        "--out",
        s(&out),
        "--steps",
        &more,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A token file cut short while a run reads it (a tokenizer rewriting it) ends the run with an
/// error naming the file; with a memory map the process died of SIGBUS (exit 135, no message).
#[test]
fn a_data_file_truncated_during_training_is_an_error_not_a_crash() {
    use std::io::{BufRead, BufReader};
    let dir = temp_dir("truncate");
    let data = dir.join("ids.u16");
    let ids: Vec<u8> = (0..200_000u32)
        .flat_map(|i| ((i * 7 % 250) as u16).to_le_bytes())
        .collect();
    std::fs::write(&data, ids).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_transformer-course"))
        .args([
            "train",
            "--task",
            "lm",
            "--data",
            s(&data),
            "--steps",
            "100000",
        ])
        .args(["--out", s(&dir.join("run")), "--checkpoint-every", "100000"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().contains("step      1/") {
            break;
        }
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&data)
        .unwrap()
        .set_len(1000)
        .unwrap();
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    let log = rest.join("\n");
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("ids.u16") && log.contains("did the file change"),
        "{log}"
    );
}

/// Ctrl-C during training saves a checkpoint at the current step and exits with 130.
#[test]
fn ctrl_c_saves_the_step_it_is_on() {
    use std::io::{BufRead, BufReader};
    let dir = temp_dir("ctrlc");
    let out = dir.join("copy");
    let mut child = Command::new(env!("CARGO_BIN_EXE_transformer-course"))
        .args(["train", "--steps", "100000", "--eval-every", "100000"])
        .args(["--checkpoint-every", "100000", "--out", s(&out)])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // Without a terminal the loop logs step 1, then every 50 steps: wait for step 1.
    let mut log = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        log.push_str(&line);
        if line.contains("step      1/") {
            break;
        }
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    let log = format!("{log}\n{}", rest.join("\n"));
    assert_eq!(status.code(), Some(130), "{log}");
    let ckpt = Checkpoint::load(&out.join("checkpoint.safetensors")).unwrap();
    assert!(ckpt.steps_done >= 1, "{log}");
    let said = format!("interrupted at step {}: checkpoint saved", ckpt.steps_done);
    assert!(log.contains(&said), "{log}");
}

/// An LM whose vocabulary (20) has no room for the text "The " (id 84) trains, evaluates and
/// samples end to end: the sample's prompt comes from the data.
#[test]
fn a_small_vocabulary_lm_runs_end_to_end() {
    let dir = temp_dir("smallvocab");
    let o = course(&["config", "lm"]);
    let mut config: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    config["model"]["lm"]["vocab_size"] = 20.into();
    config["model"]["lm"]["context_length"] = 16.into();
    config["task"]["lm"]["context"] = 16.into();
    let config_path = dir.join("small.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let ids: Vec<u8> = (0..2000u16)
        .flat_map(|i| (i * 7 % 20).to_le_bytes())
        .collect();
    let data = dir.join("ids.u16");
    std::fs::write(&data, ids).unwrap();
    let out = dir.join("run");
    let o = course(&[
        "train",
        "--config",
        s(&config_path),
        "--data",
        s(&data),
        "--steps",
        "2",
        "--eval-every",
        "1",
        "--out",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("step 2: eval loss"), "{}", text(&o));
}

/// A model from outside the course: weights under CS336's names in bf16 (as a PyTorch
/// `save_file` of a bf16 model writes them, with `torch.compile`'s `_orig_mod.` prefix and an
/// integer buffer), sizes in a JSON file with CS336's `num_layers`/`num_heads`. Greedy
/// `generate --weights --config` must give the tokens of the plain-Rust `lm_ref` (chapter 6) run
/// on the same bf16-rounded weights. Each reference step's top logit leads the next by more than
/// 1e-3 (checked), far above the ~1e-6 by which the graph and the loops may differ, so the argmax
/// cannot flip.
#[test]
fn generate_from_pytorch_style_bf16_weights_matches_the_reference() {
    use safetensors::{tensor::TensorView, Dtype};
    use transformer_course::ch06_transformer::{lm_ref, TransformerConfig};
    use transformer_course::ch11_training::ModelConfig;
    use transformer_course::graph::{init, params::StateDict, tensor::HostTensor};
    let dir = temp_dir("bf16");
    let cfg = TransformerConfig {
        vocab_size: 32,
        context_length: 16,
        d_model: 16,
        n_layers: 2,
        n_heads: 2,
        d_ff: 32,
        rope_theta: 10_000.0,
    };
    let weights = ModelConfig::Lm(cfg.clone())
        .init_weights(&mut init::rng(3))
        .unwrap();
    // bf16 on disk; the reference uses exactly the values the file holds.
    let mut rounded = StateDict::new();
    let mut bytes = Vec::new();
    for (name, t) in &weights {
        let h: Vec<half::bf16> = t.data.iter().map(|&v| half::bf16::from_f32(v)).collect();
        let back = h.iter().map(|v| v.to_f32()).collect();
        rounded.insert(name.clone(), HostTensor::new(&t.shape, back).unwrap());
        bytes.push((
            name.clone(),
            t.shape.clone(),
            h.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
        ));
    }
    let step = 7i64.to_le_bytes();
    let mut views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(n, shape, b)| {
            (
                format!("_orig_mod.{n}"),
                TensorView::new(Dtype::BF16, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    views.push((
        "step".into(),
        TensorView::new(Dtype::I64, vec![1], &step).unwrap(),
    ));
    let weights_path = dir.join("model.safetensors");
    std::fs::write(&weights_path, safetensors::serialize(views, None).unwrap()).unwrap();
    let config_path = dir.join("model.json");
    let json = r#"{"vocab_size": 32, "context_length": 16, "d_model": 16, "num_layers": 2,
                   "num_heads": 2, "d_ff": 32, "rope_theta": 10000.0}"#;
    std::fs::write(&config_path, json).unwrap();

    let mut want = vec![1u32, 2, 3];
    for _ in 0..6 {
        let logits = lm_ref(&want, &rounded, &cfg, [1, want.len()]);
        let last = &logits[(want.len() - 1) * 32..];
        let mut order: Vec<usize> = (0..32).collect();
        order.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
        assert!(
            last[order[0]] - last[order[1]] > 1e-3,
            "near tie: pick another seed"
        );
        want.push(order[0] as u32);
    }
    let o = course(&[
        "generate",
        "--weights",
        s(&weights_path),
        "--config",
        s(&config_path),
        "--prompt-ids",
        "1,2,3",
        "--max-new",
        "6",
        "--temperature",
        "0",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let got: Vec<u32> = (String::from_utf8_lossy(&o.stdout).trim().split(','))
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(got, want);
}

/// A model trained in PyTorch (`scripts/make_trained_fixture.py`: 300 AdamW steps on a few
/// sentences, saved with `save_file` in float32 and in bfloat16) sampled greedily by
/// `generate --weights --config`: the tokens are PyTorch's own greedy tokens, 30 of them, past
/// the context of 16 (the window slides). Exact equality is the right test: every PyTorch step's
/// top logit leads the runner-up by at least 0.016 (stored in the fixture), about a thousand
/// times the float32 differences between the two implementations, so no token can flip.
#[test]
fn generate_from_a_pytorch_trained_model_gives_pytorchs_greedy_tokens() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("trained_lm.expected.json")).unwrap(),
    )
    .unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        let list = v.as_array().unwrap().iter();
        list.map(|i| i.as_u64().unwrap() as u32).collect()
    };
    let prompt = ids(&expected["prompt_ids"]);
    let prompt_arg: Vec<String> = prompt.iter().map(u32::to_string).collect();
    for dtype in ["f32", "bf16"] {
        let want = ids(&expected[dtype]["ids"]);
        let weights = fixtures.join(format!("trained_lm_{dtype}.safetensors"));
        let new = (want.len() - prompt.len()).to_string();
        let o = course(&[
            "generate",
            "--weights",
            s(&weights),
            "--config",
            s(&fixtures.join("trained_lm.config.json")),
            "--prompt-ids",
            &prompt_arg.join(","),
            "--max-new",
            &new,
            "--temperature",
            "0",
        ]);
        assert!(o.status.success(), "{dtype}: {}", text(&o));
        let got: Vec<u32> = (String::from_utf8_lossy(&o.stdout).trim().split(','))
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(
            got, want,
            "{dtype}: PyTorch says {}",
            expected[dtype]["text"]
        );
    }
}

/// `inspect ... | head` closes the pipe early: the process ends quietly (SIGPIPE, as other Unix
/// tools do), not with a panic and a backtrace; and the largest --seed is a seed, not a panic.
#[test]
fn a_closed_pipe_and_the_largest_seed_are_handled() {
    let dir = temp_dir("pipe");
    let out = dir.join("copy");
    let o = course(&[
        "train",
        "--steps",
        "1",
        "--seed",
        "18446744073709551615",
        "--out",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let mut child = Command::new(env!("CARGO_BIN_EXE_transformer-course"))
        .args(["inspect", s(&out.join("checkpoint.safetensors"))])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before the listing is written
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
}

#[test]
fn printed_configs_parse_back() {
    for task in ["copy", "lm"] {
        let o = course(&["config", task]);
        assert!(o.status.success());
        TrainConfig::from_json(&String::from_utf8_lossy(&o.stdout)).unwrap();
    }
}

#[test]
fn inspect_lists_a_pytorch_weights_file_with_its_conversions() {
    use safetensors::{tensor::TensorView, Dtype};
    let dir = temp_dir("inspect-plain");
    let path = dir.join("model.safetensors");
    let half: Vec<u8> = [0x3C00u16, 0x3C00]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let step = 3i64.to_le_bytes();
    let views = [
        (
            "lm_head.weight",
            TensorView::new(Dtype::BF16, vec![1, 2], &half).unwrap(),
        ),
        ("step", TensorView::new(Dtype::I64, vec![1], &step).unwrap()),
    ];
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let o = course(&["inspect", s(&path)]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("not a course checkpoint") && t.contains("1 float tensor, 2 values"),
        "{t}"
    );
    assert!(t.contains("converted to f32: lm_head.weight (BF16"), "{t}");
    assert!(t.contains("skipped: step (I64, not floating point)"), "{t}");
    // bf16 0x3C00 is 2^(120-127) = 1/128: the rms of [1/128, 1/128].
    assert!(t.contains("rms 0.0078"), "{t}");
}

/// A newcomer's path: text -> `tokenize` -> `train --data`; and a negative `--lr` reaches the
/// validator (clap once read `-1` as an unknown flag) and is named without a struct dump.
#[test]
fn tokenize_then_train_on_it_and_negative_lr_is_named() {
    let dir = temp_dir("tokenize");
    let story = dir.join("story.txt");
    std::fs::write(
        &story,
        "Once upon a time there was a tiny model. ".repeat(40),
    )
    .unwrap();
    let ids = dir.join("story.u16");
    let o = course(&["tokenize", s(&story), s(&ids)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("wrote 1640 tokens"), "{}", text(&o));
    assert_eq!(std::fs::read(&ids).unwrap().len(), 2 * 1640);
    let out = dir.join("run");
    let o = course(&[
        "train",
        "--task",
        "lm",
        "--data",
        s(&ids),
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--eval-every",
        "1",
        "--out",
        s(&out),
        "--threads",
        "1",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(out.join("checkpoint.safetensors").exists(), "{}", text(&o));
    let o = course(&["train", "--lr", "-1", "--steps", "1", "--out", s(&out)]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("(lr_max, --lr) must be positive and finite; got -1"),
        "{t}"
    );
    assert!(!t.contains("CosineSchedule"), "{t}");
}

#[test]
fn missing_truncated_and_corrupt_checkpoints_are_named() {
    let dir = temp_dir("bad");
    let missing = dir.join("missing.safetensors");
    let o = course(&["inspect", s(&missing)]);
    assert!(!o.status.success());
    assert!(text(&o).contains("missing.safetensors"), "{}", text(&o));

    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
    for args in [
        vec!["inspect", s(&truncated)],
        vec!["generate", s(&truncated)],
        vec!["train", "--resume", s(&truncated)],
    ] {
        let o = course(&args);
        assert!(!o.status.success());
        let t = text(&o);
        assert!(
            t.contains("truncated.safetensors") && t.contains("not a valid safetensors file"),
            "{t}"
        );
    }
}

#[test]
fn invalid_config_files_are_named() {
    let dir = temp_dir("config");
    let path = dir.join("run.json");
    let json = String::from_utf8_lossy(&course(&["config", "copy"]).stdout).to_string();
    std::fs::write(&path, json.replace("\"batch_size\"", "\"batchsize\"")).unwrap();
    let o = course(&["train", "--config", s(&path), "--out", s(&dir)]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("run.json") && text(&o).contains("batchsize"),
        "{}",
        text(&o)
    );
    std::fs::write(&path, json.replace("\"n_heads\": 4", "\"n_heads\": 3")).unwrap();
    let o = course(&["train", "--config", s(&path), "--out", s(&dir)]);
    assert!(!o.status.success());
    assert!(text(&o).contains("n_heads"), "{}", text(&o));
}

#[test]
fn a_data_file_shorter_than_the_context_is_refused() {
    let dir = temp_dir("data");
    let path = dir.join("tiny.u16");
    std::fs::write(&path, [1u8, 0, 2, 0, 3, 0]).unwrap();
    let o = course(&[
        "train",
        "--task",
        "lm",
        "--data",
        s(&path),
        "--out",
        s(&dir),
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("context of 64 needs at least 65"),
        "{}",
        text(&o)
    );
}

/// A learning rate of 1e30 blows the weights up within a few steps: training stops with a
/// clear message, and the checkpoint saved before the blow-up still loads.
#[test]
fn a_diverging_run_stops_and_keeps_the_last_good_checkpoint() {
    let dir = temp_dir("nan");
    let o = course(&[
        "train",
        "--task",
        "copy",
        "--steps",
        "20",
        "--lr",
        "1e30",
        "--checkpoint-every",
        "1",
        "--eval-every",
        "1000",
        "--out",
        s(&dir),
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("non-finite values") && t.contains("last good checkpoint is kept"),
        "{t}"
    );
    let ckpt = Checkpoint::load(&dir.join("checkpoint.safetensors")).unwrap();
    assert!(ckpt.steps_done >= 1 && ckpt.steps_done < 20);
    assert!(ckpt
        .weights
        .values()
        .all(|w| w.data.iter().all(|v| v.is_finite())));
}

#[test]
fn the_tour_runs_every_chapter_demo() {
    let out = course(&["tour"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    for n in 0..=11 {
        assert!(
            all.contains(&format!("== {n}. ")),
            "chapter {n} missing:\n{all}"
        );
    }
    assert!(!all.contains("error:"), "{all}");
}
