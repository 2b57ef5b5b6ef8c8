//! # Chapter 4 — Rotary position embedding (RoPE), and sinusoidal positions for contrast
//!
//! Attention compares queries with keys by dot products, which know nothing of order. RoPE
//! rotates each adjacent pair `(x[2k], x[2k+1])` of a query or key by the angle
//! `pos * theta^(-2k/d)`. A rotation keeps lengths, and the dot product of a query rotated by
//! `i` angles with a key rotated by `j` angles depends only on `i - j`: attention sees
//! *relative* positions. The original transformer instead *added* fixed sinusoids to the token
//! embeddings (absolute positions).
//!
//! Book page: [Chapter 4](../../book/ch04_rope.html).

use luminal::prelude::*;
use luminal::shape::symbolic::Expression;

use crate::backend::Device;
use crate::ch01_linear::one_hot;
use crate::graph::dims::{Batch, DHead, Heads, MaxSeq, Pairs, Seq};
use crate::graph::error::{CourseError, Result};
use crate::graph::tensor::{self, HostTensor};

mod sinusoidal;
pub use sinusoidal::*;

/// The base of RoPE's angles in the CS336 conventions (book chapter 4), as in Llama and the RoFormer paper.
pub const ROPE_THETA: f32 = 10_000.0;

// ANCHOR: rope_angle
/// The angle by which RoPE turns pair `k` of a `d`-wide vector at position `pos`:
/// `pos * theta^(-2k/d)`. Pair 0 turns fastest (1 radian per position); the last pair slowest.
pub fn rope_angle(pos: usize, k: usize, d: usize, theta: f32) -> f32 {
    // ANCHOR: learn_rope_angle ch04: angle = pos * theta^(-2k/d) for pair k (compute in f64, return f32)
    // In f64: pos * freq loses digits in f32 for long sequences; the tables are exact to f32.
    (pos as f64 * (theta as f64).powf(-2.0 * k as f64 / d as f64)) as f32
    // ANCHOR_END: learn_rope_angle
}
// ANCHOR_END: rope_angle

// ANCHOR: rope_ref
/// RoPE as loops: row `r` of `x` (n, d) sits at position `positions[r]`; each adjacent pair
/// `(x0, x1)` becomes `(x0 cos a - x1 sin a, x0 sin a + x1 cos a)`.
pub fn rope_ref(x: &[f32], positions: &[usize], d: usize, theta: f32) -> Vec<f32> {
    // ANCHOR: learn_rope_ref ch04: rotate each pair (x[2k], x[2k+1]) of each row (length d, position positions[row]) by rope_angle: (x0 cos - x1 sin, x0 sin + x1 cos)
    assert!(d % 2 == 0, "RoPE needs an even width, got {d}");
    let mut out = x.to_vec();
    for (row, &pos) in out.chunks_mut(d).zip(positions) {
        for k in 0..d / 2 {
            let (sin, cos) = rope_angle(pos, k, d, theta).sin_cos();
            let (x0, x1) = (row[2 * k], row[2 * k + 1]);
            row[2 * k] = x0 * cos - x1 * sin;
            row[2 * k + 1] = x0 * sin + x1 * cos;
        }
    }
    out
    // ANCHOR_END: learn_rope_ref
}
// ANCHOR_END: rope_ref

// ANCHOR: sinusoidal_ref
/// The original transformer's absolute positions, added to the embeddings: (seq_len, d_model)
/// with `PE[pos, 2i] = sin(pos / 10000^(2i/d))` and `PE[pos, 2i+1] = cos(pos / 10000^(2i/d))`.
pub fn sinusoidal_positions_ref(seq_len: usize, d_model: usize) -> Vec<f32> {
    // ANCHOR: learn_sinusoidal_positions_ref ch04: PE[pos, 2i] = sin(angle), PE[pos, 2i+1] = cos(angle) (if that column exists), angle = rope_angle(pos, i, d_model, ROPE_THETA) -> (seq_len, d_model)
    let mut pe = vec![0.0; seq_len * d_model];
    for pos in 0..seq_len {
        for i in 0..d_model.div_ceil(2) {
            let (sin, cos) = rope_angle(pos, i, d_model, ROPE_THETA).sin_cos();
            pe[pos * d_model + 2 * i] = sin;
            if 2 * i + 1 < d_model {
                pe[pos * d_model + 2 * i + 1] = cos;
            }
        }
    }
    pe
    // ANCHOR_END: learn_sinusoidal_positions_ref
}
// ANCHOR_END: sinusoidal_ref

