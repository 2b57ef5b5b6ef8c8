//! # Chapter 10 — Learning-rate schedule and gradient clipping
//!
//! Two guard rails for training. The learning rate warms up linearly (large steps from random
//! weights are unstable), then decays along a cosine to a floor. Gradient clipping caps the
//! global L2 norm of all gradients, so one bad batch cannot throw the weights far away.
//!
//! Book page: [Chapter 10](../../book/ch10_schedule.html).

use luminal::prelude::*;

use crate::ch08_autograd::Gradient;
use crate::graph::error::{CourseError, Result};
use crate::graph::flat::Flat;

// ANCHOR: cosine_schedule
/// Linear warmup then cosine decay (CS336's formula, book chapter 10), for step `t`:
/// `t < warmup`: `lr_max * t / warmup`; `warmup <= t <= cosine_end`:
/// `lr_min + (1 + cos(pi (t - warmup) / (cosine_end - warmup))) / 2 * (lr_max - lr_min)`;
/// after `cosine_end`: `lr_min`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CosineSchedule {
    /// Peak learning rate, reached at the end of warmup.
    pub lr_max: f32,
    /// Floor learning rate, from `cosine_end` on.
    pub lr_min: f32,
    /// Number of warmup steps (linear from 0 to `lr_max`).
    pub warmup: u64,
    /// Step at which the cosine reaches `lr_min`.
    pub cosine_end: u64,
}

impl CosineSchedule {
    /// warmup <= cosine_end and 0 <= lr_min <= lr_max.
    pub fn validate(&self) -> Result<()> {
        let (lr_max, lr_min) = (self.lr_max, self.lr_min);
        if !(lr_max > 0.0 && lr_max.is_finite()) {
            return Err(CourseError::Config(format!(
                "the learning rate (lr_max, --lr) must be positive and finite; got {lr_max}"
            )));
        }
        if !(0.0 <= lr_min && lr_min <= lr_max) {
            return Err(CourseError::Config(format!(
                "lr_min must be between 0 and lr_max ({lr_max}); got {lr_min}"
            )));
        }
        if self.warmup > self.cosine_end {
            return Err(CourseError::Config(format!(
                "warmup ({}) must not exceed cosine_end ({})",
                self.warmup, self.cosine_end
            )));
        }
        Ok(())
    }

    /// The learning rate at step `t`.
    pub fn lr(&self, t: u64) -> f32 {
        // ANCHOR: learn_schedule_lr ch10: t < warmup: lr_max t / warmup; t > cosine_end: lr_min; else lr_min + (1 + cos(pi (t - warmup) / (cosine_end - warmup))) / 2 (lr_max - lr_min)
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
        // ANCHOR_END: learn_schedule_lr
    }
}
// ANCHOR_END: cosine_schedule

/// The stability constant of CS336's clipping (book chapter 10): scale = M / (norm + 1e-6).
pub const CLIP_EPS: f32 = 1e-6;

// ANCHOR: clip_ref
/// Global-norm clipping in place: if the L2 norm of all gradients together exceeds
/// `max_norm`, scale every gradient by `max_norm / (norm + 1e-6)`. Returns the norm before.
pub fn clip_grad_norm_ref(grads: &mut [Vec<f32>], max_norm: f32) -> f32 {
    // ANCHOR: learn_clip_grad_norm_ref ch10: norm = sqrt(sum of every g^2) (sum in f64); if norm > max_norm, every g *= max_norm / (norm + CLIP_EPS); return the norm before clipping
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
    // ANCHOR_END: learn_clip_grad_norm_ref
}
// ANCHOR_END: clip_ref

// ANCHOR: clip
/// Global-norm clipping as graph ops: returns, for each gradient, a clipped gradient node
/// (same layout), and the global norm node (a scalar). `scale = min(1, M / (norm + 1e-6))`,
/// built with `LessThan` as `1 + (M < norm) * (M / max(norm + 1e-6, M) - 1)`.
pub fn clip_grad_norm(
    cx: &mut Graph,
    grads: &[Gradient],
    max_norm: f32,
) -> (Vec<Gradient>, NodeIndex) {
    // ANCHOR: learn_clip_grad_norm ch10: norm = global_norm of Flat views of the gradients (kept); scale = 1 + (M < norm) (M / max(norm + eps, M) - 1) built with less_than; each gradient times scale (kept) -> (clipped, norm.id)
    let flat: Vec<Flat> = grads
        .iter()
        .map(|g| Flat::new(cx, g.grad, g.param.numel()))
        .collect();
    let norm = global_norm(cx, &flat).keep();
    // scale = min(1, M / (norm + eps)) = 1 + (M < norm) * (M / (norm + eps) - 1). A graph
    // computes both branches, so the unused one must stay finite too (0 * inf is NaN): dividing
    // by max(norm + eps, M) instead changes nothing where M < norm, and is at most 1 elsewhere.
    let max = Flat::constant(cx, max_norm);
    let denom = norm + CLIP_EPS;
    let denom = denom + denom.less_than(max) * (max - denom); // max(norm + eps, M)
    let scale = 1.0 + max.less_than(norm) * (max / denom - 1.0);
    let clipped = grads
        .iter()
        .zip(flat)
        .map(|(g, flat)| Gradient {
            param: g.param.clone(),
            grad: (flat * scale).keep().id,
        })
        .collect();
    (clipped, norm.id)
    // ANCHOR_END: learn_clip_grad_norm
}

/// `sqrt(sum over every gradient of sum(g^2))`, the norm that clipping caps (0 for no gradients).
pub fn global_norm(cx: &mut Graph, grads: &[Flat]) -> Flat {
    // ANCHOR: learn_global_norm ch10: sqrt of the sum over the gradients of (g * g).sum(); Flat::constant 0 when there are none
    let total = grads.iter().map(|&g| (g * g).sum()).reduce(|a, b| a + b);
    total.unwrap_or_else(|| Flat::constant(cx, 0.0)).sqrt()
    // ANCHOR_END: learn_global_norm
}
// ANCHOR_END: clip

/// A one-paragraph tour of this chapter, printed by `cargo run --release -- tour`.
pub fn schedule_demo() -> Result<String> {
    let s = CosineSchedule {
        lr_max: 3e-3,
        lr_min: 3e-4,
        warmup: 50,
        cosine_end: 600,
    };
    s.validate()?;
    let lrs: Vec<String> = [0, 25, 50, 325, 600, 700]
        .iter()
        .map(|&t| format!("{t}: {:.2e}", s.lr(t)))
        .collect();
    let mut grads = vec![vec![3.0, 4.0], vec![12.0]];
    let norm = clip_grad_norm_ref(&mut grads, 1.0);
    Ok(format!(
        "warmup 50, cosine to 600: lr at step {}\n\
         clipping gradients [3, 4] and [12] to norm 1: norm was {norm} (= sqrt(9 + 16 + 144)), \
         now {:.4?} and {:.4?}",
        lrs.join(", "),
        grads[0],
        grads[1]
    ))
}

#[cfg(test)]
mod tests;
