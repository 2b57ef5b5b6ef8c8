use super::*;
use crate::testing::device;
use approx::assert_relative_eq;
use proptest::prelude::*;

/// Hand-computed values, one per primitive: a = [[8, 2, 7], [0.25, 4, -3]], b = 3 everywhere.
#[test]
fn each_primitive_on_hand_values() {
    let a = [8.0, 2.0, 7.0, 0.25, 4.0, -3.0];
    let b = [3.0; 6];
    let expected: [(Primitive, Vec<f32>); 12] = [
        (
            Primitive::Log2,
            vec![3.0, 1.0, 7f32.log2(), -2.0, 2.0, f32::NAN],
        ),
        (
            Primitive::Exp2,
            vec![256.0, 4.0, 128.0, 2f32.powf(0.25), 16.0, 0.125],
        ),
        (
            Primitive::Sin,
            vec![
                8f32.sin(),
                2f32.sin(),
                7f32.sin(),
                0.25f32.sin(),
                4f32.sin(),
                -(3f32.sin()),
            ],
        ),
        (
            Primitive::Sqrt,
            vec![8f32.sqrt(), 2f32.sqrt(), 7f32.sqrt(), 0.5, 2.0, f32::NAN],
        ),
        (
            Primitive::Recip,
            vec![0.125, 0.5, 1.0 / 7.0, 4.0, 0.25, -1.0 / 3.0],
        ),
        (Primitive::Add, vec![11.0, 5.0, 10.0, 3.25, 7.0, 0.0]),
        (Primitive::Mul, vec![24.0, 6.0, 21.0, 0.75, 12.0, -9.0]),
        (Primitive::Mod, vec![2.0, 2.0, 1.0, 0.25, 1.0, -0.0]),
        (Primitive::LessThan, vec![0.0, 1.0, 0.0, 1.0, 0.0, 1.0]),
        (Primitive::SumReduce, vec![17.0, 1.25]),
        (Primitive::MaxReduce, vec![8.0, 4.0]),
        (Primitive::Contiguous, vec![8.0, 0.25, 2.0, 4.0, 7.0, -3.0]),
    ];
    for (op, want) in expected {
        let reference = op.reference(&a, &b, 2, 3);
        let graph = run_primitive(op, &a, &b, 2, 3, device()).unwrap();
        assert_eq!(graph.shape, reference.shape, "{op:?}");
        for ((g, r), w) in graph.data.iter().zip(&reference.data).zip(&want) {
            if w.is_nan() {
                assert!(g.is_nan() && r.is_nan(), "{op:?}: NaN expected");
            } else {
                // 1e-6 relative: one f32 rounding, plus exp2/log2 approximations.
                assert_relative_eq!(*g, *w, max_relative = 1e-6);
                assert_relative_eq!(*r, *w, max_relative = 1e-6);
            }
        }
    }
}

#[test]
fn affine_on_hand_values() {
    let mut cx = Graph::new();
    let mut g = affine(&mut cx);
    device().compile(&mut cx, g.handles());
    // [[1, 2], [3, 4]] x [[5, 6], [7, 8]] = [[19, 22], [43, 50]]; + [1, -1].
    let y = g
        .run(&[1., 2., 3., 4.], &[5., 6., 7., 8.], &[1., -1.], 2, 2, 2)
        .unwrap();
    assert_eq!(y.shape, vec![2, 2]);
    assert_eq!(y.data, vec![20., 21., 44., 49.]); // small integers: exact in f32
}

#[test]
fn views_are_free() {
    let (before, after) = views_add_no_nodes(&mut Graph::new());
    assert_eq!(before, after);
}

#[test]
fn a_permuted_view_reads_transposed() {
    let mut cx = Graph::new();
    let x = tensor::input::<(Rows, In)>(&mut cx, "x");
    tensor::set(x, &[2, 3], vec![1., 2., 3., 4., 5., 6.]).unwrap();
    let t = x.permute::<(In, Rows), Axes2<1, 0>>();
    cx.execute();
    let read = tensor::read(t).unwrap();
    assert_eq!(read.shape, vec![3, 2]);
    assert_eq!(read.data, vec![1., 4., 2., 5., 3., 6.]);
}

/// The corrected CPU pipeline turns the 2D matmul into sgemm; luminal's own pipeline,
/// with its SumReduce(0) bug, leaves the Mul + SumReduce pair in place.
#[test]
fn cpu_pipeline_accelerates_2d_matmul_where_stock_does_not() {
    let count = |cx: &Graph, kind: &str| {
        crate::graph::primitive::op_counts(cx)
            .into_iter()
            .find(|(k, _)| k == kind)
            .map_or(0, |(_, n)| n)
    };
    let mut ours = Graph::new();
    let mut g = affine(&mut ours);
    crate::backend::Device::Cpu.compile(&mut ours, g.handles());
    assert_eq!(count(&ours, "MatMul2D"), 1);
    assert_eq!(count(&ours, "SumReduce"), 0);

    let mut stock = Graph::new();
    let mut s = affine(&mut stock);
    stock.compile(luminal::compilers::MatMulCompiler::default(), s.handles());
    assert_eq!(count(&stock, "MatMul2D"), 0);
    assert_eq!(count(&stock, "SumReduce"), 1);
}

#[test]
fn unset_input_is_a_clear_error() {
    let mut cx = Graph::new();
    let g = affine(&mut cx);
    tensor::set(g.x, &[1, 1], vec![1.0]).unwrap();
    let err = tensor::execute(&mut cx).unwrap_err().to_string();
    assert!(err.contains("input 'W' has no value"), "{err}");
}

