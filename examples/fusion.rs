//! Elementwise fusion, measured: a few chains from the reference model run with and without
//! the fusion pass (`TC_NO_FUSE=1`), median of repeated runs.
//!
//! cargo run --release --example fusion -- --threads 1
use std::time::{Duration, Instant};
use transformer_course::prelude::*;
use transformer_course::{device, fast_cpu};

type R = Dyn<'r'>;
type C = Dyn<'c'>;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--threads") {
        fast_cpu::set_threads(args[i + 1].parse().expect("a thread count"));
    }
    type Chain = fn(GraphTensor<(R, C)>, GraphTensor<(R, C)>) -> GraphTensor<(R, C)>;
    let chains: [(&str, [usize; 2], Chain); 4] = [
        ("x * y + x", [2048, 384], |x, y| x * y + x),
        ("silu(x) * y", [2048, 384], |x, y| x.swish() * y),
        ("softmax rows", [8192, 128], |x, _| x.softmax::<1>()),
        ("exp(x - y)", [8192, 128], |x, y| (x - y).exp()),
    ];
    for (name, shape, chain) in chains {
        let mut cx = Graph::new();
        let mut x = tensor::input::<(R, C)>(&mut cx, "x");
        let mut y = tensor::input::<(R, C)>(&mut cx, "y");
        let mut out = chain(x, y).retrieve();
        Device::Cpu.compile(&mut cx, (&mut x, &mut y, &mut out));
        let n = shape[0] * shape[1];
        let values: Vec<f32> = (0..n).map(|i| (i % 97) as f32 / 97.0).collect();
        let mut times = Vec::new();
        for _ in 0..21 {
            tensor::set(x, &shape, values.clone())?;
            tensor::set(y, &shape, values.clone())?;
            let t = Instant::now();
            tensor::execute(&mut cx)?;
            times.push(t.elapsed());
            out.drop();
        }
        times.sort();
        let median: Duration = times[times.len() / 2];
        println!(
            "{name:<14} {:>10?} {:>6.2} ns/element  ops: {:?}",
            median,
            median.as_secs_f64() * 1e9 / n as f64,
            device::op_counts(&cx)
        );
    }
    // RoPE's swap_pairs: (16, 4, 128, 32) with rows of 2.
    let mut cx = Graph::new();
    let mut x = tensor::input::<(Batch, Heads, Seq, DHead)>(&mut cx, "x");
    for (c, v) in [('b', 16), ('h', 4), ('s', 128), ('k', 32), ('p', 16)] {
        cx.dyn_map.insert(c, v);
    }
    let mut out = swap_pairs(x).retrieve();
    Device::Cpu.compile(&mut cx, (&mut x, &mut out));
    let n = 16 * 4 * 128 * 32;
    let values: Vec<f32> = (0..n).map(|i| (i % 97) as f32 / 97.0).collect();
    let mut times = Vec::new();
    for _ in 0..21 {
        tensor::set(x, &[16, 4, 128, 32], values.clone())?;
        let t = Instant::now();
        tensor::execute(&mut cx)?;
        times.push(t.elapsed());
        out.drop();
    }
    times.sort();
    let median: Duration = times[times.len() / 2];
    println!(
        "{:<14} {:>10?} {:>6.2} ns/element  ops: {:?}",
        "swap_pairs",
        median,
        median.as_secs_f64() * 1e9 / n as f64,
        device::op_counts(&cx)
    );
    Ok(())
}
