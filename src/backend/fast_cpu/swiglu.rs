//! Chapter 3's SwiGLU gate, `h = silu(a) * v` with `silu(a) = a * 1 / (2^(-a·log2 e) + 1)`, and
//! chapter 8's backward of it, as three elementwise kernels instead of about fifteen ops.
//!
//! Built from primitives, the gate is six ops forward, whose intermediates (`e`, `r`,
//! `silu(a)`) the backward reads again, so they cannot be fused away: four passes over a
//! (batch, seq, d_ff) tensor forward and about eight backward. [`FuseSwiGlu`] recognises the
//! exact chain and swaps in [`SwiGluGate`] (`h`), [`SwiGluGradGate`] (`dL/da`) and
//! [`SwiGluGradValue`] (`dL/dv`), which recompute `e` and `r` from `a` instead of reading them.
//! A graph without the backward is left alone: there the chain fuses into one op by itself.
//! Each kernel runs the graph's own float operations, constants and order, so the results are
//! the same bits.

use luminal::op::{self, InputTensor, Operator};
use luminal::prelude::*;

use super::attention::{Src, G};
use super::{data, exp2, fuse, is_plain, par_rows};

/// The constants of the chain, read off the graph.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GateConsts {
    /// `log2 e`, the multiplier of `exp2` in luminal's `exp`.
    pub log2e: f32,
    /// `ln 2`, which the autograd's rule for `exp2` multiplies by.
    pub ln2: f32,
}

/// The forward's values for one element: `(e, r, silu)`, op for op as the graph computes them.
#[inline(always)]
fn gate(a: f32, c: GateConsts) -> (f32, f32, f32) {
    let e = exp2(-a * c.log2e); // the graph's `a * -1`: negation is exact, the same bits
    let r = 1.0 / (e + 1.0);
    (e, r, a * r)
}

/// `out[i] = f(x[i], y[i], z[i])` over equally long inputs (`z` may be `y` when unused), on the
/// backend's threads, as zipped iterators so that the loop vectorises.
fn map3(x: &[f32], y: &[f32], z: &[f32], f: impl Fn(f32, f32, f32) -> f32 + Sync) -> Vec<Tensor> {
    let n = x.len();
    assert!(
        y.len() == n && z.len() == n,
        "SwiGLU kernels read equally long plain inputs"
    );
    let mut out = vec![0.0f32; n];
    par_rows(&mut out, 1, |part, first| {
        let range = first..first + part.len();
        let (x, y, z) = (&x[range.clone()], &y[range.clone()], &z[range]);
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (just checked).
            unsafe { zip3_avx2(part, x, y, z, &f) };
            return;
        }
        zip3(part, x, y, z, &f);
    });
    vec![Tensor::new(out)]
}

#[inline(always)]
fn zip3(out: &mut [f32], x: &[f32], y: &[f32], z: &[f32], f: &impl Fn(f32, f32, f32) -> f32) {
    for (o, ((x, y), z)) in out.iter_mut().zip(x.iter().zip(y).zip(z)) {
        *o = f(*x, *y, *z);
    }
}

/// [`zip3`] compiled for AVX2 (8 floats per instruction; the same operations, so the same
/// results, as in `fuse.rs`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn zip3_avx2(
    out: &mut [f32],
    x: &[f32],
    y: &[f32],
    z: &[f32],
    f: &impl Fn(f32, f32, f32) -> f32,
) {
    zip3(out, x, y, z, f)
}

/// `h = silu(a) * v`. Inputs `a`, `v`.
#[derive(Clone, PartialEq)]
pub struct SwiGluGate(pub GateConsts);

impl Operator for SwiGluGate {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let (a, v) = (data(&inp[0].0), data(&inp[1].0));
        let c = self.0;
        map3(a, v, v, |a, v, _| gate(a, c).2 * v)
    }
}

/// `dL/da` given `dh`. Inputs `a`, `v`, `dh`.
#[derive(Clone, PartialEq)]
pub struct SwiGluGradGate(pub GateConsts);

