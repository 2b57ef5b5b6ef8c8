//! Time a decoder-only LM's graph: build, compile and one forward pass; then the training
//! graph (forward + loss + backward): build, compile, op counts, and optionally one run.
//! Prints tables; nothing is asserted.
//!
//! ```sh
//! cargo run --release --example forward                  # reference config, batch 16 x 128
//! cargo run --release --example forward -- 2 32          # batch 2, sequence 32
//! cargo run --release --example forward -- 2 32 --run-backward
//! cargo run --release --example forward -- 2 32 --stock   # luminal's stock CPU ops
//! cargo run --release --example forward -- --threads 1 --run-backward --profile
//! cargo run --release --example forward -- --threads 1 --run-backward --repeats 5
//! cargo run --release --example forward -- --threads 1 --run-backward --op-by-op
//! ```
//!
//! The reference config: vocab 256, ctx 128, d_model 128, 4 layers, 4 heads, d_ff 384.
//! Run it on an otherwise idle machine: these are wall-clock times.

use std::time::{Duration, Instant};

use transformer_course::graph::primitive;
use transformer_course::prelude::*;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> Result<()> {
    transformer_course::backend::fast_cpu::keep_freed_memory(); // as the train and bench commands
    let args: Vec<String> = std::env::args().skip(1).collect();
    let run_backward = args.iter().any(|a| a == "--run-backward");
    let device = if args.iter().any(|a| a == "--stock") {
        Device::CpuStock
    } else {
        Device::Cpu
    };
    let threads = args
        .iter()
        .position(|a| a == "--threads")
        .and_then(|i| args.get(i + 1))
        .and_then(|t| t.parse().ok());
    if let Some(t) = threads {
        transformer_course::backend::fast_cpu::set_threads(t); // before the first graph runs
    }
    let repeats = args
        .iter()
        .position(|a| a == "--repeats")
        .and_then(|i| args.get(i + 1))
        .and_then(|t| t.parse().ok())
        .unwrap_or(1usize);
    let sizes: Vec<usize> = args
        .iter()
        .enumerate()
        .filter(|(i, _)| *i == 0 || (args[i - 1] != "--threads" && args[i - 1] != "--repeats"))
        .filter_map(|(_, a)| a.parse().ok())
        .collect();
    let config = TransformerConfig::reference();
    let batch = sizes.first().copied().unwrap_or(16);
    let seq = sizes.get(1).copied().unwrap_or(config.context_length);
    let tokens: Vec<u32> = (0..batch * seq).map(|i| (i * 7 % 256) as u32).collect();

    // Forward only.
    let t = Instant::now();
    let mut cx = Graph::new();
    let mut model = TransformerLm::new(&mut cx, &config)?;
    model.init(&mut init::rng(0))?;
    let mut ids = tensor::input::<(Batch, Seq)>(&mut cx, "ids");
    let mut logits = model.forward(ids).retrieve();
    let (build, built) = (t.elapsed(), cx.graph.node_count());
    let t = Instant::now();
    device.compile(&mut cx, (&mut model, &mut ids, &mut logits));
    let (compile, compiled) = (t.elapsed(), cx.graph.node_count());
    model.set_ids(ids, [batch, seq], &tokens)?;
    let fwd_run = median_run(&mut cx, &[logits.id], repeats)?;
    let out = tensor::read(logits)?;
    assert!(
        out.data.iter().all(|v| v.is_finite()),
        "logits must be finite"
    );

    println!(
        "decoder-only LM, reference config, batch {batch} x seq {seq}, device {}, {} threads",
        device.name(),
        transformer_course::backend::fast_cpu::threads()
    );
    println!("| graph              | build      | nodes | compile    | nodes | run          |");
    println!("|--------------------|------------|-------|------------|-------|--------------|");
    println!(
        "| forward            | {:>7.1} ms | {built:>5} | {:>7.1} ms | {compiled:>5} | {:>9.1} ms |",
        ms(build),
        ms(compile),
        ms(fwd_run)
    );

    // Forward + loss + backward.
    let t = Instant::now();
    let mut cx = Graph::new();
    let model = TransformerLm::new(&mut cx, &config)?;
    model.init(&mut init::rng(0))?;
    let ids = tensor::input::<(Batch, Seq)>(&mut cx, "ids");
    let targets = tensor::input::<(Batch, Seq)>(&mut cx, "targets");
    let mask = tensor::input::<(Batch, Seq)>(&mut cx, "mask");
    model.set_ids(ids, [batch, seq], &tokens)?;
    let next: Vec<f32> = tokens.iter().map(|&i| ((i + 1) % 256) as f32).collect();
    tensor::set(targets, &[batch, seq], next)?;
    tensor::set(mask, &[batch, seq], vec![1.0; batch * seq])?;
    let loss = lm_loss(&model, ids, targets, mask, Weighting::Token);
    let mut loss_id = loss.id;
    let mut grads = backward(&mut cx, &model.params(), loss.id)?;
    cx.keep_tensors(loss_id);
    cx.to_retrieve.insert(loss_id);
    let (build, built) = (t.elapsed(), cx.graph.node_count());
    let t = Instant::now();
    if args.iter().any(|a| a == "--op-by-op") {
        // The "before" of the pattern passes: the same pipeline without them (appendix A).
        let pipeline = transformer_course::backend::OpByOpCpuCompiler::default();
        cx.compile(pipeline, (&mut loss_id, &mut grads));
    } else {
        device.compile(&mut cx, (&mut loss_id, &mut grads));
    }
    let (compile, compiled) = (t.elapsed(), cx.graph.node_count());
    let profile = args.iter().any(|a| a == "--profile");
    if profile {
        cx.compile(transformer_course::backend::fast_cpu::ProfileOps, ());
    }
    let mut bwd_run = None;
    let run = if run_backward {
        let mut outputs: Vec<NodeIndex> = grads.iter().map(|g| g.grad).collect();
        outputs.push(loss_id);
        let t = median_run(&mut cx, &outputs, repeats)?;
        bwd_run = Some(t);
        format!("{:>9.1} ms", ms(t))
    } else {
        "(not run)   ".to_string()
    };
    println!(
        "| forward + backward | {:>7.1} ms | {built:>5} | {:>7.1} ms | {compiled:>5} | {run} |",
        ms(build),
        ms(compile)
    );
    println!("\nforward + backward, compiled, op counts:");
    for (kind, n) in primitive::op_counts(&cx) {
        println!("  {kind:<16} {n:>5}");
    }
    if profile && run_backward {
        let table = transformer_course::backend::fast_cpu::PROFILE
            .lock()
            .expect("profile")
            .clone();
        let total: f64 = table.values().map(|v| v.1.as_secs_f64()).sum();
        println!(
            "\nforward + backward, time per op kind (summed over all runs, warm-up included):"
        );
        let mut rows: Vec<_> = table.into_iter().collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1 .1));
        for (kind, (calls, t)) in rows {
            println!(
                "  {kind:<16} {calls:>5} calls {:>9.1} ms {:>5.1}%",
                ms(t),
                100.0 * t.as_secs_f64() / total
            );
        }
        let nodes = transformer_course::backend::fast_cpu::PROFILE_NODES
            .lock()
            .expect("profile")
            .clone();
        let mut slow: Vec<_> = nodes.into_iter().collect();
        slow.sort_by_key(|n| std::cmp::Reverse(n.1));
        let listing = viz::op_listing(&cx);
        if let Some(path) = std::env::var_os("DUMP_LISTING") {
            std::fs::write(path, &listing).expect("listing written");
        }
        println!("slowest ops:");
        let top: usize = std::env::var("TOP")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(12);
        // The listing numbers ops by their position in execution order.
        let order = viz::topo_order(&cx);
        for (node, t) in slow.iter().take(top) {
            let position = order.iter().position(|n| n.index() == *node);
            let prefix = format!("%{} =", position.unwrap_or(usize::MAX));
            let line = listing
                .lines()
                .find(|l| l.starts_with(&prefix))
                .unwrap_or("?");
            println!("  {:>7.2} ms  {line}", ms(*t));
        }
    }
    println!(
        "forward throughput: {:.0} tokens/s; {} parameters",
        (batch * seq) as f64 / fwd_run.as_secs_f64(),
        model.num_params()
    );
    let tokens = (batch * seq) as f64;
    print!(
        "rust forward: {:.1} ms, {:.0} tokens/s",
        ms(fwd_run),
        tokens / fwd_run.as_secs_f64()
    );
    if let Some(t) = bwd_run {
        print!(
            "; rust forward+backward: {:.1} ms, {:.0} tokens/s",
            ms(t),
            tokens / t.as_secs_f64()
        );
    }
    println!(
        " ({} threads)",
        transformer_course::backend::fast_cpu::threads()
    );
    Ok(())
}

/// Execute `repeats` times (after one warm-up run when repeating) and return the median time.
/// Kept outputs are dropped before each run: luminal skips nodes whose output exists.
fn median_run(cx: &mut Graph, outputs: &[NodeIndex], repeats: usize) -> Result<Duration> {
    let mut times = Vec::new();
    for i in 0..repeats.max(1) + usize::from(repeats > 1) {
        for id in outputs {
            cx.tensors.remove(&(*id, 0));
        }
        let t = Instant::now();
        tensor::execute(cx)?;
        if repeats <= 1 || i > 0 {
            times.push(t.elapsed());
        }
    }
    times.sort();
    Ok(times[times.len() / 2])
}
