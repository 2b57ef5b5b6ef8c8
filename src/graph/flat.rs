//! Graph math on flat buffers, written like arithmetic: `m * beta1 + g * (1.0 - beta1)`.
//!
//! Optimisers and gradient clipping work on every parameter alike, whatever its shape: a
//! parameter is just `len` numbers. luminal's typed tensors carry their shape in the type, and
//! parameters differ in size, so those chapters use [`Flat`] instead: a handle to a graph node
//! read as one run of `len` values (or as a scalar), with Rust's operators building the nodes.
//! A scalar broadcasts against a flat buffer; two flat buffers must have the same length.
//! `f32` operands become constant nodes. Nothing is computed until the graph executes.
//!
//! [`apply`] is the one general builder underneath: an op and its inputs, each read through a
//! view. Chapter 8's backward rules use it where gradients flow through views.
//! See the book's [chapter 9](../../../book/ch09_optimizers.html#flat-views-of-primitive-ops).

use std::ops::{Add, Div, Mul, Neg, Sub};

use luminal::op::{self, Operator};
use luminal::prelude::*;
use luminal::shape::symbolic::Expression;

/// Add `op` to `cx` with `inputs` in order, each read through its view; returns the new node.
pub fn apply<O: Operator + 'static>(
    cx: &mut Graph,
    op: O,
    inputs: &[(NodeIndex, ShapeTracker)],
) -> NodeIndex {
    let mut node = cx.add_op(op);
    for (id, view) in inputs {
        node = node.input(*id, 0, *view);
    }
    node.finish()
}

/// A graph node read as a flat run of `len` values, or as a scalar (`len` is `None`).
///
/// Copy, like luminal's `GraphTensor`, and for the same reason it holds a raw pointer to its
/// graph: operators take their operands by value. The graph must outlive the handle.
#[derive(Clone, Copy)]
pub struct Flat {
    /// The node.
    pub id: NodeIndex,
    len: Option<Expression>,
    graph: *mut Graph,
}

impl std::fmt::Debug for Flat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.len {
            Some(n) => write!(f, "Flat({:?}, {n:?} values)", self.id),
            None => write!(f, "Flat({:?}, scalar)", self.id),
        }
    }
}

impl Flat {
    /// Node `id` of `cx`, read as `len` contiguous values.
    pub fn new(cx: &mut Graph, id: NodeIndex, len: impl Into<Expression>) -> Self {
        Self {
            id,
            len: Some(len.into()),
            graph: cx,
        }
    }

    /// Node `id` of `cx`, read as a single value.
    pub fn scalar(cx: &mut Graph, id: NodeIndex) -> Self {
        Self {
            id,
            len: None,
            graph: cx,
        }
    }

    /// A new constant node holding `v`.
    pub fn constant(cx: &mut Graph, v: f32) -> Self {
        let id = cx.constant(v).id;
        Self::scalar(cx, id)
    }

    /// The graph this handle lives in.
    #[allow(clippy::mut_from_ref)] // as luminal's GraphTensor::graph: handles are Copy
    pub fn graph(&self) -> &mut Graph {
        // SAFETY: handles are only made from a live `&mut Graph`, which must outlive them
        // (the same contract as luminal's GraphTensor); the returned borrow is used only for
        // the duration of one graph edit.
        unsafe { &mut *self.graph }
    }

    /// Number of values, or `None` for a scalar.
    pub fn len(&self) -> Option<Expression> {
        self.len
    }

    /// How this handle's node is read as an input of an op over `len` values: contiguously, or
    /// (a scalar against a flat buffer) broadcast.
    fn view_for(&self, len: Option<Expression>) -> ShapeTracker {
        match (self.len, len) {
            (Some(n), _) => ShapeTracker::new(&[n]),
            (None, Some(n)) => ShapeTracker::fake(&[n]),
            (None, None) => ShapeTracker::new(&[]),
        }
    }

    fn with_id(self, id: NodeIndex, len: Option<Expression>) -> Self {
        Self { id, len, ..self }
    }

    fn unary<O: Operator + 'static>(self, op: O) -> Self {
        let id = apply(self.graph(), op, &[(self.id, self.view_for(self.len))]);
        self.with_id(id, self.len)
    }

    fn binary<O: Operator + 'static>(self, op: O, rhs: Flat) -> Self {
        let len = match (self.len, rhs.len) {
            (Some(a), Some(b)) => {
                assert!(
                    a == b,
                    "Flat: elementwise op on buffers of different lengths ({a:?} and {b:?})"
                );
                Some(a)
            }
            (a, b) => a.or(b),
        };
        let inputs = [(self.id, self.view_for(len)), (rhs.id, rhs.view_for(len))];
        let id = apply(self.graph(), op, &inputs);
        self.with_id(id, len)
    }

    fn constant_like(self, v: f32) -> Self {
        Flat::constant(self.graph(), v)
    }

    /// Elementwise square root.
    pub fn sqrt(self) -> Self {
        self.unary(op::Sqrt)
    }

    /// Elementwise sine.
    pub fn sin(self) -> Self {
        self.unary(op::Sin)
    }

    /// Elementwise `1 / x`.
    pub fn recip(self) -> Self {
        self.unary(op::Recip)
    }

    /// `1` where `self < rhs`, else `0`.
    pub fn less_than(self, rhs: impl IntoFlat) -> Self {
        let rhs = rhs.into_flat(self);
        self.binary(op::LessThan, rhs)
    }

    /// The sum of all values, as a scalar (a scalar is its own sum).
    pub fn sum(self) -> Self {
        match self.len {
            Some(_) => {
                let id = apply(
                    self.graph(),
                    op::SumReduce(0),
                    &[(self.id, self.view_for(None))],
                );
                self.with_id(id, None)
            }
            None => self,
        }
    }

    /// Keep this node's output after execution (luminal frees intermediate buffers otherwise).
    pub fn keep(self) -> Self {
        self.graph().keep_tensors(self.id);
        self
    }
}

