use super::*;
use crate::graph::params::Param;
use crate::graph::tensor;
use crate::testing::device;
use crate::testing::uniform;
use approx::assert_relative_eq;
use luminal::shape::symbolic::Expression;
use proptest::prelude::*;

type R = Dyn<'r'>;
type C = Dyn<'c'>;

#[test]
fn scalar_tape_on_hand_values() {
    // f(a, b) = (a b + e^a) / b at a = 1, b = 2: f = (2 + e) / 2 = 2.3591409.
    // df/da = (b + e^a) / b = (2 + e) / 2 = 2.3591409; df/db = -e^a / b^2 = -e / 4 = -0.6795705.
    let mut t = Tape::default();
    let (a, b) = (t.leaf(1.0), t.leaf(2.0));
    let ab = t.mul(a, b);
    let ea = t.exp(a);
    let num = t.add(ab, ea);
    let inv = t.recip(b);
    let f = t.mul(num, inv);
    assert_relative_eq!(t.value(f), 2.359_141, max_relative = 1e-6);
    let g = t.grad(f);
    assert_relative_eq!(g[a.0], 2.359_141, max_relative = 1e-6);
    assert_relative_eq!(g[b.0], -0.679_570_5, max_relative = 1e-6);
}

/// A (rows, cols) parameter `p` with values `v`, and a random weighting `w` of `f(p)` summed
/// to a scalar loss: `sum(f(p) * w)`, so every output element matters differently.
fn check<F>(shape: [usize; 2], v: Vec<f32>, seed: u64, f: F) -> (f32, String)
where
    F: Fn(GraphTensor<(R, C)>) -> GraphTensor<(R, C)>,
{
    let mut cx = Graph::new();
    let p = tensor::input::<(R, C)>(&mut cx, "p");
    tensor::set(p, &shape, v).unwrap();
    let w = tensor::input::<(R, C)>(&mut cx, "w");
    let mut rng = crate::graph::init::rng(seed);
    tensor::set(w, &shape, uniform(&mut rng, shape[0] * shape[1], 1.0)).unwrap();
    let loss = (f(p) * w).sum_reduce::<(), Axes2<0, 1>>();
    let params = vec![Param::of(p, &shape)];
    GradCheck::new(&mut cx, params, loss, Some(device()))
        .unwrap()
        .max_error()
        .unwrap()
}

fn assert_passes((err, at): (f32, String)) {
    assert!(err < GRADCHECK_TOLERANCE, "normalised error {err} at {at}");
}

#[test]
fn every_unary_primitive_has_the_right_gradient() {
    let positive: Vec<f32> = (0..6).map(|i| 0.5 + 0.3 * i as f32).collect();
    let mixed = vec![-1.3, -0.4, 0.2, 0.7, 1.1, 2.0];
    assert_passes(check([2, 3], positive.clone(), 1, |x| x.log2()));
    assert_passes(check([2, 3], mixed.clone(), 2, |x| x.exp2()));
    assert_passes(check([2, 3], mixed.clone(), 3, |x| x.sin()));
    assert_passes(check([2, 3], positive.clone(), 4, |x| x.sqrt()));
    assert_passes(check([2, 3], positive, 5, |x| x.recip()));
}

#[test]
fn every_binary_primitive_and_reduction_has_the_right_gradient() {
    let v = vec![-1.3, -0.4, 0.25, 0.7, 1.1, 2.0];
    assert_passes(check([2, 3], v.clone(), 6, |x| x + x * x));
    // Mod: slope 1 in the dividend (away from the jumps); LessThan: zero.
    assert_passes(check([2, 3], v.iter().map(|x| x + 3.3).collect(), 7, |x| {
        x % 1.7
    }));
    assert_passes(check([2, 3], v.clone(), 8, |x| x.less_than(x * 0.5) + x));
    assert_passes(check([2, 3], v.clone(), 9, |x| {
        x.sum_reduce::<(R,), Axis<1>>().expand::<(R, C), Axis<1>>() * x
    }));
    assert_passes(check([2, 3], v, 10, |x| {
        x.max_reduce::<(C,), Axis<0>>().expand::<(R, C), Axis<0>>() + x
    }));
}

