//! Either feed-forward network behind one type, so that a model can pick SwiGLU or the ReLU
//! FFN from its config.
//!
//! Book page: [Chapter 3](../../../book/ch03_feed_forward.html#either-network-chosen-at-run-time).

use luminal::prelude::*;

use super::{relu_ffn_ref, swiglu_ref, Ffn, ReluFfn, SwiGlu};
use crate::graph::error::Result;
use crate::graph::init::CourseRng;
use crate::graph::params::{Parameters, StateDict, Visitor};

// ANCHOR: ffn_layer
/// SwiGLU or the ReLU FFN, chosen when the model is built. The weights keep their names
/// (`w1`, `w2`, and `w3` for SwiGLU): a ReLU FFN's state dict simply has no `w3`.
/// Book: [Chapter 3](../../book/ch03_feed_forward.html#either-network-chosen-at-run-time).
// Variants differ in size (a GraphTensor carries its shape tracker inline, ~5 kB) but a model
// holds only a few dozen of these, and boxing would cost the `Copy` the blocks rely on.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy)]
pub enum FfnLayer<D: Dimension, F: Dimension> {
    /// `W2 (SiLU(W1 x) * W3 x)`.
    SwiGlu(SwiGlu<D, F>),
    /// `W2 ReLU(W1 x)`.
    Relu(ReluFfn<D, F>),
}

impl<D: Dimension, F: Dimension> FfnLayer<D, F> {
    /// Add the chosen network's weights to `cx`.
    pub fn new(cx: &mut Graph, ffn: Ffn, d_model: usize, d_ff: usize) -> Result<Self> {
        Ok(match ffn {
            Ffn::SwiGlu => Self::SwiGlu(SwiGlu::new(cx, d_model, d_ff)?),
            Ffn::Relu => Self::Relu(ReluFfn::new(cx, d_model, d_ff)?),
        })
    }

    /// Truncated-normal init of every weight (chapter 1).
    pub fn init(&self, rng: &mut CourseRng) -> Result<()> {
        match self {
            Self::SwiGlu(f) => f.init(rng),
            Self::Relu(f) => f.init(rng),
        }
    }
}

impl<B: Dimension, S: Dimension, D: Dimension, F: Dimension> Module<GraphTensor<(B, S, D)>>
    for FfnLayer<D, F>
{
    type Output = GraphTensor<(B, S, D)>;
    fn forward(&self, x: GraphTensor<(B, S, D)>) -> Self::Output {
        match self {
            Self::SwiGlu(f) => f.forward(x),
            Self::Relu(f) => f.forward(x),
        }
    }
}
// ANCHOR_END: ffn_layer

// ANCHOR: ffn_ref_named
/// The loop version of [`FfnLayer`] on `n` rows, weights read from `dict` as
/// `{prefix}.w1.weight`, `{prefix}.w2.weight` (and `{prefix}.w3.weight` for SwiGLU).
/// Book: [Chapter 3](../../book/ch03_feed_forward.html#either-network-chosen-at-run-time).
pub fn ffn_ref_named(
    ffn: Ffn,
    x: &[f32],
    dict: &StateDict,
    prefix: &str,
    [n, d_model, d_ff]: [usize; 3],
) -> Vec<f32> {
    let w = |name: &str| &dict[&format!("{prefix}.{name}.weight")].data[..];
    match ffn {
        Ffn::SwiGlu => swiglu_ref(x, [w("w1"), w("w2"), w("w3")], n, d_model, d_ff),
        Ffn::Relu => relu_ffn_ref(x, [w("w1"), w("w2")], n, d_model, d_ff),
    }
}
// ANCHOR_END: ffn_ref_named

impl<D: Dimension, F: Dimension> Parameters for FfnLayer<D, F> {
    fn visit<'a>(&'a mut self, v: &mut Visitor<'a>) {
        match self {
            Self::SwiGlu(f) => f.visit(v),
            Self::Relu(f) => f.visit(v),
        }
    }
}

impl<D: Dimension, F: Dimension> ToIdsMut for FfnLayer<D, F> {
    fn to_ids_mut(&mut self) -> Vec<&mut NodeIndex> {
        self.handles()
    }
}
