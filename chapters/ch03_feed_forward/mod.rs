//! # Chapter 3 — Feed-forward networks: SwiGLU (and the ReLU FFN for contrast)
//!
//! After attention has mixed information *between* positions, each transformer block processes
//! every position on its own with a small two-layer network. Modern LMs use SwiGLU:
//! `FFN(x) = W2 (SiLU(W1 x) * W3 x)`, a gated linear unit with the smooth SiLU
//! `x * sigmoid(x)` as its gate. The original transformer used `W2 ReLU(W1 x)`.
//!
//! Book page: [Chapter 3](../../book/ch03_feed_forward.html).

use luminal::prelude::*;

use crate::backend::Device;
use crate::ch01_linear::{linear_ref, Linear};
use crate::graph::dims::{Batch, DFf, DModel, Seq};
use crate::graph::error::{CourseError, Result};
use crate::graph::init::CourseRng;
use crate::graph::params::{self, Parameters, Visitor};
use crate::graph::tensor::{self, HostTensor};

mod ffn_layer;
pub use ffn_layer::*;

// ANCHOR: silu_ref
/// SiLU (also called swish): `x * sigmoid(x) = x / (1 + e^-x)`.
pub fn silu_ref(x: f32) -> f32 {
    // ANCHOR: learn_silu_ref ch03: SiLU(x) = x * sigmoid(x) = x / (1 + e^-x), one scalar
    x / (1.0 + (-x).exp())
    // ANCHOR_END: learn_silu_ref
}
// ANCHOR_END: silu_ref

// ANCHOR: swiglu_ref
/// SwiGLU as loops over `n` rows: `x` (n, d_model); `w1`, `w3` (d_ff, d_model);
/// `w2` (d_model, d_ff) -> (n, d_model).
pub fn swiglu_ref(
    x: &[f32],
    [w1, w2, w3]: [&[f32]; 3],
    n: usize,
    d_model: usize,
    d_ff: usize,
) -> Vec<f32> {
    // ANCHOR: learn_swiglu_ref ch03: W2 (SiLU(W1 x) * W3 x) with linear_ref: x (n, d_model), w1 and w3 (d_ff, d_model), w2 (d_model, d_ff) -> (n, d_model)
    let gate = linear_ref(x, w1, n, d_model, d_ff); // (n, d_ff)
    let value = linear_ref(x, w3, n, d_model, d_ff); // (n, d_ff)
    let hidden: Vec<f32> = gate
        .iter()
        .zip(&value)
        .map(|(&g, &v)| silu_ref(g) * v)
        .collect();
    // (n, d_model)
    linear_ref(&hidden, w2, n, d_ff, d_model)
    // ANCHOR_END: learn_swiglu_ref
}
// ANCHOR_END: swiglu_ref

// ANCHOR: relu_ffn_ref
/// The original transformer's FFN (without its biases): `W2 ReLU(W1 x)`.
pub fn relu_ffn_ref(
    x: &[f32],
    [w1, w2]: [&[f32]; 2],
    n: usize,
    d_model: usize,
    d_ff: usize,
) -> Vec<f32> {
    // ANCHOR: learn_relu_ffn_ref ch03: W2 ReLU(W1 x) with linear_ref: x (n, d_model), w1 (d_ff, d_model), w2 (d_model, d_ff) -> (n, d_model)
    let hidden: Vec<f32> = linear_ref(x, w1, n, d_model, d_ff)
        .into_iter()
        .map(|h| h.max(0.0))
        .collect();
    linear_ref(&hidden, w2, n, d_ff, d_model)
    // ANCHOR_END: learn_relu_ffn_ref
}
// ANCHOR_END: relu_ffn_ref

// ANCHOR: default_d_ff
/// The hidden width the CS336 conventions suggest (book chapter 3): about 8/3 d_model, rounded up to a multiple of 64
/// (so that SwiGLU's three matrices hold about as many parameters as a 4 d_model ReLU FFN's two).
pub fn default_d_ff(d_model: usize) -> usize {
    // ANCHOR: learn_default_d_ff ch03: 8/3 * d_model rounded up to an integer, then up to a multiple of 64
    (8 * d_model).div_ceil(3).div_ceil(64) * 64
    // ANCHOR_END: learn_default_d_ff
}
// ANCHOR_END: default_d_ff