#[test]
fn wrong_data_length_is_a_clear_error() {
    let mut cx = Graph::new();
    let g = affine(&mut cx);
    let err = tensor::set(g.x, &[2, 3], vec![1.0; 5])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("x: shape [2, 3] needs 6 values, but 5 were given"),
        "{err}"
    );
}

#[test]
fn compiled_op_listing_snapshot() {
    let mut cx = Graph::new();
    let mut g = affine(&mut cx);
    let before = crate::graph::viz::op_listing(&cx);
    crate::backend::Device::Cpu.compile(&mut cx, g.handles());
    let after = crate::graph::viz::op_listing(&cx);
    insta::assert_snapshot!(format!(
        "as built:\n{before}\ncompiled for the CPU:\n{after}"
    ));
}

fn matrix(max_rows: usize, max_cols: usize) -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (1..=max_rows, 1..=max_cols).prop_flat_map(|(r, c)| {
        (
            Just(r),
            Just(c),
            prop::collection::vec(-10.0f32..10.0, r * c),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// Graph (compiled and interpreted) == loops, for random shapes and values.
    /// Tolerance: sums of k products of values up to 10 in f32, summed in a different
    /// order by sgemm: 1e-4 relative to the magnitude sum_p |x||w| bounds the error.
    #[test]
    fn affine_matches_reference(
        (n, k, x) in matrix(6, 7),
        m in 1usize..6,
        seed in any::<u64>(),
        interpret in any::<bool>(),
    ) {
        use rand::Rng;
        let mut rng = crate::graph::init::rng(seed);
        let w: Vec<f32> = (0..k * m).map(|_| rng.gen_range(-10.0..10.0)).collect();
        let c: Vec<f32> = (0..m).map(|_| rng.gen_range(-10.0..10.0)).collect();
        let mut cx = Graph::new();
        let mut g = affine(&mut cx);
        let device = if interpret { Device::Interpreter } else { device() };
        device.compile(&mut cx, g.handles());
        let y = g.run(&x, &w, &c, n, k, m).unwrap();
        let xw = matmul_ref(&x, &w, n, k, m);
        let abs_x: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        let abs_w: Vec<f32> = w.iter().map(|v| v.abs()).collect();
        let scale = matmul_ref(&abs_x, &abs_w, n, k, m);
        prop_assert_eq!(y.shape, vec![n, m]);
        for i in 0..n * m {
            let want = xw[i] + c[i % m];
            prop_assert!((y.data[i] - want).abs() <= 1e-4 * (scale[i] + c[i % m].abs()) + 1e-6,
                "y[{}] = {} vs {}", i, y.data[i], want);
        }
    }

    /// Every elementwise primitive agrees with its reference on random shapes and values.
    #[test]
    fn primitives_match_reference((rows, cols, a) in matrix(4, 5), shift in 0.5f32..3.0) {
        let b: Vec<f32> = a.iter().map(|v| v.abs() + shift).collect(); // positive divisors
        let a_pos: Vec<f32> = a.iter().map(|v| v.abs() + 0.1).collect(); // for log2 / sqrt
        for op in Primitive::ALL {
            let input = if matches!(op, Primitive::Log2 | Primitive::Sqrt) { &a_pos } else { &a };
            let want = op.reference(input, &b, rows, cols);
            let got = run_primitive(op, input, &b, rows, cols, device()).unwrap();
            prop_assert_eq!(&got.shape, &want.shape);
            for (g, w) in got.data.iter().zip(&want.data) {
                // exp2 of up to 2^10 and log2/sin approximations: 1e-5 relative.
                prop_assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{:?}: {} vs {}", op, g, w);
            }
        }
    }
}

/// Book, chapter 0, exercise "Predict what `x.exp()` records": one input, then a `Constant`
/// ($1/\ln 2$), a `Mul` and an `Exp2` (4 nodes); compiling fuses the `Mul` and the `Exp2` into one
/// op (3 nodes). Node counts are exact: no tolerance.
#[test]
fn exercise_exp_records_three_nodes_and_fuses_to_one() {
    let mut cx = Graph::new();
    let mut x = tensor::input::<(Rows, In)>(&mut cx, "x");
    assert_eq!(cx.graph.node_count(), 1);
    let mut y = x.exp().retrieve();
    assert_eq!(cx.graph.node_count(), 4);
    let built = crate::graph::viz::op_listing(&cx);
    assert!(built.contains("Constant(1.442695)"), "{built}");
    assert!(built.contains("Exp2("), "{built}");
    crate::backend::Device::Cpu.compile(&mut cx, (&mut x, &mut y));
    assert_eq!(cx.graph.node_count(), 3);
    let compiled = crate::graph::viz::op_listing(&cx);
    assert!(compiled.contains("Fused(Mul, Exp2)"), "{compiled}");
}

/// Book, chapter 0, exercise "Signs and NaN": `Mod` takes the sign of `a` (C's `fmod`), and
/// `LessThan` with a NaN operand is 0. Small integers and 0/1 flags: exact, no tolerance.
#[test]
fn exercise_mod_and_less_than_edge_cases() {
    let a = [-7.0, 7.0, f32::NAN, -0.5];
    let b = [3.0, -3.0, 1.0, 1.0];
    let modulo = run_primitive(Primitive::Mod, &a, &b, 1, 4, device()).unwrap();
    assert_eq!(&modulo.data[..2], &[-1.0, 1.0]);
    assert!(modulo.data[2].is_nan());
    assert_eq!(modulo.data[3], -0.5);
    let less = run_primitive(Primitive::LessThan, &a, &b, 1, 4, device()).unwrap();
    assert_eq!(less.data, vec![1.0, 0.0, 0.0, 1.0]);
}