/// An operand of a [`Flat`] operator: another handle, or an `f32` that becomes a constant node.
pub trait IntoFlat {
    /// This operand as a node of `like`'s graph.
    fn into_flat(self, like: Flat) -> Flat;
}

impl IntoFlat for Flat {
    fn into_flat(self, _: Flat) -> Flat {
        self
    }
}

impl IntoFlat for f32 {
    fn into_flat(self, like: Flat) -> Flat {
        like.constant_like(self)
    }
}

impl<R: IntoFlat> Add<R> for Flat {
    type Output = Flat;
    fn add(self, rhs: R) -> Flat {
        let rhs = rhs.into_flat(self);
        self.binary(op::Add, rhs)
    }
}

impl<R: IntoFlat> Mul<R> for Flat {
    type Output = Flat;
    fn mul(self, rhs: R) -> Flat {
        let rhs = rhs.into_flat(self);
        self.binary(op::Mul, rhs)
    }
}

/// `a - b` is `a + (-1 * b)`: luminal has no subtraction primitive.
impl Sub<Flat> for Flat {
    type Output = Flat;
    fn sub(self, rhs: Flat) -> Flat {
        self + -rhs
    }
}

/// `a - c` for a constant `c` is `a + (-c)`.
impl Sub<f32> for Flat {
    type Output = Flat;
    fn sub(self, rhs: f32) -> Flat {
        self + -rhs
    }
}

/// `a / b` is `a * (1 / b)` (luminal has no division primitive).
impl<R: IntoFlat> Div<R> for Flat {
    type Output = Flat;
    #[allow(clippy::suspicious_arithmetic_impl)] // division is multiplication by the reciprocal
    fn div(self, rhs: R) -> Flat {
        let rhs = rhs.into_flat(self);
        self * rhs.recip()
    }
}

impl Neg for Flat {
    type Output = Flat;
    fn neg(self) -> Flat {
        self * -1.0
    }
}

impl Add<Flat> for f32 {
    type Output = Flat;
    fn add(self, rhs: Flat) -> Flat {
        rhs.constant_like(self) + rhs
    }
}

impl Mul<Flat> for f32 {
    type Output = Flat;
    fn mul(self, rhs: Flat) -> Flat {
        rhs.constant_like(self) * rhs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    /// Run `f` on flat inputs `a`, `b` (and a scalar `s`) and read its output.
    fn eval(a: &[f32], b: &[f32], s: f32, f: impl Fn(Flat, Flat, Flat) -> Flat) -> Vec<f32> {
        let mut cx = Graph::new();
        let ta = crate::graph::tensor::input::<(Dyn<'n'>,)>(&mut cx, "a");
        let tb = crate::graph::tensor::input::<(Dyn<'n'>,)>(&mut cx, "b");
        let ts = crate::graph::tensor::input::<()>(&mut cx, "s");
        crate::graph::tensor::set(ta, &[4], a.to_vec()).unwrap();
        crate::graph::tensor::set(tb, &[4], b.to_vec()).unwrap();
        crate::graph::tensor::set(ts, &[], vec![s]).unwrap();
        let (fa, fb) = (Flat::new(&mut cx, ta.id, 4), Flat::new(&mut cx, tb.id, 4));
        let fs = Flat::scalar(&mut cx, ts.id);
        let out = f(fa, fb, fs).keep();
        cx.execute();
        cx.get_tensor_ref(out.id, 0)
            .and_then(|t| t.data.as_any().downcast_ref::<Vec<f32>>())
            .expect("computed")
            .clone()
    }

    #[test]
    fn operators_compute_what_they_say() {
        let (a, b): ([f32; 4], [f32; 4]) = ([1.0, 4.0, 9.0, 16.0], [2.0, -1.0, 0.5, 4.0]);
        // Reference: the same formulas as plain loops.
        let want: Vec<f32> = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x * 0.9 + y * (1.0 - 0.9)) / (x.sqrt() + 1e-3) - y * 3.0)
            .collect();
        let got = eval(&a, &b, 3.0, |a, b, s| {
            (a * 0.9 + b * (1.0 - 0.9)) / (a.sqrt() + 1e-3) - b * s
        });
        for (g, w) in got.iter().zip(&want) {
            assert_relative_eq!(g, w, max_relative = 1e-6); // one f32 rounding per op
        }
        let lt = eval(&a, &b, 0.0, |a, b, _| a.less_than(b) + 2.0 * b.recip());
        assert_eq!(lt, vec![2.0, -2.0, 4.0, 0.5]); // 1 < 2 only; powers of two are exact
    }

    #[test]
    fn sums_reduce_to_a_scalar_that_broadcasts_back() {
        // sum of squares = 1 + 16 + 81 + 256 = 354, then each value minus the mean square.
        let got = eval(&[1.0, 4.0, 9.0, 16.0], &[0.0; 4], 0.0, |a, _, _| {
            a - (a * a).sum() * 0.25
        });
        assert_eq!(got, vec![1.0 - 88.5, 4.0 - 88.5, 9.0 - 88.5, 16.0 - 88.5]);
    }

    #[test]
    #[should_panic(expected = "different lengths")]
    fn buffers_of_different_lengths_are_refused() {
        let mut cx = Graph::new();
        let a = crate::graph::tensor::input::<(Dyn<'a'>,)>(&mut cx, "a");
        let b = crate::graph::tensor::input::<(Dyn<'b'>,)>(&mut cx, "b");
        let _ = Flat::new(&mut cx, a.id, 4) + Flat::new(&mut cx, b.id, 3);
    }
}
