//! Generation with a KV cache: one new token per graph run, the keys and values of the
//! earlier positions kept in the graph between runs.
//!
//! [`Generator`](super::Generator) re-runs the whole window for every new token, so a token at
//! position `p` costs `p` positions of work and `n` tokens cost O(n^2). But a position's key and
//! value never change once computed (attention is causal, and RoPE rotates by the position the
//! token sits at), so they can be stored: the new token's query attends over the stored keys
//! plus its own, and each token costs one position of work plus one attention row.
//! Book page: [Chapter 11.3](../../../book/ch11_generation.html#a-kv-cache).

use luminal::prelude::*;

use crate::ch11_training::generate::Sampling;

mod seq2seq;
use crate::backend::Device;
use crate::ch01_linear::one_hot;
use crate::ch05_attention::multi_head::heads;
use crate::ch05_attention::{scaled_dot_product_attention, MultiHeadAttention};
use crate::ch06_transformer::{Block, NormPosition, TransformerConfig, TransformerLm};
use crate::graph::dims::{Batch, DHead, DModel, Heads, MaxSeq, Seq, Vocab};
use crate::graph::error::{CourseError, Result};
use crate::graph::init::CourseRng;
use crate::graph::params::{self, Param, Parameters, StateDict};
use crate::graph::tensor;
pub use seq2seq::CachedSeq2Seq;

/// One layer's cache, (batch, heads, context, d_head): row `j` holds position `j`'s key/value.
type Cache = GraphTensor<(Batch, Heads, MaxSeq, DHead)>;

/// Every layer's self-attention cache, held in the graph between runs: the cache inputs (k and
/// v per layer), the outputs that become them after a run, and how many positions are filled.
/// [`CachedGenerator`] and [`CachedSeq2Seq`] share it.
struct KvCaches {
    inputs: Vec<Cache>,
    next: Vec<Cache>,
    filled: usize,
    context_length: usize,
}

impl KvCaches {
    fn new(context_length: usize) -> Self {
        Self {
            inputs: Vec::new(),
            next: Vec::new(),
            filled: 0,
            context_length,
        }
    }

    /// Add one layer: its cache inputs `[k, v]` and the written caches that replace them.
    fn push(&mut self, cache: [Cache; 2], next: [Cache; 2]) {
        self.inputs.extend(cache);
        self.next.extend(next.map(|c| c.keep()));
    }

    /// Empty every cache (zeros of `shape`; rows past `filled` are masked out anyway).
    fn reset(&mut self, shape: [usize; 4]) -> Result<()> {
        for &cache in &self.inputs {
            tensor::set(cache, &shape, vec![0.0; shape.iter().product()])?;
        }
        self.filled = 0;
        Ok(())
    }

    /// Refuse a run when every row is filled (`what`: the position's name in the error).
    fn check_room(&self, what: &str) -> Result<()> {
        if self.filled == self.context_length {
            return Err(CourseError::OutOfRange {
                what: format!("{what} {}", self.filled),
                problem: format!("the cache holds context_length = {}", self.filled),
            });
        }
        Ok(())
    }

    /// Execute `cx` for the next position (its inputs fed), then move the written caches into
    /// the cache inputs of the next run (moved, not copied).
    fn run(&mut self, cx: &mut Graph) -> Result<()> {
        tensor::execute(cx)?;
        transfer_data_same_graph(
            self.next.iter().map(|c| c.id).collect::<Vec<_>>(),
            self.inputs.iter().map(|c| c.id).collect::<Vec<_>>(),
            cx,
        );
        self.filled += 1;
        Ok(())
    }
}

impl ToIdsMut for KvCaches {
    fn to_ids_mut(&mut self) -> Vec<&mut NodeIndex> {
        (self.inputs.iter_mut().chain(self.next.iter_mut()))
            .map(|c| &mut c.id)
            .collect()
    }
}

