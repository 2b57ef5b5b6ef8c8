//! The whole block's hand backward against this chapter's primitive-rule autograd and against
//! central finite differences of chapter 6's `block_ref`.

use super::*;
use crate::ch04_rope::{Rope, ROPE_THETA};
use crate::ch05_attention::causal_mask;
use crate::ch06_transformer::{block_ref, Block};
use crate::ch08_autograd::{backward, GradCheck};
use crate::graph::dims::{Batch, DHead, DModel, MaxSeq, Seq};
use crate::graph::params::{load_state_dict, Param, Parameters, StateDict};
use crate::graph::tensor::{self, HostTensor};
use crate::testing::{assert_close, device, uniform};
use luminal::prelude::*;
use rand::Rng;

const PREFIX: &str = "layers.0";

/// Random block weights under the names chapter 6's `Block` gives them (from its `visit`, so
/// the hand backward is checked to use the crate's names): norm gains near 1, projections
/// uniform in ±0.5.
fn random_block_weights([_, _, d, heads, d_ff]: [usize; 5], seed: u64) -> StateDict {
    let mut cx = luminal::prelude::Graph::new();
    let block = Block::new(&mut cx, [d, heads, d_ff], None).unwrap();
    let mut rng = crate::graph::init::rng(seed);
    block
        .params()
        .into_iter()
        .map(|p| {
            let values = uniform(&mut rng, p.numel(), 0.5);
            let values = if p.name.starts_with("ln") {
                values.iter().map(|v| 1.0 + v).collect()
            } else {
                values
            };
            let name = format!("{PREFIX}.{}", p.name);
            (name, HostTensor::new(&p.shape, values).unwrap())
        })
        .collect()
}

/// Chapter 6's `block_ref` for the block of this course's LM (the default architecture:
/// pre-norm, RMSNorm, SwiGLU), causal, weights under [`PREFIX`].
fn modern_block_ref(x: &[f32], dict: &StateDict, dims: [usize; 5], rope: Option<f32>) -> Vec<f32> {
    block_ref(
        x,
        dict,
        PREFIX,
        &causal(dims),
        dims,
        rope,
        Default::default(),
    )
}

/// The causal mask, (b, s, s): query i may attend key j iff j <= i.
fn causal([b, s, ..]: [usize; 5]) -> Vec<bool> {
    (0..b * s * s).map(|i| i % s <= (i / s) % s).collect()
}

/// A block's input, weights and upstream gradient, all from `seed`.
struct BlockCase {
    dims: [usize; 5],
    rope: Option<f32>,
    x: Vec<f32>,
    dy: Vec<f32>,
    dict: StateDict,
}

impl BlockCase {
    fn new(dims: [usize; 5], rope: Option<f32>, seed: u64) -> Self {
        let [b, s, d, ..] = dims;
        let mut rng = crate::graph::init::rng(seed);
        let x = uniform(&mut rng, b * s * d, 1.0);
        let dy = uniform(&mut rng, b * s * d, 1.0);
        let dict = random_block_weights(dims, seed ^ 0x5eed);
        Self {
            dims,
            rope,
            x,
            dy,
            dict,
        }
    }

    fn by_hand(&self) -> (BlockActivations, BlockGradients) {
        let acts = block_forward(
            &self.x,
            &self.dict,
            PREFIX,
            &causal(self.dims),
            self.dims,
            self.rope,
        );
        let grads = block_backward(&acts, &self.dy, &self.dict, PREFIX, self.dims, self.rope);
        (acts, grads)
    }
}

