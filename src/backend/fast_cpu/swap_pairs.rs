//! RoPE's pair swap, `(x0, x1) -> (-x1, x0)` (chapter 4's `swap_pairs`), and the autograd's
//! backward of it, `(g0, g1) -> (g1, -g0)`, as one op instead of five or six.
//!
//! The chapter builds the swap from views: a copy, a reshape to `(.., pairs, 2)`, a slice of each
//! half, a pad that moves it into the other slot, and a subtraction. luminal materialises each
//! sliced and padded view with a `Contiguous` copy, so one swap is four passes over the tensor
//! forward and six backward. [`FuseSwapPairs`] follows the two branches of the final `Add`
//! down to their common source, working out for each output slot which input slot it copies
//! and with which sign, and replaces the region with one [`SwapPairs`] when the result is a
//! signed permutation of the two slots.

use luminal::op::{self, InputTensor, Operator};
use luminal::prelude::petgraph::Direction;
use luminal::prelude::*;
use luminal::shape::symbolic::Expression;

use super::{data, fuse, View};

/// `out[.., o] = sign[o] * in[.., from[o]]` over the last axis, of length 2, of its input (a
/// plain view: the pairs are adjacent in memory).
#[derive(Clone, PartialEq)]
pub struct SwapPairs {
    /// Which input slot each output slot copies.
    pub from: [usize; 2],
    /// And with which sign.
    pub sign: [f32; 2],
}

impl std::fmt::Debug for SwapPairs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let slot = |o: usize| {
            let s = if self.sign[o] < 0.0 { "-" } else { "" };
            format!("{s}x{}", self.from[o])
        };
        write!(f, "SwapPairs({}, {})", slot(0), slot(1))
    }
}

impl Operator for SwapPairs {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let view = View::of(&inp[0].1);
        let src = &data(&inp[0].0)[..view.len()];
        let mut out = vec![0.0f32; view.len()];
        let (f, s) = (self.from, self.sign);
        // The pass only fires on plain sources (the pairs are adjacent in memory).
        assert!(view.plain, "SwapPairs reads a plain view");
        for (o, x) in out.chunks_exact_mut(2).zip(src.chunks_exact(2)) {
            o[0] = s[0] * x[f[0]];
            o[1] = s[1] * x[f[1]];
        }
        vec![Tensor::new(out)]
    }
}

/// The pass: see the module docs. Run it before [`super::FuseElementwise`].
#[derive(Debug, Default)]
pub struct FuseSwapPairs;

/// One branch of the `Add`, followed down to its source.
struct Branch {
    /// For each of the two output slots: the source slot it reads and the sign, or `None` for
    /// a slot this branch leaves at 0 (padding).
    slots: [Option<(usize, f32)>; 2],
    /// The source node and its view, the slice on the last axis removed.
    source: (NodeIndex, u8, ShapeTracker),
    /// The nodes between the `Add` and the source.
    nodes: Vec<NodeIndex>,
}

/// Where logical index `i` of the last axis of `st` reads: `Some(index)` in the tensor
/// below, or `None` for padding. `None` overall if the axis is not a small constant one.
fn through(st: &ShapeTracker, i: usize) -> Option<Option<usize>> {
    let p = *st.indexes.last()?;
    let dim = st.dims[p].to_usize()?;
    let (pl, pr) = (st.padding[p].0.to_usize()?, st.padding[p].1.to_usize()?);
    let start = st.slices[p].0.to_usize()?;
    let len = (dim + pl + pr).min(st.slices[p].1.to_usize().unwrap_or(usize::MAX)) - start;
    if len != 2 && len != 1 || i >= len || st.fake[p] {
        return None;
    }
    let padded = i + start;
    Some((padded >= pl && padded - pl < dim).then(|| padded - pl))
}

/// The other axes of `st` are read as they are: no permute, slice, pad or broadcast.
fn plain_except_last(st: &ShapeTracker) -> bool {
    let n = st.len();
    (0..n - 1).all(|a| {
        let p = st.indexes[a];
        p == a
            && !st.fake[p]
            && st.slices[p].0.to_usize() == Some(0)
            && st.padding[p].0.to_usize() == Some(0)
            && st.padding[p].1.to_usize() == Some(0)
            && unsliced_end(st, p)
    }) && st.indexes[n - 1] == n - 1
}

/// The slice of dim `p` ends at or past its end (luminal's "unset" end is `i32::MAX`).
fn unsliced_end(st: &ShapeTracker, p: usize) -> bool {
    let end = st.slices[p].1;
    end == st.dims[p]
        || match (end.to_usize(), st.dims[p].to_usize()) {
            (Some(e), Some(d)) => e >= d,
            (Some(e), None) => e >= i32::MAX as usize,
            _ => false,
        }
}

