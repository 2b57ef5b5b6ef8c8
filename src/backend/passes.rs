//! The pass pipelines behind [`Device::compile`](super::Device::compile), and the corrected
//! 2-D matmul pass.

use luminal::compilers::{
    ArithmeticElimination, BatchMatMul2DCompiler, UnaryFusionCompiler, UnarySequentialElimination,
    CSE,
};
use luminal::op::{Mul, SumReduce};
use luminal::prelude::petgraph::Direction;
use luminal::prelude::*;

/// The course's CPU pass pipeline (see the module docs for what it leaves out and why).
pub type CpuCompiler = (
    ArithmeticElimination,
    UnarySequentialElimination,
    CSE,
    MatMul2DFixed,
    BatchMatMul2DCompiler,
    UnaryFusionCompiler,
);

/// luminal's clean-up and matmul passes, as the fast backend runs them first.
pub type CleanUpAndMatMuls = (
    ArithmeticElimination,
    UnarySequentialElimination,
    CSE,
    MatMul2DFixed,
    BatchMatMul2DCompiler,
);

/// `Device::Cpu`'s passes. luminal's `UnaryFusionCompiler` is left out: its opaque
/// `FusedUnary` ops would break the chains that `FuseElementwise` fuses.
pub type FastCpuCompiler = (
    CleanUpAndMatMuls,
    super::fast_cpu::StridedMatMulPass,
    super::fast_cpu::FuseAttention,
    super::fast_cpu::FuseSwapPairs,
    super::fast_cpu::FuseSwiGlu,
    super::fast_cpu::FuseElementwise,
    super::fast_cpu::StridedKernels,
);

/// [`FastCpuCompiler`] without its three pattern passes, [`FuseAttention`], [`FuseSwapPairs`]
/// and [`FuseSwiGlu`]: attention, RoPE's pair swap and the SwiGLU gate as the chapters build
/// them, op by op (fused elementwise chains, strided matmuls). The chapters' op listings use
/// it, so that they show the chapters' own ops; it is also the oracle of those passes' tests
/// and the "before" of their benchmark.
///
/// [`FuseAttention`]: super::fast_cpu::FuseAttention
/// [`FuseSwapPairs`]: super::fast_cpu::FuseSwapPairs
/// [`FuseSwiGlu`]: super::fast_cpu::FuseSwiGlu
pub type OpByOpCpuCompiler = (
    CleanUpAndMatMuls,
    super::fast_cpu::StridedMatMulPass,
    super::fast_cpu::FuseElementwise,
    super::fast_cpu::StridedKernels,
);

/// [`FastCpuCompiler`] without `FuseElementwise`: every elementwise op its own pass over
/// memory. Only for measuring what fusion buys (`examples/fusion.rs`).
pub type UnfusedCpuCompiler = (
    CleanUpAndMatMuls,
    super::fast_cpu::StridedMatMulPass,
    super::fast_cpu::StridedKernels,
);

/// luminal's `MatMul2DCompiler` with its reduce dimension corrected from 0 to 2.
///
/// A 2D matmul `(A, B) x (B, C)` is built as a broadcast multiply `(A, C, B)` followed by
/// `SumReduce(2)`; this pass swaps that pair for one `MatMul2D` (sgemm) op.
/// It only fires when the operands are plain strided views (no slice, pad or leftover
/// broadcast), because `MatMul2D` reads its inputs through strides alone.
#[derive(Debug, Default)]
pub struct MatMul2DFixed;

impl Compiler for MatMul2DFixed {
    fn compile<T: ToIdsMut>(&self, graph: &mut Graph, mut remap: T) {
        let (mut sum_reduce, mut mul) = (NodeIndex::default(), NodeIndex::default());
        // Mul([A, C(fake), B], [A(fake), C, B]) -> SumReduce(2) -> [A, C]
        let pattern = SelectOp::new()
            .ty::<Mul>()
            .shapes([['A', 'C', 'B'], ['A', 'C', 'B']])
            .fakes([
                [Some(false), Some(true), Some(false)],
                [Some(true), Some(false), Some(false)],
            ])
            .ptr(&mut mul)
            .edge(
                SelectOp::new()
                    .ty::<SumReduce>()
                    .check(|op, _| op.is_equal(&SumReduce(2)))
                    .ptr(&mut sum_reduce),
            );
        let mut searcher = pattern.search(graph);
        while searcher.next_match() {
            let mul_consumers = graph.graph.edges_directed(mul, Direction::Outgoing).count();
            if graph.no_delete.contains(&mul) || mul_consumers != 1 {
                continue; // the product itself is needed elsewhere
            }
            let mut srcs = graph.get_sources(mul);
            // Undo the broadcasts and the transpose that the matmul built.
            srcs[0].2.remove_dim(1);
            srcs[1].2.remove_dim(0);
            srcs[1].2.permute(&[1, 0]);
            if srcs.iter().any(|(_, _, st)| !is_plain_strided(st)) {
                continue;
            }
            let new_op = graph
                .add_op(luminal::compilers::MatMul2D)
                .input(srcs[0].0, srcs[0].1, srcs[0].2)
                .input(srcs[1].0, srcs[1].1, srcs[1].2)
                .finish();
            move_outgoing_edge(sum_reduce, new_op, &mut graph.graph);
            for old in [sum_reduce, mul] {
                move_references(
                    &mut remap,
                    &mut graph.no_delete,
                    &mut graph.to_retrieve,
                    old,
                    new_op,
                );
            }
            graph.graph.remove_node(mul);
            graph.graph.remove_node(sum_reduce);
        }
    }
}

/// A view that strides alone describe: no broadcast, slice or padding.
fn is_plain_strided(st: &ShapeTracker) -> bool {
    !st.fake.iter().any(|f| *f) && !st.is_sliced() && !st.is_padded()
}
