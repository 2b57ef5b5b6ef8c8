//! Backpropagation by hand: the composite backward rules of a transformer block, derived in
//! the book and written as plain loops in the style of llm.c's `train_gpt2.c`, each backward
//! beside the forward it differentiates.
//!
//! The primitive-rule autograd of this chapter ([`backward`](fn@super::backward)) never needs
//! these formulas: it differentiates softmax, RMSNorm or attention one `Mul`, `SumReduce` and
//! `Exp2` at a time. Deriving them once is how one reads a backward pass, and the tests check
//! that both roads (and finite differences) give the same numbers for a whole block.
//!
//! `by_hand/ops.rs` holds the rules of single layers, `by_hand/block.rs` the backward of one
//! pre-norm decoder block of chapter 6 ([`block_backward`]).
//! Book page: [Chapter 8](../../../book/ch08_autograd.html#5-backprop-by-hand-the-composite-rules).

mod block;
mod ops;
pub use block::*;
pub use ops::*;

#[cfg(test)]
mod block_tests;
#[cfg(test)]
mod tests;
