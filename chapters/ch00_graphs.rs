//! # Chapter 0 — Graphs: what luminal is
//!
//! luminal does not compute when you write `a * b`: it records a node in a graph. Nothing runs
//! until the graph is compiled (rewritten by passes for a device) and executed. Every model in
//! this course is such a graph, built from 12 primitive ops; shapes live on the *edges* as
//! views, so permuting, broadcasting and slicing copy nothing.
//!
//! Book page: [Chapter 0](../book/ch00_graphs.html).

use luminal::prelude::*;

use crate::device::Device;
use crate::dims::{In, Out, Rows};
use crate::error::Result;
use crate::tensor::{self, HostTensor};

// ANCHOR: primitives
/// The 12 primitive ops. Every luminal graph, however high-level the code that built it,
/// is made of these plus two kinds of source node: `Function` (inputs) and `Constant`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Primitive {
    // Unary, elementwise: y = f(x).
    Log2,
    Exp2,
    Sin,
    Sqrt,
    Recip,
    // Binary, elementwise: y = f(a, b).
    Add,
    Mul,
    Mod,
    LessThan,
    // Reductions over one dimension.
    SumReduce,
    MaxReduce,
    // Materialise a view into a fresh, row-major buffer.
    Contiguous,
}
// ANCHOR_END: primitives

impl Primitive {
    /// All 12, in the order above.
    pub const ALL: [Primitive; 12] = [
        Primitive::Log2,
        Primitive::Exp2,
        Primitive::Sin,
        Primitive::Sqrt,
        Primitive::Recip,
        Primitive::Add,
        Primitive::Mul,
        Primitive::Mod,
        Primitive::LessThan,
        Primitive::SumReduce,
        Primitive::MaxReduce,
        Primitive::Contiguous,
    ];

    // ANCHOR: primitive_ref
    /// Reference semantics as plain loops, for `a` and `b` of shape (rows, cols).
    /// Reductions reduce the last dimension; `Contiguous` is applied to the transpose of `a`
    /// (a view), so it returns `a^T` materialised, shape (cols, rows).
    pub fn reference(self, a: &[f32], b: &[f32], rows: usize, cols: usize) -> HostTensor {
        let elementwise = |f: fn(f32, f32) -> f32| {
            let data = a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect();
            HostTensor {
                shape: vec![rows, cols],
                data,
            }
        };
        let reduce = |f: fn(f32, f32) -> f32, init: f32| {
            let data = a
                .chunks(cols)
                .map(|row| row.iter().copied().fold(init, f))
                .collect();
            HostTensor {
                shape: vec![rows],
                data,
            }
        };
        match self {
            Primitive::Log2 => elementwise(|x, _| x.log2()),
            Primitive::Exp2 => elementwise(|x, _| x.exp2()),
            Primitive::Sin => elementwise(|x, _| x.sin()),
            Primitive::Sqrt => elementwise(|x, _| x.sqrt()),
            Primitive::Recip => elementwise(|x, _| 1.0 / x),
            Primitive::Add => elementwise(|x, y| x + y),
            Primitive::Mul => elementwise(|x, y| x * y),
            Primitive::Mod => elementwise(|x, y| x % y), // sign follows x, like C's fmod
            Primitive::LessThan => elementwise(|x, y| if x < y { 1.0 } else { 0.0 }),
            Primitive::SumReduce => reduce(|acc, x| acc + x, 0.0),
            Primitive::MaxReduce => reduce(f32::max, f32::NEG_INFINITY),
            Primitive::Contiguous => {
                let mut data = vec![0.0; rows * cols];
                for r in 0..rows {
                    for c in 0..cols {
                        data[c * rows + r] = a[r * cols + c];
                    }
                }
                HostTensor {
                    shape: vec![cols, rows],
                    data,
                }
            }
        }
    }
    // ANCHOR_END: primitive_ref

    // ANCHOR: primitive_graph
    /// The same op as a graph node, through luminal's high-level API.
    /// The result is shapeless (`GraphTensor<()>`) because reductions change the rank.
    pub fn apply(self, a: GraphTensor<(Rows, In)>, b: GraphTensor<(Rows, In)>) -> GraphTensor<()> {
        match self {
            Primitive::Log2 => a.log2().no_shape(),
            Primitive::Exp2 => a.exp2().no_shape(),
            Primitive::Sin => a.sin().no_shape(),
            Primitive::Sqrt => a.sqrt().no_shape(),
            Primitive::Recip => a.recip().no_shape(),
            Primitive::Add => (a + b).no_shape(),
            Primitive::Mul => (a * b).no_shape(),
            Primitive::Mod => (a % b).no_shape(),
            Primitive::LessThan => a.less_than(b).no_shape(),
            Primitive::SumReduce => a.sum_reduce::<(Rows,), Axis<1>>().no_shape(),
            Primitive::MaxReduce => a.max_reduce::<(Rows,), Axis<1>>().no_shape(),
            Primitive::Contiguous => a
                .permute::<(In, Rows), Axes2<1, 0>>()
                .contiguous()
                .no_shape(),
        }
    }
    // ANCHOR_END: primitive_graph
}

/// Build, compile and run one primitive on `a`, `b` of shape (rows, cols); read the result.
pub fn run_primitive(
    op: Primitive,
    a: &[f32],
    b: &[f32],
    rows: usize,
    cols: usize,
    device: Device,
) -> Result<HostTensor> {
    let mut cx = Graph::new();
    let mut ta = tensor::input::<(Rows, In)>(&mut cx, "a");
    let mut tb = tensor::input::<(Rows, In)>(&mut cx, "b");
    let mut out = op.apply(ta, tb).retrieve();
    device.compile(&mut cx, (&mut ta, &mut tb, &mut out));
    tensor::set(ta, &[rows, cols], a.to_vec())?;
    tensor::set(tb, &[rows, cols], b.to_vec())?;
    tensor::execute(&mut cx)?;
    tensor::read(out)
}

