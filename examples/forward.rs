//! Time one forward pass of a decoder-only LM: graph build, compile, and execution, plus the
//! graph's node count before and after compilation. Prints a table; nothing is asserted.
//!
//! ```sh
//! cargo run --release --example forward                 # the reference config, batch 16
//! cargo run --release --example forward -- 2 32         # batch 2, sequence 32
//! ```
//!
//! The reference config: vocab 256, ctx 128, d_model 128, 4 layers, 4 heads, d_ff 384.
//! Run it on an otherwise idle machine: these are wall-clock times.

use std::time::Instant;

use transformer_course::prelude::*;

fn main() -> Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("usage: forward [batch] [seq]"))
        .collect();
    let config = TransformerConfig::reference();
    let batch = args.first().copied().unwrap_or(16);
    let seq = args.get(1).copied().unwrap_or(config.context_length);

    let t = Instant::now();
    let mut cx = Graph::new();
    let mut model = TransformerLm::new(&mut cx, &config)?;
    model.init(&mut init::rng(0))?;
    let mut ids = tensor::input::<(Batch, Seq)>(&mut cx, "ids");
    let mut logits = model.forward(ids).retrieve();
    let (build, built_nodes) = (t.elapsed(), cx.graph.node_count());

    let t = Instant::now();
    Device::Cpu.compile(&mut cx, (&mut model, &mut ids, &mut logits));
    let (compile, compiled_nodes) = (t.elapsed(), cx.graph.node_count());

    let tokens: Vec<u32> = (0..batch * seq).map(|i| (i * 7 % 256) as u32).collect();
    model.set_ids(ids, [batch, seq], &tokens)?;
    let t = Instant::now();
    tensor::execute(&mut cx)?;
    let run = t.elapsed();
    let out = tensor::read(logits)?;
    assert!(
        out.data.iter().all(|v| v.is_finite()),
        "logits must be finite"
    );

    println!("decoder-only LM, reference config, batch {batch} x seq {seq}, CPU (stock luminal ops + course passes)");
    println!("| step              | time        | nodes |");
    println!("|-------------------|-------------|-------|");
    println!(
        "| build graph       | {:>8.1} ms | {built_nodes:>5} |",
        build.as_secs_f64() * 1e3
    );
    println!(
        "| compile (CPU)     | {:>8.1} ms | {compiled_nodes:>5} |",
        compile.as_secs_f64() * 1e3
    );
    println!(
        "| forward (execute) | {:>8.1} ms |       |",
        run.as_secs_f64() * 1e3
    );
    println!(
        "forward throughput: {:.0} tokens/s; logits {:?}",
        (batch * seq) as f64 / run.as_secs_f64(),
        out.shape
    );
    Ok(())
}
