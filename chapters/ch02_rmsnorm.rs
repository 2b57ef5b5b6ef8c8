//! # Chapter 2 — RMSNorm (and LayerNorm for contrast)
//!
//! Deep stacks of layers need activations kept at a steady scale. RMSNorm divides each vector
//! by its root mean square and multiplies by a learned gain `g`:
//! `y = x / sqrt(mean(x^2) + eps) * g`, with `eps = 1e-5` inside the root. LayerNorm, used by
//! the original (post-norm) transformer, also subtracts the mean and adds a learned bias.
//!
//! Book page: [Chapter 2](../book/ch02_rmsnorm.html).

use luminal::prelude::*;

use crate::device::Device;
use crate::dims::{Batch, DModel, Seq};
use crate::error::Result;
use crate::tensor::{self, HostTensor};

/// The epsilon of conventions.md (and of PyTorch's `nn.RMSNorm` / `nn.LayerNorm` defaults).
pub const NORM_EPS: f32 = 1e-5;

// ANCHOR: rms_norm_ref
/// RMSNorm as loops over rows of length `d`: `y = x / sqrt(mean(x^2) + eps) * g`.
pub fn rms_norm_ref(x: &[f32], g: &[f32], d: usize, eps: f32) -> Vec<f32> {
    x.chunks(d)
        .flat_map(|row| {
            let mean_sq = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
            let inv_rms = 1.0 / (mean_sq + eps).sqrt();
            row.iter().zip(g).map(move |(v, gain)| v * inv_rms * gain)
        })
        .collect()
}
// ANCHOR_END: rms_norm_ref

// ANCHOR: layer_norm_ref
/// LayerNorm as loops: `y = (x - mean) / sqrt(var + eps) * gamma + beta` (biased variance).
pub fn layer_norm_ref(x: &[f32], gamma: &[f32], beta: &[f32], d: usize, eps: f32) -> Vec<f32> {
    x.chunks(d)
        .flat_map(|row| {
            let mean = row.iter().sum::<f32>() / d as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
            let inv_std = 1.0 / (var + eps).sqrt();
            row.iter()
                .zip(gamma.iter().zip(beta))
                .map(move |(v, (g, b))| (v - mean) * inv_std * g + b)
        })
        .collect()
}
// ANCHOR_END: layer_norm_ref

// ANCHOR: rms_norm
/// RMSNorm over the last dimension with a learned gain `weight` (d_model,), initialised to 1.
#[derive(Clone, Copy)]
pub struct RmsNorm<D: Dimension = DModel> {
    pub weight: GraphTensor<(D,)>,
    pub d_model: usize,
    pub eps: f32,
}

impl<D: Dimension> RmsNorm<D> {
    /// Add the gain to `cx` as an input named `name` (e.g. `layers.0.ln1.weight`).
    pub fn new(cx: &mut Graph, name: &str, d_model: usize) -> Result<Self> {
        tensor::bind_dim::<D>(cx, d_model, name)?;
        let weight = tensor::input(cx, name);
        Ok(Self {
            weight,
            d_model,
            eps: NORM_EPS,
        })
    }

    /// g = 1, as conventions.md prescribes.
    pub fn init(&self) -> Result<()> {
        self.load(vec![1.0; self.d_model])
    }

    /// Load a gain vector (d_model,).
    pub fn load(&self, weight: Vec<f32>) -> Result<()> {
        tensor::set_fixed(self.weight, &[self.d_model], weight)
    }
}

impl<B: Dimension, S: Dimension, D: Dimension> Module<GraphTensor<(B, S, D)>> for RmsNorm<D> {
    type Output = GraphTensor<(B, S, D)>;
    fn forward(&self, x: GraphTensor<(B, S, D)>) -> Self::Output {
        let mean_sq = (x * x).mean_reduce::<(B, S), Axis<2>>(); // (batch, seq)
        let inv_rms = (mean_sq + self.eps).sqrt().recip(); // (batch, seq)
        let inv_rms = inv_rms.expand::<(B, S, D), Axis<2>>(); // broadcast along d: a view
        x * inv_rms * self.weight.expand::<(B, S, D), Axes2<0, 1>>()
    }
}
// ANCHOR_END: rms_norm

// ANCHOR: layer_norm
/// LayerNorm over the last dimension with gain `weight` (init 1) and `bias` (init 0).
#[derive(Clone, Copy)]
pub struct LayerNorm<D: Dimension = DModel> {
    pub weight: GraphTensor<(D,)>,
    pub bias: GraphTensor<(D,)>,
    pub d_model: usize,
    pub eps: f32,
}

impl<D: Dimension> LayerNorm<D> {
    /// Add gain `{name}.weight` and bias `{name}.bias` to `cx`.
    pub fn new(cx: &mut Graph, name: &str, d_model: usize) -> Result<Self> {
        tensor::bind_dim::<D>(cx, d_model, name)?;
        let weight = tensor::input(cx, &format!("{name}.weight"));
        let bias = tensor::input(cx, &format!("{name}.bias"));
        Ok(Self {
            weight,
            bias,
            d_model,
            eps: NORM_EPS,
        })
    }

    /// gamma = 1, beta = 0 (PyTorch's default).
    pub fn init(&self) -> Result<()> {
        self.load(vec![1.0; self.d_model], vec![0.0; self.d_model])
    }

    /// Load gain and bias, each (d_model,).
    pub fn load(&self, weight: Vec<f32>, bias: Vec<f32>) -> Result<()> {
        tensor::set_fixed(self.weight, &[self.d_model], weight)?;
        tensor::set_fixed(self.bias, &[self.d_model], bias)
    }
}

