use super::*;
use crate::testing::{assert_close, device, uniform};
use approx::assert_relative_eq;
use proptest::prelude::*;

#[test]
fn silu_on_hand_values() {
    // SiLU(0) = 0; SiLU(1) = 1 / (1 + e^-1) = 0.7310586; SiLU(-2) = -2 / (1 + e^2) = -0.2384058.
    assert_eq!(silu_ref(0.0), 0.0);
    assert_relative_eq!(silu_ref(1.0), 0.731_058_6, max_relative = 1e-6);
    assert_relative_eq!(silu_ref(-2.0), -0.238_405_8, max_relative = 1e-6);
}

#[test]
fn swiglu_on_hand_values() {
    // d_model = 1, d_ff = 2: W1 = [[1], [2]], W3 = [[3], [-1]], W2 = [[1, 0.5]], x = 1.
    // gate = SiLU([1, 2]) = [0.7310586, 1.7615942]; value = [3, -1];
    // y = 1 * 0.7310586 * 3 + 0.5 * 1.7615942 * -1 = 2.1931758 - 0.8807971 = 1.3123787.
    let y = run_ffn(
        Ffn::SwiGlu,
        &[1.0],
        [1, 1, 1],
        &[&[1.0, 2.0], &[1.0, 0.5], &[3.0, -1.0]],
        2,
        device(),
    )
    .unwrap();
    assert_relative_eq!(y.data[0], 1.312_378_7, max_relative = 1e-6);
}

#[test]
fn silu_graph_has_the_right_limits() {
    // Large |x|: exp(-x) overflows to inf for x = -1000, and the graph must still give -0,
    // not NaN; for x = 1000 it gives x itself.
    let x = [-1000.0, -100.0, 0.0, 100.0, 1000.0];
    let eye = [1.0];
    let y = run_ffn(
        Ffn::SwiGlu,
        &x,
        [1, 5, 1],
        &[&eye, &eye, &[0.0]],
        1,
        device(),
    )
    .unwrap();
    assert!(
        y.data.iter().all(|v| *v == 0.0),
        "W3 = 0 zeroes all: {:?}",
        y.data
    );
    let y = run_ffn(Ffn::SwiGlu, &x, [1, 5, 1], &[&eye, &eye, &eye], 1, device()).unwrap();
    // SwiGLU with identities = SiLU(x) * x: 0 for very negative x, x^2 for large x.
    assert_eq!(&y.data[..3], &[0.0, 0.0, 0.0]);
    assert_relative_eq!(y.data[3], 10_000.0, max_relative = 1e-6);
    assert_relative_eq!(y.data[4], 1_000_000.0, max_relative = 1e-6);
}

#[test]
fn default_d_ff_is_8_thirds_rounded_up_to_64() {
    // 8/3 * 128 = 341.3 -> 384; 8/3 * 512 = 1365.3 -> 1408; 8/3 * 48 = 128 -> 128.
    assert_eq!(default_d_ff(128), 384);
    assert_eq!(default_d_ff(512), 1408);
    assert_eq!(default_d_ff(48), 128);
}

#[test]
fn wrong_weight_count_and_shape_are_named() {
    let w = [0.0; 6];
    let err = run_ffn(Ffn::SwiGlu, &[0.0; 3], [1, 1, 3], &[&w, &w], 2, device()).unwrap_err();
    assert!(err.to_string().contains("needs 3 weight matrices"), "{err}");
    let err = run_ffn(Ffn::Relu, &[0.0; 3], [1, 1, 3], &[&w, &w[..5]], 2, device())
        .unwrap_err()
        .to_string();
    assert!(err.contains("ffn.w2.weight"), "{err}");
}

