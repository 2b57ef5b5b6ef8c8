//! # transformer-course
//!
//! Build and train a transformer language model step by step, on the
//! [luminal](https://crates.io/crates/luminal) deep-learning library.
//!
//! The numbered chapters (`chapters/` in the repository) are the lessons; each reads top to
//! bottom like its book page: the math as a plain-Rust reference, then the luminal graph
//! version, then the tests that tie them together. The modules under `src/` are
//! infrastructure: [`graph`] (tensor I/O, dimensions, initialisation, parameters, the primitive
//! ops, flat graph math, graph pictures), [`plot`] (charts) and [`backend`] (devices and the
//! fast CPU passes). The command line is the crate's binary.

#![warn(missing_docs)]

// The layers, each depending only on the ones listed before it (tests/architecture.rs checks):
// graph helpers and plots, then the chapters (which may use `backend::Device` and nothing else
// of the backend), then the backend. The command line is the binary (src/main.rs), not here.
pub mod graph;
pub mod plot;

#[path = "../chapters/ch00_graphs/mod.rs"]
pub mod ch00_graphs;
#[path = "../chapters/ch01_linear/mod.rs"]
pub mod ch01_linear;
#[path = "../chapters/ch02_rmsnorm/mod.rs"]
pub mod ch02_rmsnorm;
#[path = "../chapters/ch03_feed_forward/mod.rs"]
pub mod ch03_feed_forward;
#[path = "../chapters/ch04_rope/mod.rs"]
pub mod ch04_rope;
#[path = "../chapters/ch05_attention/mod.rs"]
pub mod ch05_attention;
#[path = "../chapters/ch06_transformer/mod.rs"]
pub mod ch06_transformer;
#[path = "../chapters/ch07_loss/mod.rs"]
pub mod ch07_loss;
#[path = "../chapters/ch08_autograd/mod.rs"]
pub mod ch08_autograd;
#[path = "../chapters/ch09_optimizers/mod.rs"]
pub mod ch09_optimizers;
#[path = "../chapters/ch10_schedule/mod.rs"]
pub mod ch10_schedule;
#[path = "../chapters/ch11_training/mod.rs"]
pub mod ch11_training;

pub mod backend;

#[cfg(test)]
pub(crate) mod testing;

pub use graph::error::{CourseError, Result};

/// What a notebook or example usually needs: luminal's prelude, the course's infrastructure and
/// every chapter's public items.
pub mod prelude {
    pub use crate::backend::Device;
    pub use crate::ch00_graphs::*;
    pub use crate::ch01_linear::*;
    pub use crate::ch02_rmsnorm::*;
    pub use crate::ch03_feed_forward::*;
    pub use crate::ch04_rope::*;
    pub use crate::ch05_attention::*;
    pub use crate::ch06_transformer::*;
    pub use crate::ch07_loss::*;
    pub use crate::ch08_autograd::*;
    pub use crate::ch09_optimizers::*;
    pub use crate::ch10_schedule::*;
    pub use crate::ch11_training::*;
    pub use crate::graph::dims::*;
    pub use crate::graph::error::{CourseError, Result};
    pub use crate::graph::flat::Flat;
    pub use crate::graph::init;
    pub use crate::graph::params::{self, Param, Parameters, StateDict};
    pub use crate::graph::primitive::{self, op_counts};
    pub use crate::graph::tensor::{self, HostTensor};
    pub use crate::graph::viz;
    pub use crate::plot;
    pub use luminal::prelude::*;
}
