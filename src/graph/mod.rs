//! The foundation every chapter builds on: moving tensors in and out of graphs, the symbolic
//! dimensions, seeded initialisation, errors, files written atomically, named parameters and
//! their files, the primitive ops and graph queries, flat-buffer graph math, and pictures of
//! graphs. Nothing here imports a chapter or the backend.

#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dims;
pub mod error;
pub mod files;
pub mod flat;
pub mod init;
pub mod params;
pub mod primitive;
pub mod tensor;
pub mod viz;

pub use flat::Flat;
pub use primitive::Primitive;
