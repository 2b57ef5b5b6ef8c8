//! # Chapter 1 — Linear and embedding
//!
//! The two layers that hold most of a language model's parameters. `Linear` maps a vector of
//! `in` features to `out` features, `y = x W^T` with `W` of shape (out, in) and no bias (the
//! PyTorch / CS336 layout, so PyTorch weights load unchanged). `Embedding` looks up row `id`
//! of a (vocab, d_model) table; we build the lookup as a one-hot matrix product so that it
//! has a gradient in chapter 8.
//!
//! Book page: [Chapter 1](../../book/ch01_linear.html).

use luminal::prelude::*;

use crate::backend::Device;
use crate::graph::dims::{Batch, DModel, In, Out, Rows, Seq, Vocab};
use crate::graph::error::{CourseError, Result};
use crate::graph::init::{trunc_normal, CourseRng};
use crate::graph::params::{self, Parameters, Visitor};
use crate::graph::tensor::{self, HostTensor};

// ANCHOR: linear_ref
/// `y = x W^T` as loops: `x` (n, d_in), `w` (d_out, d_in) -> `y` (n, d_out).
pub fn linear_ref(x: &[f32], w: &[f32], n: usize, d_in: usize, d_out: usize) -> Vec<f32> {
    // ANCHOR: learn_linear_ref ch01: y[i, o] = sum_k x[i, k] * w[o, k]; x (n, d_in), w (d_out, d_in) row-major -> y (n, d_out)
    let mut y = vec![0.0; n * d_out];
    for i in 0..n {
        for o in 0..d_out {
            // Row o of W holds the weights of output feature o.
            y[i * d_out + o] = (0..d_in).map(|k| x[i * d_in + k] * w[o * d_in + k]).sum();
        }
    }
    y
    // ANCHOR_END: learn_linear_ref
}
// ANCHOR_END: linear_ref

// ANCHOR: embedding_ref
/// Row lookup: `ids` (n,) into `table` (vocab, d) -> (n, d).
pub fn embedding_ref(ids: &[u32], table: &[f32], d: usize) -> Vec<f32> {
    // ANCHOR: learn_embedding_ref ch01: row ids[i] of table (vocab, d), for each id in order -> (n, d)
    ids.iter()
        .flat_map(|&id| {
            table[id as usize * d..(id as usize + 1) * d]
                .iter()
                .copied()
        })
        .collect()
    // ANCHOR_END: learn_embedding_ref
}
// ANCHOR_END: embedding_ref

// ANCHOR: linear
/// A linear layer without bias: `y = x W^T`, weight of shape (out, in).
///
/// `I` and `O` are the (symbolic) dimensions of the input and output features, so the Rust
/// compiler rejects feeding it a tensor whose last dimension is anything else.
#[derive(Clone, Copy)]
pub struct Linear<I: Dimension, O: Dimension> {
    /// Weight (out_features, in_features), a graph input kept across executions.
    pub weight: GraphTensor<(O, I)>,
    /// Number of input features (the size of `I`).
    pub in_features: usize,
    /// Number of output features (the size of `O`).
    pub out_features: usize,
}

impl<I: Dimension, O: Dimension> Linear<I, O> {
    /// Add the layer's weight to `cx` as an input, and bind `I`, `O` to the sizes. Its
    /// state-dict name (`weight`, nested by the modules that hold it) comes from
    /// [`Parameters::visit`].
    pub fn new(cx: &mut Graph, in_features: usize, out_features: usize) -> Result<Self> {
        let what = format!("Linear({in_features} -> {out_features})");
        tensor::bind_dim::<I>(cx, in_features, &what)?;
        tensor::bind_dim::<O>(cx, out_features, &what)?;
        let weight = tensor::input(cx, "weight");
        Ok(Self {
            weight,
            in_features,
            out_features,
        })
    }

    /// The init scale of the CS336 conventions (book chapter 1): sigma = sqrt(2 / (in + out)).
    pub fn init_sigma(&self) -> f32 {
        // ANCHOR: learn_init_sigma ch01: sigma = sqrt(2 / (in_features + out_features))
        (2.0 / (self.in_features + self.out_features) as f32).sqrt()
        // ANCHOR_END: learn_init_sigma
    }

    /// Fill the weight from N(0, sigma^2) truncated at +-3 sigma.
    pub fn init(&self, rng: &mut CourseRng) -> Result<()> {
        let n = self.in_features * self.out_features;
        self.load(trunc_normal(rng, n, self.init_sigma()))
    }

    /// Load a row-major (out, in) weight, e.g. from a PyTorch state dict.
    pub fn load(&self, weight: Vec<f32>) -> Result<()> {
        tensor::set_fixed(self.weight, &[self.out_features, self.in_features], weight)
    }
}

