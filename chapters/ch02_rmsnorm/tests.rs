use super::*;
use crate::testing::device;
use approx::assert_relative_eq;
use proptest::prelude::*;

#[test]
fn rms_norm_on_hand_values() {
    // x = [3, 4]: mean(x^2) = 12.5, rms = sqrt(12.5 + 1e-5) = 3.5355353;
    // with g = [1, 2]: y = [3 / 3.5355353, 2 * 4 / 3.5355353] = [0.8485278, 2.2627409].
    let y = run_norm(
        Norm::Rms,
        &[3.0, 4.0],
        [1, 1, 2],
        &[1.0, 2.0],
        &[],
        device(),
    )
    .unwrap();
    assert_relative_eq!(y.data[0], 0.848_527_8, max_relative = 1e-6);
    assert_relative_eq!(y.data[1], 2.262_740_9, max_relative = 1e-6);
}

#[test]
fn layer_norm_on_hand_values() {
    // x = [1, 2, 3]: mean 2, biased var 2/3, std = sqrt(2/3 + 1e-5) = 0.8165027;
    // y = [-1, 0, 1] / 0.8164027 * 2 + 0.5 = [-1.9494713, 0.5, 2.9494713].
    let y = run_norm(
        Norm::Layer,
        &[1.0, 2.0, 3.0],
        [1, 1, 3],
        &[2.0; 3],
        &[0.5; 3],
        device(),
    )
    .unwrap();
    assert_relative_eq!(y.data[0], -1.949_471_3, max_relative = 1e-6);
    assert_relative_eq!(y.data[1], 0.5, max_relative = 1e-6);
    assert_relative_eq!(y.data[2], 2.949_471_3, max_relative = 1e-6);
}

#[test]
fn wrong_gain_length_names_the_tensor() {
    let mut cx = Graph::new();
    let n = RmsNorm::<DModel>::new(&mut cx, 8).unwrap();
    crate::graph::params::label_inputs(&mut cx, &n, "layers.3.ln2");
    let err = n.load(vec![1.0; 7]).unwrap_err().to_string();
    assert!(
        err.contains("layers.3.ln2.weight: shape [8] needs 8 values, but 7"),
        "{err}"
    );
}

#[test]
fn compiled_op_listing_snapshot() {
    let mut cx = Graph::new();
    let mut n = RmsNorm::<DModel>::new(&mut cx, 4).unwrap();
    crate::graph::params::label_inputs(&mut cx, &n, "ln1");
    let mut x = tensor::input::<(Batch, Seq, DModel)>(&mut cx, "x");
    let mut y = n.forward(x).retrieve();
    crate::backend::Device::Cpu.compile(&mut cx, (&mut n.weight, &mut x, &mut y));
    insta::assert_snapshot!(crate::graph::viz::op_listing(&cx));
}

