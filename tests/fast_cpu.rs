//! The strided CPU kernels (src/fast_cpu/mod.rs) against luminal's stock ops as the oracle:
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn strided_kernels_equal_the_stock_ops(case in case()) {
        let fast = run(Device::Cpu, &case);
        let stock = run(Device::Interpreter, &case);
        prop_assert_eq!(fast.len(), stock.len());
        for (i, (f, s)) in fast.iter().zip(&stock).enumerate() {
            prop_assert!(f == s || (f.is_nan() && s.is_nan()), "element {}: strided {} vs stock {}", i, f, s);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]
    /// The same on large tensors, with 2 kernel threads: each thread's share of rows must be
    /// computed exactly as one thread would.
    #[test]
    fn threaded_kernels_equal_the_stock_ops(case in big_case()) {
        transformer_course::fast_cpu::set_threads(2); // before the pool starts, if it has not
        let fast = run(Device::Cpu, &case);
        let stock = run(Device::Interpreter, &case);
        prop_assert_eq!(fast.len(), stock.len());
        for (i, (f, s)) in fast.iter().zip(&stock).enumerate() {
            prop_assert!(f == s || (f.is_nan() && s.is_nan()), "element {}: strided {} vs stock {}", i, f, s);
        }
    }
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
                    let kinds = transformer_course::device::op_counts(&cx);
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
