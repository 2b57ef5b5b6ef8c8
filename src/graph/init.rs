//! Seeded random initialisation: a platform-stable RNG and the truncated normal.
//!
//! the CS336 conventions (book chapter 1): Linear weights ~ N(0, sigma^2) with sigma = sqrt(2 / (in + out)), Embedding
//! weights ~ N(0, 1), both truncated at +-3 sigma. See the book's
//! [chapter 1](../../../book/ch01_linear.html#initialisation).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The course's RNG: ChaCha8 gives the same stream on every platform and rand version.
pub type CourseRng = ChaCha8Rng;

/// A seeded RNG: the same seed always gives the same numbers.
pub fn rng(seed: u64) -> CourseRng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// One standard normal sample by the Box-Muller transform.
pub fn standard_normal(rng: &mut impl Rng) -> f32 {
    // u1 in (0, 1] so that ln(u1) is finite.
    let u1: f64 = 1.0 - rng.gen::<f64>();
    let u2: f64 = rng.gen::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// `n` samples of N(0, sigma^2) truncated to [-3 sigma, 3 sigma] by rejection
/// (resampling, as `torch.nn.init.trunc_normal_` effectively does; not clamping, which would
/// pile mass at the edges).
pub fn trunc_normal(rng: &mut impl Rng, n: usize, sigma: f32) -> Vec<f32> {
    (0..n)
        .map(|_| loop {
            let z = standard_normal(rng);
            if z.abs() <= 3.0 {
                break z * sigma;
            }
        })
        .collect()
}

/// Standard deviation of N(0, sigma^2) truncated at +-3 sigma, as a fraction of sigma.
///
/// Var = 1 - 2 a phi(a) / (2 Phi(a) - 1) with a = 3: phi(3) = 0.004432, 2 Phi(3) - 1 = 0.997300,
/// so Var = 1 - 6 * 0.004432 / 0.997300 = 0.973336 and the std is 0.986578 sigma.
pub const TRUNC3_STD_FRACTION: f32 = 0.986_578;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Sample mean and (population) standard deviation.
    fn mean_std(v: &[f32]) -> (f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        (mean, var.sqrt())
    }

    #[test]
    fn same_seed_same_numbers_different_seed_different_numbers() {
        let a = trunc_normal(&mut rng(7), 100, 1.0);
        assert_eq!(a, trunc_normal(&mut rng(7), 100, 1.0));
        assert_ne!(a, trunc_normal(&mut rng(8), 100, 1.0));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// mean ~ 0, std ~ 0.9866 sigma, nothing beyond 3 sigma.
        /// With n = 20000 the standard error of the mean is sigma/141 and of the std about
        /// sigma/200, so 5 standard errors give the tolerances 0.036 sigma and 0.025 sigma.
        #[test]
        fn trunc_normal_statistics(seed in any::<u64>(), sigma in 0.01f32..5.0) {
            let v = trunc_normal(&mut rng(seed), 20_000, sigma);
            let (mean, std) = mean_std(&v);
            let sigma = sigma as f64;
            prop_assert!(mean.abs() < 0.036 * sigma, "mean {mean} for sigma {sigma}");
            let expected = TRUNC3_STD_FRACTION as f64 * sigma;
            prop_assert!((std - expected).abs() < 0.025 * sigma, "std {std} vs {expected}");
            let bound = 3.0 * sigma as f32;
            prop_assert!(v.iter().all(|x| x.abs() <= bound * (1.0 + 1e-6)));
        }
    }

    #[test]
    fn box_muller_is_standard_normal() {
        // The untruncated sampler: mean 0, std 1 within 5 standard errors at n = 50000.
        let mut r = rng(1);
        let v: Vec<f32> = (0..50_000).map(|_| standard_normal(&mut r)).collect();
        let (mean, std) = mean_std(&v);
        assert!(mean.abs() < 5.0 / (50_000f64).sqrt(), "mean {mean}");
        assert!(
            (std - 1.0).abs() < 5.0 / (2.0 * 50_000f64).sqrt(),
            "std {std}"
        );
    }
}