impl Operator for SwiGluGradGate {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let (a, v, dh) = (data(&inp[0].0), data(&inp[1].0), data(&inp[2].0));
        let c = self.0;
        map3(a, v, dh, |a, v, dh| {
            let (e, r, _) = gate(a, c);
            let t1 = dh * v; // d silu
            let direct = t1 * r; // through the product a * r
                                 // through r = 1 / (e + 1) and e = 2^(-a log2 e), as the autograd's rules chain
                                 // (the graph's two `* -1` are the two negations)
            let through_e = -(-(t1 * a * r * r) * e * c.ln2 * c.log2e);
            direct + through_e
        })
    }
}

/// `dL/dv = dh * silu(a)`. Inputs `a`, `dh`.
#[derive(Clone, PartialEq)]
pub struct SwiGluGradValue(pub GateConsts);

// Listings show the kernel's name only (its constants are the graph's).
impl std::fmt::Debug for SwiGluGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SwiGluGate")
    }
}

impl std::fmt::Debug for SwiGluGradGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SwiGluGradGate")
    }
}

impl std::fmt::Debug for SwiGluGradValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SwiGluGradValue")
    }
}

impl Operator for SwiGluGradValue {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let (a, dh) = (data(&inp[0].0), data(&inp[1].0));
        let c = self.0;
        map3(a, dh, dh, |a, dh, _| dh * gate(a, c).2)
    }
}

/// The pass: see the module docs. Run it before [`super::FuseElementwise`].
#[derive(Debug, Default)]
pub struct FuseSwiGlu;

/// Which kernel replaces a node.
enum Kernel {
    Gate,
    GradGate,
    GradValue,
}

struct Found {
    consts: GateConsts,
    /// (node replaced, its kernel, the kernel's inputs)
    swaps: Vec<(NodeIndex, Kernel, Vec<Src>)>,
    /// Every node to remove after the swaps.
    nodes: Vec<NodeIndex>,
}