#[test]
fn compiled_op_listing_snapshot() {
    let mut cx = Graph::new();
    let mut f = SwiGlu::<DModel, DFf>::new(&mut cx, 4, 8).unwrap();
    crate::graph::params::label_inputs(&mut cx, &f, "layers.0.ffn");
    let mut x = tensor::input::<(Batch, Seq, DModel)>(&mut cx, "x");
    let mut y = f.forward(x).retrieve();
    // The CPU pipeline without its pattern passes, so that the listing shows this chapter's
    // ops (`Device::Cpu` runs the gate as one `SwiGluGate`: appendix A).
    let pipeline = crate::backend::OpByOpCpuCompiler::default();
    cx.compile(pipeline, (&mut f, &mut x, &mut y));
    insta::assert_snapshot!(crate::graph::viz::op_listing(&cx));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Graph == loops over random shapes. Values in [-2, 2] and widths <= 12: sums of <= 12
    /// products of order 1, twice, so 1e-4 relative to max(1, |y|) covers the summation order.
    #[test]
    fn swiglu_matches_reference(
        b in 1usize..3, s in 1usize..4, d in 1usize..9, f in 1usize..13, seed in any::<u64>()
    ) {
        let mut rng = crate::graph::init::rng(seed);
        let x = uniform(&mut rng, b * s * d, 2.0);
        let (w1, w2, w3) = (uniform(&mut rng, f * d, 2.0), uniform(&mut rng, d * f, 2.0), uniform(&mut rng, f * d, 2.0));
        let got = run_ffn(Ffn::SwiGlu, &x, [b, s, d], &[&w1, &w2, &w3], f, device()).unwrap();
        prop_assert_eq!(&got.shape, &vec![b, s, d]);
        assert_close(&got.data, &swiglu_ref(&x, [&w1, &w2, &w3], b * s, d, f), 1e-4)?;
    }

    #[test]
    fn relu_ffn_matches_reference(
        b in 1usize..3, s in 1usize..4, d in 1usize..9, f in 1usize..13, seed in any::<u64>()
    ) {
        let mut rng = crate::graph::init::rng(seed);
        let x = uniform(&mut rng, b * s * d, 2.0);
        let (w1, w2) = (uniform(&mut rng, f * d, 2.0), uniform(&mut rng, d * f, 2.0));
        let got = run_ffn(Ffn::Relu, &x, [b, s, d], &[&w1, &w2], f, device()).unwrap();
        assert_close(&got.data, &relu_ffn_ref(&x, [&w1, &w2], b * s, d, f), 1e-4)?;
    }
}

/// Chapter 8's gradient check: d loss / d (x, W1, W2, W3) through SwiGLU.
#[test]
fn gradients_match_finite_differences() {
    use crate::graph::params::{Param, Parameters};
    use crate::testing::{assert_gradcheck, weighted_sum};
    let mut rng = crate::graph::init::rng(6);
    let mut cx = Graph::new();
    let f = SwiGlu::<DModel, DFf>::new(&mut cx, 3, 4).unwrap();
    f.w1.load(uniform(&mut rng, 12, 1.0)).unwrap();
    f.w2.load(uniform(&mut rng, 12, 1.0)).unwrap();
    f.w3.load(uniform(&mut rng, 12, 1.0)).unwrap();
    let x = tensor::input::<(Batch, Seq, DModel)>(&mut cx, "x");
    tensor::set(x, &[1, 2, 3], uniform(&mut rng, 6, 2.0)).unwrap();
    let loss = weighted_sum(f.forward(x), &[1, 2, 3], 7);
    let params = [f.params(), vec![Param::of(x, &[1, 2, 3])]].concat();
    assert_gradcheck(&mut cx, params, loss);
}