/// `(n, in) -> (n, out)`.
impl<N: Dimension, I: Dimension, O: Dimension> Module<GraphTensor<(N, I)>> for Linear<I, O> {
    type Output = GraphTensor<(N, O)>;
    fn forward(&self, x: GraphTensor<(N, I)>) -> Self::Output {
        // ANCHOR: learn_linear_forward_2d ch01: x W^T as a matmul with a permuted (transposed) view of self.weight: (n, in) -> (n, out)
        // W^T is a view of W: no copy.
        x.matmul(self.weight.permute::<(I, O), _>())
        // ANCHOR_END: learn_linear_forward_2d
    }
}

/// `(batch, seq, in) -> (batch, seq, out)`: the same weight for every position.
impl<B: Dimension, S: Dimension, I: Dimension, O: Dimension> Module<GraphTensor<(B, S, I)>>
    for Linear<I, O>
{
    type Output = GraphTensor<(B, S, O)>;
    fn forward(&self, x: GraphTensor<(B, S, I)>) -> Self::Output {
        // ANCHOR: learn_linear_forward_3d ch01: the same x W^T for (batch, seq, in) -> (batch, seq, out): one weight for every position
        x.matmul(self.weight.permute::<(I, O), _>())
        // ANCHOR_END: learn_linear_forward_3d
    }
}
// ANCHOR_END: linear

// ANCHOR: one_hot
/// One-hot rows from ids stored as floats: `(batch, seq) -> (batch, seq, vocab)`.
///
/// `onehot[b, s, v] = 1` iff `v - 0.5 < id < v + 0.5`. Two `LessThan`s instead of an
/// equality: luminal 0.2.0's CPU `Equal` computes less-than, and its gather passes rewrite
/// (and then crash on) any arange-equals-multiply-sum chain.
pub fn one_hot<B: Dimension, S: Dimension, V: Dimension>(
    ids: GraphTensor<(B, S)>,
) -> GraphTensor<(B, S, V)> {
    // ANCHOR: learn_one_hot ch01: 1 where v - 0.5 < id < v + 0.5 for class v: arange::<V>() expanded to (b, s, v), ids expanded along axis 2, two less_than
    let classes = ids.graph().arange::<V>().expand::<(B, S, V), Axes2<0, 1>>();
    let ids = ids.expand::<(B, S, V), Axis<2>>();
    (classes - 0.5).less_than(ids) * ids.less_than(classes + 0.5)
    // ANCHOR_END: learn_one_hot
}
// ANCHOR_END: one_hot

// ANCHOR: embedding
/// A token embedding table of shape (vocab, d_model).
#[derive(Clone, Copy)]
pub struct Embedding<V: Dimension = Vocab, D: Dimension = DModel> {
    /// (vocab, d_model) table: row `id` is the embedding of token `id`.
    pub weight: GraphTensor<(V, D)>,
    /// Number of tokens in the vocabulary (rows of the table).
    pub vocab_size: usize,
    /// Embedding width (columns of the table).
    pub d_model: usize,
}

impl<V: Dimension, D: Dimension> Embedding<V, D> {
    /// Add the table to `cx` as an input, and bind `V`, `D` to the sizes.
    pub fn new(cx: &mut Graph, vocab_size: usize, d_model: usize) -> Result<Self> {
        let what = format!("Embedding({vocab_size} x {d_model})");
        tensor::bind_dim::<V>(cx, vocab_size, &what)?;
        tensor::bind_dim::<D>(cx, d_model, &what)?;
        let weight = tensor::input(cx, "weight");
        Ok(Self {
            weight,
            vocab_size,
            d_model,
        })
    }

    /// Fill the table from N(0, 1) truncated at +-3 (CS336; book chapter 1).
    pub fn init(&self, rng: &mut CourseRng) -> Result<()> {
        self.load(trunc_normal(rng, self.vocab_size * self.d_model, 1.0))
    }

    /// Load a row-major (vocab, d_model) table.
    pub fn load(&self, weight: Vec<f32>) -> Result<()> {
        tensor::set_fixed(self.weight, &[self.vocab_size, self.d_model], weight)
    }

    /// Feed token ids (batch, seq) into `ids`, refusing any id outside the vocabulary
    /// (an out-of-range id would silently give a row of zeros).
    pub fn set_ids<B: Dimension, S: Dimension>(
        &self,
        ids: GraphTensor<(B, S)>,
        shape: [usize; 2],
        values: &[u32],
    ) -> Result<()> {
        if let Some((pos, &bad)) = values
            .iter()
            .enumerate()
            .find(|(_, &id)| id as usize >= self.vocab_size)
        {
            return Err(CourseError::OutOfRange {
                what: format!("token id {bad} at position {pos}"),
                problem: format!(
                    "the vocabulary has {} tokens (ids 0..{})",
                    self.vocab_size, self.vocab_size
                ),
            });
        }
        tensor::set(ids, &shape, values.iter().map(|&id| id as f32).collect())
    }
}

