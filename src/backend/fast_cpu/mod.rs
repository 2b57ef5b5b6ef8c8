//! The fast CPU backend: compiler passes that swap luminal's CPU ops for faster ones.
//!
//! luminal 0.2.0's CPU ops evaluate a symbolic index expression (and a validity expression)
//! for every element they read, and each op is its own pass over memory. The passes here, in
//! the order [`crate::backend::Device::Cpu`] runs them:
//! - [`StridedMatMulPass`]: broadcast-multiply-and-sum patterns that are matrix products
//!   (attention's batched ones) become [`StridedMatMul`], one sgemm per batch element;
//! - three pattern passes that recognise chapter code exactly and run it as hand-written
//!   kernels: [`FuseAttention`] (`attention.rs`: masked attention and its backward, the score
//!   matrix never in memory), [`FuseSwapPairs`] (`swap_pairs.rs`: RoPE's pair swap) and
//!   [`FuseSwiGlu`] (`swiglu.rs`: the SwiGLU gate and its backward); `tests/fused_attention.rs`,
//!   `tests/swap_pairs.rs` and `tests/swiglu.rs` hold them to the op-by-op graph;
//! - [`FuseElementwise`] (`fuse.rs`, `fuse_reduce.rs`): chains of elementwise ops become one
//!   [`FusedElementwise`] program, and a reduction with the chain feeding it one
//!   [`FusedReduce`];
//! - [`StridedKernels`]: every op left over gets its kernel (single elementwise ops as one-step
//!   programs, reductions on strides, batched products through one tall sgemm).
//!
//! The kernels turn each input's view into plain integers once per call (a stride, an offset
//! and a valid range per axis) and run tight loops. Semantics are the stock ops' (the
//! differential tests in `tests/fast_cpu.rs` use them as the oracle, bit for bit), including
//! luminal's treatment of padding and slices; the one exception is `exp2`, computed by a
//! polynomial to about 2 ulp. This is infrastructure, not a lesson; the book's appendix A
//! explains it.

use luminal::op::{self, InputTensor, Operator};
use luminal::prelude::*;

mod attention;
mod fuse;
mod fuse_reduce;
mod sgemm;
mod swap_pairs;
mod swiglu;
use crate::graph::primitive::{reduce_axis, Primitive};
pub use attention::{FuseAttention, FusedAttention, FusedAttentionGrad, SoftmaxConsts, TakeRange};
use fuse::elementwise_step;
pub use fuse::{exp2, Arg, FuseElementwise, FusedElementwise, Step};
pub use fuse_reduce::{FusedReduce, Reduction};
pub use sgemm::{
    sgemm, sgemm_gemm, sgemm_library, sgemm_matrixmultiply, Mat, MatMut, MatRef, Sgemm,
};
pub use swap_pairs::{FuseSwapPairs, SwapPairs};
pub use swiglu::{FuseSwiGlu, GateConsts, SwiGluGate, SwiGluGradGate, SwiGluGradValue};

/// One logical axis of a view, resolved to integers.
#[derive(Clone, Copy, Debug)]
struct Axis {
    len: usize,
    /// Buffer elements per step along this axis (0 for a broadcast axis).
    stride: isize,
    /// Added to the logical index before multiplying by the stride (padding, slices).
    offset: isize,
    /// Logical indices in `lo..hi` read the buffer; others read 0 (padding).
    lo: usize,
    hi: usize,
}

/// A view resolved for execution: one [`Axis`] per logical axis.
#[derive(Clone, Debug)]
struct View {
    axes: Vec<Axis>,
    /// True when the view is the buffer itself, in order: no indexing needed.
    plain: bool,
    /// Buffer offset added to every index (from dropped axes of length 1, see [`coalesce`]).
    base: isize,
}

fn num(e: luminal::shape::symbolic::Expression) -> usize {
    e.to_usize().expect("dims are resolved before execution")
}

impl View {
    // ANCHOR: view
    /// The same index arithmetic as `ShapeTracker::index_expression` / `valid_expression`.
    fn of(t: &ShapeTracker) -> Self {
        let n = t.dims.len();
        let mut strides = vec![0isize; n];
        let mut acc = 1isize;
        for p in (0..n).rev() {
            strides[p] = acc;
            if !t.fake[p] {
                acc *= num(t.dims[p]) as isize;
            }
        }
        let axes = (0..t.len())
            .map(|a| {
                let p = t.indexes[a];
                let (d, pl, pr) = (num(t.dims[p]), num(t.padding[p].0), num(t.padding[p].1));
                let (s0, s1) = (num(t.slices[p].0), num(t.slices[p].1));
                let len = (d + pl + pr).min(s1) - s0;
                if t.fake[p] {
                    return Axis {
                        len,
                        stride: 0,
                        offset: 0,
                        lo: 0,
                        hi: len,
                    };
                }
                Axis {
                    len,
                    stride: strides[p],
                    offset: s0 as isize - pl.min(s0) as isize - pl as isize,
                    lo: pl - s0.min(pl),
                    hi: (d + pl).min(s1),
                }
            })
            .collect();
        let plain = is_plain(t);
        Self {
            axes,
            plain,
            base: 0,
        }
    }
    // ANCHOR_END: view

