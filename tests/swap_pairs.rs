//! `FuseSwapPairs` (RoPE's pair swap and its backward as one `SwapPairs` op) against the same
//! graph compiled without the pass: chapter 4's RoPE forward and chapter 8's gradient of it,
//! over random shapes. The swap only copies and negates, and every other op runs the same
//! arithmetic in the same order, so the results must be equal bit for bit.

use luminal::prelude::*;
use proptest::prelude::*;
use transformer_course::backend::OpByOpCpuCompiler;
use transformer_course::graph::dims::{Batch, DHead, Heads, MaxSeq, Seq};
use transformer_course::graph::params::Param;
use transformer_course::graph::primitive;
use transformer_course::prelude::*;

/// (y, dx) and the compiled graph's op counts. With `heads_view`, `x` is read as attention
/// reads a projection: a (b, s, h, k) tensor permuted to (b, h, s, k).
fn run(
    fused: bool,
    [b, h, s, k]: [usize; 4],
    heads_view: bool,
    x_values: &[f32],
    w_values: &[f32],
) -> ([Vec<f32>; 2], Vec<(String, usize)>) {
    let mut cx = Graph::new();
    let mut rope = Rope::<MaxSeq, DHead>::new(&mut cx, s, k, ROPE_THETA).unwrap();
    let raw = tensor::input::<(Batch, Seq, Heads, DHead)>(&mut cx, "x_bshk");
    let direct = tensor::input::<(Batch, Heads, Seq, DHead)>(&mut cx, "x");
    let (x, x_param) = if heads_view {
        let x = raw.permute::<(Batch, Heads, Seq, DHead), Axes4<0, 2, 1, 3>>();
        (x, Param::of(raw, &[b, s, h, k]))
    } else {
        (direct, Param::of(direct, &[b, h, s, k]))
    };
    let w = tensor::input::<(Batch, Heads, Seq, DHead)>(&mut cx, "w");
    let y = rope.forward(x);
    let loss = (y * w).sum_reduce::<(), Axes4<0, 1, 2, 3>>();
    let mut grads = backward(&mut cx, &[x_param], loss.id).unwrap();
    let mut y_id = y.id;
    for id in [grads[0].grad, y_id] {
        cx.keep_tensors(id);
        cx.to_retrieve.insert(id);
    }
    if fused {
        Device::Cpu.compile(&mut cx, (&mut grads, &mut y_id, &mut rope));
    } else {
        cx.compile(
            OpByOpCpuCompiler::default(),
            (&mut grads, &mut y_id, &mut rope),
        );
    }
    tensor::set(raw, &[b, s, h, k], x_values.to_vec()).unwrap();
    tensor::set(direct, &[b, h, s, k], x_values.to_vec()).unwrap();
    tensor::set(w, &[b, h, s, k], w_values.to_vec()).unwrap();
    tensor::execute(&mut cx).unwrap();
    let read = |id: NodeIndex| tensor::read_node(&cx, id, "result").unwrap().to_vec();
    ([read(y_id), read(grads[0].grad)], primitive::op_counts(&cx))
}

type Case = ([usize; 4], bool, Vec<f32>, Vec<f32>);

fn case() -> impl Strategy<Value = Case> {
    (1usize..3, 1usize..4, 1usize..12, 1usize..6, any::<bool>()).prop_flat_map(
        |(b, h, s, pairs, heads_view)| {
            let values = proptest::collection::vec(-4.0f32..4.0, b * h * s * 2 * pairs);
            (
                Just([b, h, s, 2 * pairs]),
                Just(heads_view),
                values.clone(),
                values,
            )
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn swap_pairs_equals_the_op_by_op_graph((dims, heads_view, x, w) in case()) {
        let (fused, ops) = run(true, dims, heads_view, &x, &w);
        let (reference, plain_ops) = run(false, dims, heads_view, &x, &w);
        let count = |ops: &[(String, usize)]| ops.iter().find(|(k, _)| k == "SwapPairs").map_or(0, |(_, n)| *n);
        // The forward's swap, and the backward's when x is a permuted view as in attention
        // (reading x directly, the autograd adds the swap's two halves into x's other
        // gradient term one at a time, a shape the pass does not look for).
        let expected = if heads_view { 2 } else { 1 };
        prop_assert_eq!(count(&ops), expected, "{:?}", ops);
        prop_assert_eq!(count(&plain_ops), 0);
        prop_assert_eq!(&fused[0], &reference[0], "y");
        prop_assert_eq!(&fused[1], &reference[1], "dx");
    }
}