fn find(g: &G, e: NodeIndex) -> Option<Found> {
    let plain = |s: &Src| is_plain(&s.2);
    // e = 2^((a * -1) * log2 e), d = e + 1, r = 1 / d, s = a * r, h = s * v
    let [x] = <[Src; 1]>::try_from(g.srcs(e)).ok()?;
    let n1 = g
        .srcs(x.0)
        .into_iter()
        .find(|s| g.constant(s.0).is_none())?
        .0;
    let log2e = g.constant(g.other::<op::Mul>(x.0, n1, false)?.0)?;
    let a = g.other::<op::Mul>(
        n1,
        g.srcs(n1).iter().find(|s| g.is_const(s.0, -1.0))?.0,
        false,
    )?;
    if (log2e - std::f32::consts::LOG2_E).abs() > 1e-6 || !plain(&a) {
        return None;
    }
    let d = g.next::<op::Add>(e, |s| g.is_const(s.0, 1.0))?;
    let r = g.next1::<op::Recip>(d, |_| true)?;
    let silu = g.next::<op::Mul>(r, |s| s.0 == a.0 && s.2 == a.2)?;
    let h = g.consumers(silu).into_iter().find(|&c| {
        g.other::<op::Mul>(c, silu, false)
            .is_some_and(|v| plain(&v) && v.0 != silu)
    })?;
    let v = g.other::<op::Mul>(h, silu, false)?;
    let forward = [n1, x.0, e, d, r, silu];
    let mut nodes: Vec<NodeIndex> = forward.to_vec();
    nodes.push(h);
    let inside = |n: &NodeIndex, set: &[NodeIndex], ends: &[NodeIndex]| {
        g.consumers(*n)
            .iter()
            .all(|c| set.contains(c) || ends.contains(c))
    };
    let mut consts = GateConsts {
        log2e,
        ln2: std::f32::consts::LN_2,
    };
    let mut swaps = vec![(h, Kernel::Gate, vec![a, v])];
    if forward.iter().all(|n| inside(n, &nodes, &[])) {
        // No backward reads the intermediates: `FuseElementwise` makes the chain one op anyway.
        return None;
    }
    // The backward: dv = dh * s, then da through both factors of s = a * r.
    let dv = g
        .consumers(silu)
        .into_iter()
        .find(|&c| c != h && g.is::<op::Mul>(c))?;
    let dh = g.other::<op::Mul>(dv, silu, false)?;
    if !plain(&dh) {
        return None;
    }
    let t1 = g.next::<op::Mul>(dh.0, |s| s.0 == v.0 && s.2 == v.2)?;
    let t3 = g.next::<op::Mul>(t1, |s| s.0 == r)?;
    let t4 = g.next::<op::Mul>(t1, |s| s.0 == a.0)?;
    let t5 = g.next::<op::Mul>(t4, |s| s.0 == r)?;
    let t6 = g.next::<op::Mul>(t5, |s| s.0 == r)?;
    let t7 = g.next::<op::Mul>(t6, |s| g.is_const(s.0, -1.0))?;
    let t8 = g.next::<op::Mul>(t7, |s| s.0 == e)?;
    let t9 = g.next::<op::Mul>(t8, |s| g.is_const(s.0, std::f32::consts::LN_2))?;
    consts.ln2 = g.constant(g.other::<op::Mul>(t9, t8, false)?.0)?;
    let t10 = g.next::<op::Mul>(t9, |s| g.is_const(s.0, log2e))?;
    let t11 = g.next::<op::Mul>(t10, |s| g.is_const(s.0, -1.0))?;
    let da = g.next::<op::Add>(t11, |s| s.0 == t3)?;
    let back = [t1, t3, t4, t5, t6, t7, t8, t9, t10, t11];
    nodes.extend(back);
    let ends = [h, dv, da];
    if !nodes
        .iter()
        .filter(|n| **n != h)
        .all(|n| inside(n, &nodes, &ends))
    {
        return None;
    }
    // Every elementwise edge inside reads a plain view (the kernels index flat).
    let edges_plain = nodes.iter().chain(&[dv, da]).all(|&n| {
        g.srcs(n)
            .iter()
            .all(|s| g.constant(s.0).is_some() || is_plain(&s.2))
    });
    if !edges_plain {
        return None;
    }
    nodes.extend([dv, da]);
    swaps.push((da, Kernel::GradGate, vec![a, v, dh]));
    swaps.push((dv, Kernel::GradValue, vec![a, dh]));
    for &n in &nodes {
        let out = swaps.iter().any(|s| s.0 == n);
        if !out && (g.0.no_delete.contains(&n) || g.0.to_retrieve.contains(&n)) {
            return None;
        }
    }
    Some(Found {
        consts,
        swaps,
        nodes,
    })
}

impl Compiler for FuseSwiGlu {
    fn compile<T: ToIdsMut>(&self, graph: &mut Graph, mut remap: T) {
        let exps: Vec<NodeIndex> = graph
            .graph
            .node_indices()
            .filter(|&n| G(graph).is::<op::Exp2>(n))
            .collect();
        for e in exps {
            if !graph.graph.contains_node(e) {
                continue;
            }
            let Some(found) = find(&G(graph), e) else {
                continue;
            };
            let outputs: Vec<NodeIndex> = found.swaps.iter().map(|s| s.0).collect();
            let c = found.consts;
            for (old, kernel, inputs) in found.swaps {
                match kernel {
                    Kernel::Gate => fuse::replace(graph, &[old], SwiGluGate(c), inputs, &mut remap),
                    Kernel::GradGate => {
                        fuse::replace(graph, &[old], SwiGluGradGate(c), inputs, &mut remap)
                    }
                    Kernel::GradValue => {
                        fuse::replace(graph, &[old], SwiGluGradValue(c), inputs, &mut remap)
                    }
                }
            }
            for n in found.nodes {
                if !outputs.contains(&n) && graph.graph.contains_node(n) {
                    graph.graph.remove_node(n);
                }
            }
        }
    }
}