// ANCHOR: silu
/// SiLU in the graph, from primitives: `x * recip(1 + exp(-x))`.
///
/// For very negative x, `exp(-x)` overflows to +inf, `recip` gives 0 and the product is -0:
/// the right limit, no NaN.
pub fn silu<S: Shape>(x: GraphTensor<S>) -> GraphTensor<S> {
    // ANCHOR: learn_silu_graph ch03: x * sigmoid(x) from graph ops: x times the reciprocal of (exp(-x) + 1), any shape
    x * ((-x).exp() + 1.0).recip()
    // ANCHOR_END: learn_silu_graph
}
// ANCHOR_END: silu

// ANCHOR: swiglu
/// SwiGLU feed-forward: `W2 (SiLU(W1 x) * W3 x)`, weights named `w1`, `w2`, `w3`.
#[derive(Clone, Copy)]
pub struct SwiGlu<D: Dimension = DModel, F: Dimension = DFf> {
    /// (d_ff, d_model): the gate's projection.
    pub w1: Linear<D, F>,
    /// (d_model, d_ff): back down to the residual width.
    pub w2: Linear<F, D>,
    /// (d_ff, d_model): the value's projection.
    pub w3: Linear<D, F>,
}

impl<D: Dimension, F: Dimension> SwiGlu<D, F> {
    /// Add the three weights to `cx`.
    pub fn new(cx: &mut Graph, d_model: usize, d_ff: usize) -> Result<Self> {
        if d_model == 0 || d_ff == 0 {
            return Err(CourseError::Config(format!(
                "SwiGlu: d_model ({d_model}) and d_ff ({d_ff}) must be positive"
            )));
        }
        Ok(Self {
            w1: Linear::new(cx, d_model, d_ff)?,
            w2: Linear::new(cx, d_ff, d_model)?,
            w3: Linear::new(cx, d_model, d_ff)?,
        })
    }

    /// Truncated-normal init of all three weights (chapter 1).
    pub fn init(&self, rng: &mut CourseRng) -> Result<()> {
        self.w1.init(rng)?;
        self.w2.init(rng)?;
        self.w3.init(rng)
    }
}

impl<B: Dimension, S: Dimension, D: Dimension, F: Dimension> Module<GraphTensor<(B, S, D)>>
    for SwiGlu<D, F>
{
    type Output = GraphTensor<(B, S, D)>;
    fn forward(&self, x: GraphTensor<(B, S, D)>) -> Self::Output {
        // ANCHOR: learn_swiglu_forward ch03: w2(silu(w1(x)) * w3(x)): (b, s, d_model) -> (b, s, d_ff) gate and value -> (b, s, d_model)
        let gate = silu(self.w1.forward(x)); // (batch, seq, d_ff)
        let value = self.w3.forward(x); // (batch, seq, d_ff)
        self.w2.forward(gate * value)
        // ANCHOR_END: learn_swiglu_forward
    }
}
// ANCHOR_END: swiglu

// ANCHOR: relu_ffn
/// The original transformer's feed-forward network, `W2 ReLU(W1 x)` (biases left out, as in
/// every layer of this course).
#[derive(Clone, Copy)]
pub struct ReluFfn<D: Dimension = DModel, F: Dimension = DFf> {
    /// (d_ff, d_model): up to the hidden width, before the ReLU.
    pub w1: Linear<D, F>,
    /// (d_model, d_ff): back down to the residual width.
    pub w2: Linear<F, D>,
}

impl<D: Dimension, F: Dimension> ReluFfn<D, F> {
    /// Add `w1` (d_ff, d_model) and `w2` (d_model, d_ff) to `cx`.
    pub fn new(cx: &mut Graph, d_model: usize, d_ff: usize) -> Result<Self> {
        Ok(Self {
            w1: Linear::new(cx, d_model, d_ff)?,
            w2: Linear::new(cx, d_ff, d_model)?,
        })
    }

    /// Truncated-normal init of both weights (chapter 1).
    pub fn init(&self, rng: &mut CourseRng) -> Result<()> {
        self.w1.init(rng)?;
        self.w2.init(rng)
    }
}

impl<B: Dimension, S: Dimension, D: Dimension, F: Dimension> Module<GraphTensor<(B, S, D)>>
    for ReluFfn<D, F>
{
    type Output = GraphTensor<(B, S, D)>;
    fn forward(&self, x: GraphTensor<(B, S, D)>) -> Self::Output {
        // ANCHOR: learn_relu_ffn_forward ch03: w2(relu(w1(x))): (b, s, d_model) -> (b, s, d_ff) -> (b, s, d_model)
        // (batch, seq, d_model)
        self.w2.forward(self.w1.forward(x).relu())
        // ANCHOR_END: learn_relu_ffn_forward
    }
}
// ANCHOR_END: relu_ffn

