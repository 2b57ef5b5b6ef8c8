//! The encoder-decoder transformer for sequence-to-sequence tasks (the copy task).
//!
//! The encoder reads the whole source (self-attention with a source padding mask); the decoder
//! reads the target so far (causal self-attention), looks at the encoded source
//! (cross-attention, padding masked), and predicts the next target token.
//! Book page: [Chapter 6](../../../book/ch06_transformer.html#the-encoder-decoder).

use luminal::prelude::*;

use super::{block_ref, validate_sizes, Block};
use crate::backend::Device;
use crate::ch01_linear::{embedding_ref, linear_ref, Embedding, Linear};
use crate::ch02_rmsnorm::{rms_norm_ref, RmsNorm, NORM_EPS};
use crate::ch03_feed_forward::{swiglu_ref, SwiGlu};
use crate::ch04_rope::Rope;
use crate::ch05_attention::{causal_mask, key_padding_mask, mha_ref, MultiHeadAttention};
use crate::graph::dims::{Batch, DFf, DHead, DModel, MaxSeq, Seq, SrcSeq, Vocab};
use crate::graph::error::{CourseError, Result};
use crate::graph::init::CourseRng;
use crate::graph::params::{self, Parameters, StateDict, Visitor};
use crate::graph::tensor::{self, HostTensor};

// ANCHOR: seq2seq_config
/// Everything that sizes an encoder-decoder model.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seq2SeqConfig {
    /// One vocabulary shared by source and target (and one embedding table).
    pub vocab_size: usize,
    /// The longest source or target sequence.
    pub context_length: usize,
    /// Width of the residual stream (encoder and decoder).
    pub d_model: usize,
    /// Attention heads per layer; d_model must divide by it.
    pub n_heads: usize,
    /// Number of encoder blocks.
    pub n_encoder_layers: usize,
    /// Number of decoder blocks.
    pub n_decoder_layers: usize,
    /// Hidden width of each SwiGLU feed-forward network.
    pub d_ff: usize,
    /// RoPE base, usually [`ROPE_THETA`](crate::ch04_rope::ROPE_THETA).
    pub rope_theta: f32,
    /// Use the token embedding table as the output projection too (no `lm_head.weight`).
    pub tie_embeddings: bool,
    /// Rotate queries and keys in cross-attention too (by target and source position), so
    /// that a decoder position can find "its" source position by relative offset. Off by
    /// default (a target and a source position are usually unrelated); chapter 11's copy task
    /// turns it on. No weights change.
    #[serde(default)]
    pub cross_attention_rope: bool,
}

impl Seq2SeqConfig {
    /// Sizes positive, d_model divisible by n_heads, an even head size, theta > 1.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("context_length", self.context_length),
            ("d_model", self.d_model),
            ("n_heads", self.n_heads),
            ("n_encoder_layers", self.n_encoder_layers),
            ("n_decoder_layers", self.n_decoder_layers),
            ("d_ff", self.d_ff),
        ];
        validate_sizes(&sizes, self.d_model, self.n_heads, self.rope_theta)
    }
}

// ANCHOR_END: seq2seq_config

// ANCHOR: decoder_block
/// A pre-norm decoder block: causal self-attention, cross-attention to the encoder's output,
/// feed-forward; each on a normalised copy of the residual stream.
#[derive(Clone, Copy)]
pub struct DecoderBlock {
    /// Norm before self-attention.
    pub ln1: RmsNorm<DModel>,
    /// Causal self-attention over the target, with RoPE.
    pub self_attn: MultiHeadAttention<DModel>,
    /// Norm before cross-attention.
    pub ln2: RmsNorm<DModel>,
    /// Queries from the target, keys and values from the encoder's output.
    pub cross_attn: MultiHeadAttention<DModel>,
    /// Norm before the feed-forward network.
    pub ln3: RmsNorm<DModel>,
    /// SwiGLU feed-forward network.
    pub ffn: SwiGlu<DModel, DFf>,
}

impl DecoderBlock {
    /// Add the block's weights to `cx`: `ln1`, `self_attn`, `ln2`, `cross_attn`, `ln3`, `ffn`.
    pub fn new(
        cx: &mut Graph,
        [d_model, n_heads, d_ff]: [usize; 3],
        rope: Rope<MaxSeq, DHead>,
        cross_rope: Option<Rope<MaxSeq, DHead>>,
    ) -> Result<Self> {
        Ok(Self {
            ln1: RmsNorm::new(cx, d_model)?,
            self_attn: MultiHeadAttention::new(cx, d_model, n_heads, Some(rope))?,
            ln2: RmsNorm::new(cx, d_model)?,
            // RoPE across sequences only on request (see `Seq2SeqConfig::cross_attention_rope`).
            cross_attn: MultiHeadAttention::new(cx, d_model, n_heads, cross_rope)?,
            ln3: RmsNorm::new(cx, d_model)?,
            ffn: SwiGlu::new(cx, d_model, d_ff)?,
        })
    }

