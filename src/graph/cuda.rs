//! Device data on CUDA: is there a GPU, and how a device buffer comes back to the host (the
//! foundation's reads, [`crate::graph::tensor::host_values`], and `Device::Cuda` use it).
//!
//! `luminal_cuda` 0.2.0 keeps its device buffer type's field and its copy ops private. Its
//! compiler inserts a `CudaCopyFromDevice` op in front of every node in `to_retrieve`, so those
//! arrive on the host by themselves; other kept values (the weights and AdamW's moments, which
//! stay on the GPU between steps and are read for a checkpoint) are read on demand by running
//! that same op, taken once from a tiny compiled graph, on the device buffer. See the book's appendix B,
//! "CUDA".

use std::cell::RefCell;

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

use crate::graph::error::CourseError;

/// Whether GPU 0 can be opened; the error names what failed (no driver, no device, ...).
pub fn check_gpu() -> Result<(), CourseError> {
    luminal_cudarc::driver::CudaDevice::new(0)
        .map(|_| ())
        .map_err(|e| {
            CourseError::Config(format!(
                "device 'cuda': no usable CUDA GPU ({e:?}); run on the CPU with --device cpu"
            ))
        })
}

thread_local! {
    /// luminal_cuda's copy-from-device op, taken out of a compiled one-node graph on first use.
    static COPY_BACK: RefCell<Option<Box<dyn Operator>>> = const { RefCell::new(None) };
}

fn copy_back_op() -> Option<Box<dyn Operator>> {
    check_gpu().ok()?;
    let mut cx = Graph::new();
    let x = cx.named_tensor::<R1<1>>("x");
    let mut y = (x * 2.0).retrieve();
    cx.compile(luminal_cuda::CudaCompiler::<f32>::default(), &mut y);
    let id = cx.graph.node_indices().find(|&n| {
        format!("{:?}", cx.graph.node_weight(n).expect("node")) == "CudaCopyFromDevice"
    })?;
    cx.graph.remove_node(id)
}

/// A device buffer's values on the host, or `None` if `tensor` is not one.
pub fn copy_to_host(tensor: &Tensor) -> Option<Vec<f32>> {
    COPY_BACK.with(|op| {
        let mut op = op.borrow_mut();
        if op.is_none() {
            *op = copy_back_op();
        }
        let out = op.as_mut()?.process(vec![(
            InputTensor::Borrowed(tensor),
            ShapeTracker::new(&[]),
        )]);
        out.into_iter()
            .next()?
            .data
            .as_any()
            .downcast_ref::<Vec<f32>>()
            .cloned()
    })
}
