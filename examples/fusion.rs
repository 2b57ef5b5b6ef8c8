//! What elementwise fusion buys: chains from the reference model, compiled with `Device::Cpu`'s
//! passes with and without `FuseElementwise`, median of 21 runs each (after a warm-up).
//!
//! cargo run --release --example fusion -- --threads 1
use std::time::{Duration, Instant};
use transformer_course::backend::fast_cpu;
use transformer_course::backend::{FastCpuCompiler, UnfusedCpuCompiler};
use transformer_course::graph::primitive;
use transformer_course::prelude::*;

type R = Dyn<'r'>;
type C = Dyn<'c'>;

/// An input tensor and its shape.
type Input = (GraphTensor<(R, C)>, [usize; 2]);

/// A graph with one output, its inputs (with their shapes) and the number of output elements.
struct Case {
    /// Boxed: tensors point at their graph, which must not move.
    cx: Box<Graph>,
    inputs: Vec<Input>,
    out: GraphTensor<(R, C)>,
}

type Chain = fn(GraphTensor<(R, C)>, GraphTensor<(R, C)>) -> GraphTensor<(R, C)>;

fn build(shape: [usize; 2], chain: Chain, fused: bool) -> Case {
    let mut cx = Box::new(Graph::new());
    let mut x = tensor::input::<(R, C)>(&mut cx, "x");
    let mut y = tensor::input::<(R, C)>(&mut cx, "y");
    let mut out = chain(x, y).retrieve();
    fast_cpu::keep_freed_memory();
    if fused {
        cx.compile(FastCpuCompiler::default(), (&mut x, &mut y, &mut out));
    } else {
        cx.compile(UnfusedCpuCompiler::default(), (&mut x, &mut y, &mut out));
    }
    Case {
        cx,
        inputs: vec![(x, shape), (y, shape)],
        out,
    }
}

/// Median time of one run, and the compiled graph's ops (inputs and constants left out).
fn measure(case: &mut Case) -> Result<(Duration, String)> {
    let mut times = Vec::new();
    for i in 0..22 {
        for (t, shape) in &case.inputs {
            let values = (0..shape[0] * shape[1]).map(|i| (i % 97) as f32 / 97.0);
            tensor::set(*t, shape, values.collect())?;
        }
        let start = Instant::now();
        tensor::execute(&mut case.cx)?;
        if i > 0 {
            times.push(start.elapsed());
        }
        case.out.drop();
    }
    times.sort();
    let ops: Vec<String> = primitive::op_counts(&case.cx)
        .into_iter()
        .filter(|(k, _)| k != "Function" && k != "Constant")
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    Ok((times[times.len() / 2], ops.join(", ")))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--threads") {
        fast_cpu::set_threads(args[i + 1].parse().expect("a thread count"));
    }
    let chains: [(&str, [usize; 2], Chain); 5] = [
        ("x * y + x", [2048, 384], |x, y| x * y + x),
        ("silu(x) * y (SwiGLU)", [2048, 384], |x, y| x.swish() * y),
        ("sum(x * y) over rows", [2048, 384], |x, y| {
            (x * y)
                .sum_reduce::<(R,), Axis<1>>()
                .expand::<(R, C), Axis<1>>()
        }),
        ("exp(x - y)", [8192, 128], |x, y| (x - y).exp()),
        ("softmax over rows", [8192, 128], |x, _| x.softmax::<1>()),
    ];
    println!(
        "| chain | elements | unfused | fused | speed-up | ops unfused | ops fused |  ({} threads)",
        fast_cpu::threads()
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, shape, chain) in chains {
        let (slow, slow_ops) = measure(&mut build(shape, chain, false))?;
        let (fast, fast_ops) = measure(&mut build(shape, chain, true))?;
        let n = shape[0] * shape[1];
        let ns = |t: Duration| t.as_secs_f64() * 1e9 / n as f64;
        println!(
            "| {name} | {n} | {:.2} ns/el | {:.2} ns/el | {:.1}x | {slow_ops} | {fast_ops} |",
            ns(slow),
            ns(fast),
            slow.as_secs_f64() / fast.as_secs_f64()
        );
    }
    Ok(())
}
