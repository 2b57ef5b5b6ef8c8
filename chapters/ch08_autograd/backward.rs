//! Reverse-mode differentiation of a luminal primitive graph, as a pass that adds the gradient
//! nodes to the same graph (before compilation, so the compilers optimise them too).
//!
//! Every node writes one contiguous buffer; every edge reads it through a view (a
//! `ShapeTracker`: permute, broadcast, slice, pad, reshape). The gradient of a node is kept
//! as a flat buffer in the node's own layout. For each edge, an op's rule (`rules.rs`, one
//! match arm per primitive) gives the gradient with respect to the *view* the op read, and
//! `undo_view` (`views.rs`) pulls it back to the buffer: one small pullback per kind of view
//! (unpermute, sum over broadcast, unslice, unpad). Two optimisations, kept apart from the
//! rules, make the result compile to matrix products: merging broadcast dims (`views.rs`) and
//! lazy broadcast gradients (`as_grad`, here).
//! Book page: [Chapter 8](../../../book/ch08_autograd.html).

use std::collections::{HashMap, HashSet};

use luminal::op;
use luminal::prelude::petgraph::visit::EdgeRef;
use luminal::prelude::petgraph::Direction;
use luminal::prelude::*;
use luminal::shape::symbolic::Expression;

use super::rules::rule;
use super::views::{buffer_len, constant, contiguous, flat, logical_dims};
use crate::graph::error::{CourseError, Result};
use crate::graph::flat::apply;
use crate::graph::params::Param;
use crate::graph::primitive::{reduce_axis, Primitive};
use crate::graph::tensor::{self, HostTensor};

/// The gradient of one parameter: a contiguous node in the parameter's own layout.
#[derive(Clone, Debug)]
pub struct Gradient {
    /// The parameter this gradient is for.
    pub param: Param,
    /// The node holding d loss / d param after `execute()`.
    pub grad: NodeIndex,
}

impl ToIdsMut for Gradient {
    fn to_ids_mut(&mut self) -> Vec<&mut NodeIndex> {
        vec![&mut self.param.id, &mut self.grad]
    }
}

impl Gradient {
    /// The computed gradient, shaped like the parameter.
    pub fn read(&self, cx: &Graph) -> Result<HostTensor> {
        let what = format!("the gradient of '{}'", self.param.name);
        let data = tensor::host_values(cx, self.grad, &what)?;
        HostTensor::new(&self.param.shape, data.into_owned())
    }
}

/// A factor of a product, read through a view whose logical shape is the op's input shape.
pub(super) type Factor = (NodeIndex, ShapeTracker);

/// An op's input: (source node, input order, the view the op reads it through).
pub(super) type Input = (NodeIndex, u8, ShapeTracker);

/// The gradient of a node's output: `len` elements in the node's buffer order, either a
/// contiguous node (`view: None`) or a view of some node (e.g. a broadcast) whose logical
/// shape is exactly the node's output shape.
#[derive(Clone, Debug)]
pub(super) struct Grad {
    pub(super) id: NodeIndex,
    pub(super) view: Option<ShapeTracker>,
    pub(super) len: Expression,
}

impl Grad {
    /// The gradient as a contiguous node (materialising a view).
    pub(super) fn materialise(&self, cx: &mut Graph) -> NodeIndex {
        match self.view {
            Some(t) => apply(cx, op::Contiguous, &[(self.id, t)]),
            None => self.id,
        }
    }

    /// The gradient read in the node's output shape `dims`.
    pub(super) fn as_view(&self, dims: &[Expression]) -> Factor {
        (self.id, self.view.unwrap_or_else(|| contiguous(dims)))
    }
}

/// **Optimisation, not a rule.** Store a rule's result for `src`: contiguous as it is; a view
/// with exactly `src`'s output shape stays a lazy view (a broadcast gradient lets the next
/// `Mul` + `SumReduce` pair match the matmul pattern, and costs no node); any other view is
/// materialised.
fn as_grad(cx: &mut Graph, src: NodeIndex, (id, t): Factor, len: Expression) -> Grad {
    let dims = logical_dims(&t);
    let view = if t == contiguous(&dims) {
        None
    } else if output_dims(cx, src).as_ref() == Some(&dims) {
        Some(t)
    } else {
        return Grad {
            id: apply(cx, op::Contiguous, &[(id, t)]),
            view: None,
            len,
        };
    };
    Grad { id, view, len }
}

pub(super) fn op_at(cx: &Graph, node: NodeIndex) -> &dyn luminal::op::Operator {
    cx.graph.node_weight(node).expect("node exists").as_ref()
}

