//! One error type for the whole course: every message names the tensor, file or setting at fault.

use std::path::PathBuf;

/// Everything that can go wrong when a learner feeds the course's code bad input.
#[derive(Debug, thiserror::Error)]
pub enum CourseError {
    /// Data whose length does not match the shape it is given with.
    #[error("{what}: shape {shape:?} needs {expected} values, but {got} were given")]
    DataLength {
        /// The tensor or input the data was for.
        what: String,
        /// The shape the data was given with.
        shape: Vec<usize>,
        /// Number of values that shape needs (its product).
        expected: usize,
        /// Number of values actually given.
        got: usize,
    },
    /// A shape that does not match what the graph (or a layer) was built for.
    #[error("{what}: expected shape {expected}, got {got:?}")]
    Shape {
        /// The tensor, input or layer whose shape is wrong.
        what: String,
        /// The expected shape, written out for the message (e.g. `(batch, seq, d_model)`).
        expected: String,
        /// The shape actually given.
        got: Vec<usize>,
    },
    /// A symbolic dimension bound to two different sizes.
    #[error("dimension '{dim}' is already {bound}, so {what} cannot make it {requested}")]
    DimConflict {
        /// The symbolic dimension, e.g. `'s'`.
        dim: char,
        /// The size it is already bound to.
        bound: usize,
        /// The different size that was asked for.
        requested: usize,
        /// The input or call that asked for it.
        what: String,
    },
    /// A symbolic dimension that the graph uses but nobody gave a size.
    #[error("dimension '{dim}' has no size: set an input that uses it, or call cx.set_dyn_dim('{dim}', n)")]
    UnboundDim {
        /// The symbolic dimension with no size.
        dim: char,
    },
    /// An input node that was never given data.
    #[error("input '{name}' has no value: call tensor::set on it before executing")]
    InputNotSet {
        /// The input's name.
        name: String,
    },
    /// A tensor read back that the graph did not keep.
    #[error(
        "{what} has no value: mark it with .retrieve() before compiling, then execute the graph"
    )]
    NotComputed {
        /// The tensor that was read.
        what: String,
    },
    /// A value outside its allowed range (token ids, hyperparameters, ...).
    #[error("{what}: {problem}")]
    OutOfRange {
        /// The value or setting at fault.
        what: String,
        /// What is wrong with it and, where possible, the allowed range.
        problem: String,
    },
    /// A configuration that cannot describe a valid model.
    #[error("invalid config: {0}")]
    Config(String),
    /// A file that could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file being read or written.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A state dict that does not fit the model (missing or unexpected tensors).
    #[error("state dict: {0}")]
    StateDict(String),
    /// A file that exists but whose contents are wrong (corrupt, truncated, wrong format).
    #[error("{path}: {problem}")]
    File {
        /// The file with bad contents.
        path: PathBuf,
        /// What is wrong with them.
        problem: String,
    },
    /// A graph the autograd pass cannot differentiate (names the node and op).
    #[error("autograd: {0}")]
    Autograd(String),
    /// Training produced a NaN or infinite loss or gradient (the message says where).
    #[error("non-finite values: {0}")]
    NonFinite(String),
    /// A run stopped on request (e.g. Ctrl-C) at this step, after saving what it had.
    #[error("interrupted at step {0}")]
    Interrupted(u64),
    /// A graph picture that could not be laid out.
    #[error("could not render the graph picture: {0}")]
    Render(String),
}

/// `Result` with [`CourseError`].
pub type Result<T, E = CourseError> = std::result::Result<T, E>;