// ANCHOR: attend_cached
/// Self-attention of ONE new token `x` (b, 1, d) at `position` (b, 1) over the cached keys and
/// values of positions `0..position` and its own. Returns the output (b, 1, d) and the caches
/// with row `position` written: the next run's caches.
fn attend_cached(
    attn: &MultiHeadAttention<DModel>,
    x: GraphTensor<(Batch, Seq, DModel)>,
    position: GraphTensor<(Batch, Seq)>,
    [cache_k, cache_v]: [Cache; 2],
) -> (GraphTensor<(Batch, Seq, DModel)>, [Cache; 2]) {
    let (mut q, mut k) = (heads(attn.q_proj.forward(x)), heads(attn.k_proj.forward(x)));
    if let Some(rope) = attn.rope {
        q = rope.forward_at(q, position); // (b, h, 1, d_head), rotated by its position
        k = rope.forward_at(k, position); // (b, h, 1, d_head)
    }
    let v = heads(attn.v_proj.forward(x)); // (b, h, 1, d_head)

    // Write row `position`: a one-hot over the cache rows picks where the new row goes.
    let slot = one_hot::<Batch, Seq, MaxSeq>(position)
        .reshape::<(Batch, MaxSeq)>() // (b, context): s = 1
        .expand::<(Batch, Heads, MaxSeq, DHead), Axes2<1, 3>>(); // (b, h, context, d_head)
    let write = |cache: Cache, row: GraphTensor<(Batch, Heads, Seq, DHead)>| -> Cache {
        let row = (row.contiguous())
            .reshape::<(Batch, Heads, DHead)>() // (b, h, d_head): s = 1
            .expand::<(Batch, Heads, MaxSeq, DHead), Axis<2>>(); // the row on every slot
        cache * (slot * -1.0 + 1.0) + row * slot
    };
    let (new_k, new_v) = (write(cache_k, k), write(cache_v, v));
    // Key j is visible to the new query iff j <= position: the filled rows, its own included.
    let keys =
        (x.graph().arange::<MaxSeq>()).expand::<(Batch, Heads, Seq, MaxSeq), Axes3<0, 1, 2>>(); // key index j
    let allowed = keys.less_than(
        (position + 0.5).expand::<(Batch, Heads, Seq, MaxSeq), Axes2<1, 3>>(), // j < p + 1/2
    );
    let att = scaled_dot_product_attention(q, new_k, new_v, allowed, attn.d_model / attn.n_heads);
    (merge(attn, att), [new_k, new_v])
}

/// The heads' outputs (b, h, 1, d_head) side by side, through the output projection: (b, 1, d).
fn merge(
    attn: &MultiHeadAttention<DModel>,
    att: GraphTensor<(Batch, Heads, Seq, DHead)>,
) -> GraphTensor<(Batch, Seq, DModel)> {
    let merged = att
        .permute::<(Batch, Seq, Heads, DHead), Axes4<0, 2, 1, 3>>() // (b, 1, h, d_head)
        .reshape::<(Batch, Seq, DModel)>(); // (b, 1, d)
    attn.output_proj.forward(merged)
}

/// Chapter 6's block for one new token, attention reading and writing the cache.
fn block_cached(
    block: &Block,
    x: GraphTensor<(Batch, Seq, DModel)>,
    position: GraphTensor<(Batch, Seq)>,
    cache: [Cache; 2],
) -> (GraphTensor<(Batch, Seq, DModel)>, [Cache; 2]) {
    match block.norm_position {
        NormPosition::Pre => {
            let (att, cache) = attend_cached(&block.attn, block.ln1.forward(x), position, cache);
            let h = x + att; // (b, 1, d)
            (h + block.ffn.forward(block.ln2.forward(h)), cache)
        }
        NormPosition::Post => {
            let (att, cache) = attend_cached(&block.attn, x, position, cache);
            let h = block.ln1.forward(x + att); // (b, 1, d)
            (block.ln2.forward(h + block.ffn.forward(h)), cache)
        }
    }
}
// ANCHOR_END: attend_cached

/// A decoder-only LM compiled for one token per run, with a KV cache per layer held in the
/// graph. Same interface and same tokens as [`Generator::generate`](super::Generator::generate)
/// (within float rounding of the logits), in linear instead of quadratic time.
pub struct CachedGenerator {
    cx: Box<Graph>,
    model: TransformerLm,
    id: GraphTensor<(Batch, Seq)>,
    position: GraphTensor<(Batch, Seq)>,
    logits: GraphTensor<(Batch, Seq, Vocab)>,
    /// Per layer: the cache inputs [k, v] and the outputs that become them after a run.
    kv: KvCaches,
    params: Vec<Param>,
    config: TransformerConfig,
}

