//! Elementwise fusion: chains of elementwise ops run as one kernel, one pass over memory.
//!
//! A training step is mostly memory traffic: softmax, RMSNorm, SiLU·gate, the loss and their
//! backward passes are chains of `Add`, `Mul`, `Exp2`, `Recip`, ... each of which reads its
//! inputs from memory and writes a new tensor. [`FuseElementwise`] finds every such chain whose
//! intermediate results nobody else reads and replaces it with one [`FusedElementwise`] op: a
//! tiny program run block by block, so intermediates live in L1-sized registers and only the
//! chain's inputs and its final output touch memory.

use super::fuse_reduce::{FusedReduce, Reduction};
use super::{coalesce, data, is_plain, par_rows, tensor, Row, RowWalker, View};
use crate::graph::primitive::{inputs_of, reduce_axis, Primitive};
use luminal::op::{InputTensor, Operator};
use luminal::prelude::petgraph::{visit::EdgeRef, Direction};
use luminal::prelude::*;
use luminal::shape::symbolic::BigExpression;
use std::collections::{HashMap, HashSet};

// ANCHOR: program
/// What one step of a fused program computes (luminal's elementwise primitives).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Step {
    /// `a + b`.
    Add,
    /// `a * b`.
    Mul,
    /// `a % b` (remainder, sign of `a`).
    Mod,
    /// `a < b` as 1.0 or 0.0.
    LessThan,
    /// `2^a`.
    Exp2,
    /// `log2(a)`.
    Log2,
    /// `sin(a)`.
    Sin,
    /// `sqrt(a)`.
    Sqrt,
    /// `1 / a`.
    Recip,
    /// `Contiguous`: the value itself (the view was applied when it was read).
    Copy,
}

impl Step {
    /// The name of the luminal primitive this step computes.
    pub fn primitive(self) -> &'static str {
        match self {
            Step::Add => "Add",
            Step::Mul => "Mul",
            Step::Mod => "Mod",
            Step::LessThan => "LessThan",
            Step::Exp2 => "Exp2",
            Step::Log2 => "Log2",
            Step::Sin => "Sin",
            Step::Sqrt => "Sqrt",
            Step::Recip => "Recip",
            Step::Copy => "Contiguous",
        }
    }
}

/// Where a step's argument comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arg {
    /// The fused op's `i`-th input, read through its view.
    Input(usize),
    /// The result of an earlier step.
    Step(usize),
}

/// One chain of elementwise ops as a program: each step reads inputs or earlier steps; the
/// last step is the op's output.
#[derive(Clone, PartialEq)]
pub struct FusedElementwise {
    /// Steps in execution order, each with its (one or two) arguments.
    pub steps: Vec<(Step, [Arg; 2])>,
    /// The primitive this op stands in for, when it is a single step (listings show that).
    pub shown_as: Option<&'static str>,
}

impl FusedElementwise {
    /// A single op as a one-step program (the pass left it alone: nothing to fuse with), so
    /// that it too gets short-row handling and in-place outputs.
    pub fn single(step: Step) -> Self {
        let unary = matches!(
            step,
            Step::Exp2 | Step::Log2 | Step::Sin | Step::Sqrt | Step::Recip | Step::Copy
        );
        let args = [Arg::Input(0), Arg::Input(if unary { 0 } else { 1 })];
        Self {
            steps: vec![(step, args)],
            shown_as: Some(step.primitive()),
        }
    }
}
// ANCHOR_END: program

impl std::fmt::Debug for FusedElementwise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(name) = self.shown_as {
            return f.write_str(name);
        }
        let names: Vec<String> = self.steps.iter().map(|(s, _)| format!("{s:?}")).collect();
        write!(f, "Fused({})", names.join(", "))
    }
}

/// Elements per block: every step's result for one block fits in L1 together.
pub(super) const BLOCK: usize = 256;

/// An element of a fused op's output while it is being written.
pub(super) type Uninit = std::mem::MaybeUninit<f32>;

/// Initialised values, to be overwritten by a kernel.
#[inline(always)]
pub(super) fn as_uninit(x: &mut [f32]) -> &mut [Uninit] {
    // SAFETY: same layout; the kernels only write initialised values through the result.
    unsafe { &mut *(x as *mut [f32] as *mut [Uninit]) }
}

