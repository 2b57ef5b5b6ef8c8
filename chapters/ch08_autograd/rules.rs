//! The backward rules: one match arm per primitive, as in the book's table.
//! Book page: [Chapter 8](../../../book/ch08_autograd.html#2-one-rule-per-primitive).

use std::collections::HashSet;

use luminal::op;
use luminal::prelude::*;
use luminal::shape::symbolic::Expression;

use super::backward::{op_at, Factor, Grad, Input};
use super::views::{constant, contiguous, flat, is_padded, is_sliced, logical_dims, undo_view};
use crate::graph::error::{CourseError, Result};
use crate::graph::flat::{apply, Flat};
use crate::graph::primitive::{reduce_axis, Primitive};

// ANCHOR: rules
/// One op's backward rule: from the node's gradient `g`, the gradient with respect to each
/// active input's buffer. One arm per primitive, as in the book's table.
pub(super) fn rule(
    cx: &mut Graph,
    node: NodeIndex,
    op: Primitive,
    g: &Grad,
    ins: &[Input],
    active: &HashSet<NodeIndex>,
) -> Result<Vec<(NodeIndex, Factor)>> {
    // ANCHOR: learn_rule ch08: unary ops on flat buffers: Log2 g/(x ln2), Exp2 g y ln2, Sin g sin(x + pi/2), Sqrt g/(2y), Recip -g y^2; otherwise check_views, then pull back with undo_view: Add/Contiguous g, Mul g times the other input, SumReduce g broadcast back, MaxReduce g where x is not below the max, LessThan nothing, Mod g to the dividend and an error for the divisor
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
    // ANCHOR_END: learn_rule
}
// ANCHOR_END: rules

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
    // ANCHOR: learn_broadcast_back ch08: g's view (or contiguous over dims without axis d), expanded along axis d to dims[d] -> (g.id, view)
    let mut reduced = dims.to_vec();
    reduced.remove(d);
    let mut t = g.view.unwrap_or_else(|| contiguous(&reduced));
    t.expand(d, dims[d]);
    (g.id, t)
    // ANCHOR_END: learn_broadcast_back
}

/// `1 - a` for a contiguous node `a` of shape `dims`, as `a * -1 + 1`.
fn one_minus(cx: &mut Graph, a: NodeIndex, dims: &[Expression]) -> NodeIndex {
    // ANCHOR: learn_one_minus ch08: a * -1 + 1 with apply(op::Mul / op::Add) on the contiguous view of a and constant(..) broadcasts over dims
    let minus = constant(cx, -1.0, dims);
    let neg = apply(cx, op::Mul, &[(a, contiguous(dims)), minus]);
    let one = constant(cx, 1.0, dims);
    apply(cx, op::Add, &[(neg, contiguous(dims)), one])
    // ANCHOR_END: learn_one_minus
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
