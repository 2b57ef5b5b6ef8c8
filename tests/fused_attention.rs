//! The fused attention kernels (`backend::fast_cpu::FuseAttention`) against the chapters'
//! attention run op by op, forward and backward, over random shapes and masks.
//!
//! The oracle is the same graph (chapter 5's `scaled_dot_product_attention`, chapter 8's
//! `backward`) compiled without the attention pass, plus chapter 5's loop reference
//! `sdpa_ref` for the forward. Tolerance: `1e-5 * (1 + max |reference|)`. The fused kernels
//! sum in another order (keys in blocks, partial sums in 16 lanes) and the backward uses the
//! softmax gradient in closed form, `P (dP - rowsum(P dP))`, where the graph goes op by op
//! through exp2, the row sum and the row maximum. Each result is a sum of at most 69 terms of
//! size about 1, each rounded to within 6e-8 relative: the two orders typically differ by a few
//! 1e-7 (rounding errors add up like a random walk), while a wrong mask, a wrong block boundary
//! or a missing term is off by 1e-2 or more (both mutations are caught; see appendix A).

use luminal::prelude::*;
use proptest::prelude::*;
use transformer_course::backend::OpByOpCpuCompiler;
use transformer_course::graph::dims::{Batch, DHead, Heads, Seq, SrcSeq};
use transformer_course::graph::params::Param;
use transformer_course::graph::primitive;
use transformer_course::prelude::*;

type DValue = Dyn<'e'>;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mask {
    /// `causal_mask` (needs s == t), computed in the graph as the language model does.
    Causal,
    /// A (b, s, t) 0/1 input, the same for every head: key padding, cross-attention, rows
    /// with no key at all.
    Input,
}

#[derive(Debug, Clone)]
struct Case {
    dims: [usize; 6], // b, h, s, t, dk, dv
    mask: Mask,
    allowed: Vec<f32>, // (b, s, t), used when mask == Input
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    w: Vec<f32>, // the loss is sum(out * w): w is dL/d out
}

/// Output, dq, dk, dv, and the compiled graph's op counts.
type Run = ([Vec<f32>; 4], Vec<(String, usize)>);

fn run(fused: bool, case: &Case) -> Run {
    let [b, h, s, t, dk, dv] = case.dims;
    let mut cx = Graph::new();
    let q = tensor::input::<(Batch, Heads, Seq, DHead)>(&mut cx, "q");
    let w = tensor::input::<(Batch, Heads, Seq, DValue)>(&mut cx, "w");
    // Keys and values over `Seq` for the causal mask (keys are the queries' positions), over
    // `SrcSeq` otherwise.
    let (out, k_param, v_param) = match case.mask {
        Mask::Causal => {
            let k = tensor::input::<(Batch, Heads, Seq, DHead)>(&mut cx, "k");
            let v = tensor::input::<(Batch, Heads, Seq, DValue)>(&mut cx, "v");
            tensor::set(k, &[b, h, t, dk], case.k.clone()).unwrap();
            tensor::set(v, &[b, h, t, dv], case.v.clone()).unwrap();
            let allowed =
                causal_mask::<Seq>(&mut cx).expand::<(Batch, Heads, Seq, Seq), Axes2<0, 1>>();
            let out = scaled_dot_product_attention(q, k, v, allowed, dk);
            (
                out,
                Param::of(k, &[b, h, t, dk]),
                Param::of(v, &[b, h, t, dv]),
            )
        }
        Mask::Input => {
            let k = tensor::input::<(Batch, Heads, SrcSeq, DHead)>(&mut cx, "k");
            let v = tensor::input::<(Batch, Heads, SrcSeq, DValue)>(&mut cx, "v");
            let mask = tensor::input::<(Batch, Seq, SrcSeq)>(&mut cx, "allowed");
            tensor::set(k, &[b, h, t, dk], case.k.clone()).unwrap();
            tensor::set(v, &[b, h, t, dv], case.v.clone()).unwrap();
            tensor::set(mask, &[b, s, t], case.allowed.clone()).unwrap();
            let allowed = mask.expand::<(Batch, Heads, Seq, SrcSeq), Axis<1>>();
            let out = scaled_dot_product_attention(q, k, v, allowed, dk);
            (
                out,
                Param::of(k, &[b, h, t, dk]),
                Param::of(v, &[b, h, t, dv]),
            )
        }
    };
    let loss = (out * w).sum_reduce::<(), Axes4<0, 1, 2, 3>>();
    let params = vec![Param::of(q, &[b, h, s, dk]), k_param, v_param];
    let mut grads = backward(&mut cx, &params, loss.id).unwrap();
    let mut out_id = out.id;
    for id in grads.iter().map(|g| g.grad).chain([out_id]) {
        cx.keep_tensors(id);
        cx.to_retrieve.insert(id);
    }
    if fused {
        Device::Cpu.compile(&mut cx, (&mut grads, &mut out_id));
    } else {
        cx.compile(OpByOpCpuCompiler::default(), (&mut grads, &mut out_id));
    }
    tensor::set(q, &[b, h, s, dk], case.q.clone()).unwrap();
    tensor::set(w, &[b, h, s, dv], case.w.clone()).unwrap();
    tensor::execute(&mut cx).unwrap();
    let read = |id: NodeIndex| tensor::read_node(&cx, id, "result").unwrap().to_vec();
    let values = [
        read(out_id),
        read(grads[0].grad),
        read(grads[1].grad),
        read(grads[2].grad),
    ];
    (values, primitive::op_counts(&cx))
}