/// The values of a reused input, read from the output buffer it became.
#[inline(always)]
fn reused(x: &[Uninit]) -> &[f32] {
    // SAFETY: the reused buffer held the input's values, and each element is either still
    // that value or already this op's result: initialised either way.
    unsafe { &*(x as *const [Uninit] as *const [f32]) }
}

/// A buffer to be overwritten (no copy).
fn into_uninit(v: Vec<f32>) -> Vec<Uninit> {
    let mut v = std::mem::ManuallyDrop::new(v);
    let (ptr, len, cap) = (v.as_mut_ptr(), v.len(), v.capacity());
    // SAFETY: same layout and allocation; initialised values are valid `MaybeUninit`s.
    unsafe { Vec::from_raw_parts(ptr.cast::<Uninit>(), len, cap) }
}

/// The finished output.
///
/// # Safety
///
/// Every element of `v` must have been written.
unsafe fn assume_init(v: Vec<Uninit>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    let (ptr, len, cap) = (v.as_mut_ptr(), v.len(), v.capacity());
    // SAFETY: same layout and allocation; every element initialised (the caller's contract).
    unsafe { Vec::from_raw_parts(ptr.cast::<f32>(), len, cap) }
}

// ANCHOR: apply
/// `dst[i] = f(a[i], b[i])`: a loop the compiler vectorises. (`dst` may be uninitialised
/// memory, the op's new output: it is only written.)
#[inline(always)]
fn apply2(dst: &mut [Uninit], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for ((d, &p), &q) in dst.iter_mut().zip(a).zip(b) {
        d.write(f(p, q));
    }
}

/// `dst[i] = f(a[i])`.
#[inline(always)]
fn apply1(dst: &mut [Uninit], a: &[f32], f: impl Fn(f32) -> f32) {
    dst.iter_mut().zip(a).for_each(|(d, &p)| {
        d.write(f(p));
    });
}

// ANCHOR: exp2
/// `2^x` in a form the compiler vectorises (libm's `exp2f` is a call per element, ~3 ns: it
/// was most of a softmax's time). Round `x` to the nearest integer `n` with the 1.5·2^23
/// trick, approximate `2^f` for the rest `f` in [-0.5, 0.5] with Cephes' degree-6 polynomial
/// (relative error below 2e-7, about 2 ulp), and put `n` into the float's exponent bits.
/// Results below 2^-126 flush to 0; NaN stays NaN, ±inf gives inf and 0.
#[inline(always)]
pub fn exp2(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let x = x.clamp(-127.0, 128.0); // (NaN stays NaN)
    let t = x + ROUND;
    let n = t.to_bits() as i32 - ROUND.to_bits() as i32; // round(x)
    let f = x - (t - ROUND);
    let p = 1.535_336_2e-4;
    let p = p * f + 1.339_887_4e-3;
    let p = p * f + 9.618_437e-3;
    let p = p * f + 5.550_332_5e-2;
    let p = p * f + 2.402_264_8e-1;
    let p = p * f + 6.931_472e-1;
    // 2^n for n in -127..=128 (n = 128 as 2^127 * 2: x in [127.5, 128) is still finite).
    let top = (n > 127) as i32;
    let scale = f32::from_bits(((n - top + 127).max(0) as u32) << 23);
    (1.0 + p * f) * scale * (1 + top) as f32
}
// ANCHOR_END: exp2

/// Run one step over a block.
#[inline(always)]
fn run_step(step: Step, a: &[f32], b: &[f32], dst: &mut [Uninit]) {
    match step {
        Step::Add => apply2(dst, a, b, |x, y| x + y),
        Step::Mul => apply2(dst, a, b, |x, y| x * y),
        Step::Mod => apply2(dst, a, b, |x, y| x % y),
        Step::LessThan => apply2(dst, a, b, |x, y| (x < y) as u8 as f32),
        Step::Exp2 => apply1(dst, a, exp2),
        Step::Log2 => apply1(dst, a, f32::log2),
        Step::Sin => apply1(dst, a, f32::sin),
        Step::Sqrt => apply1(dst, a, f32::sqrt),
        Step::Recip => apply1(dst, a, f32::recip),
        Step::Copy => apply1(dst, a, |x| x),
    }
}
// ANCHOR_END: apply

/// Runs the program over one block: `inputs` hold the block's input values, `out.len()` of
/// them each; every step writes its own register.
pub(super) type Kernel = for<'a> fn(
    &[(Step, [Arg; 2])],
    &dyn Fn(usize) -> &'a [f32],
    &mut [[f32; BLOCK]],
    &mut [Uninit],
);

