//! # Chapter 8 — Autograd: backpropagation as a graph pass
//!
//! Training needs the gradient of the loss with respect to every parameter. luminal 0.2.0 has
//! no autograd, so we build it: first on scalars ([`Scalar`], micrograd-sized, to see the idea),
//! then on luminal's primitive graph ([`backward`](mod@backward)), where each op's rule adds gradient nodes
//! to the same graph. [`GradCheck`] checks any gradient against central finite differences.
//! [`by_hand`] derives the composite rules (softmax, norms, attention, SwiGLU, RoPE) and runs
//! one transformer block's backward pass as plain loops, checked against both.
//!
//! Book page: [Chapter 8](../../book/ch08_autograd.html).

use luminal::prelude::*;

use crate::backend::Device;
use crate::graph::error::Result;
use crate::graph::params::Param;
use crate::graph::tensor::HostTensor;

pub mod backward;
pub mod by_hand;
mod rules;
mod views;
pub use backward::*;
pub use views::logical_dims;

// ANCHOR: scalar
/// A scalar expression graph with reverse-mode gradients, in the style of micrograd: every op
/// records its inputs and its local derivatives, and `grad` walks the tape backwards.
#[derive(Default)]
pub struct Tape {
    /// Per node: its value and (input, d node / d input) pairs.
    nodes: Vec<(f32, Vec<(usize, f32)>)>,
}

/// A node of a [`Tape`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scalar(pub usize);

impl Tape {
    /// A leaf: an input or a parameter.
    pub fn leaf(&mut self, v: f32) -> Scalar {
        self.push(v, vec![])
    }
    fn push(&mut self, v: f32, local: Vec<(usize, f32)>) -> Scalar {
        self.nodes.push((v, local));
        Scalar(self.nodes.len() - 1)
    }
    /// The value of a node.
    pub fn value(&self, a: Scalar) -> f32 {
        self.nodes[a.0].0
    }
    /// a + b: d/da = 1, d/db = 1.
    pub fn add(&mut self, a: Scalar, b: Scalar) -> Scalar {
        // ANCHOR: learn_tape_add ch08: push the value a + b with the local derivatives (a, 1) and (b, 1)
        self.push(self.value(a) + self.value(b), vec![(a.0, 1.0), (b.0, 1.0)])
        // ANCHOR_END: learn_tape_add
    }
    /// a * b: d/da = b, d/db = a.
    pub fn mul(&mut self, a: Scalar, b: Scalar) -> Scalar {
        // ANCHOR: learn_tape_mul ch08: push the value a b with the local derivatives d/da = b, d/db = a
        let (x, y) = (self.value(a), self.value(b));
        self.push(x * y, vec![(a.0, y), (b.0, x)])
        // ANCHOR_END: learn_tape_mul
    }
    /// e^a: d/da = e^a.
    pub fn exp(&mut self, a: Scalar) -> Scalar {
        // ANCHOR: learn_tape_exp ch08: push the value e^a with the local derivative d/da = e^a
        let y = self.value(a).exp();
        self.push(y, vec![(a.0, y)])
        // ANCHOR_END: learn_tape_exp
    }
    /// 1 / a: d/da = -1 / a^2.
    pub fn recip(&mut self, a: Scalar) -> Scalar {
        // ANCHOR: learn_tape_recip ch08: push the value 1/a with the local derivative d/da = -1/a^2
        let x = self.value(a);
        self.push(1.0 / x, vec![(a.0, -1.0 / (x * x))])
        // ANCHOR_END: learn_tape_recip
    }
    /// d out / d node for every node: the chain rule, summed over every path, newest first.
    pub fn grad(&self, out: Scalar) -> Vec<f32> {
        // ANCHOR: learn_tape_grad ch08: g = zeros (one per node), g[out] = 1; for n from out down to 0, for each recorded (input, local): g[input] += g[n] * local
        let mut g = vec![0.0; self.nodes.len()];
        g[out.0] = 1.0;
        for n in (0..=out.0).rev() {
            for &(input, local) in &self.nodes[n].1 {
                g[input] += g[n] * local;
            }
        }
        g
        // ANCHOR_END: learn_tape_grad
    }
}
// ANCHOR_END: scalar

// ANCHOR: gradcheck
/// Finite-difference step. In f32, the central difference's error is about
/// `h^2 |f'''| / 6` (truncation) plus `eps |f| / h` (rounding, eps = 6e-8): h = 1e-2 balances
/// them at ~1e-5 for functions of size ~1.
pub const GRADCHECK_STEP: f32 = 1e-2;
/// Largest accepted normalised error `|analytic - numeric| / max(1, |analytic|, |numeric|)`.
/// Wrong rules give errors of order 1; f32 finite differences stay below ~1e-3.
pub const GRADCHECK_TOLERANCE: f32 = 1e-2;

/// Gradients of a graph's scalar loss, computed by [`backward`](fn@backward) and checked against
/// central differences `(L(p + h) - L(p - h)) / 2h`, one parameter element at a time.
pub struct GradCheck<'a> {
    cx: &'a mut Graph,
    params: Vec<Param>,
    loss: NodeIndex,
    grads: Vec<Gradient>,
}