    fn len(&self) -> usize {
        self.axes.iter().map(|a| a.len).product()
    }
}

/// A view that is its buffer in order: contiguous, not sliced, not padded.
fn is_plain(t: &ShapeTracker) -> bool {
    t.is_contiguous() && !t.is_sliced() && !t.is_padded()
}

// ANCHOR: coalesce
/// Views that several kernels walk together, simplified without changing which element each
/// logical position reads: axes of length 1 whose one index is not padding are dropped (a
/// slice's offset moves into the view's base), and
/// neighbouring axes that every view walks as one are merged (both broadcast, or the outer
/// stride equal to the inner stride times the inner length, with no padding or slicing). The
/// kernels loop over the last axis, so longer rows mean less per-row work: RoPE's
/// (b, h, s, pairs, 2) views, for one, become a few long rows instead of rows of 2.
fn coalesce(views: &mut [View]) {
    let clean = |a: &Axis| a.offset == 0 && a.lo == 0 && a.hi >= a.len;
    let n = views.first().map_or(0, |v| v.axes.len());
    let single = |a: &Axis| a.len == 1 && (a.stride == 0 || (a.lo == 0 && a.hi >= 1));
    let keep: Vec<usize> = (0..n)
        .filter(|&k| !views.iter().all(|v| single(&v.axes[k])))
        .collect();
    for k in (0..n).filter(|k| !keep.contains(k)) {
        for v in views.iter_mut() {
            v.base += v.axes[k].offset * v.axes[k].stride;
        }
    }
    let mut merged: Vec<Vec<Axis>> = vec![Vec::new(); views.len()];
    for &k in keep.iter().rev() {
        let fits = views.iter().zip(&merged).all(|(v, m)| {
            let outer = v.axes[k];
            m.last().is_some_and(|inner| {
                clean(&outer) && clean(inner) && outer.stride == inner.stride * inner.len as isize
            })
        });
        for (v, m) in views.iter().zip(merged.iter_mut()) {
            match m.last_mut() {
                Some(inner) if fits => {
                    inner.len *= v.axes[k].len;
                    inner.hi = inner.len;
                }
                _ => m.push(v.axes[k]),
            }
        }
    }
    for (v, mut m) in views.iter_mut().zip(merged) {
        m.reverse();
        v.axes = m;
    }
}
// ANCHOR_END: coalesce

/// Advance a row-major multi-index over `lens`, skipping `skip` (an axis looped elsewhere).
/// Returns false when it wraps around.
#[inline]
fn next(index: &mut [usize], lens: &[usize], skip: Option<usize>) -> bool {
    next_skipping(index, lens, &[skip.unwrap_or(usize::MAX)])
}

/// [`next`], skipping several axes.
#[inline]
fn next_skipping(index: &mut [usize], lens: &[usize], skip: &[usize]) -> bool {
    for a in (0..index.len()).rev() {
        if skip.contains(&a) {
            continue;
        }
        index[a] += 1;
        if index[a] < lens[a] {
            return true;
        }
        index[a] = 0;
    }
    false
}

// ---- threads --------------------------------------------------------------------------