    /// `x` (b, s, d), `memory` (b, t, d), `causal` (b, s, s), `src_allowed` (b, s, t) -> (b, s, d).
    pub fn forward<B: Dimension, S: Dimension, T: Dimension>(
        &self,
        x: GraphTensor<(B, S, DModel)>,
        memory: GraphTensor<(B, T, DModel)>,
        causal: GraphTensor<(B, S, S)>,
        src_allowed: GraphTensor<(B, S, T)>,
    ) -> GraphTensor<(B, S, DModel)> {
        let normed = self.ln1.forward(x);
        let h = x + self.self_attn.attend(normed, normed, causal);
        let h = h + self
            .cross_attn
            .attend(self.ln2.forward(h), memory, src_allowed);
        h + self.ffn.forward(self.ln3.forward(h))
    }
}
// ANCHOR_END: decoder_block

impl Parameters for DecoderBlock {
    fn visit<'a>(&'a mut self, v: &mut Visitor<'a>) {
        v.module("ln1", &mut self.ln1);
        v.module("self_attn", &mut self.self_attn);
        v.module("ln2", &mut self.ln2);
        v.module("cross_attn", &mut self.cross_attn);
        v.module("ln3", &mut self.ln3);
        v.module("ffn", &mut self.ffn);
    }
}

impl ToIdsMut for DecoderBlock {
    fn to_ids_mut(&mut self) -> Vec<&mut NodeIndex> {
        self.handles()
    }
}

// ANCHOR: seq2seq_ref
/// The encoder-decoder as loops: `src` (b, t) with `src_keep` (b, t) (false = padding),
/// `tgt` (b, s) -> logits (b, s, vocab).
pub fn seq2seq_ref(
    src: &[u32],
    src_keep: &[bool],
    tgt: &[u32],
    dict: &StateDict,
    cfg: &Seq2SeqConfig,
    [b, t, s]: [usize; 3],
) -> Vec<f32> {
    let (d, heads, theta) = (cfg.d_model, cfg.n_heads, Some(cfg.rope_theta));
    let table = &dict["token_embeddings.weight"].data;
    let w = |name: String| &dict[&name].data[..];
    // Encoder: every source position sees every real source position.
    let enc_mask: Vec<bool> = (0..b * t * t)
        .map(|i| src_keep[(i / (t * t)) * t + i % t])
        .collect();
    let mut memory = embedding_ref(src, table, d);
    for i in 0..cfg.n_encoder_layers {
        let p = format!("encoder.layers.{i}");
        memory = block_ref(
            &memory,
            dict,
            &p,
            &enc_mask,
            [b, t, d, heads, cfg.d_ff],
            theta,
        );
    }
    let memory = rms_norm_ref(&memory, w("encoder.ln_final.weight".into()), d, NORM_EPS);
    // Decoder: causal over the target, padding-masked over the source.
    let causal: Vec<bool> = (0..b * s * s).map(|i| i % s <= (i / s) % s).collect();
    let cross: Vec<bool> = (0..b * s * t)
        .map(|i| src_keep[(i / (s * t)) * t + i % t])
        .collect();
    let mut x = embedding_ref(tgt, table, d);
    for i in 0..cfg.n_decoder_layers {
        let p = |n: &str| format!("decoder.layers.{i}.{n}");
        let attn = |a: &str| {
            ["q_proj", "k_proj", "v_proj", "output_proj"].map(|m| w(p(&format!("{a}.{m}.weight"))))
        };
        let n = rms_norm_ref(&x, w(p("ln1.weight")), d, NORM_EPS);
        let a = mha_ref(
            &n,
            &n,
            attn("self_attn"),
            &causal,
            [b, s, s, d],
            heads,
            theta,
        );
        x = x.iter().zip(&a).map(|(x, a)| x + a).collect();
        let n = rms_norm_ref(&x, w(p("ln2.weight")), d, NORM_EPS);
        let a = mha_ref(
            &n,
            &memory,
            attn("cross_attn"),
            &cross,
            [b, s, t, d],
            heads,
            if cfg.cross_attention_rope {
                theta
            } else {
                None
            },
        );
        x = x.iter().zip(&a).map(|(x, a)| x + a).collect();
        let n = rms_norm_ref(&x, w(p("ln3.weight")), d, NORM_EPS);
        let ffn = [
            w(p("ffn.w1.weight")),
            w(p("ffn.w2.weight")),
            w(p("ffn.w3.weight")),
        ];
        let f = swiglu_ref(&n, ffn, b * s, d, cfg.d_ff);
        x = x.iter().zip(&f).map(|(x, f)| x + f).collect();
    }
    let x = rms_norm_ref(&x, w("decoder.ln_final.weight".into()), d, NORM_EPS);
    let head = if cfg.tie_embeddings {
        table
    } else {
        &dict["lm_head.weight"].data
    };
    linear_ref(&x, head, b * s, d, cfg.vocab_size)
}
// ANCHOR_END: seq2seq_ref

