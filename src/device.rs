//! Where a graph runs: one call compiles it for the CPU or (with `--features cuda`) for CUDA.
//!
//! Chapters never name a compiler; they call [`Device::compile`]. The CPU pipeline is
//! luminal's generic passes plus matmul passes, with three 0.2.0 bugs kept out:
//! - its `MatMul2DCompiler` looks for `SumReduce(0)` where a 2D matmul has `SumReduce(2)`, so no
//!   2D matmul ever reaches sgemm: [`MatMul2DFixed`] is a corrected copy;
//! - its `EqualCompiler` computes less-than, and its `GatherCompiler` rewrites any
//!   arange/equal/mul/sum chain and then panics: both are simply left out;
//! - `RemoveSingleReductions` ignores the input's view: left out too.
//!
//! See the book's [chapter 0](../book/ch00_graphs.html#compiling).

use luminal::compilers::{
    ArithmeticElimination, BatchMatMul2DCompiler, UnaryFusionCompiler, UnarySequentialElimination,
    CSE,
};
use luminal::op::{Mul, SumReduce};
use luminal::prelude::petgraph::{visit::EdgeRef, Direction};
use luminal::prelude::*;

/// The devices a graph can be compiled for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// The fast CPU backend: [`CpuCompiler`]'s passes but its unary fusion, then the course's
    /// own: batched matmuls, elementwise fusion and strided kernels ([`FastCpuCompiler`]).
    #[default]
    Cpu,
    /// [`CpuCompiler`] with luminal's stock CPU ops: the previous pipeline, for comparison.
    CpuStock,
    /// No compilation: every primitive op runs as luminal's reference interpreter.
    /// Slow, but the plainest possible oracle.
    Interpreter,
    /// NVIDIA GPUs through `luminal_cuda` (needs `--features cuda`, a CUDA install and a GPU).
    #[cfg(feature = "cuda")]
    Cuda,
}

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
    crate::fast_cpu::StridedMatMulPass,
    crate::fast_cpu::FuseElementwise,
    crate::fast_cpu::StridedKernels,
);

/// [`FastCpuCompiler`] without `FuseElementwise`: every elementwise op its own pass over
/// memory. Only for measuring what fusion buys (`examples/fusion.rs`).
pub type UnfusedCpuCompiler = (
    CleanUpAndMatMuls,
    crate::fast_cpu::StridedMatMulPass,
    crate::fast_cpu::StridedKernels,
);

impl Device {
    /// Compile `cx` for this device. `remap` must hold every tensor handle you will use after
    /// compiling (inputs, weights, outputs): passes replace nodes, and the handles follow.
    pub fn compile<T: ToIdsMut>(self, cx: &mut Graph, remap: T) {
        match self {
            Device::Cpu => {
                crate::fast_cpu::keep_freed_memory();
                cx.compile(FastCpuCompiler::default(), remap)
            }
            Device::CpuStock => cx.compile(CpuCompiler::default(), remap),
            Device::Interpreter => cx.compile((), remap),
            #[cfg(feature = "cuda")]
            Device::Cuda => cx.compile(
                (
                    ArithmeticElimination,
                    UnarySequentialElimination,
                    CSE,
                    luminal_cuda::CudaCompiler::<f32>::default(),
                ),
                remap,
            ),
        }
    }

    /// A short name for tables and logs.
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::CpuStock => "cpu-stock",
            Device::Interpreter => "interpreter",
            #[cfg(feature = "cuda")]
            Device::Cuda => "cuda",
        }
    }
}

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

/// How many nodes of each op kind a graph holds, sorted by name (for tables and snapshots).
pub fn op_counts(cx: &Graph) -> Vec<(String, usize)> {
    let mut counts = std::collections::BTreeMap::new();
    for node in cx.graph.node_indices() {
        *counts.entry(op_kind(cx, node)).or_insert(0) += 1;
    }
    counts.into_iter().collect()
}

/// The kind of op at `node`: the op's type name, without its parameters or labels.
pub fn op_kind(cx: &Graph, node: NodeIndex) -> String {
    let op = cx.graph.node_weight(node).expect("node exists");
    if op.as_any().is::<luminal::op::Function>() {
        return "Function".to_string();
    }
    let full = format!("{op:?}");
    full.split(|c: char| !c.is_alphanumeric() && c != '_')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Inputs of `node` in input order, as (source, shape tracker).
pub fn inputs_of(cx: &Graph, node: NodeIndex) -> Vec<(NodeIndex, ShapeTracker)> {
    let mut edges: Vec<_> = cx
        .graph
        .edges_directed(node, Direction::Incoming)
        .filter_map(|e| e.weight().as_data().map(|(i, _, st)| (i, e.source(), st)))
        .collect();
    edges.sort_by_key(|(i, _, _)| *i);
    edges.into_iter().map(|(_, s, st)| (s, st)).collect()
}
