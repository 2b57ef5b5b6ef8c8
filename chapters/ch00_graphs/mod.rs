//! # Chapter 0 — Graphs: what luminal is
//!
//! luminal does not compute when you write `a * b`: it records a node in a graph. Nothing runs
//! until the graph is compiled (rewritten by passes for a device) and executed. Every model in
//! this course is such a graph, built from 12 primitive ops; shapes live on the *edges* as
//! views, so permuting, broadcasting and slicing copy nothing.
//!
//! Book page: [Chapter 0](../../book/ch00_graphs.html).

use luminal::prelude::*;

use crate::backend::Device;
use crate::graph::dims::{In, Out, Rows};
use crate::graph::error::Result;
use crate::graph::tensor::{self, HostTensor};

/// The 12 primitive ops (defined with the graph helpers, `src/graph/primitive.rs`, because the
/// autograd of chapter 8 and the CPU backend share the list).
pub use crate::graph::primitive::Primitive;

impl Primitive {
    // ANCHOR: primitive_ref
    /// Reference semantics as plain loops, for `a` and `b` of shape (rows, cols).
    /// Reductions reduce the last dimension; `Contiguous` is applied to the transpose of `a`
    /// (a view), so it returns `a^T` materialised, shape (cols, rows).
    pub fn reference(self, a: &[f32], b: &[f32], rows: usize, cols: usize) -> HostTensor {
        // ANCHOR: learn_primitive_reference ch00: each of the 12 ops as loops on a, b (rows, cols): elementwise -> (rows, cols), Sum/MaxReduce over the last axis -> (rows,), Contiguous -> a^T (cols, rows)
        let elementwise = |f: fn(f32, f32) -> f32| {
            let data = a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect();
            HostTensor {
                shape: vec![rows, cols],
                data,
            }
        };
        let reduce = |f: fn(f32, f32) -> f32, init: f32| {
            let data = a
                .chunks(cols)
                .map(|row| row.iter().copied().fold(init, f))
                .collect();
            HostTensor {
                shape: vec![rows],
                data,
            }
        };
        match self {
            Primitive::Log2 => elementwise(|x, _| x.log2()),
            Primitive::Exp2 => elementwise(|x, _| x.exp2()),
            Primitive::Sin => elementwise(|x, _| x.sin()),
            Primitive::Sqrt => elementwise(|x, _| x.sqrt()),
            Primitive::Recip => elementwise(|x, _| 1.0 / x),
            Primitive::Add => elementwise(|x, y| x + y),
            Primitive::Mul => elementwise(|x, y| x * y),
            Primitive::Mod => elementwise(|x, y| x % y), // sign follows x, like C's fmod
            Primitive::LessThan => elementwise(|x, y| if x < y { 1.0 } else { 0.0 }),
            Primitive::SumReduce => reduce(|acc, x| acc + x, 0.0),
            Primitive::MaxReduce => reduce(f32::max, f32::NEG_INFINITY),
            Primitive::Contiguous => {
                let mut data = vec![0.0; rows * cols];
                for r in 0..rows {
                    for c in 0..cols {
                        data[c * rows + r] = a[r * cols + c];
                    }
                }
                HostTensor {
                    shape: vec![cols, rows],
                    data,
                }
            }
        }
        // ANCHOR_END: learn_primitive_reference
    }
    // ANCHOR_END: primitive_ref

    // ANCHOR: primitive_graph
    /// The same op as a graph node, through luminal's high-level API.
    /// The result is shapeless (`GraphTensor<()>`) because reductions change the rank.
    pub fn apply(self, a: GraphTensor<(Rows, In)>, b: GraphTensor<(Rows, In)>) -> GraphTensor<()> {
        // ANCHOR: learn_primitive_apply ch00: each op through the GraphTensor API (log2, exp2, ..., sum_reduce/max_reduce over Axis<1>, permute then contiguous), .no_shape() on each result
        match self {
            Primitive::Log2 => a.log2().no_shape(),
            Primitive::Exp2 => a.exp2().no_shape(),
            Primitive::Sin => a.sin().no_shape(),
            Primitive::Sqrt => a.sqrt().no_shape(),
            Primitive::Recip => a.recip().no_shape(),
            Primitive::Add => (a + b).no_shape(),
            Primitive::Mul => (a * b).no_shape(),
            Primitive::Mod => (a % b).no_shape(),
            Primitive::LessThan => a.less_than(b).no_shape(),
            Primitive::SumReduce => a.sum_reduce::<(Rows,), Axis<1>>().no_shape(),
            Primitive::MaxReduce => a.max_reduce::<(Rows,), Axis<1>>().no_shape(),
            Primitive::Contiguous => a
                .permute::<(In, Rows), Axes2<1, 0>>()
                .contiguous()
                .no_shape(),
        }
        // ANCHOR_END: learn_primitive_apply
    }
    // ANCHOR_END: primitive_graph
}