/// The block kernel for this CPU, chosen once per op (not per block): AVX2 when the CPU has it.
pub(super) fn kernel() -> Kernel {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        return run_avx2_detected;
    }
    run_any
}

/// [`run_avx2`] behind a safe signature; [`kernel`] returns it only on a CPU with AVX2.
#[cfg(target_arch = "x86_64")]
fn run_avx2_detected<'a>(
    steps: &[(Step, [Arg; 2])],
    inputs: &dyn Fn(usize) -> &'a [f32],
    regs: &mut [[f32; BLOCK]],
    out: &mut [Uninit],
) {
    // SAFETY: `kernel` hands out this function only after detecting AVX2.
    unsafe { run_avx2(steps, inputs, regs, out) }
}

/// [`run_any`] compiled for AVX2: 8 floats per instruction instead of SSE2's 4. Same operations
/// in the same order (Rust never fuses a multiply and an add), so the same results.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn run_avx2<'a>(
    steps: &[(Step, [Arg; 2])],
    inputs: &dyn Fn(usize) -> &'a [f32],
    regs: &mut [[f32; BLOCK]],
    out: &mut [Uninit],
) {
    run_any(steps, inputs, regs, out)
}

#[inline(always)]
fn run_any<'a>(
    steps: &[(Step, [Arg; 2])],
    inputs: &dyn Fn(usize) -> &'a [f32],
    regs: &mut [[f32; BLOCK]],
    out: &mut [Uninit],
) {
    let n = out.len();
    let last = steps.len() - 1;
    for (s, &(step, args)) in steps.iter().enumerate() {
        let (done, rest) = regs.split_at_mut(s);
        let arg = |a: Arg| match a {
            Arg::Input(j) => &inputs(j)[..n],
            Arg::Step(k) => &done[k][..n],
        };
        // The last step writes the output itself.
        let dst = if s == last {
            &mut *out
        } else {
            as_uninit(&mut rest[0][..n])
        };
        run_step(step, arg(args[0]), arg(args[1]), dst);
    }
}

/// Run the program for every element of `out`, row by row of the (coalesced) views; the
/// input `reuse`, if any, is `out` itself, read block by block before it is overwritten.
fn fill(
    steps: &[(Step, [Arg; 2])],
    views: &[View],
    srcs: &[&[f32]],
    reuse: Option<usize>,
    out: &mut [Uninit],
) {
    let run = kernel();
    let row_len = views[0].axes.last().map_or(1, |a| a.len);
    // Threads take runs of elements, not of rows: coalescing often leaves one long row.
    par_rows(out, 1, |part, first| {
        let mut regs = vec![[0.0f32; BLOCK]; steps.len()];
        let mut loaded = vec![[0.0f32; BLOCK]; srcs.len()];
        let mut rows: Vec<Row> = Vec::with_capacity(srcs.len());
        let mut walker = RowWalker::new(views, first / row_len);
        // Where in the current row; output positions part[done..done + filled] have their
        // inputs in `loaded`.
        let mut i = first % row_len;
        let (mut done, mut filled) = (0, 0);
        while done + filled < part.len() {
            rows.clear();
            rows.extend((0..srcs.len()).map(|j| match reuse {
                Some(r) if r == j => Row::Splat(0.0), // read from `part` instead
                _ => walker.row(j, srcs[j]),
            }));
            while i < row_len && done + filled < part.len() {
                if filled == 0 && row_len - i >= BLOCK && part.len() - done >= BLOCK {
                    // A whole block inside one row: dense inputs are read where they are.
                    for (j, row) in rows.iter().enumerate() {
                        match *row {
                            _ if reuse == Some(j) => {
                                loaded[j].copy_from_slice(reused(&part[done..done + BLOCK]))
                            }
                            Row::Dense(_) => {}
                            _ => row.read_into(srcs[j], i, &mut loaded[j]),
                        }
                    }
                    let input = |j: usize| -> &[f32] {
                        match rows[j] {
                            Row::Dense(s) if reuse != Some(j) => &srcs[j][s + i..s + i + BLOCK],
                            _ => &loaded[j],
                        }
                    };
                    run(steps, &input, &mut regs, &mut part[done..done + BLOCK]);
                    done += BLOCK;
                    i += BLOCK;
                    continue;
                }
                // Gather the next piece of this row into the block, then run the program
                // once the block is full.
                let take = (row_len - i)
                    .min(BLOCK - filled)
                    .min(part.len() - done - filled);
                let at = done + filled;
                for (j, row) in rows.iter().enumerate() {
                    let dst = &mut loaded[j][filled..filled + take];
                    match reuse {
                        Some(r) if r == j => dst.copy_from_slice(reused(&part[at..at + take])),
                        _ => row.read_into(srcs[j], i, dst),
                    }
                }
                filled += take;
                i += take;
                if filled == BLOCK {
                    run(
                        steps,
                        &|j| &loaded[j],
                        &mut regs,
                        &mut part[done..done + BLOCK],
                    );
                    done += BLOCK;
                    filled = 0;
                }
            }
            if i == row_len {
                walker.advance();
                i = 0;
            }
        }
        if filled > 0 {
            run(
                steps,
                &|j| &loaded[j],
                &mut regs,
                &mut part[done..done + filled],
            );
        }
    });
}

