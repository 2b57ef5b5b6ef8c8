//! Reverse-mode differentiation of a luminal primitive graph, as a pass that adds the gradient
//! nodes to the same graph (before compilation, so the compilers optimise them too).
//!
//! Every node writes one contiguous buffer; every edge reads it through a view (a
//! `ShapeTracker`: permute, broadcast, slice, pad, reshape). The gradient of a node is kept
//! as a flat buffer in the node's own layout. For each edge, an op's rule gives the gradient
//! with respect to the *view* the op read, and [`undo_view`] pulls it back to the buffer.
//! Book page: [Chapter 8](../book/ch08_autograd.html).

use std::collections::{HashMap, HashSet};

use luminal::op::{self, Operator};
use luminal::prelude::petgraph::visit::EdgeRef;
use luminal::prelude::petgraph::Direction;
use luminal::prelude::*;
use luminal::shape::symbolic::Expression;

use crate::graph::error::{CourseError, Result};
use crate::graph::params::Param;
use crate::graph::tensor::HostTensor;

/// The gradient of one parameter: a contiguous node in the parameter's own layout.
#[derive(Clone, Debug)]
pub struct Gradient {
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
        let data = cx
            .get_tensor_ref(self.grad, 0)
            .and_then(|t| t.data.as_any().downcast_ref::<Vec<f32>>())
            .ok_or_else(|| CourseError::NotComputed {
                what: format!("the gradient of '{}'", self.param.name),
            })?;
        HostTensor::new(&self.param.shape, data.clone())
    }
}

/// A factor of a product, read through a view whose logical shape is the op's input shape.
type Factor = (NodeIndex, ShapeTracker);

/// The gradient of a node's output: `len` elements in the node's buffer order, either a
/// contiguous node (`view: None`) or a view of some node (e.g. a broadcast) whose logical
/// shape is exactly the node's output shape.
#[derive(Clone, Debug)]
struct Grad {
    id: NodeIndex,
    view: Option<ShapeTracker>,
    len: Expression,
}

impl Grad {
    /// The gradient as a contiguous node (materialising a view).
    fn materialise(&self, cx: &mut Graph) -> NodeIndex {
        match self.view {
            Some(t) => unary(cx, op::Contiguous, (self.id, t)),
            None => self.id,
        }
    }
}

/// The logical output shape of a node, when its op determines one (binary ops, reductions,
/// Contiguous); `None` for inputs and unary ops (whose buffers have no shape of their own).
fn output_dims(cx: &Graph, node: NodeIndex) -> Option<Vec<Expression>> {
    let ins = inputs(cx, node);
    let first = ins.first()?;
    let mut dims = logical_dims(&first.2);
    match Kind::of(cx, node) {
        Kind::Add | Kind::Mul | Kind::Mod | Kind::LessThan | Kind::Contiguous => Some(dims),
        Kind::SumReduce(d) | Kind::MaxReduce(d) => {
            dims.remove(d);
            Some(dims)
        }
        _ => None,
    }
}

// ANCHOR: view_shapes
/// The logical size of each axis of a view: padded, then sliced.
/// (luminal 0.2.0's `ShapeTracker::shape` gets two-sided slices wrong.)
pub fn logical_dims(t: &ShapeTracker) -> Vec<Expression> {
    (0..t.len())
        .map(|axis| {
            let p = t.indexes[axis];
            let padded = t.dims[p] + t.padding[p].0 + t.padding[p].1;
            padded.min(t.slices[p].1) - t.slices[p].0
        })
        .collect()
}

/// Elements of the buffer a view reads: the product of its real (not broadcast) dims.
fn buffer_len(t: &ShapeTracker) -> Expression {
    (0..t.dims.len())
        .filter(|&p| !t.fake[p])
        .fold(Expression::from(1), |n, p| n * t.dims[p])
}
// ANCHOR_END: view_shapes

fn contiguous(dims: &[Expression]) -> ShapeTracker {
    ShapeTracker::new(dims)
}

fn flat(n: Expression) -> ShapeTracker {
    ShapeTracker::new(&[n])
}