// ANCHOR: rope_tables
/// The precomputed tables, (max_seq_len, d): `cos[p, 2k] = cos[p, 2k+1] = cos(angle(p, k))`,
/// and the same for `sin`. Each value appears twice so the graph can multiply elementwise.
pub fn rope_tables(max_seq_len: usize, d: usize, theta: f32) -> (Vec<f32>, Vec<f32>) {
    // ANCHOR: learn_rope_tables ch04: cos and sin tables (max_seq_len, d): column j of row pos holds cos/sin of rope_angle(pos, j / 2, d, theta)
    let (mut cos, mut sin) = (Vec::with_capacity(max_seq_len * d), Vec::new());
    for pos in 0..max_seq_len {
        for j in 0..d {
            let (s, c) = rope_angle(pos, j / 2, d, theta).sin_cos();
            cos.push(c);
            sin.push(s);
        }
    }
    (cos, sin)
    // ANCHOR_END: learn_rope_tables
}
// ANCHOR_END: rope_tables

// ANCHOR: swap_pairs
/// `[x0, x1, x2, x3, ...] -> [-x1, x0, -x3, x2, ...]` along the last dimension: the
/// "perpendicular" part of each pair's rotation. `(b, h, s, k) -> (b, h, s, k)`.
pub fn swap_pairs<B: Dimension, H: Dimension, S: Dimension, K: Dimension>(
    x: GraphTensor<(B, H, S, K)>,
) -> GraphTensor<(B, H, S, K)> {
    // ANCHOR: learn_swap_pairs ch04: (x0, x1) -> (-x1, x0) per pair of the last axis: contiguous, reshape to (b, h, s, k/2, 2), slice each half, pad it into the other slot, subtract, reshape back
    // reshape needs a contiguous buffer (luminal 0.2.0 ignores views in reshape).
    let pairs = x.contiguous().reshape::<(B, H, S, Pairs, Const<2>)>(); // (b, h, s, k/2, 2)
    let x0 = pairs.slice((.., .., .., .., ..Expression::from(1))); // (b, h, s, k/2, 1)
    let x1 = pairs.slice((.., .., .., .., Expression::from(1)..)); // (b, h, s, k/2, 1)
    let none = (0, 0);
    // Padding moves each half to the other slot: [0, x0] and [x1, 0].
    let x0_back: GraphTensor<(B, H, S, Pairs, Const<2>)> =
        x0.pad(&[none, none, none, none, (1, 0)]);
    let x1_front: GraphTensor<(B, H, S, Pairs, Const<2>)> =
        x1.pad(&[none, none, none, none, (0, 1)]);
    (x0_back - x1_front).reshape::<(B, H, S, K)>()
    // ANCHOR_END: learn_swap_pairs
}
// ANCHOR_END: swap_pairs

// ANCHOR: rope
/// Rotary position embedding for heads of width `d_head`, positions `0 .. max_seq_len`.
#[derive(Clone, Copy)]
pub struct Rope<M: Dimension = MaxSeq, K: Dimension = DHead> {
    /// (max_seq_len, d_head) cosines, set once when the layer is built (not trained).
    pub cos: GraphTensor<(M, K)>,
    /// (max_seq_len, d_head) sines.
    pub sin: GraphTensor<(M, K)>,
    /// Number of positions the tables cover (rows).
    pub max_seq_len: usize,
    /// Width of one attention head (columns); even, since features rotate in pairs.
    pub d_head: usize,
    /// Base of the angles `pos * theta^(-2k/d_head)`; usually [`ROPE_THETA`].
    pub theta: f32,
}

