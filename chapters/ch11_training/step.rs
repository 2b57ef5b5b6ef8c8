//! The train step as ONE compiled graph: forward, loss, backward, clipping and AdamW. The
//! learning rate is the only thing fed besides the batch.
//!
//! Book page: [Chapter 11](../../../book/ch11_training.html#the-train-step).

use luminal::prelude::*;

use super::config::ModelConfig;
use super::data::{LmBatch, Seq2SeqBatch};
use crate::backend::Device;
use crate::ch06_transformer::{Seq2Seq, TransformerLm};
use crate::ch07_loss::{lm_loss, seq2seq_loss, Weighting};
use crate::ch08_autograd::{backward, Gradient};
use crate::ch09_optimizers::{AdamW, AdamWConfig};
use crate::ch10_schedule::{clip_grad_norm, global_norm};
use crate::graph::dims::{Batch, Seq, SrcSeq};
use crate::graph::error::{CourseError, Result};
use crate::graph::flat::Flat;
use crate::graph::init::CourseRng;
use crate::graph::params::{self, Param, Parameters, StateDict, Visitor};
use crate::graph::tensor::{self, HostTensor};

// ANCHOR: model
/// Either model, built in a graph. (A few kB of graph handles each; one per graph, so boxing
/// the larger variant would buy nothing.)
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum Model {
    /// The decoder-only language model.
    Lm(TransformerLm),
    /// The encoder-decoder.
    Seq2Seq(Seq2Seq),
}

impl ModelConfig {
    /// Fresh weights (the inits of book chapter 1) from `seed`.
    pub fn init_weights(&self, rng: &mut CourseRng) -> Result<StateDict> {
        let mut cx = Graph::new();
        let model = Model::new(&mut cx, self)?;
        match &model {
            Model::Lm(m) => m.init(rng)?,
            Model::Seq2Seq(m) => m.init(rng)?,
        }
        params::state_dict(&cx, &model.params())
    }
}

impl Model {
    /// Add the model `config` describes to `cx` (weights not yet set).
    pub fn new(cx: &mut Graph, config: &ModelConfig) -> Result<Self> {
        Ok(match config {
            ModelConfig::Lm(c) => Model::Lm(TransformerLm::new(cx, c)?),
            ModelConfig::Seq2Seq(c) => Model::Seq2Seq(Seq2Seq::new(cx, c)?),
        })
    }
}

impl Parameters for Model {
    fn visit<'a>(&'a mut self, v: &mut Visitor<'a>) {
        match self {
            Model::Lm(m) => m.visit(v),
            Model::Seq2Seq(m) => m.visit(v),
        }
    }
}

impl ToIdsMut for Model {
    fn to_ids_mut(&mut self) -> Vec<&mut NodeIndex> {
        self.handles()
    }
}
// ANCHOR_END: model

/// A batch for either model.
#[derive(Clone, Debug, PartialEq)]
pub enum TrainBatch {
    /// For the language model.
    Lm(LmBatch),
    /// For the encoder-decoder.
    Seq2Seq(Seq2SeqBatch),
}

/// The graph inputs that carry a batch, and the loss built from them.
#[allow(clippy::large_enum_variant)]
pub(super) enum Inputs {
    Lm {
        ids: GraphTensor<(Batch, Seq)>,
        targets: GraphTensor<(Batch, Seq)>,
        mask: GraphTensor<(Batch, Seq)>,
    },
    Seq2Seq {
        src: GraphTensor<(Batch, SrcSeq)>,
        src_keep: GraphTensor<(Batch, SrcSeq)>,
        tgt_in: GraphTensor<(Batch, Seq)>,
        tgt_out: GraphTensor<(Batch, Seq)>,
        mask: GraphTensor<(Batch, Seq)>,
    },
}

