//! # Chapter 9 — Optimisers: SGD and AdamW, inside the graph
//!
//! Gradients say which way is downhill; an optimiser decides how far to step. SGD steps by
//! `lr * g`. AdamW keeps running means of the gradient (`m`) and of its square (`v`) and steps
//! by `m / sqrt(v)`: a per-parameter step size, bias-corrected for the first steps, with weight
//! decay applied separately ("decoupled"). Both are built as graph ops in the same graph as the
//! forward and backward passes; the moments are graph inputs that carry over between steps.
//!
//! Book page: [Chapter 9](../../book/ch09_optimizers.html).

use luminal::prelude::*;

use crate::ch08_autograd::Gradient;
use crate::graph::error::{CourseError, Result};
use crate::graph::flat::Flat;
use crate::graph::params::Param;
use crate::graph::tensor;

// ANCHOR: config
/// AdamW's hyperparameters (CS336's defaults, book chapter 9). The learning rate is not one of
/// them: it changes every step (chapter 10's schedule) and is passed to each step.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    /// Decay of the running mean of the gradient, `m` (default 0.9).
    pub beta1: f32,
    /// Decay of the running mean of the squared gradient, `v` (default 0.999).
    pub beta2: f32,
    /// Added to `sqrt(v)` so the step never divides by zero (default 1e-8).
    pub eps: f32,
    /// Decoupled decay: each step scales the parameter by `1 - lr * weight_decay` (default 0.01).
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamWConfig {
    /// Betas in [0, 1), positive eps, non-negative decay.
    pub fn validate(&self) -> Result<()> {
        let ok = (0.0..1.0).contains(&self.beta1)
            && (0.0..1.0).contains(&self.beta2)
            && self.eps > 0.0
            && self.weight_decay >= 0.0;
        if !ok {
            return Err(CourseError::Config(format!(
                "AdamW needs 0 <= beta1, beta2 < 1, eps > 0 and weight_decay >= 0; got {self:?}"
            )));
        }
        Ok(())
    }

    /// The bias-corrected step size of step `t` (t starts at 1):
    /// `a_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t)`.
    pub fn step_size(&self, lr: f32, t: u64) -> f32 {
        // ANCHOR: learn_step_size ch09: a_t = lr sqrt(1 - beta2^t) / (1 - beta1^t), t from 1
        let t = t as i32;
        lr * (1.0 - self.beta2.powi(t)).sqrt() / (1.0 - self.beta1.powi(t))
        // ANCHOR_END: learn_step_size
    }
}
// ANCHOR_END: config

// ANCHOR: sgd_ref
/// Plain SGD, in place: `theta -= lr * g`.
pub fn sgd_ref(theta: &mut [f32], grad: &[f32], lr: f32) {
    // ANCHOR: learn_sgd_ref ch09: theta -= lr * g, element by element, in place
    theta.iter_mut().zip(grad).for_each(|(p, g)| *p -= lr * g);
    // ANCHOR_END: learn_sgd_ref
}

/// The CS336 handout's decaying SGD at step `t` (from 0): `theta -= lr / sqrt(t + 1) * g`.
pub fn sgd_decaying_ref(theta: &mut [f32], grad: &[f32], lr: f32, t: u64) {
    // ANCHOR: learn_sgd_decaying_ref ch09: an SGD step with the learning rate lr / sqrt(t + 1)
    sgd_ref(theta, grad, lr / ((t + 1) as f32).sqrt());
    // ANCHOR_END: learn_sgd_decaying_ref
}
// ANCHOR_END: sgd_ref