/// Random (batch, seq, d) inputs with values in [-5, 5] and a random gain.
fn case() -> impl Strategy<Value = ([usize; 3], Vec<f32>, Vec<f32>)> {
    (1usize..3, 1usize..4, 1usize..17).prop_flat_map(|(b, s, d)| {
        (
            Just([b, s, d]),
            prop::collection::vec(-5.0f32..5.0, b * s * d),
            prop::collection::vec(-2.0f32..2.0, d),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// Graph == loops. Tolerance 1e-5 relative to max(1, |y|): a handful of f32 roundings
    /// in a mean over <= 16 values, a sqrt and a reciprocal.
    #[test]
    fn rms_norm_matches_reference((shape, x, g) in case()) {
        let got = run_norm(Norm::Rms, &x, shape, &g, &[], device()).unwrap();
        let want = rms_norm_ref(&x, &g, shape[2], NORM_EPS);
        for (a, b) in got.data.iter().zip(&want) {
            prop_assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{} vs {}", a, b);
        }
    }

    #[test]
    fn layer_norm_matches_reference((shape, x, g) in case(), bias in -1.0f32..1.0) {
        let beta = vec![bias; shape[2]];
        let got = run_norm(Norm::Layer, &x, shape, &g, &beta, device()).unwrap();
        let want = layer_norm_ref(&x, &g, &beta, shape[2], NORM_EPS);
        for (a, b) in got.data.iter().zip(&want) {
            // Subtracting the mean can cancel digits: 1e-4 absolute on outputs of order 1.
            prop_assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{} vs {}", a, b);
        }
    }

    /// With g = 1 every output row has RMS 1 (up to eps: rows are kept away from 0 so that
    /// eps / mean(x^2) < 1e-4, and the RMS is within 1e-4 of 1).
    #[test]
    fn rms_norm_output_has_unit_rms((shape, x, _g) in case()) {
        let d = shape[2];
        let x: Vec<f32> = x.iter().map(|v| if v.abs() < 0.5 { v.signum() * 0.5 + v } else { *v }).collect();
        let y = run_norm(Norm::Rms, &x, shape, &vec![1.0; d], &[], device()).unwrap();
        for row in y.data.chunks(d) {
            let rms = (row.iter().map(|v| v * v).sum::<f32>() / d as f32).sqrt();
            prop_assert!((rms - 1.0).abs() < 1e-4, "rms {}", rms);
        }
    }

    /// Scaling a row by c > 0 does not change RMSNorm's output (again away from eps).
    #[test]
    fn rms_norm_is_scale_invariant((shape, x, g) in case(), c in 1.0f32..100.0) {
        let x: Vec<f32> = x.iter().map(|v| if v.abs() < 0.5 { v.signum() * 0.5 + v } else { *v }).collect();
        let scaled: Vec<f32> = x.iter().map(|v| v * c).collect();
        let a = run_norm(Norm::Rms, &x, shape, &g, &[], device()).unwrap();
        let b = run_norm(Norm::Rms, &scaled, shape, &g, &[], device()).unwrap();
        for (p, q) in a.data.iter().zip(&b.data) {
            prop_assert!((p - q).abs() <= 1e-4 * p.abs().max(1.0), "{} vs {}", p, q);
        }
    }
}

/// Chapter 8's gradient check: d loss / d (x, g) through RMSNorm and LayerNorm.
#[test]
fn gradients_match_finite_differences() {
    use crate::graph::params::{Param, Parameters};
    use crate::testing::{assert_gradcheck, uniform, weighted_sum};
    let mut rng = crate::graph::init::rng(4);
    for norm in [Norm::Rms, Norm::Layer] {
        let mut cx = Graph::new();
        let x = tensor::input::<(Batch, Seq, DModel)>(&mut cx, "x");
        tensor::set(x, &[2, 2, 4], uniform(&mut rng, 16, 2.0)).unwrap();
        let (y, mut params) = match norm {
            Norm::Rms => {
                let n = RmsNorm::<DModel>::new(&mut cx, 4).unwrap();
                n.load(uniform(&mut rng, 4, 2.0)).unwrap();
                (n.forward(x), n.params())
            }
            Norm::Layer => {
                let n = LayerNorm::<DModel>::new(&mut cx, 4).unwrap();
                n.load(uniform(&mut rng, 4, 2.0), uniform(&mut rng, 4, 1.0))
                    .unwrap();
                (n.forward(x), n.params())
            }
        };
        params.push(Param::of(x, &[2, 2, 4]));
        let loss = weighted_sum(y, &[2, 2, 4], 5);
        assert_gradcheck(&mut cx, params, loss);
    }
}

/// [`NormLayer`] runs the norm it was built as, with the norm's own parameter names (`ln.weight`,
/// and `ln.bias` for LayerNorm only), and equals [`norm_ref_named`] reading the same state dict.
/// Inputs up to 3 with gains near 1: 1e-5 relative to max(1, |y|), as for the plain norms.
#[test]
fn norm_layer_matches_the_named_reference() {
    use crate::graph::params::{load_state_dict, StateDict};
    let mut rng = crate::graph::init::rng(21);
    let (shape, d) = ([2, 3, 6], 6);
    let x = crate::testing::uniform(&mut rng, 36, 3.0);
    for norm in [Norm::Rms, Norm::Layer] {
        let mut cx = Graph::new();
        let n = NormLayer::<DModel>::new(&mut cx, norm, d).unwrap();
        let mut params = n.params();
        params
            .iter_mut()
            .for_each(|p| p.name = format!("ln.{}", p.name));
        let names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
        let want_names = match norm {
            Norm::Rms => vec!["ln.weight"],
            Norm::Layer => vec!["ln.weight", "ln.bias"],
        };
        assert_eq!(names, want_names);
        let mut dict = StateDict::new();
        for p in &params {
            let v = crate::testing::uniform(&mut rng, d, 0.5)
                .iter()
                .map(|v| v + 1.0)
                .collect();
            dict.insert(p.name.clone(), HostTensor::new(&[d], v).unwrap());
        }
        load_state_dict(&mut cx, &params, &dict).unwrap();
        let xt = tensor::input::<(Batch, Seq, DModel)>(&mut cx, "x");
        let y = n.forward(xt).retrieve();
        tensor::set(xt, &shape, x.clone()).unwrap();
        tensor::execute(&mut cx).unwrap();
        let got = tensor::read(y).unwrap();
        let want = norm_ref_named(norm, &x, &dict, "ln", d);
        crate::testing::assert_close(&got.data, &want, 1e-5).unwrap();
    }
}

/// Book, chapter 2, Exercises 1: a vector with all entries equal. RMSNorm keeps it (divided by
/// its RMS); LayerNorm centres it to zero and returns the bias. Tolerance 1e-6: the graph and
/// the closed form differ by f32 rounding only.
#[test]
fn exercise_constant_vector_rms_vs_layer_norm() {
    let x = [2.0f32; 4];
    let g = [1.0f32; 4];
    let rms = run_norm(Norm::Rms, &x, [1, 1, 4], &g, &[], device()).unwrap();
    let want = 2.0 / (4.0f32 + NORM_EPS).sqrt(); // 0.99999875
    for v in &rms.data {
        assert!((v - want).abs() < 1e-6, "RMSNorm {v} vs {want}");
    }
    let beta = [0.5f32; 4];
    let ln = run_norm(Norm::Layer, &x, [1, 1, 4], &g, &beta, device()).unwrap();
    for v in &ln.data {
        assert!((v - 0.5).abs() < 1e-6, "LayerNorm {v} vs the bias 0.5");
    }
}

/// Book, chapter 2, Exercises 3: when does epsilon matter? x = (0.001, 0, 0, 0) has
/// mean(x^2) = 2.5e-7, so RMS(y)^2 = 2.5e-7 / (2.5e-7 + 1e-5) = 1/41 and RMS(y) = 0.156;
/// at RMS(x) = 0.0222 the output's RMS is back at 0.99. Tolerance 1e-4 relative: f32 rounding
/// of a mean of squares near 1e-7.
#[test]
fn exercise_epsilon_shrinks_small_vectors() {
    let rms_of = |v: &[f32]| (v.iter().map(|a| a * a).sum::<f32>() / v.len() as f32).sqrt();
    let y = rms_norm_ref(&[1e-3, 0.0, 0.0, 0.0], &[1.0; 4], 4, NORM_EPS);
    assert_relative_eq!(rms_of(&y), (1.0f32 / 41.0).sqrt(), max_relative = 1e-4);
    assert_relative_eq!(y[0], 1e-3 / 1.025e-5f32.sqrt(), max_relative = 1e-4); // 0.3123
                                                                               // mean(x^2) = 49.25 eps gives RMS(y)^2 = 49.25 / 50.25 = 0.99^2.
    let a = (49.25f32 * NORM_EPS).sqrt(); // RMS(x) = 0.0222
    let y = rms_norm_ref(&[a; 4], &[1.0; 4], 4, NORM_EPS);
    assert_relative_eq!(rms_of(&y), 0.99, max_relative = 1e-4);
}

/// Book, chapter 2, Exercises 4: LayerNorm with gamma = g and beta = 0 is RMSNorm of the
/// centred vector. Tolerance 1e-5 relative: the two loops round the same sums differently.
#[test]
fn exercise_layer_norm_is_rms_norm_of_the_centred_vector() {
    let x = [3.0f32, -1.0, 0.5, 2.5, 7.0, -4.0];
    let g = [1.0f32, 2.0, 0.5, -1.0, 1.5, 0.25];
    let mean = x.iter().sum::<f32>() / 6.0;
    let centred: Vec<f32> = x.iter().map(|v| v - mean).collect();
    let rms = rms_norm_ref(&centred, &g, 6, NORM_EPS);
    let ln = layer_norm_ref(&x, &g, &[0.0; 6], 6, NORM_EPS);
    for (a, b) in rms.iter().zip(&ln) {
        assert_relative_eq!(a, b, max_relative = 1e-5);
    }
}
