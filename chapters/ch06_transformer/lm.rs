//! The decoder-only language model: embedding, N causal pre-norm blocks, final RMSNorm, LM head.
//!
//! Book page: [Chapter 6](../../../book/ch06_transformer.html#the-language-model).

use luminal::prelude::*;

use super::{block_ref, validate_sizes, Architecture, Block};
use crate::backend::Device;
use crate::ch01_linear::{embedding_ref, linear_ref, Embedding, Linear};
use crate::ch02_rmsnorm::{rms_norm_ref, RmsNorm, NORM_EPS};
use crate::ch04_rope::{Rope, ROPE_THETA};
use crate::ch05_attention::causal_mask;
use crate::graph::dims::{Batch, DHead, DModel, MaxSeq, Seq, Vocab};
use crate::graph::error::{CourseError, Result};
use crate::graph::init::CourseRng;
use crate::graph::params::{self, Parameters, StateDict, Visitor};
use crate::graph::tensor::{self, HostTensor};

// ANCHOR: config
/// Everything that sizes a decoder-only LM (nanoGPT style: one struct, checked once).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerConfig {
    /// Number of token ids (rows of the embedding, columns of the logits).
    pub vocab_size: usize,
    /// The longest sequence the model accepts (rows of the RoPE tables).
    pub context_length: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of transformer blocks (CS336's `num_layers` is read too).
    #[serde(alias = "num_layers")]
    pub n_layers: usize,
    /// Attention heads per block; d_model must divide by it (CS336's `num_heads` is read too).
    #[serde(alias = "num_heads")]
    pub n_heads: usize,
    /// Hidden width of each SwiGLU feed-forward network.
    pub d_ff: usize,
    /// RoPE base, usually [`ROPE_THETA`].
    pub rope_theta: f32,
}

impl TransformerConfig {
    /// The course's reference model: vocab 256, ctx 128, d_model 128, 4 layers, 4 heads,
    /// d_ff 384 (used for benchmarks and the performance notes).
    pub fn reference() -> Self {
        Self {
            vocab_size: 256,
            context_length: 128,
            d_model: 128,
            n_layers: 4,
            n_heads: 4,
            d_ff: 384,
            rope_theta: ROPE_THETA,
        }
    }

    /// Sizes positive, d_model divisible by n_heads, an even head size, theta > 1.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("context_length", self.context_length),
            ("d_model", self.d_model),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("d_ff", self.d_ff),
        ];
        validate_sizes(&sizes, self.d_model, self.n_heads, self.rope_theta, true)
    }
}
// ANCHOR_END: config

// ANCHOR: lm_ref
/// The whole LM as loops: `ids` (b, s) -> logits (b, s, vocab), weights by state-dict name.
pub fn lm_ref(
    ids: &[u32],
    dict: &StateDict,
    cfg: &TransformerConfig,
    [b, s]: [usize; 2],
) -> Vec<f32> {
    // ANCHOR: learn_lm_ref ch06: embedding_ref, then n_layers block_ref ("layers.{i}", causal mask: key <= query, RoPE at cfg.rope_theta, default Architecture), rms_norm_ref with ln_final, linear_ref with lm_head -> (b, s, vocab)
    let d = cfg.d_model;
    let mut x = embedding_ref(ids, &dict["token_embeddings.weight"].data, d); // (b, s, d)
    let causal: Vec<bool> = (0..b * s * s).map(|i| i % s <= (i / s) % s).collect(); // key <= query
    for i in 0..cfg.n_layers {
        let sizes = [b, s, d, cfg.n_heads, cfg.d_ff];
        x = block_ref(
            &x,
            dict,
            &format!("layers.{i}"),
            &causal,
            sizes,
            Some(cfg.rope_theta),
            Architecture::default(), // the LM is always pre-norm, RMSNorm, RoPE, SwiGLU
        );
    }
    let x = rms_norm_ref(&x, &dict["ln_final.weight"].data, d, NORM_EPS);
    // (b, s, vocab)
    linear_ref(&x, &dict["lm_head.weight"].data, b * s, d, cfg.vocab_size)
    // ANCHOR_END: learn_lm_ref
}
// ANCHOR_END: lm_ref

// ANCHOR: lm
/// A decoder-only transformer LM with CS336's state-dict names (book chapter 6).
#[derive(Clone)]
pub struct TransformerLm {
    /// The sizes the model was built with.
    pub config: TransformerConfig,
    /// (vocab, d_model) token embedding table.
    pub token_embeddings: Embedding<Vocab, DModel>,
    /// One set of RoPE tables, shared by every block.
    pub rope: Rope<MaxSeq, DHead>,
    /// The `n_layers` causal blocks, `layers.{i}`.
    pub layers: Vec<Block>,
    /// Norm after the last block.
    pub ln_final: RmsNorm<DModel>,
    /// (vocab, d_model): residual stream to next-token logits.
    pub lm_head: Linear<DModel, Vocab>,
}

