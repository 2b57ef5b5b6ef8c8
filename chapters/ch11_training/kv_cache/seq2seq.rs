//! The encoder-decoder with a KV cache. The source is encoded once, and each decoder layer's
//! cross-attention keys and values are computed once from it (they depend on the source only);
//! the decoder's self-attention is cached as the LM's is. Every option of chapter 6's
//! configuration works: pre- or post-norm, RoPE (in cross-attention too) or sinusoidal positions.

use luminal::prelude::*;

use super::{attend_cached, heads, merge, Cache, KvCaches};
use crate::backend::Device;
use crate::ch01_linear::one_hot;
use crate::ch04_rope::{sinusoidal_table, Positions};
use crate::ch05_attention::{scaled_dot_product_attention, MultiHeadAttention};
use crate::ch06_transformer::{DecoderBlock, NormPosition, Seq2Seq, Seq2SeqConfig};
use crate::ch11_training::generate::Sampling;
use crate::graph::dims::{Batch, DHead, DModel, Heads, MaxSeq, Seq, SrcSeq, Vocab};
use crate::graph::error::{CourseError, Result};
use crate::graph::init::CourseRng;
use crate::graph::params::{self, Param, Parameters, StateDict};
use crate::graph::tensor;

/// One decoder layer's cross-attention keys or values, (batch, heads, t, d_head).
type CrossKv = GraphTensor<(Batch, Heads, SrcSeq, DHead)>;

// ANCHOR: attend_memory
/// Cross-attention of one new token `x` (b, 1, d) at `position` (b, 1) over keys and values
/// computed once from the encoder's output; `keep` (b, t) masks source padding.
fn attend_memory(
    attn: &MultiHeadAttention<DModel>,
    x: GraphTensor<(Batch, Seq, DModel)>,
    position: GraphTensor<(Batch, Seq)>,
    [k, v]: [CrossKv; 2],
    keep: GraphTensor<(Batch, SrcSeq)>,
) -> GraphTensor<(Batch, Seq, DModel)> {
    let mut q = heads(attn.q_proj.forward(x)); // (b, h, 1, d_head)
    if let Some(rope) = attn.rope {
        q = rope.forward_at(q, position); // cross-attention RoPE: the target position
    }
    let allowed = keep.expand::<(Batch, Heads, Seq, SrcSeq), Axes2<1, 2>>(); // (b, h, 1, t)
    merge(
        attn,
        scaled_dot_product_attention(q, k, v, allowed, attn.d_model / attn.n_heads),
    )
}

/// Chapter 6's decoder block for one new token.
fn decoder_block_cached(
    block: &DecoderBlock,
    x: GraphTensor<(Batch, Seq, DModel)>,
    position: GraphTensor<(Batch, Seq)>,
    (cache, cross, keep): ([Cache; 2], [CrossKv; 2], GraphTensor<(Batch, SrcSeq)>),
) -> (GraphTensor<(Batch, Seq, DModel)>, [Cache; 2]) {
    let (ln1, ln2, ln3) = (block.ln1, block.ln2, block.ln3);
    match block.norm_position {
        NormPosition::Pre => {
            let (att, cache) = attend_cached(&block.self_attn, ln1.forward(x), position, cache);
            let h = x + att; // (b, 1, d)
            let h = h + attend_memory(&block.cross_attn, ln2.forward(h), position, cross, keep);
            (h + block.ffn.forward(ln3.forward(h)), cache)
        }
        NormPosition::Post => {
            let (att, cache) = attend_cached(&block.self_attn, x, position, cache);
            let h = ln1.forward(x + att); // (b, 1, d)
            let h = ln2.forward(h + attend_memory(&block.cross_attn, h, position, cross, keep));
            (ln3.forward(h + block.ffn.forward(h)), cache)
        }
    }
}
// ANCHOR_END: attend_memory