// ANCHOR: threads
static THREADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Threads the kernels use (default: the machine's cores). Call before the first graph runs:
/// it also sets `MATMUL_NUM_THREADS` for `matrixmultiply`'s sgemm, which reads it once.
pub fn set_threads(n: usize) {
    THREADS.store(n.max(1), std::sync::atomic::Ordering::Relaxed);
    std::env::set_var("MATMUL_NUM_THREADS", n.max(1).to_string());
}

/// The kernels' thread count. The default (the machine's cores) is looked up once and kept:
/// `available_parallelism` reads the process's cgroup files from `/proc` on every call, about
/// 30 µs, and the kernels ask for the thread count on every op call (measured: it made the copy
/// task's 600 steps take 165 s instead of 53 s when no `--threads` was given).
pub fn threads() -> usize {
    use std::sync::atomic::Ordering::Relaxed;
    match THREADS.load(Relaxed) {
        0 => {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            // A `set_threads` that got there first wins.
            match THREADS.compare_exchange(0, n, Relaxed, Relaxed) {
                Ok(_) => n,
                Err(set) => set,
            }
        }
        n => n,
    }
}

/// Below this many output elements one thread is faster than starting more.
const PARALLEL_MIN: usize = 1 << 15;

/// The multi-index of row `r` of a row-major iteration over `lens`, skipping the axes `skip`.
fn unravel(mut r: usize, lens: &[usize], skip: &[usize]) -> Vec<usize> {
    let mut index = vec![0; lens.len()];
    for a in (0..lens.len()).rev() {
        if skip.contains(&a) {
            continue;
        }
        index[a] = r % lens[a].max(1);
        r /= lens[a].max(1);
    }
    index
}

/// `body(part, first_row)` over `out` cut into rows of `row_len`, on several threads when the
/// output is big enough; each thread gets a run of whole rows.
fn par_rows<T: Send>(out: &mut [T], row_len: usize, body: impl Fn(&mut [T], usize) + Sync) {
    par_rows_work(out, row_len, out.len(), body)
}

/// [`par_rows`] for ops whose work is not the size of their output (a reduction reads
/// `work` elements to write `out.len()`).
fn par_rows_work<T: Send>(
    out: &mut [T],
    row_len: usize,
    work: usize,
    body: impl Fn(&mut [T], usize) + Sync,
) {
    let rows = out.len() / row_len.max(1);
    let t = threads().min(rows).max(1);
    if t == 1 || work < PARALLEL_MIN {
        body(out, 0);
        return;
    }
    let per = rows.div_ceil(t);
    use rayon::prelude::*;
    pool().install(|| {
        out.par_chunks_mut(per * row_len)
            .enumerate()
            .for_each(|(i, part)| body(part, i * per))
    });
}

/// The kernels' worker threads, started once with [`threads`] workers and kept: starting OS
/// threads for every op cost more than the ops themselves (measured: 2 threads made a training
/// step 2x slower than 1 before this pool).
fn pool() -> &'static rayon::ThreadPool {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads())
            .thread_name(|i| format!("fast-cpu-{i}"))
            .build()
            .expect("a thread pool")
    })
}
// ANCHOR_END: threads

// ANCHOR: memory
/// Ask the allocator to keep freed memory for reuse instead of returning it to the OS.
///
/// Every op allocates its output, and a training step frees and reallocates hundreds of
/// megabytes. glibc hands blocks above 128 KiB back to the OS (`munmap`, heap trimming), so the
/// next step page-faults every page in again, at about a microsecond per 4 KiB page in a VM:
/// measured, 10–15 % of a reference-model training step. Raising the mmap and trim thresholds
/// keeps the pages mapped. Opt-in, because it changes the whole process's allocator: the
/// command line's `train` and `bench` call it, the library never does by itself. Calling it
/// again does nothing; a no-op off glibc.
pub fn keep_freed_memory() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes allocator tunables; any value is valid for these two.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20); // glibc's maximum
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        }
    });
}
// ANCHOR_END: memory

fn data<'a>(t: &'a InputTensor<'a>) -> &'a [f32] {
    t.borrowed()
        .data
        .as_any()
        .downcast_ref::<Vec<f32>>()
        .expect("f32 tensors")
}

fn tensor(v: Vec<f32>) -> Vec<Tensor> {
    vec![Tensor::new(v)]
}

/// Kernels print as the primitive they replace, so graph listings and pictures read the same
/// before and after this pass (which only changes how an op runs, not what it computes).
macro_rules! primitive_name {
    ($name:ident, $shown:literal) => {
        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($shown)
            }
        }
    };
}

// ANCHOR: row
/// How one input reads the current row (the last axis) of a binary op.
#[derive(Clone, Copy)]
enum Row {
    /// The same value all along the row (a broadcast, or padding: 0).
    Splat(f32),
    /// `len` consecutive buffer elements from `start`.
    Dense(usize),
    /// The general case: base, stride, offset and valid range of the last axis.
    Strided(isize, Axis),
}

impl Row {
    /// The row at `index` (its last entry is ignored), or None where an outer index falls
    /// in padding (the whole row reads padding).
    fn of(v: &View, src: &[f32], index: &[usize], last: usize) -> Option<Row> {
        let outer_ok = v
            .axes
            .iter()
            .zip(index)
            .enumerate()
            .all(|(k, (a, &i))| k == last || a.stride == 0 || (i >= a.lo && i < a.hi));
        if !outer_ok {
            return None;
        }
        let base: isize = v.base
            + v.axes
                .iter()
                .zip(index)
                .enumerate()
                .filter(|(k, _)| *k != last)
                .map(|(_, (a, &i))| (i as isize + a.offset) * a.stride)
                .sum::<isize>();
        let a = v.axes[last];
        Some(if a.stride == 0 {
            Row::Splat(src[base as usize])
        } else if a.stride == 1 && a.lo == 0 && a.hi >= a.len {
            Row::Dense((base + a.offset) as usize)
        } else {
            Row::Strided(base, a)
        })
    }

