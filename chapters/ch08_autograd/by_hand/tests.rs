//! Each op's hand-written backward against central finite differences of its forward.

use super::*;
use crate::ch01_linear::linear_ref;
use crate::ch02_rmsnorm::{layer_norm_ref, rms_norm_ref, NORM_EPS};
use crate::ch03_feed_forward::swiglu_ref;
use crate::ch04_rope::{rope_ref, ROPE_THETA};
use crate::ch05_attention::{sdpa_ref, softmax_ref};
use crate::ch08_autograd::GRADCHECK_STEP;
use crate::testing::uniform;
use proptest::prelude::*;
use rand::Rng;

/// Op-level tolerance on the normalised error `|hand - fd| / max(1, |hand|, |fd|)`. The f32
/// central difference with h = 1e-2 is off by its truncation `h^2 |f'''| / 6` (~2e-5 for the
/// order-1 inputs used here) plus rounding `eps |L| / h` (~1e-5 for |L| of a few units, eps =
/// 6e-8); 1e-3 leaves a wide margin. A wrong rule (a missing term, a transpose, a factor 2)
/// is off by order 0.1 to 1.
const OP_TOLERANCE: f64 = 1e-3;

/// `L = sum(y ⊙ w)`, summed in f64 so that the sum adds no rounding of its own.
pub(super) fn weighted_loss(y: &[f32], w: &[f32]) -> f64 {
    y.iter().zip(w).map(|(&y, &w)| y as f64 * w as f64).sum()
}

/// The worst normalised error of `analytic` = dL/dx against central differences of
/// `L(x) = sum(f(x) ⊙ w)` over the coordinates `at`, and where it occurred.
pub(super) fn fd_error(
    f: impl Fn(&[f32]) -> Vec<f32>,
    x: &[f32],
    w: &[f32],
    analytic: &[f32],
    at: impl IntoIterator<Item = usize>,
) -> (f64, usize) {
    let mut worst = (0.0, 0);
    for i in at {
        let (mut up, mut down) = (x.to_vec(), x.to_vec());
        up[i] += GRADCHECK_STEP;
        down[i] -= GRADCHECK_STEP;
        // Divide by the step f32 really took: x + h is rounded, so it is not exactly 2h.
        let step = up[i] as f64 - down[i] as f64;
        let numeric = (weighted_loss(&f(&up), w) - weighted_loss(&f(&down), w)) / step;
        let a = analytic[i] as f64;
        let err = (a - numeric).abs() / 1f64.max(a.abs()).max(numeric.abs());
        if err.is_nan() || err > worst.0 {
            worst = (err, i);
        }
    }
    worst
}

/// Check `analytic` against finite differences at every coordinate, failing the proptest case.
fn check_all(
    what: &str,
    f: impl Fn(&[f32]) -> Vec<f32>,
    x: &[f32],
    w: &[f32],
    analytic: &[f32],
) -> Result<(), TestCaseError> {
    let (err, at) = fd_error(f, x, w, analytic, 0..x.len());
    prop_assert!(
        err < OP_TOLERANCE,
        "{}: normalised error {} at {}",
        what,
        err,
        at
    );
    Ok(())
}

/// A norm divides by its row's spread (rms, or std for LayerNorm), so its third derivative
/// grows like 1 / spread^3 and the central difference's truncation error `h^2 |f'''| / 6` with
/// it: rows spread less than this are skipped (at 0.5 the truncation stays below ~2e-4).
const MIN_SPREAD: f32 = 0.5;

