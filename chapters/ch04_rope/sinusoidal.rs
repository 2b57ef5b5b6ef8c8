//! The original transformer's sinusoidal positions as a graph, and the switch between them and
//! RoPE that chapter 6's model configs use.
//!
//! Book page: [Chapter 4](../../../book/ch04_rope.html#the-sinusoidal-table-as-a-graph).

use std::f32::consts::FRAC_PI_2;

use luminal::prelude::*;

use super::ROPE_THETA;
use crate::backend::Device;
use crate::graph::dims::{DModel, Seq};
use crate::graph::error::{CourseError, Result};
use crate::graph::tensor::{self, HostTensor};

/// How a model knows where each token sits (chapter 6's configs; JSON `"rope"` /
/// `"sinusoidal"`; RoPE when absent). Book:
/// [Chapter 6](../../book/ch06_transformer.html#the-original-transformer-as-a-configuration).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Positions {
    /// Rotate queries and keys inside attention ([`Rope`](super::Rope)): relative positions.
    #[default]
    #[serde(rename = "rope")]
    Rope,
    /// Add [`sinusoidal_table`] to the token embeddings: absolute positions, no weights.
    #[serde(rename = "sinusoidal")]
    Sinusoidal,
}

// ANCHOR: sinusoidal_table
/// [`sinusoidal_positions_ref`](super::sinusoidal_positions_ref) computed in the graph:
/// `(seq, d_model)` with `PE[p, 2i] = sin(p w_i)`, `PE[p, 2i+1] = cos(p w_i)`,
/// `w_i = 10000^(-2i/d)`. Built from aranges, so it costs no input and fits any length.
/// Book: [Chapter 4](../../book/ch04_rope.html#the-sinusoidal-table-as-a-graph).
pub fn sinusoidal_table<S: Dimension, D: Dimension>(
    cx: &mut Graph,
    d_model: usize,
) -> GraphTensor<(S, D)> {
    // ANCHOR: learn_sinusoidal_table ch04: from aranges: w_i = theta^(-2i/d) via exp2, angle = p * w_i (s, d), sin(angle + pi/2 on odd columns) so one Sin gives sin and cos
    let col = cx.arange::<D>(); // (d,): 0, 1, 2, 3, ...
    let odd = col % 2.0; // (d,): 0, 1, 0, 1, ...

    // Both columns of pair i share w_i = theta^(-2i/d) = 2^(-(2i/d) log2 theta), 2i = col - odd.
    let freq = ((col - odd) * (-ROPE_THETA.log2() / d_model as f32)).exp2(); // (d,)
    let pos = cx.arange::<S>().expand::<(S, D), Axis<1>>(); // (s, d): the row index p
    let angle = pos * freq.expand::<(S, D), Axis<0>>(); // (s, d): p w_i

    // cos a = sin(a + pi/2): odd columns get a quarter turn, then one Sin serves both.
    let phase = (odd * FRAC_PI_2).expand::<(S, D), Axis<0>>(); // (s, d)
    (angle + phase).sin()
    // ANCHOR_END: learn_sinusoidal_table
}
// ANCHOR_END: sinusoidal_table

// ANCHOR: add_positions
/// The original transformer's input: token embeddings `x` (b, s, d) plus the table's first `s`
/// rows, the same for every sequence of the batch. (The paper also multiplies the embeddings
/// by sqrt(d_model); the course does not: its embeddings start as N(0, 1), already of the
/// sinusoids' size.) Book: [Chapter 4](../../book/ch04_rope.html#the-sinusoidal-table-as-a-graph).
pub fn add_sinusoidal_positions<B: Dimension, S: Dimension, D: Dimension>(
    x: GraphTensor<(B, S, D)>,
    d_model: usize,
) -> GraphTensor<(B, S, D)> {
    // ANCHOR: learn_add_sinusoidal_positions ch04: x (b, s, d) + sinusoidal_table::<S, D> (s, d) expanded along the batch axis
    let table = sinusoidal_table::<S, D>(x.graph(), d_model); // (s, d)
    x + table.expand::<(B, S, D), Axis<0>>()
    // ANCHOR_END: learn_add_sinusoidal_positions
}
// ANCHOR_END: add_positions

/// Run [`sinusoidal_table`] for `seq_len` positions of width `d_model` -> (seq_len, d_model).
/// Book: [Chapter 4](../../book/ch04_rope.html#the-sinusoidal-table-as-a-graph).
pub fn run_sinusoidal_table(seq_len: usize, d_model: usize, device: Device) -> Result<HostTensor> {
    if seq_len == 0 || d_model == 0 {
        return Err(CourseError::Config(format!(
            "the sinusoidal table needs seq_len > 0 and d_model > 0; got {seq_len} and {d_model}"
        )));
    }
    let mut cx = Graph::new();
    tensor::bind_dim::<Seq>(&mut cx, seq_len, "sinusoidal table")?;
    tensor::bind_dim::<DModel>(&mut cx, d_model, "sinusoidal table")?;
    let mut pe = sinusoidal_table::<Seq, DModel>(&mut cx, d_model).retrieve();
    device.compile(&mut cx, &mut pe);
    tensor::execute(&mut cx)?;
    tensor::read(pe)
}
