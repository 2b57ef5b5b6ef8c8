//! # Chapter 2 — RMSNorm (and LayerNorm for contrast)
//!
//! Deep stacks of layers need activations kept at a steady scale. RMSNorm divides each vector
//! by its root mean square and multiplies by a learned gain `g`:
//! `y = x / sqrt(mean(x^2) + eps) * g`, with `eps = 1e-5` inside the root. LayerNorm, used by
//! the original (post-norm) transformer, also subtracts the mean and adds a learned bias.
//!
//! Book page: [Chapter 2](../../book/ch02_rmsnorm.html).

use luminal::prelude::*;

use crate::backend::Device;
use crate::graph::dims::{Batch, DModel, Seq};
use crate::graph::error::Result;
use crate::graph::params::{self, Parameters, Visitor};
use crate::graph::tensor::{self, HostTensor};

mod norm_layer;
pub use norm_layer::*;

/// The epsilon of the course's CS336 conventions (book chapter 2; also PyTorch's `nn.RMSNorm` / `nn.LayerNorm` defaults).
pub const NORM_EPS: f32 = 1e-5;

// ANCHOR: rms_norm_ref
/// RMSNorm as loops over rows of length `d`: `y = x / sqrt(mean(x^2) + eps) * g`.
pub fn rms_norm_ref(x: &[f32], g: &[f32], d: usize, eps: f32) -> Vec<f32> {
    // ANCHOR: learn_rms_norm_ref ch02: y = x / sqrt(mean(x^2) + eps) * g, row by row; x (n * d,) in rows of length d, g (d,) -> (n * d,)
    x.chunks(d)
        .flat_map(|row| {
            let mean_sq = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
            let inv_rms = 1.0 / (mean_sq + eps).sqrt();
            row.iter().zip(g).map(move |(v, gain)| v * inv_rms * gain)
        })
        .collect()
    // ANCHOR_END: learn_rms_norm_ref
}
// ANCHOR_END: rms_norm_ref

// ANCHOR: layer_norm_ref
/// LayerNorm as loops: `y = (x - mean) / sqrt(var + eps) * gamma + beta` (biased variance).
pub fn layer_norm_ref(x: &[f32], gamma: &[f32], beta: &[f32], d: usize, eps: f32) -> Vec<f32> {
    // ANCHOR: learn_layer_norm_ref ch02: y = (x - mean) / sqrt(var + eps) * gamma + beta per row of length d, var biased (divide by d) -> same shape as x
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
    // ANCHOR_END: learn_layer_norm_ref
}
// ANCHOR_END: layer_norm_ref

// ANCHOR: rms_norm
/// RMSNorm over the last dimension with a learned gain `weight` (d_model,), initialised to 1.
#[derive(Clone, Copy)]
pub struct RmsNorm<D: Dimension = DModel> {
    /// Learned gain `g` (d_model,).
    pub weight: GraphTensor<(D,)>,
    /// Size of the normalised (last) dimension.
    pub d_model: usize,
    /// Added to the mean square inside the root; [`NORM_EPS`].
    pub eps: f32,
}

impl<D: Dimension> RmsNorm<D> {
    /// Add the gain to `cx` as an input (state-dict name `weight`, nested by its holder).
    pub fn new(cx: &mut Graph, d_model: usize) -> Result<Self> {
        tensor::bind_dim::<D>(cx, d_model, &format!("RmsNorm({d_model})"))?;
        let weight = tensor::input(cx, "weight");
        Ok(Self {
            weight,
            d_model,
            eps: NORM_EPS,
        })
    }

    /// g = 1, as the CS336 conventions prescribe (book chapter 2).
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
        // ANCHOR: learn_rms_norm_forward ch02: mean over Axis<2> of x*x (b, s), + eps, sqrt, recip, expanded back to (b, s, d), times x and the gain expanded over Axes2<0, 1>
        let mean_sq = (x * x).mean_reduce::<(B, S), Axis<2>>(); // (batch, seq)
        let inv_rms = (mean_sq + self.eps).sqrt().recip(); // (batch, seq)
        let inv_rms = inv_rms.expand::<(B, S, D), Axis<2>>(); // broadcast along d: a view
        x * inv_rms * self.weight.expand::<(B, S, D), Axes2<0, 1>>()
        // ANCHOR_END: learn_rms_norm_forward
    }
}
// ANCHOR_END: rms_norm

// ANCHOR: layer_norm
/// LayerNorm over the last dimension with gain `weight` (init 1) and `bias` (init 0).
#[derive(Clone, Copy)]
pub struct LayerNorm<D: Dimension = DModel> {
    /// Learned gain `gamma` (d_model,).
    pub weight: GraphTensor<(D,)>,
    /// Learned bias `beta` (d_model,).
    pub bias: GraphTensor<(D,)>,
    /// Size of the normalised (last) dimension.
    pub d_model: usize,
    /// Added to the variance inside the root; [`NORM_EPS`].
    pub eps: f32,
}

impl<D: Dimension> LayerNorm<D> {
    /// Add gain `weight` and bias `bias` to `cx`.
    pub fn new(cx: &mut Graph, d_model: usize) -> Result<Self> {
        tensor::bind_dim::<D>(cx, d_model, &format!("LayerNorm({d_model})"))?;
        let weight = tensor::input(cx, "weight");
        let bias = tensor::input(cx, "bias");
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
        // ANCHOR: learn_layer_norm_forward ch02: centred = x - mean (over Axis<2>, expanded back); var = mean(centred^2); centred / sqrt(var + eps) * gamma + beta, gamma and beta expanded over Axes2<0, 1> to (b, s, d)
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
        // ANCHOR_END: learn_layer_norm_forward
    }
}
// ANCHOR_END: layer_norm

/// Which normalisation: for [`run_norm`], [`NormLayer`] and chapter 6's model configs
/// (JSON `"rms_norm"` / `"layer_norm"`; RMSNorm when absent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Norm {
    /// [`RmsNorm`]: scale only.
    #[default]
    #[serde(rename = "rms_norm")]
    Rms,
    /// [`LayerNorm`]: subtract the mean, scale, add a bias.
    #[serde(rename = "layer_norm")]
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
            let n = RmsNorm::<DModel>::new(&mut cx, d)?;
            params::label_inputs(&mut cx, &n, "ln");
            n.load(g.to_vec())?;
            (vec![n.weight], n.forward(xt).retrieve())
        }
        Norm::Layer => {
            let n = LayerNorm::<DModel>::new(&mut cx, d)?;
            params::label_inputs(&mut cx, &n, "ln");
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

// Each norm shows its weights to the parameter visitor; compilation remaps them through it.

impl<D: Dimension> Parameters for RmsNorm<D> {
    fn visit<'a>(&'a mut self, v: &mut Visitor<'a>) {
        v.param("weight", &mut self.weight.id, &[self.d_model]);
    }
}

impl<D: Dimension> Parameters for LayerNorm<D> {
    fn visit<'a>(&'a mut self, v: &mut Visitor<'a>) {
        v.param("weight", &mut self.weight.id, &[self.d_model]);
        v.param("bias", &mut self.bias.id, &[self.d_model]);
    }
}

impl<D: Dimension> ToIdsMut for RmsNorm<D> {
    fn to_ids_mut(&mut self) -> Vec<&mut NodeIndex> {
        self.handles()
    }
}

impl<D: Dimension> ToIdsMut for LayerNorm<D> {
    fn to_ids_mut(&mut self) -> Vec<&mut NodeIndex> {
        self.handles()
    }
}

#[cfg(test)]
mod tests;