fn binary<O: Operator + 'static>(cx: &mut Graph, op: O, a: Factor, b: Factor) -> NodeIndex {
    cx.add_op(op).input(a.0, 0, a.1).input(b.0, 0, b.1).finish()
}

fn unary<O: Operator + 'static>(cx: &mut Graph, op: O, a: Factor) -> NodeIndex {
    cx.add_op(op).input(a.0, 0, a.1).finish()
}

/// A scalar constant read as a broadcast over `dims`.
fn constant(cx: &mut Graph, v: f32, dims: &[Expression]) -> Factor {
    (cx.constant(v).id, ShapeTracker::fake(dims))
}

/// Merge the last `k` logical axes of a view into one, if they are consecutive dims of its
/// buffer (all real or all broadcast, none sliced or padded): a reshape that keeps strides.
fn merge_trailing(t: &ShapeTracker, k: usize) -> Option<ShapeTracker> {
    let n = t.len();
    let axes: Vec<usize> = (n - k..n).map(|a| t.indexes[a]).collect();
    let p0 = axes[0];
    let consecutive = axes.iter().enumerate().all(|(j, &p)| p == p0 + j);
    let uniform = axes.iter().all(|&p| t.fake[p] == t.fake[p0]);
    let plain = axes.iter().all(|&p| {
        t.slices[p].0 == 0.into()
            && t.slices[p].1 == i32::MAX.into()
            && t.padding[p] == (0.into(), 0.into())
    });
    if !(consecutive && uniform && plain) {
        return None;
    }
    let mut m = *t;
    m.dims[p0] = axes.iter().fold(Expression::from(1), |a, &p| a * t.dims[p]);
    for _ in 1..k {
        m.dims.remove(p0 + 1);
        m.fake.remove(p0 + 1);
        m.slices.remove(p0 + 1);
        m.padding.remove(p0 + 1);
    }
    m.indexes.truncate(n - k + 1);
    for i in m.indexes.iter_mut() {
        if *i > p0 {
            *i -= k - 1;
        }
    }
    Some(m)
}