// ANCHOR: adamw_ref
/// One AdamW step in place (t starts at 1), with CS336's formulas and PyTorch's order
/// (decoupled weight decay first, which CS336 allows: the orders differ by O(lr^2)):
/// `theta -= lr * wd * theta`; `m = b1 m + (1-b1) g`; `v = b2 v + (1-b2) g^2`;
/// `theta -= a_t m / (sqrt(v) + eps)` with `a_t = lr sqrt(1 - b2^t) / (1 - b1^t)`.
pub fn adamw_ref(
    theta: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    t: u64,
    lr: f32,
    c: &AdamWConfig,
) {
    // ANCHOR: learn_adamw_ref ch09: per element: theta -= lr wd theta; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; theta -= a_t m / (sqrt(v) + eps) with a_t = c.step_size(lr, t)
    let a_t = c.step_size(lr, t);
    for i in 0..theta.len() {
        theta[i] -= lr * c.weight_decay * theta[i];
        m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * grad[i];
        v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * grad[i] * grad[i];
        theta[i] -= a_t * m[i] / (v[i].sqrt() + c.eps);
    }
    // ANCHOR_END: learn_adamw_ref
}
// ANCHOR_END: adamw_ref

// ANCHOR: adamw
/// AdamW as graph ops: for every parameter, its moments `m`, `v` (graph inputs holding the
/// state) and the new values of the parameter and the moments (graph outputs). After each
/// execution the new values are moved into the inputs ([`AdamW::advance`]).
pub struct AdamW {
    /// The hyperparameters the graph was built with.
    pub config: AdamWConfig,
    /// Per parameter: (param, m, v, new param, new m, new v) node ids.
    pub slots: Vec<AdamWSlot>,
    /// Scalar inputs fed every step: `-a_t` and `-lr * weight_decay` (so a schedule can move lr).
    pub neg_step_size: NodeIndex,
    /// `-lr * weight_decay`; see `neg_step_size`.
    pub neg_decay: NodeIndex,
    /// The step count t of the next step (starts at 1).
    pub t: u64,
}

/// One parameter's nodes in [`AdamW`].
#[derive(Clone, Debug)]
pub struct AdamWSlot {
    /// The parameter (its input node holds the current values).
    pub param: Param,
    /// The gradient node (kept by chapter 8's `backward`, so dropped before every step).
    pub grad: NodeIndex,
    /// Input holding the first moment `m`, same size as the parameter, zero at the start.
    pub m: NodeIndex,
    /// Input holding the second moment `v`, same size as the parameter, zero at the start.
    pub v: NodeIndex,
    /// Output: the parameter after this step.
    pub new_param: NodeIndex,
    /// Output: `m` after this step.
    pub new_m: NodeIndex,
    /// Output: `v` after this step.
    pub new_v: NodeIndex,
}

impl AdamW {
    /// Add the update of every parameter to `cx`, from its gradient.
    pub fn new(cx: &mut Graph, grads: &[Gradient], config: AdamWConfig) -> Result<Self> {
        // ANCHOR: learn_adamw_graph ch09: validate; scalar inputs neg_step_size, neg_decay; per gradient, inputs m and v (zeros, kept) and as Flat: new_m = b1 m + (1-b1) g, new_v = b2 v + (1-b2) g^2, new_theta = theta + theta neg_decay + new_m / (sqrt(new_v) + eps) neg_step; keep the outputs; one AdamWSlot each, t = 1
        config.validate()?;
        let neg_step_size = tensor::input::<()>(cx, "adamw.neg_step_size");
        let neg_decay = tensor::input::<()>(cx, "adamw.neg_decay");
        let mut slots = Vec::with_capacity(grads.len());
        for g in grads {
            let n = g.param.numel();
            let m = tensor::input::<()>(cx, &format!("{}.adam_m", g.param.name)).id;
            let v = tensor::input::<()>(cx, &format!("{}.adam_v", g.param.name)).id;
            // Every value of this parameter's update is one flat run of n numbers.
            let flat = |cx: &mut Graph, id| Flat::new(cx, id, n);
            let (theta, grad) = (flat(cx, g.param.id), flat(cx, g.grad));
            let (m_t, v_t) = (flat(cx, m), flat(cx, v));
            let (neg_decay, neg_step) = (
                Flat::scalar(cx, neg_decay.id),
                Flat::scalar(cx, neg_step_size.id),
            );
            let (b1, b2, eps) = (config.beta1, config.beta2, config.eps);
            // The update, as adamw_ref writes it (decay first, as PyTorch):
            let new_m = m_t * b1 + grad * (1.0 - b1);
            let new_v = v_t * b2 + grad * grad * (1.0 - b2);
            let decayed = theta + theta * neg_decay; // theta - lr wd theta
            let new_theta = decayed + new_m / (new_v.sqrt() + eps) * neg_step; // - a_t m / (..)
            let (new_param, new_m, new_v) = (new_theta.id, new_m.id, new_v.id);
            cx.keep_tensors(vec![new_param, new_m, new_v]);
            cx.set_tensor(m, 0, Tensor::new(vec![0.0; n]));
            cx.set_tensor(v, 0, Tensor::new(vec![0.0; n]));
            cx.keep_tensors(vec![m, v]);
            slots.push(AdamWSlot {
                param: g.param.clone(),
                grad: g.grad,
                m,
                v,
                new_param,
                new_m,
                new_v,
            });
        }
        Ok(Self {
            config,
            slots,
            neg_step_size: neg_step_size.id,
            neg_decay: neg_decay.id,
            t: 1,
        })
        // ANCHOR_END: learn_adamw_graph
    }