impl CachedGenerator {
    /// Build the one-token graph of the LM `config` and compile it for `device`.
    pub fn new(config: &TransformerConfig, device: Device) -> Result<Self> {
        config.validate()?;
        let mut cx = Box::new(Graph::new());
        let mut model = TransformerLm::new(&mut cx, config)?;
        let mut params = model.params();
        let mut id = tensor::input::<(Batch, Seq)>(&mut cx, "id");
        let mut position = tensor::input::<(Batch, Seq)>(&mut cx, "position");
        let mut kv = KvCaches::new(config.context_length);
        let mut x = model.token_embeddings.forward(id); // (1, 1, d)
        for (i, layer) in model.layers.iter().enumerate() {
            let cache = [
                tensor::input(&mut cx, &format!("cache.{i}.k")),
                tensor::input(&mut cx, &format!("cache.{i}.v")),
            ];
            let (y, next) = block_cached(layer, x, position, cache);
            x = y;
            kv.push(cache, next);
        }
        let mut logits = model.lm_head.forward(model.ln_final.forward(x)).retrieve();
        device.compile(
            &mut cx,
            (
                &mut model,
                &mut params,
                (&mut id, &mut position, &mut logits),
                &mut kv,
            ),
        );
        Ok(Self {
            cx,
            model,
            id,
            position,
            logits,
            kv,
            params,
            config: config.clone(),
        })
    }

    /// Load the weights to generate with; every parameter must be present.
    pub fn load(&mut self, weights: &StateDict) -> Result<()> {
        params::load_state_dict(&mut self.cx, &self.params, weights)
    }

    /// Empty every layer's cache.
    fn reset(&mut self) -> Result<()> {
        let c = &self.config;
        self.kv
            .reset([1, c.n_heads, c.context_length, c.d_model / c.n_heads])
    }

    /// Run token `id` at the next free position: its logits (vocab), and its key and value
    /// rows now in the cache.
    fn step(&mut self, id: u32) -> Result<Vec<f32>> {
        self.kv.check_room("position")?;
        self.cx.tensors.remove(&(self.logits.id, 0)); // else execute() keeps the old logits
        self.model.set_ids(self.id, [1, 1], &[id])?;
        tensor::set(self.position, &[1, 1], vec![self.kv.filled as f32])?;
        self.kv.run(&mut self.cx)?;
        Ok(tensor::read(self.logits)?.data)
    }

    /// Fill the cache with `window` from position 0: the logits of its last token.
    fn prefill(&mut self, window: &[u32]) -> Result<Vec<f32>> {
        self.reset()?;
        let mut logits = Vec::new();
        for &id in window {
            logits = self.step(id)?;
        }
        Ok(logits)
    }

    // ANCHOR: generate_cached
    /// Continue `prompt` by up to `max_new` tokens, as [`Generator::generate`](
    /// super::Generator::generate) does. Within the context each token is one cached step;
    /// once the sequence outgrows the context, the window slides and every cached row would
    /// have to change (its position does, and so do the layers above the first), so the cache
    /// is refilled from the window for each token.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        stop: Option<u32>,
        sampling: &Sampling,
        rng: &mut CourseRng,
    ) -> Result<Vec<u32>> {
        sampling.validate()?;
        if prompt.is_empty() {
            return Err(CourseError::Config(
                "generation needs a prompt of at least one token".into(),
            ));
        }
        let context = self.config.context_length;
        let mut seq = prompt.to_vec();
        let mut logits = self.prefill(&seq[seq.len().saturating_sub(context)..])?;
        for _ in 0..max_new {
            let next = sampling.sample(&logits, rng)?;
            seq.push(next);
            if Some(next) == stop || seq.len() == prompt.len() + max_new {
                break;
            }
            logits = if self.kv.filled < context {
                self.step(next)? // one position of work
            } else {
                self.prefill(&seq[seq.len() - context..])? // the window slid
            };
        }
        Ok(seq[prompt.len()..].to_vec())
    }
    // ANCHOR_END: generate_cached
}

#[cfg(test)]
mod tests;