// ANCHOR: undo_view
/// Pull the gradient with respect to a view back to the buffer behind it.
///
/// `factors` multiply to the gradient w.r.t. the view (all of the view's logical shape).
/// 1. Permute so the buffer's real dims come first, in buffer order, and broadcast dims last;
///    the factors are multiplied in that order, so their product is contiguous.
/// 2. Sum over the trailing broadcast dims (a broadcast copied a value; its copies' gradients
///    add up). For a linear layer this is exactly `Mul -> SumReduce(last)`: a matmul.
/// 3. A slice becomes a zero pad, a pad becomes a slice.
///
/// Returns the gradient in the buffer's layout: a contiguous node, or (when the view was the
/// identity) the single factor as it was, still a lazy view such as a broadcast: kept lazy,
/// a broadcast gradient lets the next `Mul` + `SumReduce` pair match the matmul pattern.
fn undo_view(cx: &mut Graph, factors: Vec<Factor>, view: &ShapeTracker) -> Factor {
    let n = view.len();
    let axis_of = |p: usize| {
        (0..n)
            .find(|&a| view.indexes[a] == p)
            .expect("a permutation")
    };
    let real: Vec<usize> = (0..n).filter(|&p| !view.fake[p]).collect();
    let order: Vec<usize> = real
        .iter()
        .copied()
        .chain((0..n).filter(|&p| view.fake[p]))
        .collect();
    let perm: Vec<usize> = order.iter().map(|&p| axis_of(p)).collect();
    let dims = logical_dims(view);
    let mut ordered_dims: Vec<Expression> = perm.iter().map(|&a| dims[a]).collect();

    // Step 1: the product, computed in buffer order.
    let mut factors: Vec<Factor> = factors
        .into_iter()
        .map(|(id, mut t)| {
            t.permute(&perm);
            (id, t)
        })
        .collect();
    // Several broadcast dims (e.g. batch and sequence for a weight's gradient) merged into
    // one when every factor allows it: one SumReduce, and the product is a plain matmul.
    let k = n - real.len();
    if k >= 2 {
        let merged: Option<Vec<Factor>> = factors
            .iter()
            .map(|(id, t)| merge_trailing(t, k).map(|m| (*id, m)))
            .collect();
        if let Some(merged) = merged {
            factors = merged;
            let tail = ordered_dims.split_off(real.len());
            ordered_dims.push(tail.into_iter().fold(Expression::from(1), |a, b| a * b));
        }
    }
    let mut factors = factors.into_iter();
    let mut g = factors.next().expect("at least one factor");
    for f in factors {
        let id = binary(cx, op::Mul, g, f);
        g = (id, contiguous(&ordered_dims));
    }
    // Step 2: sum the broadcast copies.
    while ordered_dims.len() > real.len() {
        let last = ordered_dims.len() - 1;
        let id = unary(cx, op::SumReduce(last), g);
        ordered_dims.pop();
        g = (id, contiguous(&ordered_dims));
    }

    // Step 3: a slice is undone by zero padding, a pad by slicing. Padding must apply to a
    // real buffer: a still-lazy broadcast would repeat its value into the padding.
    let (sliced_any, padded_any) = (
        real.iter()
            .any(|&p| view.slices[p].0 != 0.into() || view.slices[p].1 != i32::MAX.into()),
        real.iter()
            .any(|&p| view.padding[p].0 != 0.into() || view.padding[p].1 != 0.into()),
    );
    if (sliced_any || padded_any) && g.1 != contiguous(&ordered_dims) {
        g = (unary(cx, op::Contiguous, g), contiguous(&ordered_dims));
    }
    if sliced_any {
        let pads: Vec<(Expression, Expression)> = real
            .iter()
            .map(|&p| {
                let padded = view.dims[p] + view.padding[p].0 + view.padding[p].1;
                (view.slices[p].0, padded - padded.min(view.slices[p].1))
            })
            .collect();
        g.1.pad(&pads);
        ordered_dims = real
            .iter()
            .map(|&p| view.dims[p] + view.padding[p].0 + view.padding[p].1)
            .collect();
        g = (unary(cx, op::Contiguous, g), contiguous(&ordered_dims));
    }
    if padded_any {
        let cuts: Vec<(Expression, Expression)> = real
            .iter()
            .map(|&p| (view.padding[p].0, view.padding[p].0 + view.dims[p]))
            .collect();
        g.1.slice(&cuts);
        ordered_dims = real.iter().map(|&p| view.dims[p]).collect();
        g = (unary(cx, op::Contiguous, g), contiguous(&ordered_dims));
    }
    g
}
// ANCHOR_END: undo_view

/// Views that [`undo_view`] cannot pull back exactly are refused rather than differentiated
/// wrongly: a broadcast dim that is also sliced or padded, or a dim both sliced (from a start
/// past 0) and padded (luminal 0.2.0 indexes those inconsistently).
fn check_view(view: &ShapeTracker) -> std::result::Result<(), String> {
    for p in 0..view.dims.len() {
        let sliced = view.slices[p].0 != 0.into() || view.slices[p].1 != i32::MAX.into();
        let padded = view.padding[p].0 != 0.into() || view.padding[p].1 != 0.into();
        if view.fake[p] && (sliced || padded) {
            return Err(format!(
                "a broadcast dim that is also sliced or padded ({view:?})"
            ));
        }
        if padded && view.slices[p].0 != 0.into() {
            return Err(format!(
                "a dim both padded and sliced from a start past 0 ({view:?})"
            ));
        }
    }
    Ok(())
}