fn case() -> impl Strategy<Value = Case> {
    // d_k >= 2: with d_k = 1 the scale is 1, luminal drops the multiply, and the pass (which
    // looks for it) leaves that graph to the generic kernels.
    let dims = (
        1usize..3,
        1usize..3,
        1usize..70,
        1usize..70,
        2usize..9,
        1usize..9,
    );
    (dims, any::<bool>(), any::<u64>()).prop_map(|((b, h, s, t, dk, dv), causal, seed)| {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let t = if causal { s } else { t };
        let mut values =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.gen_range(-2.0..2.0)).collect() };
        let (q, k, v, w) = (
            values(b * h * s * dk),
            values(b * h * t * dk),
            values(b * h * t * dv),
            values(b * h * s * dv),
        );
        // Each (batch, query) row: every key, none, or each key with probability 1/2.
        let allowed = (0..b * s)
            .flat_map(|_| {
                let kind: u8 = rng.gen_range(0..4);
                (0..t)
                    .map(|_| match kind {
                        0 => 1.0,
                        1 => 0.0,
                        _ => rng.gen_range(0..2) as f32,
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        Case {
            dims: [b, h, s, t, dk, dv],
            mask: if causal { Mask::Causal } else { Mask::Input },
            allowed,
            q,
            k,
            v,
            w,
        }
    })
}

fn close(name: &str, got: &[f32], want: &[f32]) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len(), "{} length", name);
    let scale = 1.0 + want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        prop_assert!(
            approx::abs_diff_eq!(*g, *w, epsilon = 1e-5 * scale),
            "{name}[{i}]: fused {g}, op by op {w}"
        );
    }
    Ok(())
}

fn count(ops: &[(String, usize)], kind: &str) -> usize {
    ops.iter().find(|(k, _)| k == kind).map_or(0, |(_, n)| *n)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn fused_attention_equals_the_op_by_op_graph(case in case()) {
        let (fused, ops) = run(true, &case);
        let (reference, plain_ops) = run(false, &case);
        // The pass fired (else this test would compare the graph with itself).
        prop_assert_eq!(count(&ops, "FusedAttention"), 1, "{:?}", ops);
        prop_assert_eq!(count(&ops, "FusedAttentionGrad"), 1, "{:?}", ops);
        prop_assert_eq!(count(&plain_ops, "FusedAttention"), 0);
        for (name, (g, w)) in ["out", "dq", "dk", "dv"].iter().zip(fused.iter().zip(&reference)) {
            close(name, g, w)?;
        }
        // And the forward against chapter 5's loops.
        let [b, h, s, t, dk, dv] = case.dims;
        let mask: Vec<bool> = (0..b * h * s * t)
            .map(|n| {
                let (j, i, bi) = (n % t, n / t % s, n / (t * s * h));
                match case.mask {
                    Mask::Causal => j <= i,
                    Mask::Input => case.allowed[(bi * s + i) * t + j] != 0.0,
                }
            })
            .collect();
        let loops = sdpa_ref(&case.q, &case.k, &case.v, &mask, [b * h, s, t, dk, dv]);
        close("out vs sdpa_ref", &fused[0], &loops)?;
    }
}