impl<'a> GradCheck<'a> {
    /// Differentiate `loss` with respect to `params` (whose values must be set), then
    /// compile for `device` (or run uncompiled with `None`).
    pub fn new(
        cx: &'a mut Graph,
        params: Vec<Param>,
        loss: GraphTensor<()>,
        device: Option<Device>,
    ) -> Result<Self> {
        let mut loss_id = loss.id;
        cx.keep_tensors(loss_id);
        cx.to_retrieve.insert(loss_id);
        let mut grads = backward(cx, &params, loss_id)?;
        let mut params = params;
        match device {
            Some(d) => d.compile(cx, (&mut loss_id, &mut params, &mut grads)),
            None => cx.compile((), ()), // refresh the execution order after adding nodes
        }
        Ok(Self {
            cx,
            params,
            loss: loss_id,
            grads,
        })
    }

    /// Run the graph once: the loss and every parameter's gradient.
    pub fn run(&mut self) -> Result<(f32, Vec<HostTensor>)> {
        let loss = self.loss()?;
        let grads = self
            .grads
            .iter()
            .map(|g| g.read(self.cx))
            .collect::<Result<_>>()?;
        Ok((loss, grads))
    }

    fn loss(&mut self) -> Result<f32> {
        // Outputs kept from a previous run would be reused as they are: drop them first. (Not
        // inputs: the compiler may have simplified a gradient to an input node, e.g. d(w.x)/dx
        // to w itself, whose data must stay.)
        let computed = |cx: &Graph, id: NodeIndex| {
            !cx.graph
                .node_weight(id)
                .is_some_and(|op| op.as_any().is::<luminal::op::Function>())
        };
        for id in std::iter::once(self.loss).chain(self.grads.iter().map(|g| g.grad)) {
            if computed(self.cx, id) {
                self.cx.tensors.remove(&(id, 0));
            }
        }
        crate::graph::tensor::execute(self.cx)?;
        let loss = crate::graph::tensor::host_values(self.cx, self.loss, "the loss")?;
        Ok(loss.first().copied().unwrap_or(f32::NAN))
    }

    fn values(&self, p: usize) -> Result<Vec<f32>> {
        let what = format!("the values of parameter '{}'", self.params[p].name);
        crate::graph::tensor::host_values(self.cx, self.params[p].id, &what).map(|v| v.into_owned())
    }

    fn set(&mut self, p: usize, v: Vec<f32>) {
        self.cx.set_tensor(self.params[p].id, 0, Tensor::new(v));
    }

    /// The largest normalised error over all parameter elements, and where it occurred.
    pub fn max_error(&mut self) -> Result<(f32, String)> {
        let (_, analytic) = self.run()?;
        let mut worst = (0.0f32, String::new());
        for (p, grad) in analytic.iter().enumerate() {
            let original = self.values(p)?;
            for i in 0..original.len() {
                let mut v = original.clone();
                v[i] = original[i] + GRADCHECK_STEP;
                self.set(p, v.clone());
                let up = self.loss()?;
                v[i] = original[i] - GRADCHECK_STEP;
                self.set(p, v);
                let down = self.loss()?;
                let numeric = (up - down) / (2.0 * GRADCHECK_STEP);
                let a = grad.data[i];
                let err = (a - numeric).abs() / 1f32.max(a.abs()).max(numeric.abs());
                if err.is_nan() || err > worst.0 {
                    worst = (
                        err,
                        format!(
                            "{}[{i}]: backward {a}, finite difference {numeric}",
                            self.params[p].name
                        ),
                    );
                }
            }
            self.set(p, original);
        }
        Ok(worst)
    }
}
// ANCHOR_END: gradcheck

/// A one-paragraph tour of this chapter, printed by `cargo run --release -- tour`.
pub fn autograd_demo() -> Result<String> {
    // On scalars: f = a b + e^a at a = 1, b = 2; df/da = b + e^a, df/db = a.
    let mut t = Tape::default();
    let (a, b) = (t.leaf(1.0), t.leaf(2.0));
    let (ab, ea) = (t.mul(a, b), t.exp(a));
    let f = t.add(ab, ea);
    let g = t.grad(f);
    // On a graph: L = sum(x sin x), dL/dx = sin x + x cos x, checked by finite differences.
    let mut cx = Graph::new();
    let x = crate::graph::tensor::input::<(crate::graph::dims::In,)>(&mut cx, "x");
    crate::graph::tensor::set(x, &[3], vec![0.5, -1.0, 2.0])?;
    let loss = (x * x.sin()).sum_reduce::<(), luminal::prelude::Axis<0>>();
    let params = vec![Param::of(x, &[3])];
    let mut check = GradCheck::new(&mut cx, params, loss, Some(Device::Cpu))?;
    let (_, grads) = check.run()?;
    let (err, _) = check.max_error()?;
    Ok(format!(
        "tape: f = ab + e^a at (1, 2) = {:.4}; df/da = {:.4} (b + e), df/db = {:.4} (a)\n\
         graph: L = sum(x sin x) at x = [0.5, -1, 2]: dL/dx = {:.4?} (sin x + x cos x); \
         worst normalised error against finite differences {err:.1e}",
        t.value(f),
        g[a.0],
        g[b.0],
        grads[0].data
    ))
}

#[cfg(test)]
mod tests;