    /// Fold the row's valid elements (padding skipped, as the stock reductions do) into `acc`.
    #[inline(always)]
    fn fold(
        &self,
        src: &[f32],
        len: usize,
        acc: f32,
        f: &(impl Fn(f32, f32) -> f32 + Sync),
    ) -> f32 {
        match *self {
            Row::Splat(v) => (0..len).fold(acc, |a, _| f(a, v)),
            Row::Dense(start) => src[start..start + len].iter().fold(acc, |a, &x| f(a, x)),
            Row::Strided(base, ax) => (ax.lo.min(len)..ax.hi.min(len)).fold(acc, |a, i| {
                f(
                    a,
                    src[(base + (i as isize + ax.offset) * ax.stride) as usize],
                )
            }),
        }
    }

    /// `out[i] = f(out[i], row[i])` over the row's valid elements.
    #[inline(always)]
    fn fold_into(&self, src: &[f32], out: &mut [f32], f: &impl Fn(f32, f32) -> f32) {
        match *self {
            Row::Splat(v) => out.iter_mut().for_each(|o| *o = f(*o, v)),
            Row::Dense(start) => {
                let n = out.len();
                for (o, &x) in out.iter_mut().zip(&src[start..start + n]) {
                    *o = f(*o, x);
                }
            }
            Row::Strided(base, ax) => {
                for i in ax.lo.min(out.len())..ax.hi.min(out.len()) {
                    out[i] = f(
                        out[i],
                        src[(base + (i as isize + ax.offset) * ax.stride) as usize],
                    );
                }
            }
        }
    }

    /// The row's elements `from .. from + dst.len()` into `dst`.
    #[inline(always)]
    fn read_into(&self, src: &[f32], from: usize, dst: &mut [f32]) {
        match *self {
            // (short pieces element by element: a memcpy or memset call costs more)
            Row::Dense(s) if dst.len() >= 16 => {
                dst.copy_from_slice(&src[s + from..s + from + dst.len()])
            }
            Row::Splat(x) if dst.len() >= 16 => dst.fill(x),
            _ => {
                for (k, x) in dst.iter_mut().enumerate() {
                    *x = self.get(src, from + k);
                }
            }
        }
    }

    #[inline(always)]
    fn get(&self, src: &[f32], i: usize) -> f32 {
        match *self {
            Row::Splat(v) => v,
            Row::Dense(start) => src[start + i],
            Row::Strided(base, a) if i >= a.lo && i < a.hi => {
                src[(base + (i as isize + a.offset) * a.stride) as usize]
            }
            Row::Strided(..) => 0.0,
        }
    }
}
// ANCHOR_END: row

/// The rows (last axis) of several views of one shape, walked in row-major order. Each row's
/// start is found incrementally: the axes above the last two are resolved once per run of
/// the second-to-last axis, so that short rows (RoPE's pairs) cost a few adds each rather
/// than a walk over every axis.
struct RowWalker<'v> {
    views: &'v [View],
    lens: Vec<usize>,
    /// The current row's multi-index (its last entry unused).
    index: Vec<usize>,
    /// Per view: the buffer offset of the axes above the last two, or None in padding.
    outer: Vec<Option<isize>>,
}

impl<'v> RowWalker<'v> {
    /// Start at row `first` (rows counted in row-major order).
    fn new(views: &'v [View], first: usize) -> Self {
        let lens: Vec<usize> = views[0].axes.iter().map(|a| a.len).collect();
        let index = unravel(first, &lens, &[lens.len() - 1]);
        let mut w = Self {
            views,
            lens,
            index,
            outer: vec![None; views.len()],
        };
        w.resolve_outer();
        w
    }

    fn resolve_outer(&mut self) {
        let above = self.lens.len().saturating_sub(2);
        for (o, v) in self.outer.iter_mut().zip(self.views) {
            *o = v.axes[..above]
                .iter()
                .zip(&self.index)
                .try_fold(v.base, |base, (a, &k)| {
                    let inside = a.stride == 0 || (k >= a.lo && k < a.hi);
                    inside.then(|| base + (k as isize + a.offset) * a.stride)
                });
        }
    }