impl TransformerLm {
    /// Check the config and add every weight to `cx`.
    pub fn new(cx: &mut Graph, config: &TransformerConfig) -> Result<Self> {
        config.validate()?;
        let c = config;
        let rope = Rope::new(cx, c.context_length, c.d_model / c.n_heads, c.rope_theta)?;
        let layers = (0..c.n_layers)
            .map(|_| Block::new(cx, [c.d_model, c.n_heads, c.d_ff], Some(rope)))
            .collect::<Result<_>>()?;
        let model = Self {
            config: c.clone(),
            token_embeddings: Embedding::new(cx, c.vocab_size, c.d_model)?,
            rope,
            layers,
            ln_final: RmsNorm::new(cx, c.d_model)?,
            lm_head: Linear::new(cx, c.d_model, c.vocab_size)?,
        };
        params::label_inputs(cx, &model, ""); // graph inputs show `layers.0.attn.q_proj.weight`
        Ok(model)
    }

    /// Fresh weights from `rng` (the inits of book chapter 1).
    pub fn init(&self, rng: &mut CourseRng) -> Result<()> {
        self.token_embeddings.init(rng)?;
        self.layers.iter().try_for_each(|l| l.init(rng))?;
        self.ln_final.init()?;
        self.lm_head.init(rng)
    }

    /// `ids` (b, s) -> logits (b, s, vocab). Always causal.
    pub fn forward<B: Dimension, S: Dimension>(
        &self,
        ids: GraphTensor<(B, S)>,
    ) -> GraphTensor<(B, S, Vocab)> {
        // ANCHOR: learn_lm_forward ch06: causal_mask::<S> expanded to (b, s, s); token embeddings (b, s, d); every layer; ln_final; lm_head -> (b, s, vocab)
        let causal = causal_mask::<S>(ids.graph()).expand::<(B, S, S), Axis<0>>();
        let mut x = self.token_embeddings.forward(ids); // (b, s, d)
        for layer in &self.layers {
            x = layer.forward(x, causal);
        }
        // (b, s, vocab)
        self.lm_head.forward(self.ln_final.forward(x))
        // ANCHOR_END: learn_lm_forward
    }

    /// Feed token ids (b, s), refusing sequences longer than the context and unknown ids.
    pub fn set_ids<B: Dimension, S: Dimension>(
        &self,
        ids: GraphTensor<(B, S)>,
        [b, s]: [usize; 2],
        values: &[u32],
    ) -> Result<()> {
        if s > self.config.context_length {
            return Err(CourseError::OutOfRange {
                what: format!("a sequence of {s} tokens"),
                problem: format!(
                    "the model's context_length is {}",
                    self.config.context_length
                ),
            });
        }
        self.token_embeddings.set_ids(ids, [b, s], values)
    }
}
// ANCHOR_END: lm

impl Parameters for TransformerLm {
    fn visit<'a>(&'a mut self, v: &mut Visitor<'a>) {
        v.module("token_embeddings", &mut self.token_embeddings);
        v.buffers(self.rope.to_ids_mut());
        v.modules("layers", &mut self.layers);
        v.module("ln_final", &mut self.ln_final);
        v.module("lm_head", &mut self.lm_head);
    }
}

impl ToIdsMut for TransformerLm {
    fn to_ids_mut(&mut self) -> Vec<&mut NodeIndex> {
        self.handles()
    }
}

/// Run the LM on `ids` (b, s) with weights from `dict` -> logits (b, s, vocab).
pub fn run_lm(
    ids: &[u32],
    shape: [usize; 2],
    dict: &StateDict,
    config: &TransformerConfig,
    device: Device,
) -> Result<HostTensor> {
    let mut cx = Graph::new();
    let mut model = TransformerLm::new(&mut cx, config)?;
    params::load_state_dict(&mut cx, &model.params(), dict)?;
    let mut idt = tensor::input::<(Batch, Seq)>(&mut cx, "ids");
    let mut logits = model.forward(idt).retrieve();
    device.compile(&mut cx, (&mut model, &mut idt, &mut logits));
    model.set_ids(idt, shape, ids)?;
    tensor::execute(&mut cx)?;
    tensor::read(logits)
}

/// A state dict of freshly initialised weights for `config` (seeded).
pub fn init_lm_weights(config: &TransformerConfig, seed: u64) -> Result<StateDict> {
    let mut cx = Graph::new();
    let model = TransformerLm::new(&mut cx, config)?;
    model.init(&mut crate::graph::init::rng(seed))?;
    params::state_dict(&cx, &model.params())
}
