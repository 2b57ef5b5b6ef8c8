//! Named dimensions: the course's shape vocabulary.
//!
//! Model sizes are chosen at run time (one config struct, as in nanoGPT), yet shapes are still
//! checked by the Rust compiler: each size is a luminal `Dyn<'c'>` dimension whose letter is
//! part of the type. `GraphTensor<(Batch, Seq, DModel)>` cannot be multiplied by a weight whose
//! inner dimension is `DFf`. The sizes are bound at run time in the graph's dyn map.
//! See the book's [introduction](../../../book/introduction.html#shapes).

use luminal::prelude::Dyn;

/// Sequences in a batch (`b`).
pub type Batch = Dyn<'b'>;
/// Positions in a sequence (`s`).
pub type Seq = Dyn<'s'>;
/// Model width, the residual stream (`d`).
pub type DModel = Dyn<'d'>;
/// Hidden width of the feed-forward network (`f`).
pub type DFf = Dyn<'f'>;
/// Vocabulary size (`v`).
pub type Vocab = Dyn<'v'>;
/// A generic input width, for standalone layers (`i`).
pub type In = Dyn<'i'>;
/// A generic output width, for standalone layers (`o`).
pub type Out = Dyn<'o'>;
/// Rows of a 2D input, for standalone layers (`n`).
pub type Rows = Dyn<'n'>;
/// Attention heads (`h`).
pub type Heads = Dyn<'h'>;
/// Width of one attention head, `d_model / n_heads` (`k`).
pub type DHead = Dyn<'k'>;
/// Rows of the precomputed RoPE tables: the longest sequence a model accepts (`m`).
pub type MaxSeq = Dyn<'m'>;
/// Positions of the source sequence in cross-attention, when they differ from `Seq` (`t`).
pub type SrcSeq = Dyn<'t'>;
/// Pairs of features rotated together by RoPE, `d_head / 2` (`p`).
pub type Pairs = Dyn<'p'>;