#[test]
fn block_forward_is_block_ref() {
    for (dims, rope) in [
        ([2, 3, 8, 2, 12], Some(ROPE_THETA)),
        ([1, 4, 4, 1, 6], None),
    ] {
        let case = BlockCase::new(dims, rope, 1);
        let (acts, grads) = case.by_hand();
        // The same loops in the same order: bit for bit.
        let want = modern_block_ref(&case.x, &case.dict, dims, rope);
        assert_eq!(acts.out, want);
        // One gradient for every weight, under the weight's own name and shape.
        let names = |d: &StateDict| {
            d.iter()
                .map(|(k, v)| (k.clone(), v.shape.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&grads.weights), names(&case.dict));
    }
}

/// The same gradients from this chapter's autograd: the block built as a luminal graph
/// (chapter 6's `Block`, RoPE tables from chapter 4), `L = sum(block(x) ⊙ dy)`, differentiated
/// by `backward` and compiled for the CPU. Returns dx and the weight gradients by name.
fn by_autograd(case: &BlockCase) -> (Vec<f32>, StateDict) {
    let [b, s, d, heads, d_ff] = case.dims;
    let mut cx = Graph::new();
    let rope = case
        .rope
        .map(|theta| Rope::<MaxSeq, DHead>::new(&mut cx, s, d / heads, theta).unwrap());
    let block = Block::new(&mut cx, [d, heads, d_ff], rope).unwrap();
    let params: Vec<Param> = block
        .params()
        .into_iter()
        .map(|p| Param {
            name: format!("{PREFIX}.{}", p.name),
            ..p
        })
        .collect();
    load_state_dict(&mut cx, &params, &case.dict).unwrap();
    let (x, loss) = block_loss(&mut cx, &block, case);
    let all = [params, vec![Param::of(x, &[b, s, d])]].concat();
    let (_, grads) = GradCheck::new(&mut cx, all.clone(), loss, Some(device()))
        .unwrap()
        .run()
        .unwrap();
    let mut weights: StateDict = all.iter().map(|p| p.name.clone()).zip(grads).collect();
    let dx = weights.remove("x").unwrap().data;
    (dx, weights)
}

/// The graph's input `x` and its loss `sum(block(x, causal) ⊙ dy)`, with the case's values.
fn block_loss(
    cx: &mut Graph,
    block: &Block,
    case: &BlockCase,
) -> (GraphTensor<(Batch, Seq, DModel)>, GraphTensor<()>) {
    let [b, s, d, ..] = case.dims;
    let x = tensor::input::<(Batch, Seq, DModel)>(cx, "x");
    tensor::set(x, &[b, s, d], case.x.clone()).unwrap();
    let dy = tensor::input::<(Batch, Seq, DModel)>(cx, "dy");
    tensor::set(dy, &[b, s, d], case.dy.clone()).unwrap();
    let causal = causal_mask::<Seq>(cx).expand::<(Batch, Seq, Seq), Axis<0>>();
    let loss = (block.forward(x, causal) * dy).sum_reduce::<(), Axes3<0, 1, 2>>();
    (x, loss)
}

/// The cases of the block tests: two heads with RoPE, and one head without.
const CASES: [([usize; 5], Option<f32>); 2] = [
    ([2, 3, 8, 2, 12], Some(ROPE_THETA)),
    ([1, 4, 4, 1, 6], None),
];

/// Hand and autograd agree on dx and on every weight's gradient. Both are f32 computations of
/// the same sums in different orders (the graph's matmuls and fused kernels vs plain loops), so
/// they differ by rounding only: measured below 1e-6 relative; the tolerance 1e-5 x max(1, |g|)
/// is still far below any mistake in a rule (order 1e-1 or more).
#[test]
fn block_backward_matches_autograd() {
    for (seed, (dims, rope)) in CASES.into_iter().enumerate() {
        let case = BlockCase::new(dims, rope, seed as u64 + 10);
        let (_, hand) = case.by_hand();
        let (dx, weights) = by_autograd(&case);
        let mut worst = max_rel(&hand.dx, &dx);
        assert_close(&hand.dx, &dx, 1e-5).unwrap();
        for (name, g) in &weights {
            let mine = &hand.weights[name].data;
            worst = worst.max(max_rel(mine, &g.data));
            assert_close(mine, &g.data, 1e-5)
                .map_err(|e| format!("{name}: {e}"))
                .unwrap();
        }
        println!("{dims:?} rope {rope:?}: largest difference hand vs autograd {worst:.1e} (relative to max(1, |g|))");
    }
}

/// `max |a - b| / max(1, |b|)`, for reporting.
fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
        .fold(0.0, f32::max)
}