impl<M: Dimension, K: Dimension> Rope<M, K> {
    /// Add the tables to `cx` as inputs `rope.cos` and `rope.sin`, filled for `theta`.
    pub fn new(cx: &mut Graph, max_seq_len: usize, d_head: usize, theta: f32) -> Result<Self> {
        if d_head == 0 || d_head % 2 != 0 {
            return Err(CourseError::Config(format!(
                "RoPE rotates pairs of features, so the head size must be even and positive; \
                 got d_head = {d_head}"
            )));
        }
        if max_seq_len == 0 || !(theta > 1.0 && theta.is_finite()) {
            return Err(CourseError::Config(format!(
                "RoPE needs max_seq_len > 0 and a finite theta > 1; got {max_seq_len} and {theta}"
            )));
        }
        tensor::bind_dim::<M>(cx, max_seq_len, "rope tables")?;
        tensor::bind_dim::<K>(cx, d_head, "rope tables")?;
        tensor::bind_dim::<Pairs>(cx, d_head / 2, "rope tables")?;
        let (cos_table, sin_table) = rope_tables(max_seq_len, d_head, theta);
        let cos = tensor::input(cx, "rope.cos");
        let sin = tensor::input(cx, "rope.sin");
        tensor::set_fixed(cos, &[max_seq_len, d_head], cos_table)?;
        tensor::set_fixed(sin, &[max_seq_len, d_head], sin_table)?;
        Ok(Self {
            cos,
            sin,
            max_seq_len,
            d_head,
            theta,
        })
    }

    /// The first `S` rows of a table, `(m, k) -> (s, k)`: a slice is a view, no copy.
    fn rows<S: Dimension>(table: GraphTensor<(M, K)>) -> GraphTensor<(S, K)> {
        let t = table.slice((..S::const_size(), ..));
        GraphTensor::from_id(t.id, t.shape, t.graph_ref)
    }
}

impl<M: Dimension, K: Dimension> ToIdsMut for Rope<M, K> {
    fn to_ids_mut(&mut self) -> Vec<&mut NodeIndex> {
        vec![&mut self.cos.id, &mut self.sin.id]
    }
}

/// `(batch, heads, seq, d_head) -> (batch, heads, seq, d_head)`, position `s` at row `s`.
impl<B: Dimension, H: Dimension, S: Dimension, M: Dimension, K: Dimension>
    Module<GraphTensor<(B, H, S, K)>> for Rope<M, K>
{
    type Output = GraphTensor<(B, H, S, K)>;
    fn forward(&self, x: GraphTensor<(B, H, S, K)>) -> Self::Output {
        // ANCHOR: learn_rope_forward ch04: x * cos + swap_pairs(x) * sin, with the first S rows of each table (Self::rows) expanded to (b, h, s, k)
        let cos = Self::rows::<S>(self.cos).expand::<(B, H, S, K), Axes2<0, 1>>();
        let sin = Self::rows::<S>(self.sin).expand::<(B, H, S, K), Axes2<0, 1>>();
        // (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin): the pair's rotation, all at once.
        x * cos + swap_pairs(x) * sin
        // ANCHOR_END: learn_rope_forward
    }
}
// ANCHOR_END: rope

// ANCHOR: rope_at
impl<M: Dimension, K: Dimension> Rope<M, K> {
    /// RoPE at given positions, CS336's `forward(x, token_positions)`: `x` (b, h, s, k), row
    /// `(b, s)` at position `positions[b, s]` (ids as f32, each below `max_seq_len`: a larger
    /// one picks no row at all, so callers check, as [`run_rope_at`] does). The table rows are
    /// gathered like chapter 1's embedding: a one-hot matrix times the table.
    pub fn forward_at<B: Dimension, H: Dimension, S: Dimension>(
        &self,
        x: GraphTensor<(B, H, S, K)>,
        positions: GraphTensor<(B, S)>,
    ) -> GraphTensor<(B, H, S, K)> {
        // ANCHOR: learn_rope_forward_at ch04: cos, sin rows picked by one_hot(positions) (b, s, max_seq) matmul table -> (b, s, k), expanded along heads; x * cos + swap_pairs(x) * sin
        let pick = one_hot::<B, S, M>(positions); // (b, s, max_seq)
        let cos = pick.matmul(self.cos).expand::<(B, H, S, K), Axis<1>>(); // (b, h, s, k)
        let sin = pick.matmul(self.sin).expand::<(B, H, S, K), Axis<1>>(); // (b, h, s, k)
        x * cos + swap_pairs(x) * sin
        // ANCHOR_END: learn_rope_forward_at
    }
}
// ANCHOR_END: rope_at

