//! Moving numbers in and out of graphs: named inputs, shape-checked `set`, and `read`.
//!
//! luminal's typed tensors carry their shape in the type (`GraphTensor<(Dyn<'b'>, Dyn<'d'>)>`),
//! but the sizes of `Dyn` dimensions are only known when data arrives. These helpers check the
//! data against the type, bind each symbolic dimension in the graph's dyn map, and refuse
//! conflicting sizes with an error that names the tensor and the dimension.
//! See the book's [introduction](../../../book/introduction.html#shapes).

use std::borrow::Cow;
use std::fmt;

use luminal::prelude::*;

use crate::graph::error::{CourseError, Result};

/// Suffix that marks input nodes created by [`input`], so [`check_ready`] can find unset ones.
const INPUT_SUFFIX: &str = " (input)";

/// A plain host-side tensor: row-major data plus its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Size of each dimension, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values; `data.len()` equals the product of `shape`.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Pair data with a shape, checking that they agree.
    pub fn new(shape: &[usize], data: Vec<f32>) -> Result<Self> {
        check_len("host tensor", shape, data.len())?;
        Ok(Self {
            shape: shape.to_vec(),
            data,
        })
    }

    /// The value at a multi-index (row-major).
    pub fn at(&self, index: &[usize]) -> f32 {
        assert_eq!(index.len(), self.shape.len(), "index rank != tensor rank");
        let flat = index.iter().zip(&self.shape).fold(0, |acc, (&i, &n)| {
            assert!(i < n, "index {i} out of bounds for dimension of size {n}");
            acc * n + i
        });
        self.data[flat]
    }
}

impl fmt::Display for HostTensor {
    /// Prints the shape, then the values with the last dimension as rows.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "shape {:?}", self.shape)?;
        let row = self.shape.last().copied().unwrap_or(1).max(1);
        for chunk in self.data.chunks(row) {
            let cells: Vec<String> = chunk.iter().map(|v| format!("{v:>9.4}")).collect();
            writeln!(f, "[{}]", cells.join(" "))?;
        }
        Ok(())
    }
}

fn check_len(what: &str, shape: &[usize], got: usize) -> Result<()> {
    let expected = shape.iter().product::<usize>();
    if expected != got {
        return Err(CourseError::DataLength {
            what: what.to_string(),
            shape: shape.to_vec(),
            expected,
            got,
        });
    }
    Ok(())
}

/// A new input node of shape `S`, named so that errors and graph pictures can say which it is.
pub fn input<S: Shape>(cx: &mut Graph, name: &str) -> GraphTensor<S> {
    let t = cx.named_tensor::<S>(name);
    let label = format!("{name}{INPUT_SUFFIX}");
    t.set_name(&label);
    t
}

/// Rename the graph input `id` (made by [`input`]) to `name`.
/// Other nodes (e.g. after compilation replaced the input) are left as they are.
pub fn label_input(cx: &mut Graph, id: NodeIndex, name: &str) {
    let node = cx.graph.node_weight_mut(id);
    if let Some(f) = node.and_then(|op| op.as_any_mut().downcast_mut::<luminal::op::Function>()) {
        f.0 = format!("{name}{INPUT_SUFFIX}");
    }
}

/// The name given to [`input`] (or luminal's label for other nodes).
pub fn name_of<S: Shape>(t: GraphTensor<S>) -> String {
    let label = format!(
        "{:?}",
        t.graph().graph.node_weight(t.id).expect("node exists")
    );
    label.trim_end_matches(INPUT_SUFFIX).to_string()
}

/// Bind dimension `D` to `size` in the graph's dyn map (for `Dyn` dims), or check it (for `Const`).
///
/// `what` names the caller in the error message when the size conflicts with an earlier binding.
pub fn bind_dim<D: Dimension>(cx: &mut Graph, size: usize, what: &str) -> Result<()> {
    bind_expr(&mut cx.dyn_map, D::const_size(), size, what, false)
}

fn bind_expr<H: std::hash::BuildHasher>(
    dyn_map: &mut std::collections::HashMap<char, usize, H>,
    dim: symbolic::Expression,
    size: usize,
    what: &str,
    rebind: bool,
) -> Result<()> {
    if let Some(n) = dim.to_usize() {
        if n != size {
            return Err(CourseError::Shape {
                what: what.to_string(),
                expected: format!("a dimension of size {n}"),
                got: vec![size],
            });
        }
        return Ok(());
    }
    let sym = dim
        .to_symbols()
        .pop()
        .expect("a dimension is a number or a symbol");
    match dyn_map.get(&sym) {
        Some(&bound) if bound != size && !rebind => Err(CourseError::DimConflict {
            dim: sym,
            bound,
            requested: size,
            what: what.to_string(),
        }),
        _ => {
            dyn_map.insert(sym, size);
            Ok(())
        }
    }
}

/// The runtime shape of a graph tensor, with symbolic dims resolved from the dyn map.
pub fn shape_of<S: Shape>(t: GraphTensor<S>) -> Result<Vec<usize>> {
    let dyn_map = &t.graph().dyn_map;
    t.shape
        .shape()
        .into_iter()
        .map(|d| {
            d.exec(dyn_map).ok_or_else(|| {
                let sym = d
                    .to_symbols()
                    .into_iter()
                    .find(|c| !dyn_map.contains_key(c));
                CourseError::UnboundDim {
                    dim: sym.unwrap_or('?'),
                }
            })
        })
        .collect()
}

/// Give a tensor its data (and its symbolic dims their sizes) and keep it across executions.
///
/// Every `Dyn` dimension of `S` is (re)bound to the matching entry of `shape`: inputs such as a
/// batch may change size between runs. Use [`set_fixed`] for weights, whose sizes must not move.
pub fn set<S: Shape>(t: GraphTensor<S>, shape: &[usize], data: Vec<f32>) -> Result<()> {
    set_impl(t, shape, data, true)
}