// ANCHOR: seq2seq
/// An encoder-decoder transformer sharing one token embedding table.
#[derive(Clone)]
pub struct Seq2Seq {
    /// The sizes the model was built with.
    pub config: Seq2SeqConfig,
    /// (vocab, d_model) table shared by source and target.
    pub token_embeddings: Embedding<Vocab, DModel>,
    /// One set of RoPE tables, shared by every attention that rotates.
    pub rope: Rope<MaxSeq, DHead>,
    /// The `n_encoder_layers` blocks, `encoder.layers.{i}`.
    pub encoder: Vec<Block>,
    /// Norm after the last encoder block (`encoder.ln_final`).
    pub encoder_norm: RmsNorm<DModel>,
    /// The `n_decoder_layers` blocks, `decoder.layers.{i}`.
    pub decoder: Vec<DecoderBlock>,
    /// Norm after the last decoder block (`decoder.ln_final`).
    pub decoder_norm: RmsNorm<DModel>,
    /// The output projection; with tied embeddings its weight *is* the embedding table.
    pub lm_head: Linear<DModel, Vocab>,
}

impl Seq2Seq {
    /// Check the config and add every weight to `cx`.
    pub fn new(cx: &mut Graph, config: &Seq2SeqConfig) -> Result<Self> {
        config.validate()?;
        let c = config;
        let sizes = [c.d_model, c.n_heads, c.d_ff];
        let rope = Rope::new(cx, c.context_length, c.d_model / c.n_heads, c.rope_theta)?;
        let token_embeddings = Embedding::new(cx, c.vocab_size, c.d_model)?;
        let encoder = (0..c.n_encoder_layers)
            .map(|_| Block::new(cx, sizes, Some(rope)))
            .collect::<Result<_>>()?;
        let encoder_norm = RmsNorm::new(cx, c.d_model)?;
        let decoder = (0..c.n_decoder_layers)
            .map(|_| {
                let cross = c.cross_attention_rope.then_some(rope);
                DecoderBlock::new(cx, sizes, rope, cross)
            })
            .collect::<Result<_>>()?;
        let decoder_norm = RmsNorm::new(cx, c.d_model)?;
        let lm_head = if c.tie_embeddings {
            // (vocab, d_model) is exactly a Linear(d_model -> vocab) weight: share the node.
            Linear {
                weight: token_embeddings.weight,
                in_features: c.d_model,
                out_features: c.vocab_size,
            }
        } else {
            Linear::new(cx, c.d_model, c.vocab_size)?
        };
        let model = Self {
            config: c.clone(),
            token_embeddings,
            rope,
            encoder,
            encoder_norm,
            decoder,
            decoder_norm,
            lm_head,
        };
        params::label_inputs(cx, &model, ""); // graph inputs show their state-dict names
        Ok(model)
    }

    /// Fresh weights from `rng`.
    pub fn init(&self, rng: &mut CourseRng) -> Result<()> {
        self.token_embeddings.init(rng)?;
        self.encoder.iter().try_for_each(|l| l.init(rng))?;
        self.encoder_norm.init()?;
        for l in &self.decoder {
            [l.ln1, l.ln2, l.ln3].iter().try_for_each(|n| n.init())?;
            l.self_attn.init(rng)?;
            l.cross_attn.init(rng)?;
            l.ffn.init(rng)?;
        }
        self.decoder_norm.init()?;
        if self.config.tie_embeddings {
            return Ok(());
        }
        self.lm_head.init(rng)
    }

    /// `src` (b, t) with `src_keep` (b, t) of 1.0 / 0.0 -> the encoded source (b, t, d).
    pub fn encode<B: Dimension, T: Dimension>(
        &self,
        src: GraphTensor<(B, T)>,
        src_keep: GraphTensor<(B, T)>,
    ) -> GraphTensor<(B, T, DModel)> {
        let allowed = key_padding_mask::<B, T, T>(src_keep); // (b, t, t)
        let mut x = self.token_embeddings.forward(src);
        for layer in &self.encoder {
            x = layer.forward(x, allowed);
        }
        self.encoder_norm.forward(x)
    }