/// Run [`Rope::forward_at`] on `x` (batch, heads, seq, d_head) with `positions` (batch, seq).
pub fn run_rope_at(
    x: &[f32],
    shape: [usize; 4],
    positions: &[usize],
    max_seq_len: usize,
    theta: f32,
    device: Device,
) -> Result<HostTensor> {
    let [b, _, s, _] = shape;
    if positions.len() != b * s {
        return Err(CourseError::Shape {
            what: "RoPE positions".into(),
            expected: format!("(batch, seq) = ({b}, {s})"),
            got: vec![positions.len()],
        });
    }
    if let Some(&p) = positions.iter().find(|&&p| p >= max_seq_len) {
        return Err(CourseError::OutOfRange {
            what: format!("position {p}"),
            problem: format!("RoPE tables only cover max_seq_len = {max_seq_len} positions"),
        });
    }
    let mut cx = Graph::new();
    let mut rope = Rope::<MaxSeq, DHead>::new(&mut cx, max_seq_len, shape[3], theta)?;
    let mut xt = tensor::input::<(Batch, Heads, Seq, DHead)>(&mut cx, "x");
    let mut pt = tensor::input::<(Batch, Seq)>(&mut cx, "positions");
    let mut y = rope.forward_at(xt, pt).retrieve();
    device.compile(&mut cx, (&mut rope, &mut xt, &mut pt, &mut y));
    tensor::set(xt, &shape, x.to_vec())?;
    tensor::set(pt, &[b, s], positions.iter().map(|&p| p as f32).collect())?;
    tensor::execute(&mut cx)?;
    tensor::read(y)
}

/// Run RoPE on `x` (batch, heads, seq, d_head), positions `0 .. seq`.
pub fn run_rope(
    x: &[f32],
    shape: [usize; 4],
    max_seq_len: usize,
    theta: f32,
    device: Device,
) -> Result<HostTensor> {
    if shape[2] > max_seq_len {
        return Err(CourseError::OutOfRange {
            what: format!("a sequence of {} positions", shape[2]),
            problem: format!("RoPE tables only cover max_seq_len = {max_seq_len} positions"),
        });
    }
    let mut cx = Graph::new();
    let mut rope = Rope::<MaxSeq, DHead>::new(&mut cx, max_seq_len, shape[3], theta)?;
    let mut xt = tensor::input::<(Batch, Heads, Seq, DHead)>(&mut cx, "x");
    let mut y = rope.forward(xt).retrieve();
    device.compile(&mut cx, (&mut rope, &mut xt, &mut y));
    tensor::set(xt, &shape, x.to_vec())?;
    tensor::execute(&mut cx)?;
    tensor::read(y)
}

/// This chapter in a few lines, for the tour.
pub fn rope_demo() -> Result<String> {
    // One head of width 2, the vector (1, 0) at positions 0..4: pair 0 turns 1 radian a step.
    let y = run_rope(
        &[1.0, 0.0].repeat(4),
        [1, 1, 4, 2],
        8,
        ROPE_THETA,
        Device::Cpu,
    )?;
    let rows: Vec<String> = y
        .data
        .chunks(2)
        .enumerate()
        .map(|(p, v)| format!("pos {p}: ({:+.3}, {:+.3})", v[0], v[1]))
        .collect();
    Ok(format!(
        "(1, 0) rotated by RoPE at positions 0..4 (1 radian per step):\n  {}",
        rows.join("\n  ")
    ))
}

#[cfg(test)]
mod tests;
