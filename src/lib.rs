//! # transformer-course
//!
//! Build and train a transformer language model step by step, on the
//! [luminal](https://crates.io/crates/luminal) deep-learning library.
//!
//! The numbered chapters (`chapters/` in the repository) are the lessons; each reads top to
//! bottom like its book page: the math as a plain-Rust reference, then the luminal graph
//! version, then the tests that tie them together. The modules under `src/` are
//! infrastructure: device selection, tensor I/O, initialisation and graph pictures.

pub mod cli;
pub mod device;
pub mod dims;
pub mod error;
pub mod fast_cpu;
pub mod files;
pub mod init;
pub mod params;
pub mod plot;
pub mod tensor;
#[cfg(test)]
pub(crate) mod testing;
pub mod viz;

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

pub use error::{CourseError, Result};

/// What a notebook or example usually needs: luminal's prelude, the course's infrastructure and
/// every chapter's public items.
pub mod prelude {
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
    pub use crate::device::Device;
    pub use crate::dims::*;
    pub use crate::error::{CourseError, Result};
    pub use crate::init;
    pub use crate::params::{self, Param, Parameters, StateDict};
    pub use crate::plot;
    pub use crate::tensor::{self, HostTensor};
    pub use crate::viz;
    pub use luminal::prelude::*;
}

/// Each chapter's demo, in order: (title, result). Printed by the `tour` command.
pub fn tour() -> Vec<(&'static str, Result<String>)> {
    vec![
        ("0. Graphs", ch00_graphs::graphs_demo()),
        ("1. Linear and embedding", ch01_linear::linear_demo()),
        ("2. RMSNorm and LayerNorm", ch02_rmsnorm::norm_demo()),
        ("3. Feed-forward (SwiGLU)", ch03_feed_forward::ffn_demo()),
        ("4. Rotary position embedding", ch04_rope::rope_demo()),
        ("5. Attention", ch05_attention::attention_demo()),
        ("6. The transformer", ch06_transformer::transformer_demo()),
        ("7. The loss", ch07_loss::loss_demo()),
    ]
}