/// Hand gradients against central differences of `block_ref` itself (an independent reference:
/// no activation or rule of the hand code is used), at 6 random coordinates of x and of every
/// weight. Tolerance 1e-3 on the normalised error, as for the single ops: with h = 1e-2 the f32
/// central difference of this block is measured within 5.4e-5 of the hand gradient (truncation
/// through two norms, a softmax and SwiGLU, plus f32 rounding of the outputs); a wrong rule is
/// off by order 0.1 to 1.
#[test]
fn block_backward_matches_finite_differences() {
    for (seed, (dims, rope)) in CASES.into_iter().enumerate() {
        let case = BlockCase::new(dims, rope, seed as u64 + 20);
        let (_, hand) = case.by_hand();
        let mut rng = crate::graph::init::rng(seed as u64);
        let mut picks =
            |len: usize| -> Vec<usize> { (0..6).map(|_| rng.gen_range(0..len)).collect() };
        let f = |x: &[f32]| modern_block_ref(x, &case.dict, dims, rope);
        let (err, at) = super::tests::fd_error(f, &case.x, &case.dy, &hand.dx, picks(case.x.len()));
        assert!(err < 1e-3, "dx[{at}]: normalised error {err}");
        let mut worst = err;
        for (name, g) in &hand.weights {
            let w0 = &case.dict[name].data;
            let f = |w: &[f32]| {
                let mut dict = case.dict.clone();
                dict.get_mut(name).unwrap().data = w.to_vec();
                modern_block_ref(&case.x, &dict, dims, rope)
            };
            let (err, at) = super::tests::fd_error(f, w0, &case.dy, &g.data, picks(w0.len()));
            assert!(err < 1e-3, "{name}[{at}]: normalised error {err}");
            worst = worst.max(err);
        }
        println!(
            "{dims:?} rope {rope:?}: worst normalised error hand vs finite differences {worst:.1e}"
        );
    }
}

/// How big each backward pass is, for the book: the luminal graph's node counts (forward +
/// loss as built, after `backward`, after compiling for the CPU, and its matrix products) and
/// the hand backward's steps by kind. One block, two heads with RoPE.
#[test]
fn autograd_graph_and_hand_backward_sizes() {
    let case = BlockCase::new(CASES[0].0, CASES[0].1, 30);
    let [b, s, d, heads, d_ff] = case.dims;
    let mut cx = Graph::new();
    let rope = Rope::<MaxSeq, DHead>::new(&mut cx, s, d / heads, ROPE_THETA).unwrap();
    let block = Block::new(&mut cx, [d, heads, d_ff], Some(rope)).unwrap();
    let (x, loss) = block_loss(&mut cx, &block, &case);
    let forward = cx.graph.node_count();
    let params = [block.params(), vec![Param::of(x, &[b, s, d])]].concat();
    let mut grads = backward(&mut cx, &params, loss.id).unwrap();
    let built = cx.graph.node_count();
    let mut loss_id = loss.id;
    // Without the pattern passes (fused attention, pair swap), so that the autograd's own ops
    // are counted.
    let pipeline = crate::backend::OpByOpCpuCompiler::default();
    cx.compile(pipeline, (&mut grads, &mut loss_id));
    let counts = crate::graph::primitive::op_counts(&cx);
    let count = |kind: &str| counts.iter().find(|(k, _)| k == kind).map_or(0, |c| c.1);
    let (_, hand) = case.by_hand();
    let mut steps = std::collections::BTreeMap::new();
    for step in &hand.steps {
        *steps.entry(*step).or_insert(0) += 1;
    }
    let step_lines: Vec<String> = steps
        .iter()
        .map(|(k, n)| format!("  {k:<20} {n:>3}"))
        .collect();
    let table = format!(
        "autograd graph (primitive nodes, inputs and constants included):\n\
         \x20 forward + loss, built     {forward:>4}\n\
         \x20 + backward, built         {built:>4}  ({} added by backward)\n\
         \x20 both, compiled for CPU    {:>4}  ({} MatMul2D)\n\
         compiled op kinds:\n{}\n\
         hand backward: {} steps (loop nests over arrays)\n{}",
        built - forward,
        cx.graph.node_count(),
        count("MatMul2D"),
        counts
            .iter()
            .map(|(k, n)| format!("  {k:<20} {n:>3}"))
            .collect::<Vec<_>>()
            .join("\n"),
        hand.steps.len(),
        step_lines.join("\n")
    );
    println!("{table}");
    insta::assert_snapshot!(table);
}