/// The node's inputs: (source, input order, view), sorted by input order.
fn inputs(cx: &Graph, node: NodeIndex) -> Vec<(NodeIndex, u8, ShapeTracker)> {
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
        for (src, (id, t)) in rules(cx, node, &g, &ins, &active)? {
            let len = buffer_len(&ins.iter().find(|i| i.0 == src).expect("an input").2);
            let dims = logical_dims(&t);
            let grad = if t == contiguous(&dims) {
                Grad {
                    id,
                    view: None,
                    len,
                }
            } else if output_dims(cx, src).as_ref() == Some(&dims) {
                Grad {
                    id,
                    view: Some(t),
                    len,
                } // stays a lazy view
            } else {
                Grad {
                    id: unary(cx, op::Contiguous, (id, t)),
                    view: None,
                    len,
                }
            };
            let total = match grads.get(&src).cloned() {
                Some(prev) => {
                    let (a, b) = (prev.materialise(cx), grad.materialise(cx));
                    Grad {
                        id: binary(cx, op::Add, (a, flat(len)), (b, flat(len))),
                        view: None,
                        len,
                    }
                }
                None => grad,
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
                unary(cx, op::Contiguous, c)
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

/// The op of a node, as far as the backward rules care.
#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Log2,
    Exp2,
    Sin,
    Sqrt,
    Recip,
    Add,
    Mul,
    Mod,
    LessThan,
    Contiguous,
    SumReduce(usize),
    MaxReduce(usize),
    Other(String),
}

impl Kind {
    fn of(cx: &Graph, node: NodeIndex) -> Self {
        let op = cx.graph.node_weight(node).expect("node exists");
        let any = op.as_any();
        let simple = [
            (any.is::<op::Log2>(), Kind::Log2),
            (any.is::<op::Exp2>(), Kind::Exp2),
            (any.is::<op::Sin>(), Kind::Sin),
            (any.is::<op::Sqrt>(), Kind::Sqrt),
            (any.is::<op::Recip>(), Kind::Recip),
            (any.is::<op::Add>(), Kind::Add),
            (any.is::<op::Mul>(), Kind::Mul),
            (any.is::<op::Mod>(), Kind::Mod),
            (any.is::<op::LessThan>(), Kind::LessThan),
            (any.is::<op::Contiguous>(), Kind::Contiguous),
        ];
        if let Some((_, k)) = simple.into_iter().find(|(is, _)| *is) {
            return k;
        }
        if let Some(op::SumReduce(d)) = any.downcast_ref::<op::SumReduce>() {
            return Kind::SumReduce(*d);
        }
        if let Some(op::MaxReduce(d)) = any.downcast_ref::<op::MaxReduce>() {
            return Kind::MaxReduce(*d);
        }
        Kind::Other(format!("{op:?}"))
    }
}

// ANCHOR: rules
/// One op's backward rule: the flat gradient contribution to each active input.
/// `g` is the node's own flat gradient, `len` its number of elements.
fn rules(
    cx: &mut Graph,
    node: NodeIndex,
    g: &Grad,
    ins: &[(NodeIndex, u8, ShapeTracker)],
    active: &HashSet<NodeIndex>,
) -> Result<Vec<(NodeIndex, Factor)>> {
    let kind = Kind::of(cx, node);
    let mut out = Vec::new();
    let is_active = |i: usize| active.contains(&ins[i].0);

    // Unary ops map the source's buffer elementwise, whatever view the edge carries: their
    // gradient is elementwise in buffer order, no view to undo.
    let len = g.len;
    let (x, y) = ((ins[0].0, flat(len)), (node, flat(len)));
    let unary_op = matches!(
        kind,
        Kind::Log2 | Kind::Exp2 | Kind::Sin | Kind::Sqrt | Kind::Recip
    );
    let gf = (if unary_op { g.materialise(cx) } else { g.id }, flat(len));
    let unary_grad = if kind == Kind::Log2 {
        // d log2(x) = 1 / (x ln 2)
        let r = unary(cx, op::Recip, x);
        let c = constant(cx, std::f32::consts::LOG2_E, &[len]);
        Some(vec![gf, (r, flat(len)), c])
    } else if kind == Kind::Exp2 {
        // d 2^x = 2^x ln 2
        Some(vec![gf, y, constant(cx, std::f32::consts::LN_2, &[len])])
    } else if kind == Kind::Sin {
        // d sin(x) = cos(x) = sin(x + pi/2)
        let shift = constant(cx, std::f32::consts::FRAC_PI_2, &[len]);
        let moved = binary(cx, op::Add, x, shift);
        let cos = unary(cx, op::Sin, (moved, flat(len)));
        Some(vec![gf, (cos, flat(len))])
    } else if kind == Kind::Sqrt {
        // d sqrt(x) = 1 / (2 sqrt(x))
        let r = unary(cx, op::Recip, y);
        Some(vec![gf, (r, flat(len)), constant(cx, 0.5, &[len])])
    } else if kind == Kind::Recip {
        // d (1/x) = -1/x^2 = -y^2
        Some(vec![gf, y, y, constant(cx, -1.0, &[len])])
    } else {
        None
    };
    if let Some(factors) = unary_grad {
        if is_active(0) {
            let mut f = factors.into_iter();
            let mut acc = f.next().expect("a factor");
            for next in f {
                acc = (binary(cx, op::Mul, acc, next), flat(len));
            }
            out.push((ins[0].0, acc));
        }
        return Ok(out);
    }

    // The other ops read their inputs through views of the same logical shape.
    for (i, (src, _, view)) in ins.iter().enumerate() {
        if active.contains(src) {
            check_view(view).map_err(|why| {
                CourseError::Autograd(format!("node {node:?} ({kind:?}), input {i}: {why}"))
            })?;
        }
    }
    let view_dims = logical_dims(&ins[0].2);
    let g_view: Factor = (g.id, g.view.unwrap_or_else(|| contiguous(&view_dims)));
    match kind {
        Kind::Add | Kind::Contiguous => {
            for (i, (src, _, view)) in ins.iter().enumerate() {
                if is_active(i) {
                    out.push((*src, undo_view(cx, vec![g_view], view)));
                }
            }
        }
        Kind::Mul => {
            for i in 0..2 {
                if is_active(i) {
                    let other = (ins[1 - i].0, ins[1 - i].2);
                    out.push((ins[i].0, undo_view(cx, vec![g_view, other], &ins[i].2)));
                }
            }
        }
        Kind::SumReduce(d) => {
            // Every input element along d fed the sum: each gets the sum's gradient.
            let mut reduced = view_dims.clone();
            reduced.remove(d);
            // A lazy gradient view already has the reduced shape: broadcast it further.
            let mut t = g.view.unwrap_or_else(|| contiguous(&reduced));
            t.expand(d, view_dims[d]);
            out.push((ins[0].0, undo_view(cx, vec![(g.id, t)], &ins[0].2)));
        }
        Kind::MaxReduce(d) => {
            // Only the maximal elements fed the max: mask = 1 - (x < max). Ties each get G.
            let mut reduced = view_dims.clone();
            reduced.remove(d);
            let mut t = contiguous(&reduced);
            t.expand(d, view_dims[d]);
            let mut gt = g.view.unwrap_or_else(|| contiguous(&reduced));
            gt.expand(d, view_dims[d]);
            let x = (ins[0].0, ins[0].2);
            let below = binary(cx, op::LessThan, x, (node, t));
            let minus = constant(cx, -1.0, &view_dims);
            let neg = binary(cx, op::Mul, (below, contiguous(&view_dims)), minus);
            let one = constant(cx, 1.0, &view_dims);
            let is_max = binary(cx, op::Add, (neg, contiguous(&view_dims)), one);
            out.push((
                ins[0].0,
                undo_view(
                    cx,
                    vec![(g.id, gt), (is_max, contiguous(&view_dims))],
                    &ins[0].2,
                ),
            ));
        }
        Kind::LessThan => {
            // Piecewise constant: zero gradient almost everywhere. Nothing flows.
        }
        Kind::Mod => {
            // a mod b = a - b floor(a / b): slope 1 in a; in b it jumps, so we refuse it.
            if is_active(1) {
                return Err(CourseError::Autograd(format!(
                    "node {node:?} (Mod): Mod is not differentiable with respect to its divisor"
                )));
            }
            if is_active(0) {
                out.push((ins[0].0, undo_view(cx, vec![g_view], &ins[0].2)));
            }
        }
        Kind::Log2 | Kind::Exp2 | Kind::Sin | Kind::Sqrt | Kind::Recip => {
            unreachable!("handled above")
        }
        Kind::Other(name) => {
            return Err(CourseError::Autograd(format!(
                "node {node:?} ({name}) is not one of luminal's primitive ops, so it has no \
                 backward rule (a compiler pass replaced it?): differentiate the primitive graph \
                 before compiling it"
            )));
        }
    }
    Ok(out)
}
// ANCHOR_END: rules