// ANCHOR: kernel
impl Operator for FusedElementwise {
    fn process(&mut self, mut inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let mut views: Vec<View> = inp.iter().map(|(_, st)| View::of(st)).collect();
        let len = views[0].len();
        if len == 0 {
            return tensor(vec![]);
        }
        let plain: Vec<bool> = views.iter().map(|v| v.plain).collect();
        coalesce(&mut views);
        if views[0].axes.is_empty() {
            // A scalar: one row of one element (a broadcast axis reads buffer index 0).
            let one = super::Axis {
                len: 1,
                stride: 0,
                offset: 0,
                lo: 0,
                hi: 1,
            };
            views.iter_mut().for_each(|v| v.axes.push(one));
        }
        let rank = views[0].axes.len();
        let (row_len, mid_len) = (
            views[0].axes[rank - 1].len,
            rank.checked_sub(2).map_or(0, |m| views[0].axes[m].len),
        );
        if rank >= 2 && row_len <= 4 && mid_len >= 16 {
            // Rows too short to loop over (RoPE's pairs): compute column by column, each
            // plane of the last two axes transposed, then transpose the result back.
            views
                .iter_mut()
                .for_each(|v| v.axes.swap(rank - 2, rank - 1));
            let srcs: Vec<&[f32]> = inp.iter().map(|(t, _)| data(t)).collect();
            let mut columns = vec![0.0f32; len];
            fill(&self.steps, &views, &srcs, None, as_uninit(&mut columns));
            let mut out = vec![0.0f32; len];
            let plane = row_len * mid_len;
            par_rows(&mut out, row_len, |part, first| {
                let (mut p, mut k) = (first / mid_len, first % mid_len);
                for o in part.chunks_mut(row_len) {
                    let column = &columns[p * plane + k..];
                    for (i, x) in o.iter_mut().enumerate() {
                        *x = column[i * mid_len];
                    }
                    k += 1;
                    if k == mid_len {
                        (p, k) = (p + 1, 0);
                    }
                }
            });
            return tensor(out);
        }
        // An input nobody else reads, laid out exactly like the output, becomes the output
        // buffer: no allocation, and each block reads its values before overwriting them.
        let reuse = (0..inp.len()).find(|&j| {
            plain[j] && matches!(inp[j].0, InputTensor::Owned(_)) && data(&inp[j].0).len() == len
        });
        let mut out: Vec<Uninit> = match reuse.map(|j| &mut inp[j].0) {
            Some(InputTensor::Owned(t)) => {
                let buffer = std::mem::take(
                    t.data
                        .as_any_mut()
                        .downcast_mut::<Vec<f32>>()
                        .expect("f32 tensors"),
                );
                if self.steps.len() == 1 && self.steps[0].0 == Step::Copy {
                    return tensor(buffer); // `Contiguous` of a buffer nobody else reads
                }
                into_uninit(buffer)
            }
            // Not zeroed: every element is written below (a `vec![0.0; len]` here spent 4 %
            // of a training step setting memory that was then overwritten).
            _ => std::iter::repeat_with(Uninit::uninit).take(len).collect(),
        };
        let srcs: Vec<&[f32]> = inp.iter().map(|(t, _)| data(t)).collect();
        fill(&self.steps, &views, &srcs, reuse, &mut out);
        // SAFETY: `fill` wrote every element of `out` (it runs the program over all of it).
        tensor(unsafe { assume_init(out) })
    }
}
// ANCHOR_END: kernel