    /// Logits (b, s, vocab) for target `tgt` (b, s) given the source.
    pub fn forward<B: Dimension, T: Dimension, S: Dimension>(
        &self,
        src: GraphTensor<(B, T)>,
        src_keep: GraphTensor<(B, T)>,
        tgt: GraphTensor<(B, S)>,
    ) -> GraphTensor<(B, S, Vocab)> {
        let memory = self.encode(src, src_keep);
        let causal = causal_mask::<S>(tgt.graph()).expand::<(B, S, S), Axis<0>>();
        let cross = key_padding_mask::<B, S, T>(src_keep); // (b, s, t)
        let mut x = self.token_embeddings.forward(tgt);
        for layer in &self.decoder {
            x = layer.forward(x, memory, causal, cross);
        }
        self.lm_head.forward(self.decoder_norm.forward(x))
    }

    /// Feed ids (b, len) into `ids`, refusing sequences longer than `context_length`.
    pub fn set_ids<B: Dimension, L: Dimension>(
        &self,
        ids: GraphTensor<(B, L)>,
        [b, len]: [usize; 2],
        values: &[u32],
    ) -> Result<()> {
        if len > self.config.context_length {
            return Err(CourseError::OutOfRange {
                what: format!("a sequence of {len} tokens"),
                problem: format!(
                    "the model's context_length is {}",
                    self.config.context_length
                ),
            });
        }
        self.token_embeddings.set_ids(ids, [b, len], values)
    }
}
// ANCHOR_END: seq2seq

impl Parameters for Seq2Seq {
    fn visit<'a>(&'a mut self, v: &mut Visitor<'a>) {
        v.module("token_embeddings", &mut self.token_embeddings);
        v.buffers(self.rope.to_ids_mut());
        v.modules("encoder.layers", &mut self.encoder);
        v.module("encoder.ln_final", &mut self.encoder_norm);
        v.modules("decoder.layers", &mut self.decoder);
        v.module("decoder.ln_final", &mut self.decoder_norm);
        if self.config.tie_embeddings {
            // The same node as the embedding table: one state-dict entry, two handles to remap.
            v.buffers([&mut self.lm_head.weight.id]);
        } else {
            v.module("lm_head", &mut self.lm_head);
        }
    }
}

impl ToIdsMut for Seq2Seq {
    fn to_ids_mut(&mut self) -> Vec<&mut NodeIndex> {
        self.handles()
    }
}

/// Run the encoder-decoder: `src` (b, t) with `src_keep`, `tgt` (b, s) -> logits (b, s, vocab).
pub fn run_seq2seq(
    (src, src_keep, t): (&[u32], &[bool], usize),
    (tgt, s): (&[u32], usize),
    dict: &StateDict,
    config: &Seq2SeqConfig,
    device: Device,
) -> Result<HostTensor> {
    let b = src.len().checked_div(t).unwrap_or(0);
    if src_keep.len() != src.len() {
        return Err(CourseError::DataLength {
            what: "source padding mask".into(),
            shape: vec![b, t],
            expected: src.len(),
            got: src_keep.len(),
        });
    }
    let mut cx = Graph::new();
    let mut model = Seq2Seq::new(&mut cx, config)?;
    params::load_state_dict(&mut cx, &model.params(), dict)?;
    let mut src_t = tensor::input::<(Batch, SrcSeq)>(&mut cx, "src");
    let mut keep_t = tensor::input::<(Batch, SrcSeq)>(&mut cx, "src_keep");
    let mut tgt_t = tensor::input::<(Batch, Seq)>(&mut cx, "tgt");
    let mut logits = model.forward(src_t, keep_t, tgt_t).retrieve();
    device.compile(
        &mut cx,
        (&mut model, &mut src_t, &mut keep_t, &mut tgt_t, &mut logits),
    );
    model.set_ids(src_t, [b, t], src)?;
    tensor::set(
        keep_t,
        &[b, t],
        src_keep.iter().map(|&k| k as u8 as f32).collect(),
    )?;
    model.set_ids(tgt_t, [b, s], tgt)?;
    tensor::execute(&mut cx)?;
    tensor::read(logits)
}

/// A state dict of freshly initialised weights for `config` (seeded).
pub fn init_seq2seq_weights(config: &Seq2SeqConfig, seed: u64) -> Result<StateDict> {
    let mut cx = Graph::new();
    let model = Seq2Seq::new(&mut cx, config)?;
    model.init(&mut crate::graph::init::rng(seed))?;
    params::state_dict(&cx, &model.params())
}