/// Build, compile and run one primitive on `a`, `b` of shape (rows, cols); read the result.
pub fn run_primitive(
    op: Primitive,
    a: &[f32],
    b: &[f32],
    rows: usize,
    cols: usize,
    device: Device,
) -> Result<HostTensor> {
    let mut cx = Graph::new();
    let mut ta = tensor::input::<(Rows, In)>(&mut cx, "a");
    let mut tb = tensor::input::<(Rows, In)>(&mut cx, "b");
    let mut out = op.apply(ta, tb).retrieve();
    device.compile(&mut cx, (&mut ta, &mut tb, &mut out));
    tensor::set(ta, &[rows, cols], a.to_vec())?;
    tensor::set(tb, &[rows, cols], b.to_vec())?;
    tensor::execute(&mut cx)?;
    tensor::read(out)
}

// ANCHOR: matmul_ref
/// Matrix product as three loops: `x` (n, k) times `w` (k, m) gives (n, m).
pub fn matmul_ref(x: &[f32], w: &[f32], n: usize, k: usize, m: usize) -> Vec<f32> {
    // ANCHOR: learn_matmul_ref ch00: y[i, j] = sum_p x[i, p] * w[p, j]; x (n, k), w (k, m) row-major -> y (n, m)
    let mut y = vec![0.0; n * m];
    for i in 0..n {
        for j in 0..m {
            y[i * m + j] = (0..k).map(|p| x[i * k + p] * w[p * m + j]).sum();
        }
    }
    y
    // ANCHOR_END: learn_matmul_ref
}
// ANCHOR_END: matmul_ref

// ANCHOR: affine
/// The handles of a small graph `y = x W + c`: (n, k) x (k, m) + a (m,) row broadcast.
pub struct Affine {
    /// Input `x` (n, k).
    pub x: GraphTensor<(Rows, In)>,
    /// Input weight `W` (k, m).
    pub w: GraphTensor<(In, Out)>,
    /// Input bias `c` (m,), broadcast over the rows of `x W`.
    pub c: GraphTensor<(Out,)>,
    /// Output `y = x W + c` (n, m), marked for retrieval.
    pub y: GraphTensor<(Rows, Out)>,
}

/// Record `y = x W + c` in `cx`. Nothing is computed here: each line adds nodes.
pub fn affine(cx: &mut Graph) -> Affine {
    // ANCHOR: learn_affine ch00: inputs "x" (Rows, In), "W" (In, Out), "c" (Out,); y = x.matmul(W) + c expanded along Axis<0> to (Rows, Out), retrieved
    let x = tensor::input::<(Rows, In)>(cx, "x");
    let w = tensor::input::<(In, Out)>(cx, "W");
    let c = tensor::input::<(Out,)>(cx, "c");
    // matmul = broadcast multiply (n, m, k) + SumReduce over k; expand is a view (no node).
    let y = x.matmul(w) + c.expand::<(Rows, Out), Axis<0>>();
    Affine {
        x,
        w,
        c,
        y: y.retrieve(),
    }
    // ANCHOR_END: learn_affine
}
// ANCHOR_END: affine

impl Affine {
    /// Every handle, for `Device::compile`'s remap.
    pub fn handles(&mut self) -> impl ToIdsMut + '_ {
        (&mut self.x, &mut self.w, &mut self.c, &mut self.y)
    }

    /// Feed x (n, k), W (k, m), c (m,); execute; read y (n, m).
    pub fn run(
        &self,
        x: &[f32],
        w: &[f32],
        c: &[f32],
        n: usize,
        k: usize,
        m: usize,
    ) -> Result<HostTensor> {
        tensor::set(self.x, &[n, k], x.to_vec())?;
        tensor::set(self.w, &[k, m], w.to_vec())?;
        tensor::set(self.c, &[m], c.to_vec())?;
        tensor::execute(self.x.graph())?;
        tensor::read(self.y)
    }
}

// ANCHOR: views
/// Views cost nothing: permute, expand (broadcast) and slice only change the edge's
/// `ShapeTracker`. Returns (nodes before, nodes after) taking three views of `x`.
pub fn views_add_no_nodes(cx: &mut Graph) -> (usize, usize) {
    let x = tensor::input::<(Rows, In)>(cx, "x");
    let before = cx.graph.node_count();
    let _transposed: GraphTensor<(In, Rows)> = x.permute::<_, Axes2<1, 0>>();
    let _broadcast: GraphTensor<(Rows, In, Out)> = x.expand::<_, Axis<2>>();
    let _first_row = x.slice((..symbolic::Expression::from(1), ..));
    (before, cx.graph.node_count())
}
// ANCHOR_END: views

/// A one-paragraph tour of this chapter, printed by `cargo run --release -- tour`.
pub fn graphs_demo() -> Result<String> {
    let mut cx = Graph::new();
    let mut g = affine(&mut cx);
    let before = cx.graph.node_count();
    Device::Cpu.compile(&mut cx, g.handles());
    let after = cx.graph.node_count();
    let y = g.run(&[1., 2., 3., 4.], &[1., 0., 0., 1.], &[10., 20.], 2, 2, 2)?;
    Ok(format!(
        "y = x W + c with x = [[1, 2], [3, 4]], W = I, c = [10, 20] -> {:?}\n\
         graph: {before} nodes as built, {after} after compiling for the CPU \
         (Mul + SumReduce became one MatMul2D)",
        y.data
    ))
}

#[cfg(test)]
mod tests;