/// [`FfnLayer`] runs the network it was built as, names its weights `ffn.w1`, `ffn.w2` (and
/// `ffn.w3` for SwiGLU only), and equals [`ffn_ref_named`] reading the same state dict, on
/// the CPU device's compiled graph. Weights ~ 1/sqrt(fan-in), inputs up to 2: 1e-4 relative
/// to max(1, |y|), as for the plain networks.
#[test]
fn ffn_layer_matches_the_named_reference() {
    use crate::graph::params::{load_state_dict, StateDict};
    let mut rng = crate::graph::init::rng(31);
    let (shape, d, f) = ([2, 3, 4], 4, 10);
    let x = crate::testing::uniform(&mut rng, 24, 2.0);
    for kind in [Ffn::SwiGlu, Ffn::Relu] {
        let mut cx = Graph::new();
        let mut layer = FfnLayer::<DModel, DFf>::new(&mut cx, kind, d, f).unwrap();
        let mut params = layer.params();
        params
            .iter_mut()
            .for_each(|p| p.name = format!("ffn.{}", p.name));
        let names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
        let mut want_names = vec!["ffn.w1.weight", "ffn.w2.weight", "ffn.w3.weight"];
        want_names.truncate(if kind == Ffn::Relu { 2 } else { 3 });
        assert_eq!(names, want_names);
        let mut dict = StateDict::new();
        for p in &params {
            let v = crate::testing::uniform(&mut rng, d * f, 0.4);
            dict.insert(p.name.clone(), HostTensor::new(&p.shape, v).unwrap());
        }
        load_state_dict(&mut cx, &params, &dict).unwrap();
        let mut xt = tensor::input::<(Batch, Seq, DModel)>(&mut cx, "x");
        let mut y = layer.forward(xt).retrieve();
        device().compile(&mut cx, (&mut layer, &mut xt, &mut y));
        tensor::set(xt, &shape, x.clone()).unwrap();
        tensor::execute(&mut cx).unwrap();
        let got = tensor::read(y).unwrap();
        let want = ffn_ref_named(kind, &x, &dict, "ffn", [6, d, f]);
        crate::testing::assert_close(&got.data, &want, 1e-4).unwrap();
    }
}

/// Book, chapter 3, Exercises 1: SwiGLU's width and parameter count at d = 64 and d = 768.
/// Integer arithmetic: exact.
#[test]
fn exercise_swiglu_parameter_count() {
    // d = 64: 8 * 64 / 3 = 170.7 -> 171 -> 192; 36 864 weights against 32 768 for ReLU at 4d.
    assert_eq!(default_d_ff(64), 192);
    assert_eq!(3 * 64 * default_d_ff(64), 36_864);
    assert_eq!(2 * 64 * (4 * 64), 32_768);
    // d = 768: 8 * 768 / 3 = 2048 exactly, so parity is exact.
    assert_eq!(default_d_ff(768), 2048);
    assert_eq!(3 * 768 * default_d_ff(768), 2 * 768 * (4 * 768));
    assert_eq!(3 * 768 * 2048, 4_718_592);
}

/// Book, chapter 3, Exercises 2: the slope of SiLU at -3 and at 0, where ReLU's is 0.
/// silu'(x) = sigma(x) (1 + x (1 - sigma(x))): -0.0881 at -3 and 0.5 at 0. Checked against a
/// central difference of `silu_ref` with h = 1e-2, tolerance 1e-3 (the difference's
/// truncation error, h^2 |silu'''| / 6, is below 1e-5; f32 rounding of the quotient ~1e-5).
#[test]
fn exercise_silu_slope_for_negative_inputs() {
    let slope = |x: f32| {
        let s = 1.0 / (1.0 + (-x).exp());
        s * (1.0 + x * (1.0 - s))
    };
    let fd = |x: f32| (silu_ref(x + 1e-2) - silu_ref(x - 1e-2)) / 2e-2;
    for (x, want) in [(-3.0f32, -0.0881f32), (0.0, 0.5)] {
        assert!((slope(x) - want).abs() < 1e-4, "silu'({x}) = {}", slope(x));
        assert!(
            (fd(x) - want).abs() < 1e-3,
            "finite difference at {x}: {}",
            fd(x)
        );
    }
}