impl Inputs {
    /// Add the inputs and the mean token cross-entropy of `model` to `cx`.
    pub(super) fn with_loss(cx: &mut Graph, model: &Model) -> (Self, GraphTensor<()>) {
        match model {
            Model::Lm(m) => {
                let ids = tensor::input(cx, "ids");
                let targets = tensor::input(cx, "targets");
                let mask = tensor::input(cx, "mask");
                let loss = lm_loss(m, ids, targets, mask, Weighting::Token);
                (Inputs::Lm { ids, targets, mask }, loss)
            }
            Model::Seq2Seq(m) => {
                let src = tensor::input(cx, "src");
                let src_keep = tensor::input(cx, "src_keep");
                let tgt_in = tensor::input(cx, "tgt_in");
                let tgt_out = tensor::input(cx, "tgt_out");
                let mask = tensor::input(cx, "tgt_mask");
                let loss = seq2seq_loss(m, src, src_keep, tgt_in, tgt_out, mask, Weighting::Token);
                let inputs = Inputs::Seq2Seq {
                    src,
                    src_keep,
                    tgt_in,
                    tgt_out,
                    mask,
                };
                (inputs, loss)
            }
        }
    }

    /// Feed `batch`, checking that it is the kind of batch the model takes and that every id
    /// is in the vocabulary (an out-of-range target would silently read zero logits).
    pub(super) fn feed(&self, model: &Model, batch: &TrainBatch) -> Result<()> {
        let ones = |n: usize| vec![1.0; n];
        let targets = |t: &[u32], vocab: usize| -> Result<Vec<f32>> {
            if let Some((i, &bad)) = t.iter().enumerate().find(|(_, &t)| t as usize >= vocab) {
                return Err(CourseError::OutOfRange {
                    what: format!("target id {bad} at position {i}"),
                    problem: format!("the vocabulary has {vocab} tokens"),
                });
            }
            Ok(t.iter().map(|&t| t as f32).collect())
        };
        match (self, model, batch) {
            (
                Inputs::Lm {
                    ids,
                    targets: t,
                    mask,
                },
                Model::Lm(m),
                TrainBatch::Lm(b),
            ) => {
                let shape = [b.batch, b.context];
                m.set_ids(*ids, shape, &b.inputs)?;
                tensor::set(*t, &shape, targets(&b.targets, m.config.vocab_size)?)?;
                tensor::set(*mask, &shape, ones(b.inputs.len()))
            }
            (
                Inputs::Seq2Seq {
                    src,
                    src_keep,
                    tgt_in,
                    tgt_out,
                    mask,
                },
                Model::Seq2Seq(m),
                TrainBatch::Seq2Seq(b),
            ) => {
                let (t, s) = (
                    b.src.len() / b.batch.max(1),
                    b.tgt_in.len() / b.batch.max(1),
                );
                m.set_ids(*src, [b.batch, t], &b.src)?;
                tensor::set(*src_keep, &[b.batch, t], ones(b.src.len()))?;
                m.set_ids(*tgt_in, [b.batch, s], &b.tgt_in)?;
                let out = targets(&b.tgt_out, m.config.vocab_size)?;
                tensor::set(*tgt_out, &[b.batch, s], out)?;
                tensor::set(*mask, &[b.batch, s], ones(b.tgt_in.len()))
            }
            _ => Err(CourseError::Config(
                "this batch is for the other kind of model (LM vs encoder-decoder)".into(),
            )),
        }
    }
}

impl ToIdsMut for Inputs {
    fn to_ids_mut(&mut self) -> Vec<&mut NodeIndex> {
        match self {
            Inputs::Lm { ids, targets, mask } => vec![&mut ids.id, &mut targets.id, &mut mask.id],
            Inputs::Seq2Seq {
                src,
                src_keep,
                tgt_in,
                tgt_out,
                mask,
            } => vec![
                &mut src.id,
                &mut src_keep.id,
                &mut tgt_in.id,
                &mut tgt_out.id,
                &mut mask.id,
            ],
        }
    }
}

/// The global gradient norm as a kept node, for a step that does not clip.
fn norm_only(cx: &mut Graph, grads: &[Gradient]) -> NodeIndex {
    let flat: Vec<Flat> = (grads.iter())
        .map(|g| Flat::new(cx, g.grad, g.param.numel()))
        .collect();
    global_norm(cx, &flat).keep().id
}

/// One scalar that says whether every updated weight is finite: the sum of `w * 0` over all of
/// them is 0 when they are and NaN when any is not (`0 * inf` and `0 * NaN` are NaN). Not a
/// norm: a sum of squares would overflow for finite weights above ~1e19. One scalar crosses
/// from a GPU instead of every weight.
fn updated_weights_check(cx: &mut Graph, opt: &AdamW) -> NodeIndex {
    let nodes: Vec<(NodeIndex, usize)> = (opt.slots.iter())
        .map(|s| (s.new_param, s.param.numel()))
        .collect();
    finite_check(cx, &nodes)
}