    /// How view `j` reads the current row (padding reads as 0).
    #[inline]
    fn row(&self, j: usize, src: &[f32]) -> Row {
        let v = &self.views[j];
        let Some(mut base) = self.outer[j] else {
            return Row::Splat(0.0);
        };
        let last = self.lens.len() - 1;
        if last > 0 {
            let (a, k) = (v.axes[last - 1], self.index[last - 1]);
            if a.stride != 0 {
                if k < a.lo || k >= a.hi {
                    return Row::Splat(0.0);
                }
                base += (k as isize + a.offset) * a.stride;
            }
        }
        let a = v.axes[last];
        if a.stride == 0 {
            Row::Splat(src[base as usize])
        } else if a.stride == 1 && a.lo == 0 && a.hi >= a.len {
            Row::Dense((base + a.offset) as usize)
        } else {
            Row::Strided(base, a)
        }
    }

    /// Move to the next row.
    #[inline]
    fn advance(&mut self) {
        let last = self.lens.len() - 1;
        next(&mut self.index, &self.lens, Some(last));
        if last == 0 || self.index[last - 1] == 0 {
            self.resolve_outer();
        }
    }
}

// ANCHOR: reduce
/// A reduction over one axis on strides; padding is skipped (not read as 0), like the stock op.
fn reduce(
    inp: &[(InputTensor, ShapeTracker)],
    axis: usize,
    init: f32,
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Vec<Tensor> {
    let v = View::of(&inp[0].1);
    let src = data(&inp[0].0);
    let lens: Vec<usize> = v.axes.iter().map(|a| a.len).collect();
    let out_len: usize = (0..lens.len())
        .filter(|&a| a != axis)
        .map(|a| lens[a])
        .product();
    let last = lens.len() - 1;
    if (0..lens.len()).any(|a| a != axis && lens[a] == 0) {
        return tensor(vec![]);
    }
    if axis == last {
        // Each output element folds one row.
        let mut out = vec![init; out_len];
        par_rows_work(&mut out, 1, out_len * lens[last], |part, first| {
            let mut index = unravel(first, &lens, &[last]);
            for o in part.iter_mut() {
                *o = Row::of(&v, src, &index, last)
                    .map_or(init, |row| row.fold(src, lens[last], init, &f));
                next(&mut index, &lens, Some(last));
            }
        });
        return tensor(out);
    }
    // Otherwise whole rows of the last axis fold into rows of the output.
    let mut out = vec![init; out_len];
    let row_len = lens[last].max(1);
    par_rows_work(&mut out, row_len, out_len * lens[axis], |part, first| {
        let mut index = unravel(first, &lens, &[axis, last]);
        for chunk in part.chunks_mut(row_len) {
            for k in 0..lens[axis] {
                index[axis] = k;
                if let Some(row) = Row::of(&v, src, &index, last) {
                    row.fold_into(src, chunk, &f);
                }
            }
            index[axis] = 0;
            next_skipping(&mut index, &lens, &[axis, last]);
        }
    });
    tensor(out)
}
// ANCHOR_END: reduce

/// `SumReduce` on strides.
#[derive(Clone, Default, PartialEq)]
pub struct StridedSumReduce(pub usize);
impl std::fmt::Debug for StridedSumReduce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SumReduce({})", self.0)
    }
}
impl Operator for StridedSumReduce {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        reduce(&inp, self.0, 0.0, |a, b| a + b)
    }
}

/// `MaxReduce` on strides.
#[derive(Clone, Default, PartialEq)]
pub struct StridedMaxReduce(pub usize);
impl std::fmt::Debug for StridedMaxReduce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MaxReduce({})", self.0)
    }
}
impl Operator for StridedMaxReduce {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        reduce(&inp, self.0, f32::NEG_INFINITY, f32::max)
    }
}

/// A broadcast-multiply-and-sum that is a (batched) matrix product, run by sgemm:
/// `Mul([.., M, .., N*, .., K], [.., M*, .., N, .., K]) -> SumReduce(last)`, where `*` marks
/// a broadcast axis. Every other axis is a batch axis (read through its strides, broadcast or
/// not); each batch element is one [`sgemm`] call on strided operands.
#[derive(Clone, Default, PartialEq)]
pub struct StridedMatMul {
    /// The axis that is real in the left operand only (rows of the product).
    pub m_axis: usize,
    /// The axis that is real in the right operand only (columns of the product).
    pub n_axis: usize,
}

impl std::fmt::Debug for StridedMatMul {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StridedMatMul(m: {}, n: {})", self.m_axis, self.n_axis)
    }
}

