//! Reverse-mode differentiation of a luminal primitive graph, as a pass that adds the gradient
//! nodes to the same graph (before compilation, so the compilers optimise them too).
//!
//! Every node writes one contiguous buffer; every edge reads it through a view (a
//! `ShapeTracker`: permute, broadcast, slice, pad, reshape). The gradient of a node is kept
//! as a flat buffer in the node's own layout. For each edge, an op's rule (`rule`, one match
//! arm per primitive) gives the gradient with respect to the *view* the op read, and
//! `undo_view` pulls it back to the buffer: one small pullback per kind of view (unpermute,
//! sum over broadcast, unslice, unpad). Two optimisations, kept apart from the rules, make the
//! result compile to matrix products: merging broadcast dims and lazy broadcast gradients.
//! Book page: [Chapter 8](../book/ch08_autograd.html).

use std::collections::{HashMap, HashSet};

use luminal::op;
use luminal::prelude::petgraph::visit::EdgeRef;
use luminal::prelude::petgraph::Direction;
use luminal::prelude::*;
use luminal::shape::symbolic::Expression;

use crate::graph::error::{CourseError, Result};
use crate::graph::flat::{apply, Flat};
use crate::graph::params::Param;
use crate::graph::primitive::{reduce_axis, Primitive};
use crate::graph::tensor::HostTensor;

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

