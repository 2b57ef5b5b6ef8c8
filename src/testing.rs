//! Helpers shared by the chapters' tests (compiled only for `cargo test`).

use proptest::test_runner::TestCaseError;
use rand::Rng;

/// The device the tests run on: `DEVICE` from the environment (`cpu` when unset), so
/// `DEVICE=cuda cargo test --features cuda` runs every chapter's tests on a GPU
/// (`scripts/gpu_check.sh`). A bad value stops the test with the reason. Tests about the CPU
/// pipeline itself (compiled op listings, fusion, node counts) name `Device::Cpu` instead.
pub fn device() -> crate::backend::Device {
    crate::backend::Device::from_env().unwrap_or_else(|e| panic!("DEVICE: {e}"))
}

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

/// A scalar loss that weighs every element of `y` (of runtime shape `shape`) by a random
/// factor: `sum(y * w)`. A plain sum would hide errors that cancel across elements.
pub fn weighted_sum<S: luminal::prelude::Shape>(
    y: luminal::prelude::GraphTensor<S>,
    shape: &[usize],
    seed: u64,
) -> luminal::prelude::GraphTensor<()> {
    use luminal::prelude::*;
    let cx = y.graph();
    let w = crate::graph::tensor::input::<S>(cx, "loss weights");
    let n = shape.iter().product();
    crate::graph::tensor::set(
        w,
        shape,
        uniform(&mut crate::graph::init::rng(seed), n, 1.0),
    )
    .unwrap();
    y.graph().dyn_map.insert('@', n);
    (y * w).reshape::<(Dyn<'@'>,)>().sum_reduce::<(), Axis<0>>()
}

/// Check the gradients of `loss` with respect to `params` against finite differences, on the
/// compiled CPU graph, and fail the test naming the worst element.
pub fn assert_gradcheck(
    cx: &mut luminal::prelude::Graph,
    params: Vec<crate::graph::params::Param>,
    loss: luminal::prelude::GraphTensor<()>,
) {
    use crate::ch08_autograd::{GradCheck, GRADCHECK_TOLERANCE};
    let device = Some(device());
    let (err, at) = GradCheck::new(cx, params, loss, device)
        .unwrap()
        .max_error()
        .unwrap();
    assert!(
        err < GRADCHECK_TOLERANCE,
        "gradcheck: normalised error {err} at {at}"
    );
}
