//! Helpers shared by the chapters' tests (compiled only for `cargo test`).

use proptest::test_runner::TestCaseError;
use rand::Rng;

/// `n` values drawn uniformly from `[-scale, scale)`.
pub fn uniform(rng: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-scale..scale)).collect()
}

/// Every `got[i]` is within `tol * max(1, |want[i]|)` of `want[i]` (a relative tolerance that
/// turns absolute near zero), and the lengths agree. NaN never passes. Usable inside
/// `proptest!` (with `?`) and in plain tests (with `.unwrap()`).
pub fn assert_close(got: &[f32], want: &[f32], tol: f32) -> Result<(), TestCaseError> {
    if got.len() != want.len() {
        return Err(TestCaseError::fail(format!(
            "length {} != expected {}",
            got.len(),
            want.len()
        )));
    }
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= tol * w.abs().max(1.0);
        if !ok {
            return Err(TestCaseError::fail(format!(
                "element {i}: got {g}, expected {w} (tolerance {tol} x max(1, |expected|))"
            )));
        }
    }
    Ok(())
}
