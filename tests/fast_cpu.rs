//! The strided CPU kernels (src/backend/fast_cpu/mod.rs) against luminal's stock ops as the oracle:
//! random shapes (dynamic dims), random values, and every kind of view — permuted, broadcast,
//! sliced, padded, reshaped — fed to every replaced op. The kernels read the same elements
//! and add in the same order, so results must be bit-for-bit equal.

use luminal::shape::symbolic::Expression;
use proptest::prelude::*;
use transformer_course::prelude::*;

type R = Dyn<'r'>;
type C = Dyn<'c'>;

/// One of the views the course's graphs produce, of an (r, c) tensor, as an (r, c) tensor.
fn view(x: GraphTensor<(R, C)>, kind: u8, [r, c]: [usize; 2]) -> GraphTensor<(R, C)> {
    match kind % 6 {
        0 => x,
        // A permuted read of a transposed buffer.
        1 => x.permute::<(C, R), _>().contiguous().permute::<(R, C), _>(),
        // Slice off the last column and pad a zero column in front: a shift right. (A slice
        // that starts past 0 on a symbolic dim gets a wrong shape in luminal 0.2.0, bug 5.)
        2 => {
            let cut = x.slice((.., ..Expression::from('c') - 1));
            cut.pad::<(R, C), usize, usize>(&[(0, 0), (1, 0)])
        }
        // A broadcast: each row's max repeated along the row.
        3 => x.max_reduce::<(R,), Axis<1>>().expand::<(R, C), Axis<1>>(),
        // A reshape: the buffer read as (c, r), transposed back to (r, c).
        4 => {
            x.graph().dyn_map.insert('q', c);
            x.graph().dyn_map.insert('z', r);
            let t = (x * 1.0)
                .reshape::<(Dyn<'q'>, Dyn<'z'>)>()
                .permute::<(Dyn<'z'>, Dyn<'q'>), _>();
            GraphTensor::from_id(t.id, t.shape, t.graph_ref) // (z, q) = (r, c)
        }
        // Pad a row of zeros at the end (materialised), then slice it off again.
        _ => {
            let padded = x.pad::<(R, C), usize, usize>(&[(0, 1), (0, 0)]);
            let back = padded.slice((..Expression::from('r'), ..));
            GraphTensor::from_id(back.id, back.shape, back.graph_ref)
        }
    }
}

fn run(device: Device, case: &Case) -> Vec<f32> {
    let mut cx = Graph::new();
    let mut x = tensor::input::<(R, C)>(&mut cx, "x");
    let mut y = tensor::input::<(R, C)>(&mut cx, "y");
    let shape = [case.r, case.c];
    let (a, b) = (view(x, case.views.0, shape), view(y, case.views.1, shape));
    let combined = match case.op % 4 {
        0 => a + b,
        1 => a * b,
        2 => a.less_than(b),
        _ => a % (b.abs() + 1.0),
    };
    // Then a reduction over either axis, read through one more view.
    let mut out = match case.reduce % 3 {
        0 => view(combined, case.views.2, shape)
            .sum_reduce::<(C,), Axis<0>>()
            .expand::<(R, C), Axis<0>>(),
        1 => view(combined, case.views.2, shape)
            .max_reduce::<(R,), Axis<1>>()
            .expand::<(R, C), Axis<1>>(),
        _ => view(combined, case.views.2, shape),
    }
    .contiguous()
    .retrieve();
    device.compile(&mut cx, (&mut x, &mut y, &mut out));
    tensor::set(x, &shape, case.x.clone()).unwrap();
    tensor::set(y, &shape, case.y.clone()).unwrap();
    tensor::execute(&mut cx).unwrap();
    tensor::read(out).unwrap().data
}

#[derive(Debug, Clone)]
struct Case {
    r: usize,
    c: usize,
    x: Vec<f32>,
    y: Vec<f32>,
    views: (u8, u8, u8),
    op: u8,
    reduce: u8,
}

fn case() -> impl Strategy<Value = Case> {
    case_of(1..5, 2..6)
}

/// Cases big enough (up to 67 600 elements) that the kernels split rows across threads.
fn big_case() -> impl Strategy<Value = Case> {
    case_of(150..260, 150..260)
}

fn case_of(
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) -> impl Strategy<Value = Case> {
    (rows, cols).prop_flat_map(|(r, c)| {
        (
            prop::collection::vec(-4.0f32..4.0, r * c),
            prop::collection::vec(-4.0f32..4.0, r * c),
            any::<(u8, u8, u8)>(),
            any::<u8>(),
            any::<u8>(),
        )
            .prop_map(move |(x, y, views, op, reduce)| Case {
                r,
                c,
                x,
                y,
                views,
                op,
                reduce,
            })
    })
}

