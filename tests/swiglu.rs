//! `FuseSwiGlu` (chapter 3's SwiGLU gate and chapter 8's backward of it as three kernels)
//! against the same graph compiled without the pass, over random shapes and values. The
//! kernels run the graph's own float operations in the graph's order, so the results must be
//! equal bit for bit.

use luminal::prelude::*;
use proptest::prelude::*;
use transformer_course::backend::OpByOpCpuCompiler;
use transformer_course::graph::dims::{Batch, DFf, DModel, Seq};
use transformer_course::graph::params::{Param, Parameters};
use transformer_course::graph::primitive;
use transformer_course::prelude::*;

type Run = (Vec<Vec<f32>>, Vec<(String, usize)>);

/// The SwiGLU layer's output and the gradients of its input and its three weights.
fn run(
    fused: bool,
    [b, s, d, f]: [usize; 4],
    seed: u64,
    x_values: &[f32],
    w_values: &[f32],
) -> Run {
    let mut cx = Graph::new();
    let ffn = SwiGlu::<DModel, DFf>::new(&mut cx, d, f).unwrap();
    ffn.init(&mut transformer_course::graph::init::rng(seed))
        .unwrap();
    let x = tensor::input::<(Batch, Seq, DModel)>(&mut cx, "x");
    let w = tensor::input::<(Batch, Seq, DModel)>(&mut cx, "w");
    let y = ffn.forward(x);
    let loss = (y * w).sum_reduce::<(), Axes3<0, 1, 2>>();
    let params = [vec![Param::of(x, &[b, s, d])], ffn.params()].concat();
    let mut grads = backward(&mut cx, &params, loss.id).unwrap();
    let mut y_id = y.id;
    for id in grads.iter().map(|g| g.grad).chain([y_id]) {
        cx.keep_tensors(id);
        cx.to_retrieve.insert(id);
    }
    if fused {
        Device::Cpu.compile(&mut cx, (&mut grads, &mut y_id));
    } else {
        cx.compile(OpByOpCpuCompiler::default(), (&mut grads, &mut y_id));
    }
    tensor::set(x, &[b, s, d], x_values.to_vec()).unwrap();
    tensor::set(w, &[b, s, d], w_values.to_vec()).unwrap();
    tensor::execute(&mut cx).unwrap();
    let read = |id: NodeIndex| tensor::read_node(&cx, id, "result").unwrap().to_vec();
    let mut values = vec![read(y_id)];
    values.extend(grads.iter().map(|g| read(g.grad)));
    (values, primitive::op_counts(&cx))
}

type Case = ([usize; 4], u64, Vec<f32>, Vec<f32>);

fn case() -> impl Strategy<Value = Case> {
    (1usize..3, 1usize..9, 1usize..9, 1usize..17, any::<u64>()).prop_flat_map(
        |(b, s, d, f, seed)| {
            // Inputs up to ±30, so that some gates saturate (e^30 and e^-30).
            let values = proptest::collection::vec(-30.0f32..30.0, b * s * d);
            (Just([b, s, d, f]), Just(seed), values.clone(), values)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn swiglu_kernels_equal_the_op_by_op_graph((dims, seed, x, w) in case()) {
        let (fused, ops) = run(true, dims, seed, &x, &w);
        let (reference, plain_ops) = run(false, dims, seed, &x, &w);
        let count = |ops: &[(String, usize)], kind: &str| {
            ops.iter().find(|(k, _)| k == kind).map_or(0, |(_, n)| *n)
        };
        for kind in ["SwiGluGate", "SwiGluGradGate", "SwiGluGradValue"] {
            prop_assert_eq!(count(&ops, kind), 1, "{} in {:?}", kind, ops);
            prop_assert_eq!(count(&plain_ops, kind), 0);
        }
        prop_assert_eq!(fused.len(), reference.len());
        for (i, (g, r)) in fused.iter().zip(&reference).enumerate() {
            // Bit for bit (NaN never appears: the gate saturates to 0 or x, never inf * 0).
            let same = g.iter().zip(r).all(|(a, b)| a.to_bits() == b.to_bits());
            prop_assert!(same, "output {}: {:?} vs {:?}", i, g, r);
        }
    }
}