/// A matrix product's output buffer of `len` elements, written by `write` (sgemm calls with
/// β = 0, which overwrite C without reading it: no need to zero it first, which was a pass
/// over memory per product). With `k = 0` there is nothing to write: zeros.
///
/// # Safety
///
/// When `k > 0`, `write` must store all `len` elements behind the pointer it is given (which
/// points at `len` uninitialised `f32`s); the vector is returned as fully initialised.
unsafe fn sgemm_output(len: usize, k: usize, write: impl FnOnce(*mut f32)) -> Vec<f32> {
    if k == 0 {
        return vec![0.0; len];
    }
    let mut c: Vec<f32> = Vec::with_capacity(len);
    write(c.as_mut_ptr());
    // SAFETY: the caller's `write` stored all `len` elements (this function's contract).
    unsafe { c.set_len(len) };
    c
}

/// luminal's `MatMul2D` through [`MergedBatchMatMul`]'s code (as a batch of one).
#[derive(Clone, Default, PartialEq)]
pub struct PlainMatMul2D;
primitive_name!(PlainMatMul2D, "MatMul2D");

impl Operator for PlainMatMul2D {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        MergedBatchMatMul.process(inp)
    }
}

// ANCHOR: merged_matmul
/// luminal's `BatchedMatMul2D` ((batch, m, k) x (k, n), a weight shared by the batch), with
/// the batch folded into the rows when the input allows it: one sgemm of `batch * m` rows
/// instead of `batch` sgemms of `m` rows (bigger blocks, and enough work to split across
/// threads). Otherwise it loops over the batch, as the stock op does.
#[derive(Clone, Default, PartialEq)]
pub struct MergedBatchMatMul;
primitive_name!(MergedBatchMatMul, "BatchedMatMul2D");

impl Operator for MergedBatchMatMul {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let resolved = "dims are resolved before execution";
        let shape = |t: &ShapeTracker| -> Vec<usize> {
            t.shape()
                .iter()
                .map(|e| e.to_usize().expect(resolved))
                .collect()
        };
        let strides = |t: &ShapeTracker| -> Vec<usize> {
            t.strides()
                .iter()
                .map(|e| e.to_usize().expect(resolved))
                .collect()
        };
        let (sa, sb) = (shape(&inp[0].1), shape(&inp[1].1));
        let (ta, tb) = (strides(&inp[0].1), strides(&inp[1].1));
        // A plain 2-D product (luminal's `MatMul2D`) is a batch of one.
        let (sa, ta) = if sa.len() == 2 {
            ([1, sa[0], sa[1]], [0, ta[0], ta[1]])
        } else {
            ([sa[0], sa[1], sa[2]], [ta[0], ta[1], ta[2]])
        };
        let (batch, m, k, cols) = (sa[0], sa[1], sa[2], sb[1]);
        let (a0, a1, a2) = (ta[0], ta[1] as isize, ta[2] as isize);
        let (b0, b1) = (tb[0] as isize, tb[1] as isize);
        let (a, b) = (data(&inp[0].0), data(&inp[1].0));
        // Rows of consecutive batch entries follow each other in memory: one tall matrix.
        let merged = batch <= 1 || a0 as isize == m as isize * a1;
        let (runs, rows) = if merged { (1, batch * m) } else { (batch, m) };
        let write = |c: *mut f32| {
            for i in 0..runs {
                // SAFETY: the strides and sizes come from the input views, which address only
                // elements of `a` and `b`; `c` holds `batch * m * cols` elements, row-major.
                unsafe {
                    sgemm(
                        rows,
                        k,
                        cols,
                        Mat::new(a.as_ptr().add(i * a0), a1, a2),
                        Mat::new(b.as_ptr(), b0, b1),
                        Mat::new(c.add(i * m * cols), cols as isize, 1),
                    );
                }
            }
        };
        // SAFETY: the `runs` sgemm calls write rows `i * m ..` of `rows` rows each, together
        // all `batch * m` rows of `cols` columns: every element of C.
        let c = unsafe { sgemm_output(batch * m * cols, k, write) };
        tensor(c)
    }
}
// ANCHOR_END: merged_matmul