/// Bit-for-bit equality with the stock ops (NaN equals NaN).
fn same_as_stock(fast: &[f32], stock: &[f32]) -> Result<(), TestCaseError> {
    prop_assert_eq!(fast.len(), stock.len());
    for (i, (f, s)) in fast.iter().zip(stock).enumerate() {
        prop_assert!(
            f == s || (f.is_nan() && s.is_nan()),
            "element {}: fast {} vs stock {}",
            i,
            f,
            s
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn strided_kernels_equal_the_stock_ops(case in case()) {
        same_as_stock(&run(Device::Cpu, &case), &run(Device::Interpreter, &case))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]
    /// The same on large tensors, with 2 kernel threads: each thread's share of rows must be
    /// computed exactly as one thread would.
    #[test]
    fn threaded_kernels_equal_the_stock_ops(case in big_case()) {
        transformer_course::backend::fast_cpu::set_threads(2); // before the pool starts, if it has not
        same_as_stock(&run(Device::Cpu, &case), &run(Device::Interpreter, &case))?;
    }
}

// ---- fusion -----------------------------------------------------------------------------

/// A random elementwise program: each step combines an earlier value (so values can have
/// several readers, which ends a fused group) with one of the inputs read through a view
/// (so groups have strided, broadcast, padded and sliced inputs), then maybe a reduction.
#[derive(Debug, Clone)]
struct Chain {
    r: usize,
    c: usize,
    inputs: [Vec<f32>; 3],
    /// (op, which earlier value, which input, view of the input)
    steps: Vec<(u8, u8, u8, u8)>,
    reduce: u8,
}

fn chain_of(
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) -> impl Strategy<Value = Chain> {
    (rows, cols).prop_flat_map(|(r, c)| {
        let values = || prop::collection::vec(-4.0f32..4.0, r * c);
        (
            [values(), values(), values()],
            prop::collection::vec(any::<(u8, u8, u8, u8)>(), 1..7),
            any::<u8>(),
        )
            .prop_map(move |(inputs, steps, reduce)| Chain {
                r,
                c,
                inputs,
                steps,
                reduce,
            })
    })
}

/// Whether the chain uses `exp2`, which the fused kernels compute with a polynomial.
fn uses_exp2(chain: &Chain) -> bool {
    chain.steps.iter().any(|s| s.0 % 9 == 2)
}

fn run_chain(device: Device, chain: &Chain) -> Vec<f32> {
    let mut cx = Graph::new();
    let shape = [chain.r, chain.c];
    let mut ins = ["x", "y", "z"].map(|n| tensor::input::<(R, C)>(&mut cx, n));
    let mut values = vec![view(ins[0], 0, shape)];
    for &(op, earlier, input, kind) in &chain.steps {
        let v = values[earlier as usize % values.len()];
        let w = view(ins[input as usize % 3], kind, shape);
        let next = match op % 9 {
            0 => v + w,
            1 => v * w,
            2 => v.sin().exp2() * w, // sin keeps exp2's argument small
            3 => v.abs().sqrt() + w,
            4 => (v * v + 1.0).recip() * w,
            5 => v.less_than(w),
            6 => v % (w.abs() + 1.0),
            7 => v * v, // one value read twice
            // a view of an intermediate value: a plain read no longer, so a group ends here
            _ => view(v, kind, shape) + w,
        };
        values.push(next);
    }
    let last = *values.last().expect("a value");
    let mut out = match chain.reduce % 5 {
        0 => last
            .sum_reduce::<(C,), Axis<0>>()
            .expand::<(R, C), Axis<0>>(),
        1 => last
            .sum_reduce::<(R,), Axis<1>>()
            .expand::<(R, C), Axis<1>>(),
        2 => last
            .max_reduce::<(C,), Axis<0>>()
            .expand::<(R, C), Axis<0>>(),
        3 => last
            .max_reduce::<(R,), Axis<1>>()
            .expand::<(R, C), Axis<1>>(),
        _ => last,
    }
    .contiguous()
    .retrieve();
    let [x, y, z] = &mut ins;
    device.compile(&mut cx, (&mut *x, &mut *y, &mut *z, &mut out));
    for (t, v) in ins.iter().zip(&chain.inputs) {
        tensor::set(*t, &shape, v.clone()).unwrap();
    }
    tensor::execute(&mut cx).unwrap();
    tensor::read(out).unwrap().data
}

/// Fused programs against the interpreter: bit for bit, except after `exp2` (about 2 ulp in
/// the fused kernels, then carried through at most six more ops of values within ±100), so
/// there the tolerance is 1e-4 relative to max(1, |value|).
fn fused_as_stock(chain: &Chain) -> Result<(), TestCaseError> {
    let (fast, stock) = (
        run_chain(Device::Cpu, chain),
        run_chain(Device::Interpreter, chain),
    );
    if !uses_exp2(chain) {
        return same_as_stock(&fast, &stock);
    }
    prop_assert_eq!(fast.len(), stock.len());
    for (i, (f, s)) in fast.iter().zip(&stock).enumerate() {
        let close = (f - s).abs() <= 1e-4 * s.abs().max(1.0);
        prop_assert!(
            close || f == s || (f.is_nan() && s.is_nan()),
            "element {}: fused {} vs stock {}",
            i,
            f,
            s
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn fused_chains_equal_the_stock_ops(chain in chain_of(1..5, 2..6)) {
        fused_as_stock(&chain)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    /// Tall and narrow: rows of 2 to 4 elements that do not merge (transposed or padded
    /// reads), which the fused kernel computes column by column. (Not 1: the shifting view
    /// would slice to width 0, which luminal 0.2.0's interpreter divides by.)
    #[test]
    fn fused_short_rows_equal_the_stock_ops(chain in chain_of(16..40, 2..5)) {
        fused_as_stock(&chain)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    /// Large enough for 2 threads and for several 256-element blocks per row.
    #[test]
    fn threaded_fused_chains_equal_the_stock_ops(chain in chain_of(150..260, 150..260)) {
        transformer_course::backend::fast_cpu::set_threads(2);
        fused_as_stock(&chain)?;
    }
}

/// The pass really fuses: RMSNorm's `sum(x²)` becomes one op, and a chain of four
/// elementwise ops whose intermediates nobody else reads becomes one.
#[test]
fn chains_and_reductions_become_single_ops() {
    let mut cx = Graph::new();
    let mut x = tensor::input::<(R, C)>(&mut cx, "x");
    let mut sum_sq = (x * x).sum_reduce::<(R,), Axis<1>>().retrieve();
    let mut chain = ((x * 2.0 + 1.0).exp2() * x).retrieve();
    Device::Cpu.compile(&mut cx, (&mut x, &mut sum_sq, &mut chain));
    let listing = viz::op_listing(&cx);
    assert!(listing.contains("Fused(Mul) -> SumReduce(1)"), "{listing}");
    assert!(listing.contains("Fused(Mul, Add, Exp2, Mul)"), "{listing}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// A (b, s, i) x (i, o) matmul with a shared weight (luminal's `BatchedMatMul2D`, which the
    /// backend runs as one tall sgemm when the batch rows are contiguous, else one per batch
    /// entry), on a contiguous and on a transposed input, against the interpreter. sgemm sums
    /// in blocks, so the tolerance is 1e-5 relative, not bit-for-bit.
    #[test]
    fn batched_matmul_equals_the_interpreter(
        b in 1usize..4, s in 1usize..6, i in 1usize..7, o in 1usize..6,
        transposed in any::<bool>(), seed in any::<u64>(),
    ) {
        use rand::Rng;
        let mut rng = init::rng(seed);
        let x: Vec<f32> = (0..b * s * i).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let w: Vec<f32> = (0..i * o).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let run = |device: Device| {
            let mut cx = Graph::new();
            let mut weight = tensor::input::<(In, Out)>(&mut cx, "w");
            tensor::set(weight, &[i, o], w.clone()).unwrap();
            let y = if transposed {
                // The buffer holds (s, b, i): the batch rows are not contiguous.
                let mut input = tensor::input::<(Seq, Batch, In)>(&mut cx, "x");
                tensor::set(input, &[s, b, i], x.clone()).unwrap();
                let mut y = input.permute::<(Batch, Seq, In), _>().matmul(weight).retrieve();
                device.compile(&mut cx, (&mut input, &mut weight, &mut y));
                y
            } else {
                let mut input = tensor::input::<(Batch, Seq, In)>(&mut cx, "x");
                tensor::set(input, &[b, s, i], x.clone()).unwrap();
                let mut y = input.matmul(weight).retrieve();
                device.compile(&mut cx, (&mut input, &mut weight, &mut y));
                if device == Device::Cpu && b > 1 {
                    let kinds = transformer_course::graph::primitive::op_counts(&cx);
                    assert!(kinds.iter().any(|(k, _)| k == "BatchedMatMul2D"), "{kinds:?}");
                }
                y
            };
            tensor::execute(&mut cx).unwrap();
            tensor::read(y).unwrap().data
        };
        let (fast, slow) = (run(Device::Cpu), run(Device::Interpreter));
        prop_assert_eq!(fast.len(), b * s * o);
        for (f, r) in fast.iter().zip(&slow) {
            prop_assert!((f - r).abs() <= 1e-5 * r.abs().max(1.0), "{} vs {}", f, r);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]
    /// The fused kernels' `exp2` against the standard library's: within 3e-7 relative (its
    /// polynomial's error bound is 2e-7, about 2 ulp) wherever the result is a normal float.
    #[test]
    fn exp2_is_within_two_ulp(x in -125.9f32..127.9) {
        let (fast, exact) = (transformer_course::backend::fast_cpu::exp2(x), x.exp2());
        prop_assert!((fast - exact).abs() <= 3e-7 * exact, "exp2({}) = {} vs {}", x, fast, exact);
    }
}

/// What `exp2` does at the edges: NaN stays NaN (the training step detects it), overflow
/// is inf, deep underflow is 0, and integers are exact.
#[test]
fn exp2_edges() {
    use transformer_course::backend::fast_cpu::exp2;
    assert!(exp2(f32::NAN).is_nan());
    assert_eq!(exp2(f32::INFINITY), f32::INFINITY);
    assert_eq!(exp2(200.0), f32::INFINITY);
    assert_eq!(exp2(f32::NEG_INFINITY), 0.0);
    assert_eq!(exp2(-200.0), 0.0);
    for n in -126..=127 {
        assert_eq!(exp2(n as f32), (n as f32).exp2(), "2^{n}");
    }
}

type Bt = Dyn<'b'>;
type Mt = Dyn<'m'>;
type Nt = Dyn<'n'>;
type Kt = Dyn<'k'>;

/// A batched product as the chapters build one (broadcast multiply, sum over the last axis),
/// which the backend runs as `StridedMatMul`: with `blocks`, (b, m, k) x (b, n, k) -> (b, m, n)
/// (attention's `q k^T`: each batch element owns a block of the output); otherwise
/// (b, m, k) x (b, n, k) -> (m, b, n), where the rows of one product are not contiguous.
fn strided_product(
    device: Device,
    dims: [usize; 4],
    blocks: bool,
    a: &[f32],
    b: &[f32],
) -> Vec<f32> {
    let [nb, m, n, k] = dims;
    let mut cx = Graph::new();
    let mut x = tensor::input::<(Bt, Mt, Kt)>(&mut cx, "a");
    let mut y = tensor::input::<(Bt, Nt, Kt)>(&mut cx, "b");
    tensor::set(x, &[nb, m, k], a.to_vec()).unwrap();
    tensor::set(y, &[nb, n, k], b.to_vec()).unwrap();
    let mut out = if blocks {
        let xe = x.expand::<(Bt, Mt, Nt, Kt), Axis<2>>();
        let ye = y.expand::<(Bt, Mt, Nt, Kt), Axis<1>>();
        (xe * ye)
            .sum_reduce::<(Bt, Mt, Nt), Axis<3>>()
            .retrieve()
            .id
    } else {
        let xe = x
            .permute::<(Mt, Bt, Kt), _>()
            .expand::<(Mt, Bt, Nt, Kt), Axis<2>>();
        let ye = y.expand::<(Mt, Bt, Nt, Kt), Axis<0>>();
        (xe * ye)
            .sum_reduce::<(Mt, Bt, Nt), Axis<3>>()
            .retrieve()
            .id
    };
    device.compile(&mut cx, (&mut x, &mut y, &mut out));
    if device == Device::Cpu {
        let kinds = transformer_course::graph::primitive::op_counts(&cx);
        assert!(kinds.iter().any(|(k, _)| k == "StridedMatMul"), "{kinds:?}");
    }
    tensor::execute(&mut cx).unwrap();
    tensor::read_node(&cx, out, "product").unwrap().to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// `StridedMatMul` against the interpreter, in both layouts, small and big enough to be
    /// split across threads. sgemm sums in blocks: 1e-5 relative, as above.
    #[test]
    fn strided_matmul_equals_the_interpreter(
        nb in 1usize..5, m in 1usize..40, n in 1usize..40, k in 1usize..40,
        blocks in any::<bool>(), big in any::<bool>(), seed in any::<u64>(),
    ) {
        use rand::Rng;
        let (nb, m) = if big { (nb * 8, m + 60) } else { (nb, m) };
        let mut rng = init::rng(seed);
        let a: Vec<f32> = (0..nb * m * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let b: Vec<f32> = (0..nb * n * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let dims = [nb, m, n, k];
        let fast = strided_product(Device::Cpu, dims, blocks, &a, &b);
        let slow = strided_product(Device::Interpreter, dims, blocks, &a, &b);
        prop_assert_eq!(fast.len(), nb * m * n);
        for (f, r) in fast.iter().zip(&slow) {
            prop_assert!((f - r).abs() <= 1e-5 * r.abs().max(1.0), "{} vs {}", f, r);
        }
    }
}