/// Σ (x · 0) over the `(node, length)` buffers: 0 when every value is finite, NaN otherwise.
pub(super) fn finite_check(cx: &mut Graph, nodes: &[(NodeIndex, usize)]) -> NodeIndex {
    let sums = nodes
        .iter()
        .map(|&(id, n)| (Flat::new(cx, id, n) * 0.0).sum());
    let total = sums.reduce(|a, b| a + b);
    total.unwrap_or_else(|| Flat::constant(cx, 0.0)).id
}

/// The value of a kept scalar node after a run.
pub(super) fn scalar(cx: &Graph, id: NodeIndex, what: &str) -> Result<f32> {
    let v = tensor::read_node(cx, id, what)?;
    v.first()
        .copied()
        .ok_or_else(|| CourseError::NotComputed { what: what.into() })
}

// ANCHOR: train_step
/// What one step measured: the loss before the update, the gradient norm before clipping, and
/// the learning rate used.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// Mean token cross-entropy on the batch, before the update.
    pub loss: f32,
    /// Global L2 norm of all gradients, before clipping.
    pub grad_norm: f32,
    /// The learning rate the step used.
    pub lr: f32,
}

/// Forward, loss, backward, global-norm clipping and AdamW in one compiled graph.
pub struct TrainStep {
    // Boxed: graph tensors point at their graph, so it must not move.
    cx: Box<Graph>,
    model: Model,
    inputs: Inputs,
    loss: NodeIndex,
    grad_norm: NodeIndex,
    update_check: NodeIndex,
    /// The optimiser: its slots name every parameter (ids valid after compiling).
    pub opt: AdamW,
}

impl TrainStep {
    /// Build the graph for `config` with `weights` loaded, and compile it for `device`.
    pub fn new(
        config: &ModelConfig,
        weights: &StateDict,
        adamw: AdamWConfig,
        max_grad_norm: Option<f32>,
        device: Device,
    ) -> Result<Self> {
        if let Some(m) = max_grad_norm.filter(|m| !(*m > 0.0 && m.is_finite())) {
            return Err(CourseError::Config(format!(
                "max_grad_norm must be positive and finite (or None for no clipping), got {m}"
            )));
        }
        // ANCHOR: learn_train_step_new ch11: one graph for the whole step: Model::new, params::load_state_dict, Inputs::with_loss, backward (ch08) of the loss, clip_grad_norm (ch10) or norm_only, AdamW::new (ch09) on the clipped grads, updated_weights_check; keep + retrieve the loss, the norm and the check; device.compile every handle; Self { .. }
        let mut cx = Box::new(Graph::new());
        let mut model = Model::new(&mut cx, config)?;
        let params = model.params();
        params::load_state_dict(&mut cx, &params, weights)?;
        let (mut inputs, loss) = Inputs::with_loss(&mut cx, &model);
        let grads = backward(&mut cx, &params, loss.id)?;
        let (clipped, mut grad_norm) = match max_grad_norm {
            Some(max) => clip_grad_norm(&mut cx, &grads, max),
            None => {
                let norm = norm_only(&mut cx, &grads); // still measured, for the log
                (grads, norm)
            }
        };
        let mut opt = AdamW::new(&mut cx, &clipped, adamw)?;
        // One number says whether every updated weight is finite.
        let mut update_check = updated_weights_check(&mut cx, &opt);
        // The three scalars read after every step come back to the host; nothing else does.
        let mut loss = loss.id;
        for id in [loss, grad_norm, update_check] {
            cx.keep_tensors(id);
            cx.to_retrieve.insert(id);
        }
        device.compile(
            &mut cx,
            (
                &mut model,
                &mut inputs,
                (&mut loss, &mut grad_norm, &mut update_check),
                &mut opt,
            ),
        );
        Ok(Self {
            cx,
            model,
            inputs,
            loss,
            grad_norm,
            update_check,
            opt,
        })
        // ANCHOR_END: learn_train_step_new
    }

