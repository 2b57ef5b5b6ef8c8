//! # Chapter 10 — Learning-rate schedule and gradient clipping
//!
//! Two guard rails for training. The learning rate warms up linearly (large steps from random
//! weights are unstable), then decays along a cosine to a floor. Gradient clipping caps the
//! global L2 norm of all gradients, so one bad batch cannot throw the weights far away.
//!
//! Book page: [Chapter 10](../book/ch10_schedule.html).

use luminal::op::Operator;
use luminal::prelude::*;
use luminal::shape::symbolic::Expression;

use crate::ch08_autograd::Gradient;
use crate::error::{CourseError, Result};

// ANCHOR: cosine_schedule
/// Linear warmup then cosine decay (CS336's formula, book chapter 10), for step `t`:
/// `t < warmup`: `lr_max * t / warmup`; `warmup <= t <= cosine_end`:
/// `lr_min + (1 + cos(pi (t - warmup) / (cosine_end - warmup))) / 2 * (lr_max - lr_min)`;
/// after `cosine_end`: `lr_min`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CosineSchedule {
    pub lr_max: f32,
    pub lr_min: f32,
    pub warmup: u64,
    pub cosine_end: u64,
}

impl CosineSchedule {
    /// warmup <= cosine_end and 0 <= lr_min <= lr_max.
    pub fn validate(&self) -> Result<()> {
        if self.warmup > self.cosine_end || !(0.0 <= self.lr_min && self.lr_min <= self.lr_max) {
            return Err(CourseError::Config(format!(
                "schedule needs warmup <= cosine_end and 0 <= lr_min <= lr_max; got {self:?}"
            )));
        }
        Ok(())
    }

    /// The learning rate at step `t`.
    pub fn lr(&self, t: u64) -> f32 {
        if t < self.warmup {
            return self.lr_max * t as f32 / self.warmup as f32;
        }
        if t > self.cosine_end {
            return self.lr_min;
        }
        let span = (self.cosine_end - self.warmup).max(1) as f64;
        let progress = (t - self.warmup) as f64 / span;
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        (self.lr_min as f64 + cosine * (self.lr_max - self.lr_min) as f64) as f32
    }
}
// ANCHOR_END: cosine_schedule

/// The stability constant of CS336's clipping (book chapter 10): scale = M / (norm + 1e-6).
pub const CLIP_EPS: f32 = 1e-6;

// ANCHOR: clip_ref
/// Global-norm clipping in place: if the L2 norm of all gradients together exceeds
/// `max_norm`, scale every gradient by `max_norm / (norm + 1e-6)`. Returns the norm before.
pub fn clip_grad_norm_ref(grads: &mut [Vec<f32>], max_norm: f32) -> f32 {
    let norm = grads
        .iter()
        .flatten()
        .map(|g| (*g as f64) * (*g as f64))
        .sum::<f64>()
        .sqrt() as f32;
    if norm > max_norm {
        let scale = max_norm / (norm + CLIP_EPS);
        grads.iter_mut().flatten().for_each(|g| *g *= scale);
    }
    norm
}
// ANCHOR_END: clip_ref

type View = (NodeIndex, ShapeTracker);

fn binary<O: Operator + 'static>(cx: &mut Graph, op: O, a: View, b: View) -> NodeIndex {
    cx.add_op(op).input(a.0, 0, a.1).input(b.0, 0, b.1).finish()
}

// ANCHOR: clip
/// Global-norm clipping as graph ops: returns, for each gradient, a clipped gradient node
/// (same layout), and the global norm node (a scalar). `scale = min(1, M / (norm + 1e-6))`,
/// built with `LessThan` as `1 + (norm > M) * (M / (norm + 1e-6) - 1)`.
pub fn clip_grad_norm(
    cx: &mut Graph,
    grads: &[Gradient],
    max_norm: f32,
) -> (Vec<Gradient>, NodeIndex) {
    let flat = |n: usize| ShapeTracker::new(&[Expression::from(n)]);
    let scalar = ShapeTracker::new(&[]);
    // Sum of squares of every gradient, each reduced to a scalar, then added up.
    let mut total: Option<NodeIndex> = None;
    for g in grads {
        let n = g.param.numel();
        let sq = binary(cx, luminal::op::Mul, (g.grad, flat(n)), (g.grad, flat(n)));
        let sum = cx
            .add_op(luminal::op::SumReduce(0))
            .input(sq, 0, flat(n))
            .finish();
        total = Some(match total {
            Some(t) => binary(cx, luminal::op::Add, (t, scalar), (sum, scalar)),
            None => sum,
        });
    }
    let total = total.unwrap_or_else(|| cx.constant(0.0).id);
    let norm = cx
        .add_op(luminal::op::Sqrt)
        .input(total, 0, scalar)
        .finish();
    // scale = 1 + (M < norm) * (M / (norm + eps) - 1)
    let (m, eps, one, minus_one) = (
        cx.constant(max_norm).id,
        cx.constant(CLIP_EPS).id,
        cx.constant(1.0).id,
        cx.constant(-1.0).id,
    );
    let over = binary(cx, luminal::op::LessThan, (m, scalar), (norm, scalar));
    let denom = binary(cx, luminal::op::Add, (norm, scalar), (eps, scalar));
    let inv = cx
        .add_op(luminal::op::Recip)
        .input(denom, 0, scalar)
        .finish();
    let ratio = binary(cx, luminal::op::Mul, (m, scalar), (inv, scalar));
    let shrink = binary(cx, luminal::op::Add, (ratio, scalar), (minus_one, scalar));
    let gated = binary(cx, luminal::op::Mul, (over, scalar), (shrink, scalar));
    let scale = binary(cx, luminal::op::Add, (one, scalar), (gated, scalar));
    let clipped = grads
        .iter()
        .map(|g| {
            let n = g.param.numel();
            let fake = ShapeTracker::fake(&[Expression::from(n)]);
            let grad = binary(cx, luminal::op::Mul, (g.grad, flat(n)), (scale, fake));
            cx.keep_tensors(grad);
            Gradient {
                param: g.param.clone(),
                grad,
            }
        })
        .collect();
    cx.keep_tensors(norm);
    (clipped, norm)
}
// ANCHOR_END: clip

#[cfg(test)]
mod tests;