/// The encoder's graph: the source in, each decoder layer's cross-attention keys and values out.
struct Encoder {
    cx: Box<Graph>,
    model: Seq2Seq,
    src: GraphTensor<(Batch, SrcSeq)>,
    keep: GraphTensor<(Batch, SrcSeq)>,
    /// Per decoder layer: [k, v], materialised as (b, h, t, d_head).
    cross: Vec<CrossKv>,
    params: Vec<Param>,
}

impl Encoder {
    fn new(config: &Seq2SeqConfig, device: Device) -> Result<Self> {
        let mut cx = Box::new(Graph::new());
        let mut model = Seq2Seq::new(&mut cx, config)?;
        let mut params = model.params();
        let mut src = tensor::input::<(Batch, SrcSeq)>(&mut cx, "src");
        let mut keep = tensor::input::<(Batch, SrcSeq)>(&mut cx, "src_keep");
        let memory = model.encode(src, keep); // (b, t, d)
        let mut cross = Vec::new();
        for layer in &model.decoder {
            let attn = layer.cross_attn;
            let mut k = heads(attn.k_proj.forward(memory)); // (b, h, t, d_head)
            if let Some(rope) = attn.rope {
                k = rope.forward(k); // source positions 0..t, as chapter 5's attend does
            }
            let v = heads(attn.v_proj.forward(memory)); // (b, h, t, d_head)
            cross.extend([k, v].map(|t| t.contiguous().retrieve()));
        }
        device.compile(
            &mut cx,
            (&mut model, &mut params, (&mut src, &mut keep), &mut cross),
        );
        Ok(Self {
            cx,
            model,
            src,
            keep,
            cross,
            params,
        })
    }

    /// Encode `src` (b, t): each decoder layer's [k, v] as host data, (b, h, t, d_head) each.
    fn run(&mut self, src: &[u32], [b, t]: [usize; 2]) -> Result<Vec<Vec<f32>>> {
        for c in &self.cross {
            self.cx.tensors.remove(&(c.id, 0)); // else execute() keeps the last source's
        }
        self.model.set_ids(self.src, [b, t], src)?;
        tensor::set(self.keep, &[b, t], vec![1.0; b * t])?;
        tensor::execute(&mut self.cx)?;
        self.cross
            .iter()
            .map(|&c| tensor::read(c).map(|h| h.data))
            .collect()
    }
}

/// The encoder-decoder compiled for one decoder token per run, with the self-attention cache
/// held in the graph and the cross-attention keys and values computed once per source.
/// Same tokens as [`Generator::generate_seq2seq`](crate::ch11_training::Generator::generate_seq2seq).
pub struct CachedSeq2Seq {
    encoder: Encoder,
    cx: Box<Graph>,
    model: Seq2Seq,
    id: GraphTensor<(Batch, Seq)>,
    position: GraphTensor<(Batch, Seq)>,
    keep: GraphTensor<(Batch, SrcSeq)>,
    cross: Vec<CrossKv>,
    kv: KvCaches,
    logits: GraphTensor<(Batch, Seq, Vocab)>,
    params: Vec<Param>,
    config: Seq2SeqConfig,
}