    /// One step at learning rate `lr`. A non-finite loss or gradient is an error and leaves
    /// the weights and moments as they were (the update is only committed when all is finite).
    pub fn step(&mut self, batch: &TrainBatch, lr: f32) -> Result<StepStats> {
        // ANCHOR: learn_train_step_step ch11: opt.prepare(lr), inputs.feed, tensor::execute; read the loss, the grad norm and the update check (scalar); if one is not finite -> NonFinite error, weights untouched; else opt.advance -> StepStats
        self.opt.prepare(&mut self.cx, lr);
        self.inputs.feed(&self.model, batch)?;
        tensor::execute(&mut self.cx)?;
        let loss = scalar(&self.cx, self.loss, "the loss")?;
        let grad_norm = scalar(&self.cx, self.grad_norm, "the gradient norm")?;
        // The updated weights too: a huge step can overflow them while the loss is still fine.
        let finite_update =
            scalar(&self.cx, self.update_check, "the updated weights' check")?.is_finite();
        if !(loss.is_finite() && grad_norm.is_finite() && finite_update) {
            return Err(CourseError::NonFinite(format!(
                "step {}: loss {loss}, gradient norm {grad_norm}{}; weights left as before this step",
                self.opt.t,
                if finite_update { "" } else { ", updated weights overflow" }
            )));
        }
        self.opt.advance(&mut self.cx);
        Ok(StepStats {
            loss,
            grad_norm,
            lr,
        })
        // ANCHOR_END: learn_train_step_step
    }
    // ANCHOR_END: train_step

    /// Time every op from now on (see `backend::fast_cpu::PROFILE`); for benchmarks only.
    pub fn profile_ops(&mut self) {
        Device::profile_ops(&mut self.cx);
    }

    /// The parameters, in model order (valid after compiling).
    pub fn params(&self) -> Vec<Param> {
        self.opt.slots.iter().map(|s| s.param.clone()).collect()
    }

    /// The current weights.
    pub fn weights(&self) -> Result<StateDict> {
        params::state_dict(&self.cx, &self.params())
    }

    /// AdamW's moments `(m, v)`, keyed by parameter name.
    pub fn moments(&self) -> Result<(StateDict, StateDict)> {
        let read = |id: NodeIndex, p: &Param| -> Result<(String, HostTensor)> {
            let data = tensor::read_node(&self.cx, id, &format!("AdamW moment of '{}'", p.name))?;
            Ok((p.name.clone(), HostTensor::new(&p.shape, data.to_vec())?))
        };
        let m = self.opt.slots.iter().map(|s| read(s.m, &s.param));
        let v = self.opt.slots.iter().map(|s| read(s.v, &s.param));
        Ok((m.collect::<Result<_>>()?, v.collect::<Result<_>>()?))
    }

    /// Tests only: overwrite one weight without the load checks (which refuse non-finite
    /// values), to see what a step does with a model that went bad during training.
    #[cfg(test)]
    pub(super) fn poison_weight(&mut self, name: &str, index: usize, value: f32) {
        let p = self.params().into_iter().find(|p| p.name == name).unwrap();
        let mut data = params::state_dict(&self.cx, std::slice::from_ref(&p)).unwrap()[name]
            .data
            .clone();
        data[index] = value;
        self.cx.set_tensor(p.id, 0, Tensor::new(data));
    }

    /// Restore weights, moments and the step count (all checked before anything is written).
    pub fn restore(
        &mut self,
        weights: &StateDict,
        m: &StateDict,
        v: &StateDict,
        t: u64,
    ) -> Result<()> {
        let params = self.params();
        // Check all three against the parameters first: a bad moment must not leave new weights.
        let probe = |d: &StateDict, what: &str| {
            params::check_state_dict(&params, d)
                .map_err(|e| CourseError::StateDict(format!("{what}: {e}")))
        };
        probe(weights, "weights")?;
        probe(m, "AdamW m")?;
        probe(v, "AdamW v")?;
        params::load_state_dict(&mut self.cx, &params, weights)?;
        let as_params = |pick: fn(&crate::ch09_optimizers::AdamWSlot) -> NodeIndex| -> Vec<Param> {
            self.opt
                .slots
                .iter()
                .map(|s| Param {
                    id: pick(s),
                    ..s.param.clone()
                })
                .collect()
        };
        let (mp, vp) = (as_params(|s| s.m), as_params(|s| s.v));
        params::load_state_dict(&mut self.cx, &mp, m)?;
        params::load_state_dict(&mut self.cx, &vp, v)?;
        self.opt.t = t;
        Ok(())
    }
}