impl Branch {
    /// Follow `(node, view)` (an input of the `Add`) down through single-use `Contiguous`
    /// copies and multiplications by ±1 until a node that is neither: the source.
    fn follow(g: &Graph, node: NodeIndex, view: ShapeTracker) -> Option<Branch> {
        // For each output slot: the index it reads at the current level, and the sign so far.
        let mut at: [Option<(usize, f32)>; 2] = [Some((0, 1.0)), Some((1, 1.0))];
        let (mut node, mut view) = (node, view);
        let mut nodes = vec![];
        let mut top = true;
        // Every level's other axes: the same dims as the source's.
        let mut outer: Option<Vec<Expression>> = None;
        loop {
            // The Add may read a (.., 2) tensor through a plain flat view: the same elements.
            let flat = top && view.len() == 1 && super::is_plain(&view);
            if !flat {
                if view.len() < 2 || !plain_except_last(&view) {
                    return None;
                }
                let dims: Vec<Expression> = view.dims[..view.len() - 1].to_vec();
                if outer.get_or_insert_with(|| dims.clone()) != &dims {
                    return None;
                }
                for slot in at.iter_mut() {
                    if let Some((i, sign)) = *slot {
                        *slot = through(&view, i)?.map(|j| (j, sign));
                    }
                }
            }
            let op = g.graph.node_weight(node)?;
            let srcs = g.get_sources(node);
            let uses = g
                .graph
                .edges_directed(node, Direction::Outgoing)
                .filter(|e| e.weight().as_data().is_some())
                .count();
            let inner = uses == 1 && !g.no_delete.contains(&node) && !g.to_retrieve.contains(&node);
            let sign = if op.as_any().is::<op::Mul>() && srcs.len() == 2 {
                srcs.iter()
                    .find_map(|s| constant(g, s.0))
                    .filter(|k| *k == 1.0 || *k == -1.0)
            } else {
                None
            };
            let next = if inner && op.as_any().is::<op::Contiguous>() && srcs.len() == 1 {
                srcs[0]
            } else if let (true, Some(k)) = (inner, sign) {
                for (_, s) in at.iter_mut().flatten() {
                    *s *= k;
                }
                *srcs.iter().find(|s| constant(g, s.0).is_none())?
            } else {
                // The source: read through this view with the slice taken off, its last axis
                // must be the pair itself (length 2).
                let mut full = view;
                let p = *full.indexes.last()?;
                full.slices[p] = (0.into(), i32::MAX.into());
                // One spelling of "not sliced" (luminal writes `(0, b)` or `(0, i32::MAX)`), so
                // that the two branches' sources compare equal.
                for q in 0..full.dims.len() {
                    if unsliced_end(&full, q) && full.slices[q].0.to_usize() == Some(0) {
                        full.slices[q] = (0.into(), i32::MAX.into());
                    }
                }
                if flat || !super::is_plain(&full) || full.dims[p].to_usize() != Some(2) {
                    return None;
                }
                return Some(Branch {
                    slots: at,
                    source: (node, 0, full),
                    nodes,
                });
            };
            if next.1 != 0 {
                return None;
            }
            if flat {
                // What the flat view reads must be a (.., 2) tensor with the pair last.
                let p = *next.2.indexes.last()?;
                let pad = next.2.padding[p];
                let len = next.2.dims[p].to_usize()? + pad.0.to_usize()? + pad.1.to_usize()?;
                if len != 2 {
                    return None;
                }
            }
            nodes.push(node);
            (node, view) = (next.0, next.2);
            top = false;
        }
    }
}

fn constant(g: &Graph, n: NodeIndex) -> Option<f32> {
    match &g
        .graph
        .node_weight(n)?
        .as_any()
        .downcast_ref::<op::Constant>()?
        .0
    {
        op::ConstantValue::Float(f) => Some(*f),
        _ => None,
    }
}

impl Compiler for FuseSwapPairs {
    fn compile<T: ToIdsMut>(&self, graph: &mut Graph, mut remap: T) {
        let adds: Vec<NodeIndex> = graph
            .graph
            .node_indices()
            .filter(|&n| {
                graph
                    .graph
                    .node_weight(n)
                    .is_some_and(|o| o.as_any().is::<op::Add>())
            })
            .collect();
        for add in adds {
            if !graph.graph.contains_node(add) {
                continue;
            }
            let srcs = graph.get_sources(add);
            if srcs.len() != 2 || srcs.iter().any(|s| s.0 == add) {
                continue;
            }
            let (Some(a), Some(b)) = (
                Branch::follow(graph, srcs[0].0, srcs[0].2),
                Branch::follow(graph, srcs[1].0, srcs[1].2),
            ) else {
                continue;
            };
            if a.source != b.source {
                continue;
            }
            // Each output slot comes from exactly one branch, and the two read different slots.
            let mut from = [0usize; 2];
            let mut sign = [0f32; 2];
            let mut ok = true;
            for o in 0..2 {
                match (a.slots[o], b.slots[o]) {
                    (Some((i, s)), None) | (None, Some((i, s))) => (from[o], sign[o]) = (i, s),
                    _ => ok = false,
                }
            }
            if !ok || from[0] == from[1] {
                continue;
            }
            let mut nodes: Vec<NodeIndex> = a.nodes.iter().chain(&b.nodes).copied().collect();
            nodes.sort();
            nodes.dedup();
            nodes.push(add);
            let (src, out, view) = a.source;
            fuse::replace(
                graph,
                &nodes,
                SwapPairs { from, sign },
                vec![(src, out, view)],
                &mut remap,
            );
        }
    }
}