/// The logical output shape of a node, when its op determines one (binary ops, reductions,
/// Contiguous); `None` for inputs and unary ops (whose buffers have no shape of their own).
fn output_dims(cx: &Graph, node: NodeIndex) -> Option<Vec<Expression>> {
    let ins = inputs(cx, node);
    let first = ins.first()?;
    let mut dims = logical_dims(&first.2);
    let op = Primitive::at(cx, node)?;
    if op.is_binary() || op == Primitive::Contiguous {
        return Some(dims);
    }
    dims.remove(reduce_axis(op_at(cx, node))?);
    Some(dims)
}

/// The node's inputs: (source, input order, view), sorted by input order.
fn inputs(cx: &Graph, node: NodeIndex) -> Vec<Input> {
    let mut v: Vec<_> = cx
        .graph
        .edges_directed(node, Direction::Incoming)
        .filter_map(|e| e.weight().as_data().map(|(i, _, t)| (e.source(), i, t)))
        .collect();
    v.sort_by_key(|(_, i, _)| *i);
    v
}

// ANCHOR: backward
/// Add to `cx` the gradient of the scalar `loss` with respect to every parameter in `params`,
/// by reverse-mode differentiation over the primitive ops. Run it before compiling.
///
/// A parameter that does not influence the loss gets a zero gradient. An op without a rule
/// (anything but the 12 primitives, e.g. a compiled kernel) is an error naming the node.
pub fn backward(cx: &mut Graph, params: &[Param], loss: NodeIndex) -> Result<Vec<Gradient>> {
    // The nodes that matter: downstream of a parameter and upstream of the loss.
    let upstream = reachable(cx, &[loss], Direction::Incoming);
    let param_ids: Vec<NodeIndex> = params.iter().map(|p| p.id).collect();
    let downstream = reachable(cx, &param_ids, Direction::Outgoing);
    let active: HashSet<NodeIndex> = upstream.intersection(&downstream).copied().collect();
    let order: Vec<NodeIndex> = luminal::prelude::petgraph::algo::toposort(&cx.graph, None)
        .map_err(|_| CourseError::Autograd("the graph has a cycle".into()))?
        .into_iter()
        .filter(|n| active.contains(n))
        .collect();

    // dL/dL = 1, then every node newest first: its rule, each input's share added up.
    let mut grads: HashMap<NodeIndex, Grad> = HashMap::new();
    let seed = Grad {
        id: cx.constant(1.0).id,
        view: None,
        len: 1.into(),
    };
    grads.insert(loss, seed.clone());
    for &node in order.iter().rev() {
        let Some(g) = grads.get(&node).cloned() else {
            continue;
        };
        let ins = inputs(cx, node);
        if ins.iter().all(|(src, _, _)| !active.contains(src)) {
            continue; // a leaf (a parameter) or a node fed only by constants
        }
        let op = Primitive::at(cx, node).ok_or_else(|| {
            CourseError::Autograd(format!(
                "node {node:?} ({:?}) is not one of luminal's primitive ops, so it has no \
                 backward rule (a compiler pass replaced it?): differentiate the primitive graph \
                 before compiling it",
                op_at(cx, node)
            ))
        })?;
        for (src, share) in rule(cx, node, op, &g, &ins, &active)? {
            let len = buffer_len(&ins.iter().find(|i| i.0 == src).expect("an input").2);
            let share = as_grad(cx, src, share, len);
            let total = match grads.remove(&src) {
                Some(prev) => {
                    let (a, b) = (prev.materialise(cx), share.materialise(cx));
                    let sum = apply(cx, op::Add, &[(a, flat(len)), (b, flat(len))]);
                    Grad {
                        id: sum,
                        view: None,
                        len,
                    }
                }
                None => share,
            };
            grads.insert(src, total);
        }
    }

    let mut out = Vec::with_capacity(params.len());
    for p in params {
        let dims: Vec<Expression> = p.shape.iter().map(|&d| d.into()).collect();
        let grad = match grads.get(&p.id).cloned() {
            Some(g) if g.id != seed.id => g.materialise(cx),
            // Unused parameter (or the loss itself): a materialised constant of the right size.
            other => {
                let v = if other.is_some() { 1.0 } else { 0.0 };
                let c = constant(cx, v, &dims);
                apply(cx, op::Contiguous, &[c])
            }
        };
        cx.keep_tensors(grad);
        cx.to_retrieve.insert(grad);
        out.push(Gradient {
            param: p.clone(),
            grad,
        });
    }
    Ok(out)
}
// ANCHOR_END: backward

fn reachable(cx: &Graph, from: &[NodeIndex], dir: Direction) -> HashSet<NodeIndex> {
    let mut seen: HashSet<NodeIndex> = from.iter().copied().collect();
    let mut stack = from.to_vec();
    while let Some(n) = stack.pop() {
        for e in cx.graph.edges_directed(n, dir) {
            if e.weight().as_data().is_none() {
                continue;
            }
            let next = if dir == Direction::Incoming {
                e.source()
            } else {
                e.target()
            };
            if seen.insert(next) {
                stack.push(next);
            }
        }
    }
    seen
}