/// Forward and loss only, for evaluation on held-out batches. Load the weights to evaluate
/// with [`LossGraph::load`].
pub struct LossGraph {
    cx: Box<Graph>,
    model: Model,
    inputs: Inputs,
    loss: NodeIndex,
    params: Vec<Param>,
}

impl LossGraph {
    /// Build the forward pass and loss for `config` and compile it for `device`.
    pub fn new(config: &ModelConfig, device: Device) -> Result<Self> {
        let mut cx = Box::new(Graph::new());
        let mut model = Model::new(&mut cx, config)?;
        let mut params = model.params();
        let (mut inputs, loss) = Inputs::with_loss(&mut cx, &model);
        let mut loss = loss.retrieve().id;
        device.compile(&mut cx, (&mut model, &mut inputs, &mut loss, &mut params));
        Ok(Self {
            cx,
            model,
            inputs,
            loss,
            params,
        })
    }

    /// Load the weights to evaluate; every parameter must be present.
    pub fn load(&mut self, weights: &StateDict) -> Result<()> {
        params::load_state_dict(&mut self.cx, &self.params, weights)
    }

    /// The mean token cross-entropy on `batch`.
    pub fn loss(&mut self, batch: &TrainBatch) -> Result<f32> {
        self.cx.tensors.remove(&(self.loss, 0)); // else the last run's value is kept
        self.inputs.feed(&self.model, batch)?;
        tensor::execute(&mut self.cx)?;
        scalar(&self.cx, self.loss, "the loss")
    }
}

/// The loss and the gradient of every parameter for any batch: forward, loss and backward
/// compiled once, fed a new batch per call (no clipping, no update). For comparing gradients with
/// PyTorch (`loss.backward()` then `{n: p.grad for n, p in model.named_parameters()}`) or for
/// an optimiser of your own.
pub struct GradientGraph {
    cx: Box<Graph>,
    model: Model,
    inputs: Inputs,
    loss: NodeIndex,
    params: Vec<Param>,
    grads: Vec<Gradient>,
}

impl GradientGraph {
    /// Build the forward pass, the loss and its backward pass for `config`; compile for `device`.
    pub fn new(config: &ModelConfig, device: Device) -> Result<Self> {
        config.validate()?;
        let mut cx = Box::new(Graph::new());
        let mut model = Model::new(&mut cx, config)?;
        let mut params = model.params();
        let (mut inputs, loss) = Inputs::with_loss(&mut cx, &model);
        let mut grads = backward(&mut cx, &params, loss.id)?;
        let mut loss = loss.retrieve().id;
        cx.keep_tensors(loss);
        device.compile(
            &mut cx,
            (&mut model, &mut inputs, &mut loss, &mut params, &mut grads),
        );
        Ok(Self {
            cx,
            model,
            inputs,
            loss,
            params,
            grads,
        })
    }

    /// Load the weights; every parameter must be present.
    pub fn load(&mut self, weights: &StateDict) -> Result<()> {
        params::load_state_dict(&mut self.cx, &self.params, weights)
    }

    /// The mean token cross-entropy on `batch` and its gradient for every parameter, by
    /// state-dict name.
    pub fn gradients(&mut self, batch: &TrainBatch) -> Result<(f32, StateDict)> {
        // Outputs kept from the last batch would be reused as they are: drop them first.
        for id in std::iter::once(self.loss).chain(self.grads.iter().map(|g| g.grad)) {
            let is_input = (self.cx.graph.node_weight(id))
                .is_some_and(|op| op.as_any().is::<luminal::op::Function>());
            if !is_input {
                self.cx.tensors.remove(&(id, 0));
            }
        }
        self.inputs.feed(&self.model, batch)?;
        tensor::execute(&mut self.cx)?;
        let loss = scalar(&self.cx, self.loss, "the loss")?;
        let grads = (self.grads.iter())
            .map(|g| Ok((g.param.name.clone(), g.read(&self.cx)?)))
            .collect::<Result<_>>()?;
        Ok((loss, grads))
    }
}