impl<B: Dimension, S: Dimension, D: Dimension> Module<GraphTensor<(B, S, D)>> for LayerNorm<D> {
    type Output = GraphTensor<(B, S, D)>;
    fn forward(&self, x: GraphTensor<(B, S, D)>) -> Self::Output {
        let mean = x
            .mean_reduce::<(B, S), Axis<2>>()
            .expand::<(B, S, D), Axis<2>>();
        let centred = x - mean; // (batch, seq, d)
        let var = (centred * centred).mean_reduce::<(B, S), Axis<2>>(); // (batch, seq)
        let inv_std = (var + self.eps)
            .sqrt()
            .recip()
            .expand::<(B, S, D), Axis<2>>();
        centred * inv_std * self.weight.expand::<(B, S, D), Axes2<0, 1>>()
            + self.bias.expand::<(B, S, D), Axes2<0, 1>>()
    }
}
// ANCHOR_END: layer_norm

/// Which normalisation to run in [`run_norm`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    Rms,
    Layer,
}

/// Run a norm on `x` (batch, seq, d) with gain `g` (and bias `b` for LayerNorm).
pub fn run_norm(
    norm: Norm,
    x: &[f32],
    shape: [usize; 3],
    g: &[f32],
    b: &[f32],
    device: Device,
) -> Result<HostTensor> {
    let mut cx = Graph::new();
    let d = shape[2];
    let mut xt = tensor::input::<(Batch, Seq, DModel)>(&mut cx, "x");
    let (mut params, mut y) = match norm {
        Norm::Rms => {
            let n = RmsNorm::<DModel>::new(&mut cx, "ln.weight", d)?;
            n.load(g.to_vec())?;
            (vec![n.weight], n.forward(xt).retrieve())
        }
        Norm::Layer => {
            let n = LayerNorm::<DModel>::new(&mut cx, "ln", d)?;
            n.load(g.to_vec(), b.to_vec())?;
            (vec![n.weight, n.bias], n.forward(xt).retrieve())
        }
    };
    device.compile(&mut cx, (&mut xt, &mut params, &mut y));
    tensor::set(xt, &shape, x.to_vec())?;
    tensor::execute(&mut cx)?;
    tensor::read(y)
}

/// This chapter in a few lines, for `cargo run --release -- tour`.
pub fn norm_demo() -> Result<String> {
    let x = [3.0, 4.0, -3.0, -4.0];
    let rms = run_norm(Norm::Rms, &x, [1, 1, 4], &[1.0; 4], &[], Device::Cpu)?;
    let ln = run_norm(
        Norm::Layer,
        &x,
        [1, 1, 4],
        &[1.0; 4],
        &[0.0; 4],
        Device::Cpu,
    )?;
    Ok(format!(
        "x = {x:?}: RMS = sqrt(mean(x^2)) = 3.5355\n  RMSNorm(x)   = {:.4?}\n  LayerNorm(x) = {:.4?}",
        rms.data, ln.data
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
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
            Device::Cpu,
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
            Device::Cpu,
        )
        .unwrap();
        assert_relative_eq!(y.data[0], -1.949_471_3, max_relative = 1e-6);
        assert_relative_eq!(y.data[1], 0.5, max_relative = 1e-6);
        assert_relative_eq!(y.data[2], 2.949_471_3, max_relative = 1e-6);
    }

    #[test]
    fn wrong_gain_length_names_the_tensor() {
        let mut cx = Graph::new();
        let n = RmsNorm::<DModel>::new(&mut cx, "layers.3.ln2.weight", 8).unwrap();
        let err = n.load(vec![1.0; 7]).unwrap_err().to_string();
        assert!(
            err.contains("layers.3.ln2.weight: shape [8] needs 8 values, but 7"),
            "{err}"
        );
    }

    #[test]
    fn compiled_op_listing_snapshot() {
        let mut cx = Graph::new();
        let mut n = RmsNorm::<DModel>::new(&mut cx, "ln1.weight", 4).unwrap();
        let mut x = tensor::input::<(Batch, Seq, DModel)>(&mut cx, "x");
        let mut y = n.forward(x).retrieve();
        Device::Cpu.compile(&mut cx, (&mut n.weight, &mut x, &mut y));
        insta::assert_snapshot!(crate::viz::op_listing(&cx));
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
            let got = run_norm(Norm::Rms, &x, shape, &g, &[], Device::Cpu).unwrap();
            let want = rms_norm_ref(&x, &g, shape[2], NORM_EPS);
            for (a, b) in got.data.iter().zip(&want) {
                prop_assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{} vs {}", a, b);
            }
        }

        #[test]
        fn layer_norm_matches_reference((shape, x, g) in case(), bias in -1.0f32..1.0) {
            let beta = vec![bias; shape[2]];
            let got = run_norm(Norm::Layer, &x, shape, &g, &beta, Device::Cpu).unwrap();
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
            let y = run_norm(Norm::Rms, &x, shape, &vec![1.0; d], &[], Device::Cpu).unwrap();
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
            let a = run_norm(Norm::Rms, &x, shape, &g, &[], Device::Cpu).unwrap();
            let b = run_norm(Norm::Rms, &scaled, shape, &g, &[], Device::Cpu).unwrap();
            for (p, q) in a.data.iter().zip(&b.data) {
                prop_assert!((p - q).abs() <= 1e-4 * p.abs().max(1.0), "{} vs {}", p, q);
            }
        }
    }
}