// ANCHOR: matmul
impl Operator for StridedMatMul {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let (va, vb) = (View::of(&inp[0].1), View::of(&inp[1].1));
        let (a, b) = (data(&inp[0].0), data(&inp[1].0));
        let rank = va.axes.len();
        let k_axis = rank - 1;
        let lens: Vec<usize> = va.axes[..k_axis].iter().map(|x| x.len).collect();
        let (m, n, k) = (lens[self.m_axis], lens[self.n_axis], va.axes[k_axis].len);
        // Output strides: row-major over the product's axes.
        let mut out_strides = vec![1isize; lens.len()];
        for i in (0..lens.len().saturating_sub(1)).rev() {
            out_strides[i] = out_strides[i + 1] * lens[i + 1] as isize;
        }
        let mut out = vec![0.0f32; lens.iter().product()];
        if out.is_empty() || k == 0 {
            return tensor(out);
        }
        // The product's batch axes are every axis but m and n. When m and n are the last
        // two, each batch element owns one contiguous (m, n) block of the output, and the
        // blocks go to different threads (one attention head's product is too small for
        // sgemm to split).
        let batch_axes: Vec<usize> = (0..lens.len())
            .filter(|&i| i != self.m_axis && i != self.n_axis)
            .collect();
        let batch_lens: Vec<usize> = batch_axes.iter().map(|&i| lens[i]).collect();
        let one = |index: &[usize], c: &mut [f32]| {
            let base = |v: &View| -> isize {
                batch_axes
                    .iter()
                    .zip(index)
                    .map(|(&i, &x)| x as isize * v.axes[i].stride)
                    .sum()
            };
            // SAFETY: every index sgemm forms stays inside its buffer: the views are plain
            // strided (checked by the pass) and the loop bounds are the views' lengths; `c`
            // starts at this batch element's first output.
            unsafe {
                // A (m, k) and B (k, n) through the views' strides, C (m, n) row-major.
                let a = Mat::new(
                    a.as_ptr().offset(base(&va)),
                    va.axes[self.m_axis].stride,
                    va.axes[k_axis].stride,
                );
                let b = Mat::new(
                    b.as_ptr().offset(base(&vb)),
                    vb.axes[k_axis].stride,
                    vb.axes[self.n_axis].stride,
                );
                let c = Mat::new(
                    c.as_mut_ptr(),
                    out_strides[self.m_axis],
                    out_strides[self.n_axis],
                );
                sgemm(m, k, n, a, b, c);
            }
        };
        let blocks = self.m_axis + 2 == lens.len() && self.n_axis + 1 == lens.len();
        if blocks {
            par_rows(&mut out, m * n, |part, first| {
                for (i, c) in part.chunks_mut(m * n).enumerate() {
                    one(&unravel(first + i, &batch_lens, &[]), c);
                }
            });
            return tensor(out);
        }
        let mut index = vec![0usize; batch_lens.len()];
        loop {
            let c_base: isize = batch_axes
                .iter()
                .zip(&index)
                .map(|(&i, &x)| x as isize * out_strides[i])
                .sum();
            one(&index, &mut out[c_base as usize..]);
            if !next(&mut index, &batch_lens, None) {
                return tensor(out);
            }
        }
    }
}
// ANCHOR_END: matmul

/// Which axes of a `Mul`'s two input views make it a matrix product ([`StridedMatMul`]), if any.
fn matmul_axes(a: &ShapeTracker, b: &ShapeTracker) -> Option<(usize, usize)> {
    let plain = |t: &ShapeTracker| !t.is_sliced() && !t.is_padded();
    let fake = |t: &ShapeTracker, axis: usize| t.fake[t.indexes[axis]];
    let n = a.len();
    if n < 2 || b.len() != n || !plain(a) || !plain(b) || fake(a, n - 1) || fake(b, n - 1) {
        return None;
    }
    let m_axes: Vec<usize> = (0..n - 1).filter(|&i| !fake(a, i) && fake(b, i)).collect();
    let n_axes: Vec<usize> = (0..n - 1).filter(|&i| fake(a, i) && !fake(b, i)).collect();
    match (m_axes.as_slice(), n_axes.as_slice()) {
        ([m], [nn]) => Some((*m, *nn)),
        _ => None,
    }
}

/// The pass that fuses `Mul -> SumReduce(last)` matrix products into [`StridedMatMul`].
/// Run it after luminal's own matmul passes (which catch the 2-D and 3-D x 2-D cases) and
/// before [`StridedKernels`].
#[derive(Debug, Default)]
pub struct StridedMatMulPass;

// ANCHOR: matmul_pass
impl Compiler for StridedMatMulPass {
    fn compile<T: ToIdsMut>(&self, graph: &mut Graph, mut remap: T) {
        use luminal::prelude::petgraph::Direction;
        let candidates: Vec<NodeIndex> = graph.graph.node_indices().collect();
        for sum in candidates {
            let Some(op) = graph.graph.node_weight(sum) else {
                continue;
            };
            let Some(op::SumReduce(d)) = op.as_any().downcast_ref::<op::SumReduce>().cloned()
            else {
                continue;
            };
            let srcs = graph.get_sources(sum);
            let (mul, _, reduce_view) = srcs[0];
            let is_mul = graph
                .graph
                .node_weight(mul)
                .is_some_and(|o| o.as_any().is::<op::Mul>());
            let single_use = graph.graph.edges_directed(mul, Direction::Outgoing).count() == 1;
            if !is_mul
                || !single_use
                || graph.no_delete.contains(&mul)
                || d + 1 != reduce_view.len()
            {
                continue;
            }
            // The sum must read the product as it is (contiguous, no view).
            if !(reduce_view.is_contiguous()
                && !reduce_view.is_sliced()
                && !reduce_view.is_padded())
            {
                continue;
            }
            let ins = graph.get_sources(mul);
            let Some((m_axis, n_axis)) = matmul_axes(&ins[0].2, &ins[1].2) else {
                continue;
            };
            let inputs = ins
                .iter()
                .map(|&(node, out, view)| (node, out, view))
                .collect();
            let op = StridedMatMul { m_axis, n_axis };
            fuse::replace(graph, &[mul, sum], op, inputs, &mut remap);
        }
    }
}
// ANCHOR_END: matmul_pass

