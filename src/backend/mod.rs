//! The backend: where a graph runs. One call compiles it for the CPU or (with `--features cuda`)
//! for CUDA; the passes and kernels behind it live in `passes` and [`fast_cpu`].
//!
//! Chapters never name a compiler; they call [`Device::compile`]. The CPU pipeline is
//! luminal's generic passes plus matmul passes, with three 0.2.0 bugs kept out:
//! - its `MatMul2DCompiler` looks for `SumReduce(0)` where a 2D matmul has `SumReduce(2)`, so no
//!   2D matmul ever reaches sgemm: [`MatMul2DFixed`] is a corrected copy;
//! - its `EqualCompiler` computes less-than, and its `GatherCompiler` rewrites any
//!   arange/equal/mul/sum chain and then panics: both are simply left out;
//! - `RemoveSingleReductions` ignores the input's view: left out too.
//!
//! See the book's [chapter 0](../../book/ch00_graphs.html#compiling).

use luminal::prelude::*;

use crate::graph::error::CourseError;

pub mod fast_cpu;
mod passes;
pub use passes::*;

/// The devices a graph can be compiled for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// The fast CPU backend: [`CpuCompiler`]'s passes but its unary fusion, then the course's
    /// own: batched matmuls, fused attention / RoPE swap / SwiGLU kernels, elementwise fusion
    /// and strided kernels ([`FastCpuCompiler`]).
    #[default]
    Cpu,
    /// [`CpuCompiler`] with luminal's stock CPU ops: the previous pipeline, for comparison.
    CpuStock,
    /// No compilation: every primitive op runs as luminal's reference interpreter.
    /// Slow, but the plainest possible oracle.
    Interpreter,
    /// NVIDIA GPUs through `luminal_cuda` (needs `--features cuda`, a CUDA install and a GPU).
    #[cfg(feature = "cuda")]
    Cuda,
}

impl Device {
    /// Compile `cx` for this device. `remap` must hold every tensor handle you will use after
    /// compiling (inputs, weights, outputs): passes replace nodes, and the handles follow.
    pub fn compile<T: ToIdsMut>(self, cx: &mut Graph, remap: T) {
        match self {
            Device::Cpu => cx.compile(FastCpuCompiler::default(), remap),
            Device::CpuStock => cx.compile(CpuCompiler::default(), remap),
            Device::Interpreter => cx.compile((), remap),
            #[cfg(feature = "cuda")]
            Device::Cuda => {
                // luminal_cuda's compiler opens GPU 0 with an `unwrap`: say what is missing instead.
                if let Err(e) = crate::graph::cuda::check_gpu() {
                    panic!("{e}");
                }
                cx.compile(
                    (
                        ArithmeticElimination,
                        UnarySequentialElimination,
                        CSE,
                        luminal_cuda::CudaCompiler::<f32>::default(),
                    ),
                    remap,
                )
            }
        }
    }

    /// The device named by the `DEVICE` environment variable (`cpu` when it is unset), as the
    /// tests and `scripts/gpu_check.sh` choose it. An unknown name, `cuda` in a build without
    /// `--features cuda`, or `cuda` on a machine without a GPU is an error that says so.
    pub fn from_env() -> Result<Self, CourseError> {
        match std::env::var("DEVICE") {
            Ok(name) if !name.is_empty() => name.parse(),
            _ => Ok(Device::Cpu),
        }
    }

    /// Time every op of the compiled graph `cx` from now on, into [`fast_cpu::PROFILE`]
    /// (benchmarks only: the timing wrapper hides ops from later passes).
    pub fn profile_ops(cx: &mut Graph) {
        cx.compile(fast_cpu::ProfileOps, ());
    }

    /// A short name for tables and logs.
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::CpuStock => "cpu-stock",
            Device::Interpreter => "interpreter",
            #[cfg(feature = "cuda")]
            Device::Cuda => "cuda",
        }
    }
}

impl std::str::FromStr for Device {
    type Err = CourseError;

    /// `cpu`, `cpu-stock`, `interpreter` or `cuda` (the names [`Device::name`] prints).
    fn from_str(name: &str) -> Result<Self, CourseError> {
        match name {
            "cpu" => Ok(Device::Cpu),
            "cpu-stock" => Ok(Device::CpuStock),
            "interpreter" => Ok(Device::Interpreter),
            #[cfg(feature = "cuda")]
            "cuda" => crate::graph::cuda::check_gpu().map(|()| Device::Cuda),
            #[cfg(not(feature = "cuda"))]
            "cuda" => Err(CourseError::Config(
                "device 'cuda': this binary was built without the `cuda` feature \
                 (build with `cargo build --release --features cuda`)"
                    .into(),
            )),
            other => Err(CourseError::Config(format!(
                "unknown device '{other}' (expected cpu, cpu-stock, interpreter or cuda)"
            ))),
        }
    }
}