/// `(batch, seq)` ids -> `(batch, seq, d_model)`: one-hot rows times the table.
impl<B: Dimension, S: Dimension, V: Dimension, D: Dimension> Module<GraphTensor<(B, S)>>
    for Embedding<V, D>
{
    type Output = GraphTensor<(B, S, D)>;
    fn forward(&self, ids: GraphTensor<(B, S)>) -> Self::Output {
        // ANCHOR: learn_embedding_forward ch01: one_hot::<B, S, V>(ids) (b, s, vocab) times the table (vocab, d) -> (b, s, d)
        one_hot::<B, S, V>(ids).matmul(self.weight)
        // ANCHOR_END: learn_embedding_forward
    }
}
// ANCHOR_END: embedding

/// Run a standalone linear layer: `x` (n, d_in), `w` (d_out, d_in) -> (n, d_out).
pub fn run_linear(
    x: &[f32],
    w: &[f32],
    n: usize,
    d_in: usize,
    d_out: usize,
    device: Device,
) -> Result<HostTensor> {
    let mut cx = Graph::new();
    let mut layer = Linear::<In, Out>::new(&mut cx, d_in, d_out)?;
    params::label_inputs(&mut cx, &layer, "linear");
    let mut xt = tensor::input::<(Rows, In)>(&mut cx, "x");
    let mut y = layer.forward(xt).retrieve();
    device.compile(&mut cx, (&mut layer.weight, &mut xt, &mut y));
    layer.load(w.to_vec())?;
    tensor::set(xt, &[n, d_in], x.to_vec())?;
    tensor::execute(&mut cx)?;
    tensor::read(y)
}

/// Run a standalone embedding: `ids` (batch, seq) into `table` (vocab, d) -> (batch, seq, d).
pub fn run_embedding(
    ids: &[u32],
    shape: [usize; 2],
    table: &[f32],
    vocab: usize,
    d: usize,
    device: Device,
) -> Result<HostTensor> {
    let mut cx = Graph::new();
    let mut emb = Embedding::<Vocab, DModel>::new(&mut cx, vocab, d)?;
    params::label_inputs(&mut cx, &emb, "token_embeddings");
    let mut idt = tensor::input::<(Batch, Seq)>(&mut cx, "ids");
    let mut out = emb.forward(idt).retrieve();
    device.compile(&mut cx, (&mut emb.weight, &mut idt, &mut out));
    emb.load(table.to_vec())?;
    emb.set_ids(idt, shape, ids)?;
    tensor::execute(&mut cx)?;
    tensor::read(out)
}

/// This chapter in a few lines, for `cargo run --release -- tour`.
pub fn linear_demo() -> Result<String> {
    let y = run_linear(
        &[1., 2., 3.],
        &[1., 0., 0., 0., 1., 1.],
        1,
        3,
        2,
        Device::Cpu,
    )?;
    let e = run_embedding(
        &[2, 0],
        [1, 2],
        &[0., 1., 10., 11., 20., 21.],
        3,
        2,
        Device::Cpu,
    )?;
    Ok(format!(
        "Linear: x = [1, 2, 3], W = [[1, 0, 0], [0, 1, 1]] -> x W^T = {:?}\n\
         Embedding: ids [2, 0] in table [[0, 1], [10, 11], [20, 21]] -> {:?}",
        y.data, e.data
    ))
}

// Each layer shows its weight to the parameter visitor under the local name `weight`; the
// modules that hold it add the rest of the state-dict name. `ToIdsMut` (how luminal's compile
// remaps node ids) walks the same visitor.

// ANCHOR: linear_params
impl<I: Dimension, O: Dimension> Parameters for Linear<I, O> {
    fn visit<'a>(&'a mut self, v: &mut Visitor<'a>) {
        let shape = [self.out_features, self.in_features];
        v.param("weight", &mut self.weight.id, &shape);
    }
}
// ANCHOR_END: linear_params

impl<V: Dimension, D: Dimension> Parameters for Embedding<V, D> {
    fn visit<'a>(&'a mut self, v: &mut Visitor<'a>) {
        let shape = [self.vocab_size, self.d_model];
        v.param("weight", &mut self.weight.id, &shape);
    }
}

impl<I: Dimension, O: Dimension> ToIdsMut for Linear<I, O> {
    fn to_ids_mut(&mut self) -> Vec<&mut NodeIndex> {
        self.handles()
    }
}

impl<V: Dimension, D: Dimension> ToIdsMut for Embedding<V, D> {
    fn to_ids_mut(&mut self) -> Vec<&mut NodeIndex> {
        self.handles()
    }
}

#[cfg(test)]
mod tests;