/// The step an elementwise op computes, given the views it reads: binary ops need inputs of one
/// rank (ArithmeticElimination can leave a scalar view beside a flat one, which the stock op
/// reads by flat index), and unary ops a plain view (luminal's unary ops map over the buffer
/// and ignore the view, which only a plain view agrees with).
pub(super) fn elementwise_step(op: &dyn Operator, views: &[ShapeTracker]) -> Option<Step> {
    let primitive = Primitive::of(op)?;
    let step = match primitive {
        Primitive::Add => Step::Add,
        Primitive::Mul => Step::Mul,
        Primitive::Mod => Step::Mod,
        Primitive::LessThan => Step::LessThan,
        Primitive::Exp2 => Step::Exp2,
        Primitive::Log2 => Step::Log2,
        Primitive::Sin => Step::Sin,
        Primitive::Sqrt => Step::Sqrt,
        Primitive::Recip => Step::Recip,
        Primitive::Contiguous => Step::Copy,
        Primitive::SumReduce | Primitive::MaxReduce => return None,
    };
    let fits = if primitive.is_binary() {
        views.len() == 2 && views[0].len() == views[1].len()
    } else if primitive.is_unary() {
        views.len() == 1 && is_plain(&views[0])
    } else {
        views.len() == 1 // Contiguous
    };
    fits.then_some(step)
}

/// The step a node computes, if it is an elementwise op that can join a fused chain whose
/// values all have the logical shape `shape`.
fn step_of(graph: &Graph, node: NodeIndex, shape: &[BigExpression]) -> Option<Step> {
    let op = graph.graph.node_weight(node)?.as_ref();
    let views: Vec<ShapeTracker> = inputs_of(graph, node)
        .into_iter()
        .map(|(_, st)| st)
        .collect();
    let all_data = graph
        .graph
        .edges_directed(node, Direction::Incoming)
        .chain(graph.graph.edges_directed(node, Direction::Outgoing))
        .all(|e| e.weight().as_data().is_some());
    let same_shape = views.iter().all(|st| st.shape() == shape);
    if !all_data || !same_shape {
        return None;
    }
    elementwise_step(op, &views)
}

/// The pass: grow a group backwards from each elementwise op, taking in every elementwise
/// producer whose only readers are already in the group (through plain views of the same
/// shape), and replace groups of two or more ops by one [`FusedElementwise`]. Run it after the
/// matmul passes and before [`super::StridedKernels`] (which takes the ops left alone).
#[derive(Debug, Default)]
pub struct FuseElementwise;

// ANCHOR: fuse_pass
impl Compiler for FuseElementwise {
    fn compile<T: ToIdsMut>(&self, graph: &mut Graph, mut remap: T) {
        let Ok(order) = petgraph::algo::toposort(&graph.graph, None) else {
            return;
        };
        let position: HashMap<NodeIndex, usize> =
            order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let mut taken = HashSet::new();
        // First reductions, each with the chain that feeds it (if only it reads the chain).
        for &reduce in &order {
            let op = graph
                .graph
                .node_weight(reduce)
                .expect("node exists")
                .as_ref();
            let (reduction, axis) = match (Primitive::of(op), reduce_axis(op)) {
                (Some(Primitive::SumReduce), Some(a)) => (Reduction::Sum, a),
                (Some(Primitive::MaxReduce), Some(a)) => (Reduction::Max, a),
                _ => continue,
            };
            let ins = inputs_of(graph, reduce);
            let Some(&(src, st)) = ins.first() else {
                continue;
            };
            let shape = st.shape();
            if taken.contains(&src) || !can_join(graph, src, &[reduce], &shape) {
                continue;
            }
            let members = grow(graph, src, &shape, &taken, &position);
            let (steps, inputs) = program(graph, &members, &shape);
            let op = FusedReduce {
                steps,
                reduction,
                axis,
            };
            let mut all = members.clone();
            all.push(reduce);
            replace(graph, &all, op, inputs, &mut remap);
            taken.extend(all);
        }
        // Then the remaining elementwise chains, from their last op backwards.
        for &root in order.iter().rev() {
            if taken.contains(&root) || !graph.graph.contains_node(root) {
                continue;
            }
            let Some(&(_, first_input)) = inputs_of(graph, root).first() else {
                continue;
            };
            let shape = first_input.shape();
            if step_of(graph, root, &shape).is_none() {
                continue;
            }
            let members = grow(graph, root, &shape, &taken, &position);
            if members.len() < 2 {
                continue;
            }
            let (steps, inputs) = program(graph, &members, &shape);
            let op = FusedElementwise {
                steps,
                shown_as: None,
            };
            replace(graph, &members, op, inputs, &mut remap);
            taken.extend(members);
        }
    }
}
// ANCHOR_END: fuse_pass