impl CachedSeq2Seq {
    /// Build the encoder's graph and the one-token decoder graph of `config` for `device`.
    pub fn new(config: &Seq2SeqConfig, device: Device) -> Result<Self> {
        let encoder = Encoder::new(config, device)?;
        let mut cx = Box::new(Graph::new());
        let mut model = Seq2Seq::new(&mut cx, config)?;
        tensor::bind_dim::<MaxSeq>(&mut cx, config.context_length, "the decoder's cache")?;
        let mut params = model.params();
        let mut id = tensor::input::<(Batch, Seq)>(&mut cx, "id");
        let mut position = tensor::input::<(Batch, Seq)>(&mut cx, "position");
        let mut keep = tensor::input::<(Batch, SrcSeq)>(&mut cx, "src_keep");
        let mut x = model.token_embeddings.forward(id); // (b, 1, d)
        if config.positions == Positions::Sinusoidal {
            let table = sinusoidal_table::<MaxSeq, DModel>(&mut cx, config.d_model); // (ctx, d)
            x += one_hot::<Batch, Seq, MaxSeq>(position).matmul(table); // row `position`
        }
        let (mut kv, mut cross) = (KvCaches::new(config.context_length), Vec::new());
        for (i, layer) in model.decoder.iter().enumerate() {
            let name = |what: &str| format!("decoder.{i}.{what}");
            let cache = [name("cache_k"), name("cache_v")].map(|n| tensor::input(&mut cx, &n));
            let memory = [name("cross_k"), name("cross_v")].map(|n| tensor::input(&mut cx, &n));
            let (y, next) = decoder_block_cached(layer, x, position, (cache, memory, keep));
            x = y;
            kv.push(cache, next);
            cross.extend(memory);
        }
        let mut logits = model
            .lm_head
            .forward(model.decoder_norm.forward(x))
            .retrieve();
        device.compile(
            &mut cx,
            (
                (&mut model, &mut params),
                (&mut id, &mut position, &mut keep, &mut logits),
                (&mut kv, &mut cross),
            ),
        );
        Ok(Self {
            encoder,
            cx,
            model,
            id,
            position,
            keep,
            cross,
            kv,
            logits,
            params,
            config: config.clone(),
        })
    }

    /// Load the weights into both graphs; every parameter must be present.
    pub fn load(&mut self, weights: &StateDict) -> Result<()> {
        params::load_state_dict(&mut self.encoder.cx, &self.encoder.params, weights)?;
        params::load_state_dict(&mut self.cx, &self.params, weights)
    }

    /// Run one token per row (`ids`, b of them) at the next position: logits (b rows of vocab).
    pub(super) fn step(&mut self, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        let b = ids.len();
        self.kv.check_room("decoder position")?;
        self.cx.tensors.remove(&(self.logits.id, 0)); // else execute() keeps the old logits
        self.model.set_ids(self.id, [b, 1], ids)?;
        tensor::set(self.position, &[b, 1], vec![self.kv.filled as f32; b])?;
        self.kv.run(&mut self.cx)?;
        let v = self.config.vocab_size;
        let all = tensor::read(self.logits)?.data; // (b, 1, vocab)
        Ok(all.chunks(v).map(<[f32]>::to_vec).collect())
    }

    // ANCHOR: generate_seq2seq_cached
    /// For each row of `src` (batch, t), decode `len` tokens after `start`: encode once, then
    /// one cached decoder step per token.
    pub fn generate(
        &mut self,
        src: &[u32],
        batch: usize,
        start: u32,
        len: usize,
        sampling: &Sampling,
        rng: &mut CourseRng,
    ) -> Result<Vec<u32>> {
        sampling.validate()?;
        self.begin(src, batch)?;
        let mut rows: Vec<Vec<u32>> = vec![vec![start]; batch];
        for _ in 0..len {
            let last: Vec<u32> = rows.iter().map(|r| r[r.len() - 1]).collect();
            let logits = self.step(&last)?;
            for (row, l) in rows.iter_mut().zip(&logits) {
                row.push(sampling.sample(l, rng)?);
            }
        }
        Ok(rows.into_iter().flat_map(|r| r[1..].to_vec()).collect())
    }
    // ANCHOR_END: generate_seq2seq_cached

    /// Encode `src` (batch rows) into the cross-attention inputs and empty the caches.
    pub(super) fn begin(&mut self, src: &[u32], batch: usize) -> Result<()> {
        if batch == 0 || src.len() % batch != 0 {
            return Err(CourseError::Config(format!(
                "{} source ids do not split into {batch} rows",
                src.len()
            )));
        }
        let t = src.len() / batch;
        let c = &self.config;
        let (h, d_head) = (c.n_heads, c.d_model / c.n_heads);
        for (input, data) in self.cross.iter().zip(self.encoder.run(src, [batch, t])?) {
            tensor::set(*input, &[batch, h, t, d_head], data)?; // once per source
        }
        tensor::set(self.keep, &[batch, t], vec![1.0; batch * t])?;
        self.kv.reset([batch, h, c.context_length, d_head])
    }
}