/// `sqrt(mean((row - center)^2))`: the rms for `center` = 0, the std for the row's mean.
fn spread(row: &[f32], center: f32) -> f32 {
    (row.iter().map(|v| (v - center) * (v - center)).sum::<f32>() / row.len() as f32).sqrt()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn linear_backward_matches_finite_differences(n in 1usize..4, d_in in 1usize..5, d_out in 1usize..5, seed in any::<u64>()) {
        let mut rng = crate::graph::init::rng(seed);
        let (x, w) = (uniform(&mut rng, n * d_in, 1.0), uniform(&mut rng, d_out * d_in, 1.0));
        let dy = uniform(&mut rng, n * d_out, 1.0);
        let (dx, dw) = linear_backward(&dy, &x, &w, [n, d_in, d_out]);
        check_all("dx", |x| linear_ref(x, &w, n, d_in, d_out), &x, &dy, &dx)?;
        check_all("dW", |w| linear_ref(&x, w, n, d_in, d_out), &w, &dy, &dw)?;
    }

    #[test]
    fn softmax_backward_matches_finite_differences(len in 1usize..7, seed in any::<u64>()) {
        let mut rng = crate::graph::init::rng(seed);
        let (scores, dp) = (uniform(&mut rng, len, 3.0), uniform(&mut rng, len, 1.0));
        let ds = softmax_backward(&softmax_ref(&scores), &dp);
        check_all("ds", softmax_ref, &scores, &dp, &ds)?;
    }

    #[test]
    fn rms_norm_backward_matches_finite_differences(rows in 1usize..4, d in 1usize..6, seed in any::<u64>()) {
        let mut rng = crate::graph::init::rng(seed);
        let (x, dy) = (uniform(&mut rng, rows * d, 2.0), uniform(&mut rng, rows * d, 1.0));
        prop_assume!(x.chunks(d).all(|row| spread(row, 0.0) > MIN_SPREAD));
        let g: Vec<f32> = uniform(&mut rng, d, 0.5).iter().map(|v| 1.0 + v).collect();
        let (dx, dg) = rms_norm_backward(&dy, &x, &g, d, NORM_EPS);
        check_all("dx", |x| rms_norm_ref(x, &g, d, NORM_EPS), &x, &dy, &dx)?;
        check_all("dg", |g| rms_norm_ref(&x, g, d, NORM_EPS), &g, &dy, &dg)?;
    }

    #[test]
    fn layer_norm_backward_matches_finite_differences(rows in 1usize..4, d in 2usize..6, seed in any::<u64>()) {
        let mut rng = crate::graph::init::rng(seed);
        let (x, dy) = (uniform(&mut rng, rows * d, 2.0), uniform(&mut rng, rows * d, 1.0));
        let mean = |row: &[f32]| row.iter().sum::<f32>() / row.len() as f32;
        prop_assume!(x.chunks(d).all(|row| spread(row, mean(row)) > MIN_SPREAD));
        let gamma: Vec<f32> = uniform(&mut rng, d, 0.5).iter().map(|v| 1.0 + v).collect();
        let beta = uniform(&mut rng, d, 1.0);
        let (dx, dgamma, dbeta) = layer_norm_backward(&dy, &x, &gamma, d, NORM_EPS);
        check_all("dx", |x| layer_norm_ref(x, &gamma, &beta, d, NORM_EPS), &x, &dy, &dx)?;
        check_all("dgamma", |g| layer_norm_ref(&x, g, &beta, d, NORM_EPS), &gamma, &dy, &dgamma)?;
        check_all("dbeta", |b| layer_norm_ref(&x, &gamma, b, d, NORM_EPS), &beta, &dy, &dbeta)?;
    }

    #[test]
    fn swiglu_backward_matches_finite_differences(n in 1usize..3, d in 1usize..4, d_ff in 1usize..5, seed in any::<u64>()) {
        let mut rng = crate::graph::init::rng(seed);
        let x = uniform(&mut rng, n * d, 1.0);
        let ws = [d_ff * d, d * d_ff, d_ff * d].map(|len| uniform(&mut rng, len, 1.0));
        let dy = uniform(&mut rng, n * d, 1.0);
        let w = [&ws[0][..], &ws[1][..], &ws[2][..]];
        let (dx, dws) = swiglu_backward(&dy, &x, w, n, d, d_ff);
        check_all("dx", |x| swiglu_ref(x, w, n, d, d_ff), &x, &dy, &dx)?;
        for (i, dw) in dws.iter().enumerate() {
            let f = |wi: &[f32]| {
                let mut w = w;
                w[i] = wi;
                swiglu_ref(&x, w, n, d, d_ff)
            };
            check_all(["dW1", "dW2", "dW3"][i], f, &ws[i], &dy, dw)?;
        }
    }

    #[test]
    fn rope_backward_matches_finite_differences(rows in 1usize..5, half in 1usize..4, seed in any::<u64>()) {
        let d = 2 * half;
        let mut rng = crate::graph::init::rng(seed);
        let positions: Vec<usize> = (0..rows).map(|_| rng.gen_range(0..50)).collect();
        let (x, dy) = (uniform(&mut rng, rows * d, 1.0), uniform(&mut rng, rows * d, 1.0));
        let dx = rope_backward(&dy, &positions, d, ROPE_THETA);
        check_all("dx", |x| rope_ref(x, &positions, d, ROPE_THETA), &x, &dy, &dx)?;
    }

    /// Random masks, fully masked rows included (their output is 0 whatever q, k and v are).
    #[test]
    fn attention_backward_matches_finite_differences(n in 1usize..3, s in 1usize..4, t in 1usize..4, dk in 1usize..4, seed in any::<u64>()) {
        let mut rng = crate::graph::init::rng(seed);
        let dims = [n, s, t, dk, dk];
        let lens = [n * s * dk, n * t * dk, n * t * dk];
        let qkv: Vec<f32> = uniform(&mut rng, lens.iter().sum(), 1.5);
        let mask: Vec<bool> = (0..n * s * t).map(|_| rng.gen_bool(0.7)).collect();
        let d_out = uniform(&mut rng, n * s * dk, 1.0);
        let (q, rest) = qkv.split_at(lens[0]);
        let (k, v) = rest.split_at(lens[1]);
        let (out, probs) = attention_forward(q, k, v, &mask, dims);
        prop_assert_eq!(&out, &sdpa_ref(q, k, v, &mask, dims)); // the reference's own numbers
        let grads = attention_backward(&d_out, [q, k, v, &probs], dims).concat(); // dq | dk | dv
        let f = |qkv: &[f32]| {
            let (q, rest) = qkv.split_at(lens[0]);
            let (k, v) = rest.split_at(lens[1]);
            sdpa_ref(q, k, v, &mask, dims)
        };
        check_all("dq | dk | dv", f, &qkv, &d_out, &grads)?;
    }
}
