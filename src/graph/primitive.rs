//! The 12 primitive ops, and queries on a graph's nodes: which primitive a node is, how many of
//! each op a graph holds, and a node's inputs with their views.
//!
//! One list, used by every layer that looks at ops: chapter 0 runs each primitive, chapter 8
//! gives each one its backward rule, and the fast CPU backend fuses the elementwise ones.
//! See the book's [chapter 0](../../../book/ch00_graphs.html).

use luminal::op::{self, Operator};
use luminal::prelude::petgraph::{visit::EdgeRef, Direction};
use luminal::prelude::*;

// ANCHOR: primitives
/// The 12 primitive ops. Every luminal graph, however high-level the code that built it,
/// is made of these plus two kinds of source node: `Function` (inputs) and `Constant`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Primitive {
    // Unary, elementwise: y = f(x).
    /// `log2(x)`
    Log2,
    /// `2^x`
    Exp2,
    /// `sin(x)`
    Sin,
    /// `sqrt(x)`
    Sqrt,
    /// `1 / x`
    Recip,
    // Binary, elementwise: y = f(a, b).
    /// `a + b`
    Add,
    /// `a * b`
    Mul,
    /// `a mod b` (sign follows `a`, like C's `fmod`)
    Mod,
    /// `1` where `a < b`, else `0`
    LessThan,
    // Reductions over one dimension.
    /// Sum over one axis.
    SumReduce,
    /// Maximum over one axis.
    MaxReduce,
    // Materialise a view into a fresh, row-major buffer.
    /// Copy a view into a contiguous buffer.
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

    /// Which primitive `op` is, if it is one (inputs, constants and compiled kernels are not).
    pub fn of(op: &dyn Operator) -> Option<Self> {
        let any = op.as_any();
        let table = [
            (any.is::<op::Log2>(), Primitive::Log2),
            (any.is::<op::Exp2>(), Primitive::Exp2),
            (any.is::<op::Sin>(), Primitive::Sin),
            (any.is::<op::Sqrt>(), Primitive::Sqrt),
            (any.is::<op::Recip>(), Primitive::Recip),
            (any.is::<op::Add>(), Primitive::Add),
            (any.is::<op::Mul>(), Primitive::Mul),
            (any.is::<op::Mod>(), Primitive::Mod),
            (any.is::<op::LessThan>(), Primitive::LessThan),
            (any.is::<op::SumReduce>(), Primitive::SumReduce),
            (any.is::<op::MaxReduce>(), Primitive::MaxReduce),
            (any.is::<op::Contiguous>(), Primitive::Contiguous),
        ];
        table.into_iter().find(|(is, _)| *is).map(|(_, p)| p)
    }

    /// The primitive at `node` of `cx`, if it is one.
    pub fn at(cx: &Graph, node: NodeIndex) -> Option<Self> {
        cx.graph
            .node_weight(node)
            .and_then(|op| Self::of(op.as_ref()))
    }

    /// True for the five unary ops, which map their input's buffer element by element.
    pub fn is_unary(self) -> bool {
        use Primitive::*;
        matches!(self, Log2 | Exp2 | Sin | Sqrt | Recip)
    }

    /// True for the four binary elementwise ops.
    pub fn is_binary(self) -> bool {
        use Primitive::*;
        matches!(self, Add | Mul | Mod | LessThan)
    }
}

/// The axis a `SumReduce` or `MaxReduce` node reduces; `None` for any other op.
pub fn reduce_axis(op: &dyn Operator) -> Option<usize> {
    let any = op.as_any();
    if let Some(op::SumReduce(d)) = any.downcast_ref::<op::SumReduce>() {
        return Some(*d);
    }
    any.downcast_ref::<op::MaxReduce>()
        .map(|op::MaxReduce(d)| *d)
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

/// Inputs of `node` in input order, as (source, view).
pub fn inputs_of(cx: &Graph, node: NodeIndex) -> Vec<(NodeIndex, ShapeTracker)> {
    let mut edges: Vec<_> = cx
        .graph
        .edges_directed(node, Direction::Incoming)
        .filter_map(|e| e.weight().as_data().map(|(i, _, st)| (i, e.source(), st)))
        .collect();
    edges.sort_by_key(|(i, _, _)| *i);
    edges.into_iter().map(|(_, s, st)| (s, st)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_primitive_is_recognised_from_its_op_and_nothing_else_is() {
        let ops: [(Box<dyn Operator>, Primitive); 12] = [
            (Box::new(op::Log2), Primitive::Log2),
            (Box::new(op::Exp2), Primitive::Exp2),
            (Box::new(op::Sin), Primitive::Sin),
            (Box::new(op::Sqrt), Primitive::Sqrt),
            (Box::new(op::Recip), Primitive::Recip),
            (Box::new(op::Add), Primitive::Add),
            (Box::new(op::Mul), Primitive::Mul),
            (Box::new(op::Mod), Primitive::Mod),
            (Box::new(op::LessThan), Primitive::LessThan),
            (Box::new(op::SumReduce(2)), Primitive::SumReduce),
            (Box::new(op::MaxReduce(0)), Primitive::MaxReduce),
            (Box::new(op::Contiguous), Primitive::Contiguous),
        ];
        for (i, (op, want)) in ops.iter().enumerate() {
            assert_eq!(Primitive::of(op.as_ref()), Some(*want));
            assert_eq!(Primitive::ALL[i], *want, "ALL is in declaration order");
        }
        assert_eq!(reduce_axis(&op::SumReduce(2)), Some(2));
        assert_eq!(reduce_axis(&op::MaxReduce(0)), Some(0));
        assert_eq!(reduce_axis(&op::Add), None);
        let input = op::Function("x".into(), Box::new(|_| vec![]));
        assert_eq!(Primitive::of(&input), None);
        assert_eq!(Primitive::of(&luminal::compilers::MatMul2D), None);
    }
}