// ANCHOR: matmul_ref
/// Matrix product as three loops: `x` (n, k) times `w` (k, m) gives (n, m).
pub fn matmul_ref(x: &[f32], w: &[f32], n: usize, k: usize, m: usize) -> Vec<f32> {
    let mut y = vec![0.0; n * m];
    for i in 0..n {
        for j in 0..m {
            y[i * m + j] = (0..k).map(|p| x[i * k + p] * w[p * m + j]).sum();
        }
    }
    y
}
// ANCHOR_END: matmul_ref

// ANCHOR: affine
/// The handles of a small graph `y = x W + c`: (n, k) x (k, m) + a (m,) row broadcast.
pub struct Affine {
    pub x: GraphTensor<(Rows, In)>,
    pub w: GraphTensor<(In, Out)>,
    pub c: GraphTensor<(Out,)>,
    pub y: GraphTensor<(Rows, Out)>,
}

/// Record `y = x W + c` in `cx`. Nothing is computed here: each line adds nodes.
pub fn affine(cx: &mut Graph) -> Affine {
    let x = tensor::input::<(Rows, In)>(cx, "x");
    let w = tensor::input::<(In, Out)>(cx, "W");
    let c = tensor::input::<(Out,)>(cx, "c");
    // matmul = broadcast multiply (n, m, k) + SumReduce over k; expand is a view (no node).
    let y = x.matmul(w) + c.expand::<(Rows, Out), Axis<0>>();
    Affine {
        x,
        w,
        c,
        y: y.retrieve(),
    }
}
// ANCHOR_END: affine

impl Affine {
    /// Every handle, for `Device::compile`'s remap.
    pub fn handles(&mut self) -> impl ToIdsMut + '_ {
        (&mut self.x, &mut self.w, &mut self.c, &mut self.y)
    }

    /// Feed x (n, k), W (k, m), c (m,); execute; read y (n, m).
    pub fn run(
        &self,
        x: &[f32],
        w: &[f32],
        c: &[f32],
        n: usize,
        k: usize,
        m: usize,
    ) -> Result<HostTensor> {
        tensor::set(self.x, &[n, k], x.to_vec())?;
        tensor::set(self.w, &[k, m], w.to_vec())?;
        tensor::set(self.c, &[m], c.to_vec())?;
        tensor::execute(self.x.graph())?;
        tensor::read(self.y)
    }
}

// ANCHOR: views
/// Views cost nothing: permute, expand (broadcast) and slice only change the edge's
/// `ShapeTracker`. Returns (nodes before, nodes after) taking three views of `x`.
pub fn views_add_no_nodes(cx: &mut Graph) -> (usize, usize) {
    let x = tensor::input::<(Rows, In)>(cx, "x");
    let before = cx.graph.node_count();
    let _transposed: GraphTensor<(In, Rows)> = x.permute::<_, Axes2<1, 0>>();
    let _broadcast: GraphTensor<(Rows, In, Out)> = x.expand::<_, Axis<2>>();
    let _first_row = x.slice((..symbolic::Expression::from(1), ..));
    (before, cx.graph.node_count())
}
// ANCHOR_END: views

/// A one-paragraph tour of this chapter, printed by `cargo run --release -- tour`.
pub fn graphs_demo() -> Result<String> {
    let mut cx = Graph::new();
    let mut g = affine(&mut cx);
    let before = cx.graph.node_count();
    Device::Cpu.compile(&mut cx, g.handles());
    let after = cx.graph.node_count();
    let y = g.run(&[1., 2., 3., 4.], &[1., 0., 0., 1.], &[10., 20.], 2, 2, 2)?;
    Ok(format!(
        "y = x W + c with x = [[1, 2], [3, 4]], W = I, c = [10, 20] -> {:?}\n\
         graph: {before} nodes as built, {after} after compiling for the CPU \
         (Mul + SumReduce became one MatMul2D)",
        y.data
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
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
            let graph = run_primitive(op, &a, &b, 2, 3, Device::Cpu).unwrap();
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
        Device::Cpu.compile(&mut cx, g.handles());
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
            crate::device::op_counts(cx)
                .into_iter()
                .find(|(k, _)| k == kind)
                .map_or(0, |(_, n)| n)
        };
        let mut ours = Graph::new();
        let mut g = affine(&mut ours);
        Device::Cpu.compile(&mut ours, g.handles());
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
        let before = crate::viz::op_listing(&cx);
        Device::Cpu.compile(&mut cx, g.handles());
        let after = crate::viz::op_listing(&cx);
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
            let mut rng = crate::init::rng(seed);
            let w: Vec<f32> = (0..k * m).map(|_| rng.gen_range(-10.0..10.0)).collect();
            let c: Vec<f32> = (0..m).map(|_| rng.gen_range(-10.0..10.0)).collect();
            let mut cx = Graph::new();
            let mut g = affine(&mut cx);
            let device = if interpret { Device::Interpreter } else { Device::Cpu };
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
                let got = run_primitive(op, input, &b, rows, cols, Device::Cpu).unwrap();
                prop_assert_eq!(&got.shape, &want.shape);
                for (g, w) in got.data.iter().zip(&want.data) {
                    // exp2 of up to 2^10 and log2/sin approximations: 1e-5 relative.
                    prop_assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{:?}: {} vs {}", op, g, w);
                }
            }
        }
    }
}