/// Which feed-forward network: for [`run_ffn`], [`FfnLayer`] and chapter 6's model configs
/// (JSON `"swiglu"` / `"relu"`; SwiGLU when absent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Ffn {
    /// [`SwiGlu`]: weights w1, w2, w3.
    #[default]
    #[serde(rename = "swiglu")]
    SwiGlu,
    /// [`ReluFfn`]: weights w1, w2.
    #[serde(rename = "relu")]
    Relu,
}

/// Run a feed-forward network on `x` (batch, seq, d_model). `weights` are w1, w2 (and w3 for
/// SwiGLU), row-major in PyTorch's layout.
pub fn run_ffn(
    kind: Ffn,
    x: &[f32],
    shape: [usize; 3],
    weights: &[&[f32]],
    d_ff: usize,
    device: Device,
) -> Result<HostTensor> {
    let needed = match kind {
        Ffn::SwiGlu => 3,
        Ffn::Relu => 2,
    };
    if weights.len() != needed {
        return Err(CourseError::Config(format!(
            "{kind:?} needs {needed} weight matrices (w1, w2{}), got {}",
            if needed == 3 { ", w3" } else { "" },
            weights.len()
        )));
    }
    let mut cx = Graph::new();
    let d_model = shape[2];
    let mut xt = tensor::input::<(Batch, Seq, DModel)>(&mut cx, "x");
    let y = match kind {
        Ffn::SwiGlu => {
            let mut f = SwiGlu::<DModel, DFf>::new(&mut cx, d_model, d_ff)?;
            params::label_inputs(&mut cx, &f, "ffn");
            f.w1.load(weights[0].to_vec())?;
            f.w2.load(weights[1].to_vec())?;
            f.w3.load(weights[2].to_vec())?;
            let mut y = f.forward(xt).retrieve();
            device.compile(&mut cx, (&mut f, &mut xt, &mut y));
            y
        }
        Ffn::Relu => {
            let mut f = ReluFfn::<DModel, DFf>::new(&mut cx, d_model, d_ff)?;
            params::label_inputs(&mut cx, &f, "ffn");
            f.w1.load(weights[0].to_vec())?;
            f.w2.load(weights[1].to_vec())?;
            let mut y = f.forward(xt).retrieve();
            device.compile(&mut cx, (&mut f, &mut xt, &mut y));
            y
        }
    };
    tensor::set(xt, &shape, x.to_vec())?;
    tensor::execute(&mut cx)?;
    tensor::read(y)
}

/// This chapter in a few lines, for the tour.
pub fn ffn_demo() -> Result<String> {
    let x = [1.0, -2.0];
    let eye = [1.0, 0.0, 0.0, 1.0];
    let y = run_ffn(
        Ffn::SwiGlu,
        &x,
        [1, 1, 2],
        &[&eye, &eye, &eye],
        2,
        Device::Cpu,
    )?;
    let r = run_ffn(Ffn::Relu, &x, [1, 1, 2], &[&eye, &eye], 2, Device::Cpu)?;
    Ok(format!(
        "SiLU(-2) = {:.4}, SiLU(1) = {:.4}, SiLU(4) = {:.4}: a smooth ReLU that dips below 0\n\
         with W1 = W2 = W3 = I, x = {x:?}: SwiGLU(x) = SiLU(x) * x = {:.4?}, ReLU FFN(x) = {:?}\n\
         default d_ff for d_model 128: {}",
        silu_ref(-2.0),
        silu_ref(1.0),
        silu_ref(4.0),
        y.data,
        r.data,
        default_d_ff(128)
    ))
}

impl<D: Dimension, F: Dimension> Parameters for SwiGlu<D, F> {
    fn visit<'a>(&'a mut self, v: &mut Visitor<'a>) {
        v.module("w1", &mut self.w1);
        v.module("w2", &mut self.w2);
        v.module("w3", &mut self.w3);
    }
}

impl<D: Dimension, F: Dimension> Parameters for ReluFfn<D, F> {
    fn visit<'a>(&'a mut self, v: &mut Visitor<'a>) {
        v.module("w1", &mut self.w1);
        v.module("w2", &mut self.w2);
    }
}

impl<D: Dimension, F: Dimension> ToIdsMut for SwiGlu<D, F> {
    fn to_ids_mut(&mut self) -> Vec<&mut NodeIndex> {
        self.handles()
    }
}

impl<D: Dimension, F: Dimension> ToIdsMut for ReluFfn<D, F> {
    fn to_ids_mut(&mut self) -> Vec<&mut NodeIndex> {
        self.handles()
    }
}

#[cfg(test)]
mod tests;