/// An op's input: (source node, input order, the view the op reads it through).
type Input = (NodeIndex, u8, ShapeTracker);

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
            Some(t) => apply(cx, op::Contiguous, &[(self.id, t)]),
            None => self.id,
        }
    }

    /// The gradient read in the node's output shape `dims`.
    fn as_view(&self, dims: &[Expression]) -> Factor {
        (self.id, self.view.unwrap_or_else(|| contiguous(dims)))
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

/// A scalar constant read as a broadcast over `dims`.
fn constant(cx: &mut Graph, v: f32, dims: &[Expression]) -> Factor {
    (cx.constant(v).id, ShapeTracker::fake(dims))
}

fn is_sliced(view: &ShapeTracker, p: usize) -> bool {
    view.slices[p].0 != 0.into() || view.slices[p].1 != i32::MAX.into()
}

fn is_padded(view: &ShapeTracker, p: usize) -> bool {
    view.padding[p].0 != 0.into() || view.padding[p].1 != 0.into()
}

// ANCHOR: rules
/// One op's backward rule: from the node's gradient `g`, the gradient with respect to each
/// active input's buffer. One arm per primitive, as in the book's table.
fn rule(
    cx: &mut Graph,
    node: NodeIndex,
    op: Primitive,
    g: &Grad,
    ins: &[Input],
    active: &HashSet<NodeIndex>,
) -> Result<Vec<(NodeIndex, Factor)>> {
    use std::f32::consts::{FRAC_PI_2, LN_2, LOG2_E};
    use Primitive::*;
    // Unary ops map their input's *buffer* element by element, whatever view the edge carries:
    // the gradient is elementwise in buffer order, with no view to undo (section 3).
    if op.is_unary() {
        let len = g.len;
        let g_buffer = g.materialise(cx);
        let g = Flat::new(cx, g_buffer, len);
        let (x, y) = (Flat::new(cx, ins[0].0, len), Flat::new(cx, node, len));
        let dx = match op {
            Log2 => g * x.recip() * LOG2_E,   // d log2(x) = 1 / (x ln 2)
            Exp2 => g * y * LN_2,             // d 2^x = 2^x ln 2 = y ln 2
            Sin => g * (x + FRAC_PI_2).sin(), // d sin(x) = cos(x) = sin(x + pi/2)
            Sqrt => g * y.recip() * 0.5,      // d sqrt(x) = 1 / (2 sqrt(x)) = 1 / (2y)
            Recip => g * y * y * -1.0,        // d (1/x) = -1/x^2 = -y^2
            _ => unreachable!("the five unary ops"),
        };
        return Ok(vec![(ins[0].0, (dx.id, flat(len)))]);
    }

    // The other ops read their inputs through views of one logical shape, `dims`.
    check_views(node, op, ins, active)?;
    let dims = logical_dims(&ins[0].2);
    let is_active = |i: usize| active.contains(&ins[i].0);
    let pull = |cx: &mut Graph, factors: Vec<Factor>, i: usize| {
        (ins[i].0, undo_view(cx, factors, &ins[i].2))
    };
    let input = |i: usize| (ins[i].0, ins[i].2);
    let mut out = Vec::new();
    match op {
        // y = a + b: G to each input. A copy of a view: G.
        Add | Contiguous => {
            for i in (0..ins.len()).filter(|&i| is_active(i)) {
                out.push(pull(cx, vec![g.as_view(&dims)], i));
            }
        }
        // y = a b: G b to a, G a to b.
        Mul => {
            for i in (0..2).filter(|&i| is_active(i)) {
                out.push(pull(cx, vec![g.as_view(&dims), input(1 - i)], i));
            }
        }
        // Every element along d fed the sum: each gets the sum's gradient, broadcast back.
        SumReduce => {
            let d = reduce_axis(op_at(cx, node)).expect("a reduction");
            out.push(pull(cx, vec![broadcast_back(g, &dims, d)], 0));
        }
        // Only the maximal elements fed the max: G (1 - [x < max]). Ties each get G.
        MaxReduce => {
            let d = reduce_axis(op_at(cx, node)).expect("a reduction");
            let max = broadcast_back(&contiguous_grad(node, &dims, d), &dims, d);
            let below = apply(cx, op::LessThan, &[input(0), max]);
            let is_max = one_minus(cx, below, &dims);
            let factors = vec![broadcast_back(g, &dims, d), (is_max, contiguous(&dims))];
            out.push(pull(cx, factors, 0));
        }
        // Piecewise constant: zero gradient almost everywhere. Nothing flows.
        LessThan => {}
        // a mod b = a - b floor(a / b): slope 1 in a; in b it jumps, so it is refused.
        Mod => {
            if is_active(1) {
                return Err(CourseError::Autograd(format!(
                    "node {node:?} (Mod): Mod is not differentiable with respect to its divisor"
                )));
            }
            if is_active(0) {
                out.push(pull(cx, vec![g.as_view(&dims)], 0));
            }
        }
        Log2 | Exp2 | Sin | Sqrt | Recip => unreachable!("handled above"),
    }
    Ok(out)
}
// ANCHOR_END: rules

fn op_at(cx: &Graph, node: NodeIndex) -> &dyn luminal::op::Operator {
    cx.graph.node_weight(node).expect("node exists").as_ref()
}

/// A reduction's output, as a gradient-like handle (to read it broadcast back).
fn contiguous_grad(node: NodeIndex, dims: &[Expression], d: usize) -> Grad {
    let mut reduced = dims.to_vec();
    reduced.remove(d);
    let len = reduced.iter().fold(Expression::from(1), |a, &b| a * b);
    Grad {
        id: node,
        view: None,
        len,
    }
}

/// A reduction's gradient `g` (of the reduced shape) read back over the input's `dims`:
/// broadcast along the reduced axis `d`. A lazy gradient view is broadcast further.
fn broadcast_back(g: &Grad, dims: &[Expression], d: usize) -> Factor {
    let mut reduced = dims.to_vec();
    reduced.remove(d);
    let mut t = g.view.unwrap_or_else(|| contiguous(&reduced));
    t.expand(d, dims[d]);
    (g.id, t)
}

/// `1 - a` for a contiguous node `a` of shape `dims`, as `a * -1 + 1`.
fn one_minus(cx: &mut Graph, a: NodeIndex, dims: &[Expression]) -> NodeIndex {
    let minus = constant(cx, -1.0, dims);
    let neg = apply(cx, op::Mul, &[(a, contiguous(dims)), minus]);
    let one = constant(cx, 1.0, dims);
    apply(cx, op::Add, &[(neg, contiguous(dims)), one])
}

/// Views that [`undo_view`] cannot pull back exactly are refused rather than differentiated
/// wrongly: a broadcast dim that is also sliced or padded, or a dim both sliced (from a start
/// past 0) and padded (luminal 0.2.0 indexes those inconsistently).
fn check_views(
    node: NodeIndex,
    op: Primitive,
    ins: &[Input],
    active: &HashSet<NodeIndex>,
) -> Result<()> {
    for (i, (src, _, view)) in ins.iter().enumerate() {
        if !active.contains(src) {
            continue;
        }
        for p in 0..view.dims.len() {
            let why = if view.fake[p] && (is_sliced(view, p) || is_padded(view, p)) {
                "a broadcast dim that is also sliced or padded"
            } else if is_padded(view, p) && view.slices[p].0 != 0.into() {
                "a dim both padded and sliced from a start past 0"
            } else {
                continue;
            };
            return Err(CourseError::Autograd(format!(
                "node {node:?} ({op:?}), input {i}: {why} ({view:?})"
            )));
        }
    }
    Ok(())
}

// ANCHOR: undo_view
/// Pull the gradient with respect to a view back to the buffer behind it.
///
/// `factors` multiply to the gradient w.r.t. the view (all of the view's logical shape).
/// Each kind of view has its own pullback, applied in this order:
/// 1. [`unpermute`]: read the factors with the buffer's real dims first, in buffer order, and the
///    broadcast dims last, and multiply them, so the product is laid out like the buffer;
/// 2. [`sum_broadcast`]: sum over the trailing broadcast dims (a broadcast copied a value; its
///    copies' gradients add up);
/// 3. [`unslice`] and [`unpad`]: a slice becomes a zero pad, a pad becomes a slice.
///
/// Returns the gradient in the buffer's layout: a contiguous node, or (when the view was the
/// identity) the single factor as it was, still a lazy view such as a broadcast.
fn undo_view(cx: &mut Graph, factors: Vec<Factor>, view: &ShapeTracker) -> Factor {
    let real: Vec<usize> = (0..view.len()).filter(|&p| !view.fake[p]).collect();
    let (g, dims) = unpermute(cx, factors, view, real.len());
    let (mut g, dims) = sum_broadcast(cx, g, dims, real.len());
    let (sliced, padded) = (
        real.iter().any(|&p| is_sliced(view, p)),
        real.iter().any(|&p| is_padded(view, p)),
    );
    // Padding must apply to a real buffer: a still-lazy broadcast would repeat its value into
    // the padding.
    if (sliced || padded) && g.1 != contiguous(&dims) {
        g = (apply(cx, op::Contiguous, &[g]), contiguous(&dims));
    }
    if sliced {
        g = unslice(cx, g, view, &real);
    }
    if padded {
        g = unpad(cx, g, view, &real);
    }
    g
}

/// Step 1, permute: the factors read in buffer order (real dims first, broadcast dims last),
/// multiplied. Returns the product and its logical dims.
fn unpermute(
    cx: &mut Graph,
    factors: Vec<Factor>,
    view: &ShapeTracker,
    n_real: usize,
) -> (Factor, Vec<Expression>) {
    let n = view.len();
    let axis_of = |p: usize| {
        (0..n)
            .find(|&a| view.indexes[a] == p)
            .expect("a permutation")
    };
    let order = (0..n)
        .filter(|&p| !view.fake[p])
        .chain((0..n).filter(|&p| view.fake[p]));
    let perm: Vec<usize> = order.map(axis_of).collect();
    let logical = logical_dims(view);
    let mut dims: Vec<Expression> = perm.iter().map(|&a| logical[a]).collect();
    let mut factors: Vec<Factor> = factors
        .into_iter()
        .map(|(id, mut t)| {
            t.permute(&perm);
            (id, t)
        })
        .collect();
    if let Some(merged) = merge_broadcast_dims(&factors, n - n_real) {
        factors = merged;
        let tail = dims.split_off(n_real);
        dims.push(tail.into_iter().fold(Expression::from(1), |a, b| a * b));
    }
    let mut factors = factors.into_iter();
    let mut g = factors.next().expect("at least one factor");
    for f in factors {
        g = (apply(cx, op::Mul, &[g, f]), contiguous(&dims));
    }
    (g, dims)
}

/// Step 2, broadcast: sum the trailing broadcast dims, down to the buffer's `n_real` dims.
fn sum_broadcast(
    cx: &mut Graph,
    mut g: Factor,
    mut dims: Vec<Expression>,
    n_real: usize,
) -> (Factor, Vec<Expression>) {
    while dims.len() > n_real {
        let id = apply(cx, op::SumReduce(dims.len() - 1), &[g]);
        dims.pop();
        g = (id, contiguous(&dims));
    }
    (g, dims)
}

/// Step 3a, slice: the elements a slice cut off did not affect the loss; pad with zeros.
fn unslice(cx: &mut Graph, mut g: Factor, view: &ShapeTracker, real: &[usize]) -> Factor {
    let full = |p: usize| view.dims[p] + view.padding[p].0 + view.padding[p].1;
    let pads: Vec<(Expression, Expression)> = real
        .iter()
        .map(|&p| (view.slices[p].0, full(p) - full(p).min(view.slices[p].1)))
        .collect();
    g.1.pad(&pads);
    let dims: Vec<Expression> = real.iter().map(|&p| full(p)).collect();
    (apply(cx, op::Contiguous, &[g]), contiguous(&dims))
}

/// Step 3b, pad: the padding came from no element; slice it off.
fn unpad(cx: &mut Graph, mut g: Factor, view: &ShapeTracker, real: &[usize]) -> Factor {
    let cuts: Vec<(Expression, Expression)> = real
        .iter()
        .map(|&p| (view.padding[p].0, view.padding[p].0 + view.dims[p]))
        .collect();
    g.1.slice(&cuts);
    let dims: Vec<Expression> = real.iter().map(|&p| view.dims[p]).collect();
    (apply(cx, op::Contiguous, &[g]), contiguous(&dims))
}
// ANCHOR_END: undo_view

/// **Optimisation, not a rule.** Merge the last `k >= 2` (broadcast) axes of every factor into
/// one, when each factor allows it (they are consecutive dims of its buffer, all real or all
/// broadcast, none sliced or padded): then one `SumReduce` sums them, and a weight's gradient
/// is a plain 2-D matmul (section 3) instead of a matmul and a second reduction.
fn merge_broadcast_dims(factors: &[Factor], k: usize) -> Option<Vec<Factor>> {
    if k < 2 {
        return None;
    }
    factors
        .iter()
        .map(|(id, t)| merge_trailing(t, k).map(|m| (*id, m)))
        .collect()
}

/// Merge the last `k` logical axes of a view into one, if they are consecutive dims of its
/// buffer (all real or all broadcast, none sliced or padded): a reshape that keeps strides.
fn merge_trailing(t: &ShapeTracker, k: usize) -> Option<ShapeTracker> {
    let n = t.len();
    let axes: Vec<usize> = (n - k..n).map(|a| t.indexes[a]).collect();
    let p0 = axes[0];
    let consecutive = axes.iter().enumerate().all(|(j, &p)| p == p0 + j);
    let uniform = axes.iter().all(|&p| t.fake[p] == t.fake[p0]);
    let plain = axes.iter().all(|&p| !is_sliced(t, p) && !is_padded(t, p));
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