/// The group of elementwise ops that computes `root`: every producer whose only readers are
/// already in the group joins, until none is left. In execution order, `root` last.
fn grow(
    graph: &Graph,
    root: NodeIndex,
    shape: &[BigExpression],
    taken: &HashSet<NodeIndex>,
    position: &HashMap<NodeIndex, usize>,
) -> Vec<NodeIndex> {
    let mut members = vec![root];
    let mut grew = true;
    while grew {
        grew = false;
        for m in members.clone() {
            for (src, _) in inputs_of(graph, m) {
                if !members.contains(&src)
                    && !taken.contains(&src)
                    && can_join(graph, src, &members, shape)
                {
                    members.push(src);
                    grew = true;
                }
            }
        }
    }
    members.sort_by_key(|m| position[m]);
    members
}

/// Whether `node` can be computed inside the group `members`: an elementwise op of the group's
/// shape, kept by no one else, whose every reader is a member reading it plainly.
fn can_join(
    graph: &Graph,
    node: NodeIndex,
    members: &[NodeIndex],
    shape: &[BigExpression],
) -> bool {
    if graph.no_delete.contains(&node) || graph.to_retrieve.contains(&node) {
        return false;
    }
    let readers_ok = graph
        .graph
        .edges_directed(node, Direction::Outgoing)
        .all(|e| match e.weight().as_data() {
            Some((_, 0, st)) => {
                members.contains(&e.target()) && is_plain(&st) && st.shape() == shape
            }
            _ => false,
        });
    readers_ok && step_of(graph, node, shape).is_some()
}

/// A program over the group `members` (in execution order), and its inputs: every edge that
/// enters the group from outside, with its view.
pub(super) type Inputs = Vec<(NodeIndex, u8, ShapeTracker)>;
fn program(
    graph: &Graph,
    members: &[NodeIndex],
    shape: &[BigExpression],
) -> (Vec<(Step, [Arg; 2])>, Inputs) {
    let mut inputs = Vec::new();
    let mut steps = Vec::new();
    for &m in members {
        let step = step_of(graph, m, shape).expect("members are elementwise");
        let mut edges: Vec<_> = graph
            .graph
            .edges_directed(m, Direction::Incoming)
            .filter_map(|e| {
                e.weight()
                    .as_data()
                    .map(|(i, o, st)| (i, e.source(), o, st))
            })
            .collect();
        edges.sort_by_key(|e| e.0);
        let mut args = [Arg::Input(usize::MAX); 2];
        for (k, (_, src, out, st)) in edges.into_iter().enumerate() {
            args[k] = match members.iter().position(|&x| x == src) {
                Some(p) => Arg::Step(p),
                None => {
                    inputs.push((src, out, st));
                    Arg::Input(inputs.len() - 1)
                }
            };
        }
        if args[1] == Arg::Input(usize::MAX) {
            args[1] = args[0]; // unary: the second argument is never read
        }
        steps.push((step, args));
    }
    (steps, inputs)
}

// ANCHOR: replace
/// Replace `nodes` (the last one's output is the result) with `op` reading `inputs`.
pub(super) fn replace<T: ToIdsMut>(
    graph: &mut Graph,
    nodes: &[NodeIndex],
    op: impl Operator + 'static,
    inputs: Inputs,
    remap: &mut T,
) {
    let mut new = graph.add_op(op);
    for (src, out, st) in inputs {
        new = new.input(src, out, st);
    }
    let new = new.finish();
    move_outgoing_edge(nodes[nodes.len() - 1], new, &mut graph.graph);
    for &m in nodes {
        move_references(
            &mut *remap,
            &mut graph.no_delete,
            &mut graph.to_retrieve,
            m,
            new,
        );
        graph.graph.remove_node(m);
    }
}
// ANCHOR_END: replace