/// The pass: swap every remaining view-reading primitive for its kernel (single elementwise
/// ops as one-step [`FusedElementwise`] programs, which print as the primitive). Node ids and
/// edges do not change, so no handle needs remapping. Run it last (after the pattern passes).
#[derive(Debug, Default)]
pub struct StridedKernels;

// ANCHOR: kernels_pass
impl Compiler for StridedKernels {
    fn compile<T: ToIdsMut>(&self, graph: &mut Graph, _remap: T) {
        let nodes: Vec<NodeIndex> = graph.graph.node_indices().collect();
        for node in nodes {
            let op = graph.graph.node_weight(node).expect("node exists").as_any();
            if op.is::<luminal::compilers::BatchedMatMul2D>() {
                *graph.graph.node_weight_mut(node).expect("node exists") =
                    Box::new(MergedBatchMatMul);
                continue;
            }
            if op.is::<luminal::compilers::MatMul2D>() {
                *graph.graph.node_weight_mut(node).expect("node exists") = Box::new(PlainMatMul2D);
                continue;
            }
            let views: Vec<ShapeTracker> = graph.get_sources(node).iter().map(|s| s.2).collect();
            let op = graph.graph.node_weight(node).expect("node exists").as_ref();
            let new: Option<Box<dyn Operator>> = if let Some(step) = elementwise_step(op, &views) {
                Some(Box::new(FusedElementwise::single(step)))
            } else {
                match (Primitive::of(op), reduce_axis(op)) {
                    (Some(Primitive::SumReduce), Some(d)) => Some(Box::new(StridedSumReduce(d))),
                    (Some(Primitive::MaxReduce), Some(d)) => Some(Box::new(StridedMaxReduce(d))),
                    _ => None,
                }
            };
            if let Some(new) = new {
                *graph.graph.node_weight_mut(node).expect("node exists") = new;
            }
        }
    }
}
// ANCHOR_END: kernels_pass

/// Time spent per op kind, filled by ops wrapped with [`ProfileOps`]: kind -> (calls, time).
pub static PROFILE: std::sync::Mutex<
    std::collections::BTreeMap<String, (usize, std::time::Duration)>,
> = std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Time per node, filled alongside [`PROFILE`]: node index -> time.
pub static PROFILE_NODES: std::sync::Mutex<std::collections::BTreeMap<usize, std::time::Duration>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// An op that times another op's `process` into [`PROFILE`].
pub struct Profiled {
    inner: Box<dyn Operator>,
    kind: String,
    node: usize,
}

impl std::fmt::Debug for Profiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl PartialEq for Profiled {
    fn eq(&self, _: &Self) -> bool {
        false // every profiled op is its own
    }
}

impl Operator for Profiled {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let t = std::time::Instant::now();
        let out = self.inner.process(inp);
        let mut p = PROFILE.lock().expect("profile lock");
        let e = p.entry(self.kind.clone()).or_default();
        e.0 += 1;
        e.1 += t.elapsed();
        *PROFILE_NODES
            .lock()
            .expect("profile lock")
            .entry(self.node)
            .or_default() += t.elapsed();
        out
    }
}

/// A pass that wraps every op in [`Profiled`] (run it last; for measurements only).
#[derive(Debug, Default)]
pub struct ProfileOps;

impl Compiler for ProfileOps {
    fn compile<T: ToIdsMut>(&self, graph: &mut Graph, _remap: T) {
        let nodes: Vec<NodeIndex> = graph.graph.node_indices().collect();
        for node in nodes {
            let op = graph.graph.node_weight(node).expect("node exists");
            if op.as_any().is::<luminal::op::Function>() {
                continue; // inputs stay recognisable (optimisers keep their values by type)
            }
            let kind = crate::graph::primitive::op_kind(graph, node);
            let slot = graph.graph.node_weight_mut(node).expect("node exists");
            let inner = std::mem::replace(slot, Box::new(luminal::op::Contiguous));
            *slot = Box::new(Profiled {
                inner,
                kind,
                node: node.index(),
            });
        }
    }
}
