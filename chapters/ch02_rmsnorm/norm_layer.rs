//! Either norm behind one type, so that a model can pick RMSNorm or LayerNorm from its config.
//!
//! Book page: [Chapter 2](../../../book/ch02_rmsnorm.html#either-norm-chosen-at-run-time).

use luminal::prelude::*;

use super::{layer_norm_ref, rms_norm_ref, LayerNorm, Norm, RmsNorm, NORM_EPS};
use crate::graph::error::Result;
use crate::graph::params::{Parameters, StateDict, Visitor};

// ANCHOR: norm_layer
/// RMSNorm or LayerNorm, chosen when the model is built. Its parameters keep the names of the
/// norm inside (`weight`, and `bias` for LayerNorm), so a state dict reads the same either way.
/// Book: [Chapter 2](../../book/ch02_rmsnorm.html#either-norm-chosen-at-run-time).
// Variants differ in size (a GraphTensor carries its shape tracker inline, ~5 kB) but a model
// holds only a few dozen of these, and boxing would cost the `Copy` the blocks rely on.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy)]
pub enum NormLayer<D: Dimension> {
    /// Scale only: `weight`.
    Rms(RmsNorm<D>),
    /// Centre, scale, shift: `weight` and `bias`.
    Layer(LayerNorm<D>),
}

impl<D: Dimension> NormLayer<D> {
    /// Add the chosen norm's parameters to `cx`.
    pub fn new(cx: &mut Graph, norm: Norm, d_model: usize) -> Result<Self> {
        Ok(match norm {
            Norm::Rms => Self::Rms(RmsNorm::new(cx, d_model)?),
            Norm::Layer => Self::Layer(LayerNorm::new(cx, d_model)?),
        })
    }

    /// Gain 1 (and bias 0).
    pub fn init(&self) -> Result<()> {
        match self {
            Self::Rms(n) => n.init(),
            Self::Layer(n) => n.init(),
        }
    }
}

impl<B: Dimension, S: Dimension, D: Dimension> Module<GraphTensor<(B, S, D)>> for NormLayer<D> {
    type Output = GraphTensor<(B, S, D)>;
    fn forward(&self, x: GraphTensor<(B, S, D)>) -> Self::Output {
        match self {
            Self::Rms(n) => n.forward(x),
            Self::Layer(n) => n.forward(x),
        }
    }
}
// ANCHOR_END: norm_layer

// ANCHOR: norm_ref_named
/// The loop version of [`NormLayer`], its weights read from `dict` under `prefix`
/// (`{prefix}.weight`, and `{prefix}.bias` for LayerNorm): rows of length `d`.
/// Book: [Chapter 2](../../book/ch02_rmsnorm.html#either-norm-chosen-at-run-time).
pub fn norm_ref_named(norm: Norm, x: &[f32], dict: &StateDict, prefix: &str, d: usize) -> Vec<f32> {
    let w = |name: &str| &dict[&format!("{prefix}.{name}")].data[..];
    match norm {
        Norm::Rms => rms_norm_ref(x, w("weight"), d, NORM_EPS),
        Norm::Layer => layer_norm_ref(x, w("weight"), w("bias"), d, NORM_EPS),
    }
}
// ANCHOR_END: norm_ref_named

impl<D: Dimension> Parameters for NormLayer<D> {
    fn visit<'a>(&'a mut self, v: &mut Visitor<'a>) {
        match self {
            Self::Rms(n) => n.visit(v),
            Self::Layer(n) => n.visit(v),
        }
    }
}

impl<D: Dimension> ToIdsMut for NormLayer<D> {
    fn to_ids_mut(&mut self) -> Vec<&mut NodeIndex> {
        self.handles()
    }
}