    /// Feed this step's scalars (from the current learning rate `lr`) before executing.
    ///
    /// Also drops every output kept from the last run (read the loss before calling this):
    /// luminal skips any node whose output already exists, so kept gradients (and a clipping
    /// norm) would silently stay at their first values.
    pub fn prepare(&self, cx: &mut Graph, lr: f32) {
        // Drop every output kept from the last run (gradients, clipped gradients, a clipping
        // norm, the loss): luminal skips any node whose output exists. Inputs keep their values.
        let stale: Vec<(NodeIndex, u8)> = cx
            .tensors
            .keys()
            .copied()
            .filter(|(id, _)| {
                !cx.graph
                    .node_weight(*id)
                    .is_some_and(|op| op.as_any().is::<luminal::op::Function>())
            })
            .collect();
        for key in stale {
            cx.tensors.remove(&key);
        }
        let a_t = self.config.step_size(lr, self.t);
        cx.set_tensor(self.neg_step_size, 0, Tensor::new(vec![-a_t]));
        cx.set_tensor(
            self.neg_decay,
            0,
            Tensor::new(vec![-lr * self.config.weight_decay]),
        );
        cx.keep_tensors(vec![self.neg_step_size, self.neg_decay]);
    }

    /// After executing: move the new parameters and moments into their input nodes, and count
    /// the step. (Left in place, the outputs would be reused as they are by the next run.)
    pub fn advance(&mut self, cx: &mut Graph) {
        for s in &self.slots {
            transfer_data_same_graph(
                vec![s.new_param, s.new_m, s.new_v],
                vec![s.param.id, s.m, s.v],
                cx,
            );
        }
        self.t += 1;
    }
}

impl ToIdsMut for AdamW {
    fn to_ids_mut(&mut self) -> Vec<&mut NodeIndex> {
        let mut ids = vec![&mut self.neg_step_size, &mut self.neg_decay];
        for s in &mut self.slots {
            ids.extend([
                &mut s.param.id,
                &mut s.grad,
                &mut s.m,
                &mut s.v,
                &mut s.new_param,
                &mut s.new_m,
                &mut s.new_v,
            ]);
        }
        ids
    }
}
// ANCHOR_END: adamw

/// A one-paragraph tour of this chapter, printed by `cargo run --release -- tour`.
pub fn optimizer_demo() -> Result<String> {
    // One AdamW step from m = v = 0 on three weights of 1 with very different gradients.
    let (lr, c) = (0.01, AdamWConfig::default());
    let grads = [4.0, 0.001, -4.0];
    let (mut theta, mut m, mut v) = (vec![1.0f32; 3], vec![0.0; 3], vec![0.0; 3]);
    adamw_ref(&mut theta, &grads, &mut m, &mut v, 1, lr, &c);
    let mut sgd = vec![1.0f32; 3];
    sgd_ref(&mut sgd, &grads, lr);
    Ok(format!(
        "gradients {grads:?} at weights 1, lr {lr}: SGD moves them to {sgd:.4?}; AdamW's first \
         step to {theta:.4?} (decay 1 -> {:.4}, then about lr * sign(g), whatever |g| is)",
        1.0 - lr * c.weight_decay
    ))
}

#[cfg(test)]
mod tests;