/// Like [`set`], but a `Dyn` dimension that already has a different size is an error.
pub fn set_fixed<S: Shape>(t: GraphTensor<S>, shape: &[usize], data: Vec<f32>) -> Result<()> {
    set_impl(t, shape, data, false)
}

fn set_impl<S: Shape>(
    t: GraphTensor<S>,
    shape: &[usize],
    data: Vec<f32>,
    rebind: bool,
) -> Result<()> {
    let what = name_of(t);
    let dims = S::realized_shape();
    if dims.len() != shape.len() {
        return Err(CourseError::Shape {
            what,
            expected: format!("{} dimensions {}", dims.len(), describe(&dims)),
            got: shape.to_vec(),
        });
    }
    check_len(&what, shape, data.len())?;
    let cx = t.graph();
    // Check everything before binding anything, so a failed call changes nothing.
    let mut trial = cx.dyn_map.clone();
    for (dim, &size) in dims.iter().zip(shape) {
        bind_expr(&mut trial, *dim, size, &what, rebind)?;
    }
    cx.dyn_map = trial;
    cx.set_tensor(t.id, 0, Tensor::new(data));
    cx.keep_tensors(t.id);
    Ok(())
}

/// A readable form of a shape type, e.g. `[b, 3]`.
pub fn describe(dims: &[symbolic::Expression]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| match d.to_usize() {
            Some(n) => n.to_string(),
            None => d.to_symbols().iter().collect(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Read a computed tensor back in logical (row-major) order, through any view it carries.
///
/// The tensor must have been marked with `.retrieve()` (or `.keep()`) before compiling.
pub fn read<S: Shape>(t: GraphTensor<S>) -> Result<HostTensor> {
    let shape = shape_of(t)?;
    let cx = t.graph();
    let physical = host_values(cx, t.id, &format!("tensor {:?} ({})", t.id, name_of(t)))?;
    let mut tracker = t.shape;
    tracker.resolve_global_dyn_dims(&cx.dyn_map);
    let (index, valid) = (tracker.index_expression(), tracker.valid_expression());
    let data = (0..shape.iter().product::<usize>())
        .map(|i| {
            if valid.exec_single_var(i) != 0 {
                physical[index.exec_single_var(i)]
            } else {
                0.0 // padding reads as zero
            }
        })
        .collect();
    HostTensor::new(&shape, data)
}

/// The buffer of a kept node, by id (for nodes without a typed handle: gradients, optimiser
/// state, a clipping norm). Physical order; `what` names it in the error if it has no value.
pub fn read_node<'a>(cx: &'a Graph, id: NodeIndex, what: &str) -> Result<Cow<'a, [f32]>> {
    host_values(cx, id, what)
}

/// The one device-aware read every result goes through: the physical buffer of node `id` on
/// the host. On the CPU a borrow; on CUDA a copy back from the GPU
/// ([`to_host`]). `what` names the value in the error if it has none.
pub fn host_values<'a>(cx: &'a Graph, id: NodeIndex, what: &str) -> Result<Cow<'a, [f32]>> {
    let tensor = cx
        .get_tensor_ref(id, 0)
        .ok_or_else(|| CourseError::NotComputed { what: what.into() })?;
    to_host(tensor).ok_or_else(|| CourseError::NotComputed {
        what: format!("{what} (its data is of a kind no device here can read)"),
    })
}

/// Check that a graph can run: every [`input`] has data and every symbolic dim has a size.
pub fn check_ready(cx: &Graph) -> Result<()> {
    for node in cx.graph.node_indices() {
        let op = cx.graph.node_weight(node).expect("node exists");
        if let Some(f) = op.as_any().downcast_ref::<luminal::op::Function>() {
            let unset = f.0.ends_with(INPUT_SUFFIX) && !cx.tensors.contains_key(&(node, 0));
            if unset {
                return Err(CourseError::InputNotSet {
                    name: f.0.trim_end_matches(INPUT_SUFFIX).to_string(),
                });
            }
        }
    }
    for edge in cx.graph.edge_weights() {
        if let Some((_, _, tracker)) = edge.as_data() {
            let exprs = tracker.dims.iter().chain(
                tracker
                    .slices
                    .iter()
                    .chain(tracker.padding.iter())
                    .flat_map(|(a, b)| [a, b]),
            );
            for e in exprs {
                if let Some(dim) = e
                    .to_symbols()
                    .into_iter()
                    .find(|c| !cx.dyn_map.contains_key(c))
                {
                    return Err(CourseError::UnboundDim { dim });
                }
            }
        }
    }
    Ok(())
}

/// Check readiness ([`check_ready`]), then execute the graph.
pub fn execute(cx: &mut Graph) -> Result<()> {
    check_ready(cx)?;
    cx.execute();
    Ok(())
}

/// The values of a computed tensor on the host, wherever the tensor lives: a borrow of a CPU
/// buffer, or (CUDA) a copy back through `luminal_cuda`'s own copy-from-device op. `None` when
/// the data is of a kind neither knows. Every read of a result goes through here
/// ([`host_values`]).
pub fn to_host(tensor: &Tensor) -> Option<std::borrow::Cow<'_, [f32]>> {
    if let Some(v) = tensor.data.as_any().downcast_ref::<Vec<f32>>() {
        return Some(std::borrow::Cow::Borrowed(v.as_slice()));
    }
    #[cfg(feature = "cuda")]
    if let Some(v) = crate::graph::cuda::copy_to_host(tensor) {
        return Some(std::borrow::Cow::Owned(v));
    }
    None
}
