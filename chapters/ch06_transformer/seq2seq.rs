//! The encoder-decoder transformer for sequence-to-sequence tasks (the copy task).
//!
//! The encoder reads the whole source (self-attention with a source padding mask); the decoder
//! reads the target so far (causal self-attention), looks at the encoded source
//! (cross-attention, padding masked), and predicts the next target token.
//! Book page: [Chapter 6](../../../book/ch06_transformer.html#the-encoder-decoder).

use luminal::prelude::*;

use super::{validate_sizes, Block, DecoderBlock, NormPosition};
use crate::backend::Device;
use crate::ch01_linear::{Embedding, Linear};
use crate::ch02_rmsnorm::{Norm, NormLayer};
use crate::ch03_feed_forward::Ffn;
use crate::ch04_rope::{add_sinusoidal_positions, Positions, Rope};
use crate::ch05_attention::{causal_mask, key_padding_mask};
use crate::graph::dims::{Batch, DHead, DModel, MaxSeq, Seq, SrcSeq, Vocab};
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
    /// Pre-norm (default) or post-norm blocks; see [`Seq2SeqConfig::original_transformer`] and
    /// [Chapter 6](../../../book/ch06_transformer.html#the-original-transformer-as-a-configuration).
    #[serde(default, skip_serializing_if = "is_default")]
    pub norm_position: NormPosition,
    /// RMSNorm (default) or LayerNorm, in every block and at the end of encoder and decoder.
    #[serde(default, skip_serializing_if = "is_default")]
    pub norm: Norm,
    /// RoPE (default) or sinusoidal positions added to the token embeddings.
    #[serde(default, skip_serializing_if = "is_default")]
    pub positions: Positions,
    /// SwiGLU (default) or ReLU feed-forward networks.
    #[serde(default, skip_serializing_if = "is_default")]
    pub ffn: Ffn,
}

/// The four switches are left out of the JSON when they hold their defaults, so configs,
/// checkpoint headers and printed outputs of the modern model read exactly as before.
fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

impl Seq2SeqConfig {
    /// Sizes positive, d_model divisible by n_heads, an even head size with RoPE, theta > 1,
    /// no cross-attention RoPE without RoPE.
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
        let rope = self.positions == Positions::Rope;
        validate_sizes(&sizes, self.d_model, self.n_heads, self.rope_theta, rope)?;
        self.validate_architecture()
    }
}

// ANCHOR_END: seq2seq_config

// ANCHOR: seq2seq
/// An encoder-decoder transformer sharing one token embedding table.
#[derive(Clone)]
pub struct Seq2Seq {
    /// The sizes the model was built with.
    pub config: Seq2SeqConfig,
    /// (vocab, d_model) table shared by source and target.
    pub token_embeddings: Embedding<Vocab, DModel>,
    /// One set of RoPE tables, shared by every attention that rotates (None with sinusoidal
    /// positions).
    pub rope: Option<Rope<MaxSeq, DHead>>,
    /// The `n_encoder_layers` blocks, `encoder.layers.{i}`.
    pub encoder: Vec<Block>,
    /// Norm after the last encoder block (`encoder.ln_final`).
    pub encoder_norm: NormLayer<DModel>,
    /// The `n_decoder_layers` blocks, `decoder.layers.{i}`.
    pub decoder: Vec<DecoderBlock>,
    /// Norm after the last decoder block (`decoder.ln_final`).
    pub decoder_norm: NormLayer<DModel>,
    /// The output projection; with tied embeddings its weight *is* the embedding table.
    pub lm_head: Linear<DModel, Vocab>,
}

impl Seq2Seq {
    /// Check the config and add every weight to `cx`.
    pub fn new(cx: &mut Graph, config: &Seq2SeqConfig) -> Result<Self> {
        config.validate()?;
        let (c, arch) = (config, config.architecture());
        let sizes = [c.d_model, c.n_heads, c.d_ff];
        let rope = match c.positions {
            Positions::Rope => {
                let d_head = c.d_model / c.n_heads;
                Some(Rope::new(cx, c.context_length, d_head, c.rope_theta)?)
            }
            Positions::Sinusoidal => None, // added to the embeddings in `encode` / `forward`
        };
        let token_embeddings = Embedding::new(cx, c.vocab_size, c.d_model)?;
        let encoder = (0..c.n_encoder_layers)
            .map(|_| Block::with_architecture(cx, sizes, rope, arch))
            .collect::<Result<_>>()?;
        let encoder_norm = NormLayer::new(cx, c.norm, c.d_model)?;
        let cross = rope.filter(|_| c.cross_attention_rope);
        let decoder = (0..c.n_decoder_layers)
            .map(|_| DecoderBlock::new(cx, sizes, rope, cross, arch))
            .collect::<Result<_>>()?;
        let decoder_norm = NormLayer::new(cx, c.norm, c.d_model)?;
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
        // ANCHOR: learn_seq2seq_encode ch06: key_padding_mask::<B, T, T>(src_keep) (b, t, t); embed(src); every encoder layer; encoder_norm -> memory (b, t, d)
        let allowed = key_padding_mask::<B, T, T>(src_keep); // (b, t, t)
        let mut x = self.embed(src); // (b, t, d)
        for layer in &self.encoder {
            x = layer.forward(x, allowed);
        }
        self.encoder_norm.forward(x)
        // ANCHOR_END: learn_seq2seq_encode
    }

    /// Logits (b, s, vocab) for target `tgt` (b, s) given the source.
    pub fn forward<B: Dimension, T: Dimension, S: Dimension>(
        &self,
        src: GraphTensor<(B, T)>,
        src_keep: GraphTensor<(B, T)>,
        tgt: GraphTensor<(B, S)>,
    ) -> GraphTensor<(B, S, Vocab)> {
        // ANCHOR: learn_seq2seq_forward ch06: memory = encode; causal mask (b, s, s) and key_padding_mask::<B, S, T> (b, s, t); embed(tgt); every decoder layer; decoder_norm; lm_head -> (b, s, vocab)
        let memory = self.encode(src, src_keep);
        let causal = causal_mask::<S>(tgt.graph()).expand::<(B, S, S), Axis<0>>();
        let cross = key_padding_mask::<B, S, T>(src_keep); // (b, s, t)
        let mut x = self.embed(tgt); // (b, s, d)
        for layer in &self.decoder {
            x = layer.forward(x, memory, causal, cross);
        }
        self.lm_head.forward(self.decoder_norm.forward(x))
        // ANCHOR_END: learn_seq2seq_forward
    }

    /// Token embeddings of `ids` (b, n) -> (b, n, d), plus the sinusoidal table's first n rows
    /// when the config asks for sinusoidal positions (RoPE acts later, inside attention).
    pub fn embed<B: Dimension, N: Dimension>(
        &self,
        ids: GraphTensor<(B, N)>,
    ) -> GraphTensor<(B, N, DModel)> {
        // ANCHOR: learn_seq2seq_embed ch06: token embeddings (b, n, d), plus add_sinusoidal_positions when config.positions is Sinusoidal (RoPE: nothing added here)
        let x = self.token_embeddings.forward(ids); // (b, n, d)
        match self.config.positions {
            Positions::Rope => x,
            Positions::Sinusoidal => add_sinusoidal_positions(x, self.config.d_model),
        }
        // ANCHOR_END: learn_seq2seq_embed
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
        if let Some(rope) = &mut self.rope {
            v.buffers(rope.to_ids_mut());
        }
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
