//! Views and their pullbacks: the logical shape of a view, and how a gradient with respect to
//! a view is pulled back to the buffer behind it (unpermute, sum over broadcast, unslice,
//! unpad), plus the one optimisation that makes weight gradients plain matmuls.
//! Book page: [Chapter 8](../../../book/ch08_autograd.html#3-undoing-views).

use luminal::op;
use luminal::prelude::*;
use luminal::shape::symbolic::Expression;

use super::backward::Factor;
use crate::graph::flat::apply;

// ANCHOR: view_shapes
/// The logical size of each axis of a view: padded, then sliced.
/// (luminal 0.2.0's `ShapeTracker::shape` gets two-sided slices wrong.)
pub fn logical_dims(t: &ShapeTracker) -> Vec<Expression> {
    // ANCHOR: learn_logical_dims ch08: for each logical axis, p = t.indexes[axis]: min(dims[p] + padding before + after, slice end) - slice start
    (0..t.len())
        .map(|axis| {
            let p = t.indexes[axis];
            let padded = t.dims[p] + t.padding[p].0 + t.padding[p].1;
            padded.min(t.slices[p].1) - t.slices[p].0
        })
        .collect()
    // ANCHOR_END: learn_logical_dims
}

/// Elements of the buffer a view reads: the product of its real (not broadcast) dims.
pub(super) fn buffer_len(t: &ShapeTracker) -> Expression {
    (0..t.dims.len())
        .filter(|&p| !t.fake[p])
        .fold(Expression::from(1), |n, p| n * t.dims[p])
}
// ANCHOR_END: view_shapes

pub(super) fn contiguous(dims: &[Expression]) -> ShapeTracker {
    ShapeTracker::new(dims)
}

pub(super) fn flat(n: Expression) -> ShapeTracker {
    ShapeTracker::new(&[n])
}

/// A scalar constant read as a broadcast over `dims`.
pub(super) fn constant(cx: &mut Graph, v: f32, dims: &[Expression]) -> Factor {
    (cx.constant(v).id, ShapeTracker::fake(dims))
}

pub(super) fn is_sliced(view: &ShapeTracker, p: usize) -> bool {
    view.slices[p].0 != 0.into() || view.slices[p].1 != i32::MAX.into()
}

pub(super) fn is_padded(view: &ShapeTracker, p: usize) -> bool {
    view.padding[p].0 != 0.into() || view.padding[p].1 != 0.into()
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
pub(super) fn undo_view(cx: &mut Graph, factors: Vec<Factor>, view: &ShapeTracker) -> Factor {
    // ANCHOR: learn_undo_view ch08: unpermute the factors, sum_broadcast over the broadcast dims, make the result contiguous if any real dim is sliced or padded, then unslice, then unpad
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
    // ANCHOR_END: learn_undo_view
}

/// Step 1, permute: the factors read in buffer order (real dims first, broadcast dims last),
/// multiplied. Returns the product and its logical dims.
fn unpermute(
    cx: &mut Graph,
    factors: Vec<Factor>,
    view: &ShapeTracker,
    n_real: usize,
) -> (Factor, Vec<Expression>) {
    // ANCHOR: learn_unpermute ch08: permute every factor so the real dims come first in buffer order and the broadcast dims last (merge_broadcast_dims when it applies), multiply them with op::Mul -> (product, its logical dims)
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
    // ANCHOR_END: learn_unpermute
}

/// Step 2, broadcast: sum the trailing broadcast dims, down to the buffer's `n_real` dims.
fn sum_broadcast(
    cx: &mut Graph,
    mut g: Factor,
    mut dims: Vec<Expression>,
    n_real: usize,
) -> (Factor, Vec<Expression>) {
    // ANCHOR: learn_sum_broadcast ch08: op::SumReduce of the last axis until only n_real dims are left -> (contiguous gradient, its dims)
    while dims.len() > n_real {
        let id = apply(cx, op::SumReduce(dims.len() - 1), &[g]);
        dims.pop();
        g = (id, contiguous(&dims));
    }
    (g, dims)
    // ANCHOR_END: learn_sum_broadcast
}

/// Step 3a, slice: the elements a slice cut off did not affect the loss; pad with zeros.
fn unslice(cx: &mut Graph, mut g: Factor, view: &ShapeTracker, real: &[usize]) -> Factor {
    // ANCHOR: learn_unslice ch08: pad the gradient with zeros by (slice start, full - min(full, slice end)) per real dim, full = dims + padding, then op::Contiguous -> dims full
    let full = |p: usize| view.dims[p] + view.padding[p].0 + view.padding[p].1;
    let pads: Vec<(Expression, Expression)> = real
        .iter()
        .map(|&p| (view.slices[p].0, full(p) - full(p).min(view.slices[p].1)))
        .collect();
    g.1.pad(&pads);
    let dims: Vec<Expression> = real.iter().map(|&p| full(p)).collect();
    (apply(cx, op::Contiguous, &[g]), contiguous(&dims))
    // ANCHOR_END: learn_unslice
}

/// Step 3b, pad: the padding came from no element; slice it off.
fn unpad(cx: &mut Graph, mut g: Factor, view: &ShapeTracker, real: &[usize]) -> Factor {
    // ANCHOR: learn_unpad ch08: slice the gradient to (padding before, padding before + dims[p]) per real dim, then op::Contiguous -> view.dims
    let cuts: Vec<(Expression, Expression)> = real
        .iter()
        .map(|&p| (view.padding[p].0, view.padding[p].0 + view.dims[p]))
        .collect();
    g.1.slice(&cuts);
    let dims: Vec<Expression> = real.iter().map(|&p| view.dims[p]).collect();
    (apply(cx, op::Contiguous, &[g]), contiguous(&dims))
    // ANCHOR_END: learn_unpad
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