#[test]
fn every_view_is_undone() {
    let v: Vec<f32> = (0..12).map(|i| (i as f32 * 0.37).sin()).collect();
    // permute, then an op that materialises it.
    assert_passes(check([3, 4], v.clone(), 11, |x| {
        let t = x.permute::<(C, R), _>().contiguous() * 2.0;
        t.permute::<(R, C), _>().contiguous() + x * x
    }));
    // broadcast: a row sum broadcast back (covered above) and a column broadcast of a slice.
    assert_passes(check([3, 4], v.clone(), 12, |x| {
        let first_col = x
            .slice((.., ..Expression::from(1)))
            .realize::<(R, Dyn<'-'>)>();
        let col: GraphTensor<(R, C)> =
            GraphTensor::from_id(first_col.id, first_col.shape, first_col.graph_ref);
        x * col
            .contiguous()
            .sum_reduce::<(R,), Axis<1>>()
            .expand::<(R, C), Axis<1>>()
    }));
    // slice + pad: shift columns right by one (drop the last, pad a zero in front).
    assert_passes(check([3, 4], v.clone(), 13, |x| {
        let cols = x.shape.dims[x.shape.indexes[1]];
        let cut = x.slice((.., ..cols - 1));
        let shifted: GraphTensor<(R, C)> = cut.pad(&[(0usize, 0usize), (1, 0)]);
        shifted * x
    }));
    // reshape: (3, 4) -> (4, 3) read as a new matrix, then back.
    assert_passes(check([3, 4], v, 14, |x| {
        let y = (x * x).reshape::<(Dyn<'q'>, Dyn<'z'>)>();
        y.graph().dyn_map.insert('q', 4);
        y.graph().dyn_map.insert('z', 3);
        (y.permute::<(Dyn<'z'>, Dyn<'q'>), _>().contiguous() * 3.0).reshape::<(R, C)>()
    }));
}

#[test]
fn a_compiled_kernel_is_refused_by_name() {
    let mut cx = Graph::new();
    let mut p = tensor::input::<(R, C)>(&mut cx, "p");
    let mut q = tensor::input::<(C, R)>(&mut cx, "q");
    let mut loss = p.matmul(q).sum_reduce::<(), Axes2<0, 1>>();
    crate::backend::Device::Cpu.compile(&mut cx, (&mut p, &mut q, &mut loss));
    let err = backward(
        &mut cx,
        &[Param {
            name: "p".into(),
            id: p.id,
            shape: vec![2, 2],
        }],
        loss.id,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("is not one of luminal's primitive ops"),
        "{err}"
    );
}

#[test]
fn an_unused_parameter_gets_a_zero_gradient() {
    let mut cx = Graph::new();
    let p = tensor::input::<(R, C)>(&mut cx, "p");
    let unused = tensor::input::<(R, C)>(&mut cx, "unused");
    tensor::set(p, &[1, 2], vec![1.0, 2.0]).unwrap();
    tensor::set(unused, &[1, 2], vec![3.0, 4.0]).unwrap();
    let loss = (p * p).sum_reduce::<(), Axes2<0, 1>>();
    let params = vec![Param::of(p, &[1, 2]), Param::of(unused, &[1, 2])];
    let mut gc = GradCheck::new(&mut cx, params, loss, None).unwrap();
    let (l, g) = gc.run().unwrap();
    assert_eq!(l, 5.0);
    assert_eq!(g[0].data, vec![2.0, 4.0]); // d/dp sum p^2 = 2p
    assert_eq!(g[1].data, vec![0.0, 0.0]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    /// Matmul's gradient over random shapes (the pattern of every linear layer).
    #[test]
    fn matmul_gradients_match_finite_differences(n in 1usize..4, k in 1usize..5, m in 1usize..4, seed in any::<u64>()) {
        let mut rng = crate::graph::init::rng(seed);
        let mut cx = Graph::new();
        let a = tensor::input::<(R, C)>(&mut cx, "a");
        let b = tensor::input::<(Dyn<'o'>, C)>(&mut cx, "b");
        tensor::set(a, &[n, k], uniform(&mut rng, n * k, 1.0)).unwrap();
        tensor::set(b, &[m, k], uniform(&mut rng, m * k, 1.0)).unwrap();
        let w = tensor::input::<(R, Dyn<'o'>)>(&mut cx, "w");
        tensor::set(w, &[n, m], uniform(&mut rng, n * m, 1.0)).unwrap();
        let loss = (a.matmul(b.permute::<(C, Dyn<'o'>), _>()) * w).sum_reduce::<(), Axes2<0, 1>>();
        let params = vec![Param::of(a, &[n, k]), Param::of(b, &[m, k])];
        let (err, at) = GradCheck::new(&mut cx, params, loss, Some(device())).unwrap().max_error().unwrap();
        prop_assert!(err < GRADCHECK_TOLERANCE, "{} at {}", err, at);
    }
}

/// Op kinds of a compiled graph, counted.
fn op_counts(cx: &Graph) -> String {
    let rows = crate::graph::primitive::op_counts(cx);
    rows.iter()
        .map(|(k, n)| format!("{k:<16} {n:>3}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A linear layer's forward and backward compile to three sgemm calls: y = x W^T,
/// dW = dy^T x, dx = dy W (no broadcast-multiply-and-sum left over).
#[test]
fn linear_backward_compiles_to_matmuls() {
    use crate::ch01_linear::Linear;
    use crate::graph::dims::{In, Out, Rows};
    use crate::graph::params::Parameters;
    let mut cx = Graph::new();
    let lin = Linear::<In, Out>::new(&mut cx, 3, 2).unwrap();
    let x = tensor::input::<(Rows, In)>(&mut cx, "x");
    let y = lin.forward(x);
    let w = tensor::input::<(Rows, Out)>(&mut cx, "dy");
    let loss = (y * w).sum_reduce::<(), Axes2<0, 1>>();
    let params = [lin.params(), vec![Param::of(x, &[4, 3])]].concat();
    let mut grads = backward(&mut cx, &params, loss.id).unwrap();
    let mut loss_id = loss.id;
    crate::backend::Device::Cpu.compile(&mut cx, (&mut grads, &mut loss_id));
    let counts = op_counts(&cx);
    let matmuls = crate::graph::primitive::op_counts(&cx)
        .into_iter()
        .find(|(k, _)| k == "MatMul2D");
    assert_eq!(matmuls.map(|m| m.1), Some(3), "{counts}");
    insta::assert_snapshot!(counts);
}

/// The same gradients whether the graph runs as built or compiled for the CPU.
#[test]
fn compiled_and_uncompiled_gradients_agree() {
    use crate::ch06_transformer::{TransformerConfig, TransformerLm};
    use crate::ch07_loss::{lm_loss, Weighting};
    use crate::graph::dims::{Batch, Seq};
    use crate::graph::params::Parameters;
    let cfg = TransformerConfig {
        vocab_size: 7,
        context_length: 8,
        d_model: 8,
        n_layers: 1,
        n_heads: 2,
        d_ff: 8,
        rope_theta: 10_000.0,
    };
    let run = |device: Option<Device>| {
        let mut cx = Graph::new();
        let model = TransformerLm::new(&mut cx, &cfg).unwrap();
        model.init(&mut crate::graph::init::rng(21)).unwrap();
        let ids = tensor::input::<(Batch, Seq)>(&mut cx, "ids");
        let targets = tensor::input::<(Batch, Seq)>(&mut cx, "targets");
        let mask = tensor::input::<(Batch, Seq)>(&mut cx, "mask");
        model
            .set_ids(ids, [2, 4], &[1, 2, 3, 4, 5, 6, 0, 1])
            .unwrap();
        tensor::set(
            targets,
            &[2, 4],
            vec![2.0, 3.0, 4.0, 5.0, 6.0, 0.0, 1.0, 2.0],
        )
        .unwrap();
        tensor::set(mask, &[2, 4], vec![1.0; 8]).unwrap();
        let loss = lm_loss(&model, ids, targets, mask, Weighting::Token);
        let mut gc = GradCheck::new(&mut cx, model.params(), loss, device).unwrap();
        gc.run().unwrap()
    };
    let (la, ga) = run(None);
    let (lb, gb) = run(Some(device()));
    assert!((la - lb).abs() < 1e-5, "{la} vs {lb}");
    for (a, b) in ga.iter().zip(&gb) {
        crate::testing::assert_close(&a.data, &b.data, 1e-5).unwrap();
    }
}

/// The building blocks' gradients over random small shapes and values (6 cases each: every
/// case runs the graph twice per parameter element).
mod random_shapes {
    use super::*;
    use crate::ch02_rmsnorm::RmsNorm;
    use crate::ch04_rope::{Rope, ROPE_THETA};
    use crate::ch05_attention::{causal_mask, masked_softmax, MultiHeadAttention};
    use crate::graph::dims::{Batch, DHead, DModel, Heads, MaxSeq, Seq, SrcSeq};
    use crate::graph::params::Parameters;
    use crate::testing::{assert_gradcheck, weighted_sum};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(6))]
        #[test]
        fn rms_norm(b in 1usize..3, s in 1usize..3, d in 2usize..6, seed in any::<u64>()) {
            let mut rng = crate::graph::init::rng(seed);
            let mut cx = Graph::new();
            let n = RmsNorm::<DModel>::new(&mut cx, d).unwrap();
            n.load(uniform(&mut rng, d, 2.0)).unwrap();
            let x = tensor::input::<(Batch, Seq, DModel)>(&mut cx, "x");
            let values = uniform(&mut rng, b * s * d, 2.0);
            // Rows whose RMS is below 0.5 are skipped: the norm's third derivative grows like
            // 1/rms^3, and with it the central difference's truncation error (a row (0.1, -0.2)
            // gave a normalised error of 0.025 with h = 1e-2, the backward being right).
            let rms = |row: &[f32]| (row.iter().map(|v| v * v).sum::<f32>() / d as f32).sqrt();
            prop_assume!(values.chunks(d).all(|row| rms(row) >= 0.5));
            tensor::set(x, &[b, s, d], values).unwrap();
            let loss = weighted_sum(n.forward(x), &[b, s, d], seed);
            assert_gradcheck(&mut cx, [n.params(), vec![Param::of(x, &[b, s, d])]].concat(), loss);
        }

        #[test]
        fn softmax(b in 1usize..3, s in 1usize..3, t in 1usize..5, seed in any::<u64>()) {
            let mut rng = crate::graph::init::rng(seed);
            let mut cx = Graph::new();
            let x = tensor::input::<(Batch, Heads, Seq, SrcSeq)>(&mut cx, "scores");
            tensor::set(x, &[b, 1, s, t], uniform(&mut rng, b * s * t, 3.0)).unwrap();
            let allowed = cx.constant(1.0).expand::<(Batch, Heads, Seq, SrcSeq), _>();
            let loss = weighted_sum(masked_softmax(x, allowed), &[b, 1, s, t], seed);
            assert_gradcheck(&mut cx, vec![Param::of(x, &[b, 1, s, t])], loss);
        }

        #[test]
        fn rope(h in 1usize..3, s in 1usize..4, half in 1usize..3, seed in any::<u64>()) {
            let d = 2 * half;
            let mut cx = Graph::new();
            let rope = Rope::<MaxSeq, DHead>::new(&mut cx, 4, d, ROPE_THETA).unwrap();
            let x = tensor::input::<(Batch, Heads, Seq, DHead)>(&mut cx, "q");
            tensor::set(x, &[1, h, s, d], uniform(&mut crate::graph::init::rng(seed), h * s * d, 2.0)).unwrap();
            let loss = weighted_sum(rope.forward(x), &[1, h, s, d], seed);
            assert_gradcheck(&mut cx, vec![Param::of(x, &[1, h, s, d])], loss);
        }

        #[test]
        fn causal_attention(b in 1usize..3, s in 1usize..4, heads in 1usize..3, seed in any::<u64>()) {
            let d = 2 * heads;
            let mut rng = crate::graph::init::rng(seed);
            let mut cx = Graph::new();
            let rope = Rope::new(&mut cx, 4, 2, ROPE_THETA).unwrap();
            let attn = MultiHeadAttention::<DModel>::new(&mut cx, d, heads, Some(rope)).unwrap();
            for p in attn.projections() {
                p.load(uniform(&mut rng, d * d, 1.0)).unwrap();
            }
            let x = tensor::input::<(Batch, Seq, DModel)>(&mut cx, "x");
            tensor::set(x, &[b, s, d], uniform(&mut rng, b * s * d, 1.0)).unwrap();
            let causal = causal_mask::<Seq>(&mut cx).expand::<(Batch, Seq, Seq), _>();
            let loss = weighted_sum(attn.attend(x, x, causal), &[b, s, d], seed);
            assert_gradcheck(&mut cx, [attn.params(), vec![Param::of(x, &[b, s, d])]].concat(), loss);
        }
    }
}

/// A hand-edited view that the rules cannot undo exactly (here a broadcast dim that is also
/// padded) is an error naming the node, not a wrong gradient.
#[test]
fn an_unsupported_view_is_refused_by_name() {
    let mut cx = Graph::new();
    let p = tensor::input::<(R,)>(&mut cx, "p");
    let mut view = p.expand::<(R, C), Axis<1>>();
    let fake = view.shape.indexes[1];
    view.shape.padding[fake] = (1.into(), 0.into());
    let w = tensor::input::<(R, C)>(&mut cx, "w");
    let loss = (view * w).sum_reduce::<(), Axes2<0, 1>>();
    let err = backward(
        &mut cx,
        &[Param {
            name: "p".into(),
            id: p.id,
            shape: vec![2],
        }],
        loss.id,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("Mul") && msg.contains("broadcast dim that is also sliced or padded"),
        "{msg}"
    );
}

/// Regression: `sum(0.5 * exp(x W^T))` differentiated and compiled for the CPU. After luminal's
/// ArithmeticElimination a `Mul` is left with inputs of different ranks, which the strided
/// kernels must leave to the stock op; compiled and uncompiled gradients agree.
#[test]
fn a_scaled_unary_gradient_runs_on_the_fast_cpu_backend() {
    use crate::ch01_linear::Linear;
    use crate::graph::dims::{In, Out, Rows};
    use crate::graph::params::Parameters;
    let run = |device: Option<Device>| {
        let mut cx = Graph::new();
        let lin = Linear::<In, Out>::new(&mut cx, 3, 2).unwrap();
        lin.load(vec![0.1, -0.2, 0.3, 0.4, 0.5, -0.6]).unwrap();
        let x = tensor::input::<(Rows, In)>(&mut cx, "x");
        tensor::set(x, &[2, 3], vec![1.0, 0.5, -1.0, 0.25, 2.0, 0.0]).unwrap();
        let loss = (lin.forward(x).exp() * 0.5).sum_reduce::<(), Axes2<0, 1>>();
        let mut gc = GradCheck::new(&mut cx, lin.params(), loss, device).unwrap();
        gc.run().unwrap()
    };
    let (la, ga) = run(None);
    let (lb, gb) = run(Some(crate::backend::Device::Cpu));
    assert!((la - lb).abs() < 1e-6, "{la} vs {lb}");
    crate::testing::assert_close(&ga[0].data, &gb[0].data, 1e-6).unwrap();
}
