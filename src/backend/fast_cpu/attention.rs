//! Fused attention: chapter 5's masked softmax attention, forward and backward, as two kernels
//! that never write the (batch, heads, queries, keys) score matrix to memory.
//!
//! The chapters build attention from primitive ops (a matmul, a dozen elementwise ops and two
//! reductions for the masked softmax, a matmul), and chapter 8's autograd adds about twenty
//! more for the backward. Run one by one, each op is a pass over a `b·h·s·t` tensor: measured,
//! about a quarter of a reference-model training step. [`FuseAttention`] recognises that exact
//! primitive graph and swaps it for:
//! - [`FusedAttention`]: per (batch, head) and per block of query rows, the scores of the keys
//!   the block may attend (a causal block stops at its last row's key: the masked half of the
//!   score matrix is never computed), the masked softmax on them, then `P V`;
//! - [`FusedAttentionGrad`]: recomputes `P` the same way (nothing of the forward is stored),
//!   then `dP = dO V^T`, `dS = P (dP - rowsum(P dP)) / sqrt(d)`, `dQ = dS K`, `dK = dS^T Q` and
//!   `dV = P^T dO`, with the score-sized buffers of one (batch, head) slice in the cache;
//!   [`TakeRange`] hands each of the three gradients to its readers.
//!
//! The softmax is the chapter's formula, step for step (`z = s·scale + (a - 1)·1e9`,
//! `e = 2^((z - max z)·log2 e)`, `p = e·a / (l + [l < 0.5])`), so the forward agrees with the
//! unfused graph to float rounding. Two deliberate differences, both stated in appendix A:
//! keys past a block's last allowed key are left out of the row maximum (their `z` is about
//! -1e9, so they never are the maximum unless a score is near 1e9 in size), and the backward
//! uses the softmax gradient in closed form, `P (dP - rowsum(P dP))`, where the autograd
//! graph also routes a (mathematically zero) gradient through the row maximum.
//!
//! Anything that does not match exactly (another mask formula, a retrieved attention matrix,
//! a gradient flowing into the mask, sliced or padded operands) is left to the generic kernels.

use luminal::op::{self, InputTensor, Operator};
use luminal::prelude::petgraph::visit::EdgeRef;
use luminal::prelude::petgraph::Direction;
use luminal::prelude::*;

use super::{exp2, pool, sgemm, threads, Mat, StridedMatMul, View};

/// Query rows per block: small enough that a causal block skips most of the masked keys,
/// large enough for sgemm to run at speed.
const BLOCK: usize = 32;

/// Accumulators per row reduction (a multiple of the vector width).
const LANES: usize = 16;

/// The dims and resolved 4-D views every attention kernel reads: `q` (b, h, s, dk),
/// `k` (b, h, t, dk), `v` (b, h, t, dv), `allowed` (b, h, s, t), all addressed by strides.
struct Operands<'a> {
    q: Operand<'a>,
    k: Operand<'a>,
    v: Operand<'a>,
    allowed: Operand<'a>,
    /// b, h, s, t, dk, dv
    dims: [usize; 6],
}

#[derive(Clone, Copy)]
struct Operand<'a> {
    data: &'a [f32],
    strides: [isize; 4],
}

impl<'a> Operand<'a> {
    fn of(t: &'a InputTensor<'a>, st: &ShapeTracker) -> (Self, [usize; 4]) {
        let view = View::of(st);
        assert_eq!(view.axes.len(), 4, "attention operands are 4-D views");
        let lens = std::array::from_fn(|i| view.axes[i].len);
        let strides = std::array::from_fn(|i| view.axes[i].stride);
        (
            Operand {
                data: super::data(t),
                strides,
            },
            lens,
        )
    }

    /// Pointer to element (b, h, row, 0) and the (row, column) strides of that slice.
    fn slice(&self, b: usize, h: usize) -> (*const f32, isize, isize) {
        let off = b as isize * self.strides[0] + h as isize * self.strides[1];
        // SAFETY: (b, h) is inside the view, whose addresses are inside `data`.
        (
            unsafe { self.data.as_ptr().offset(off) },
            self.strides[2],
            self.strides[3],
        )
    }

    /// Row `i` of slice (b, h) into `dst` (its columns in order).
    fn row_into(&self, b: usize, h: usize, i: usize, dst: &mut [f32]) {
        let st = &self.strides;
        let off = b as isize * st[0] + h as isize * st[1] + i as isize * st[2];
        if st[3] == 1 {
            dst.copy_from_slice(&self.data[off as usize..off as usize + dst.len()]);
        } else {
            for (j, d) in dst.iter_mut().enumerate() {
                *d = self.data[(off + j as isize * st[3]) as usize];
            }
        }
    }
}

/// One (batch, head) slice's mask, (s, t), and each row's key count (one past its last
/// allowed key).
struct MaskRows {
    rows: Vec<f32>,
    keys: Vec<usize>,
}

impl MaskRows {
    fn of(x: &Operands, b: usize, h: usize) -> Self {
        let [_, _, s, t, _, _] = x.dims;
        let mut rows = vec![0.0f32; s * t];
        let mut keys = vec![0usize; s];
        for (i, row) in rows.chunks_mut(t.max(1)).take(s).enumerate() {
            x.allowed.row_into(b, h, i, row);
            keys[i] = row.iter().rposition(|&a| a != 0.0).map_or(0, |j| j + 1);
        }
        MaskRows { rows, keys }
    }

    /// One past the last key any row of `rows` may attend (0 when none may).
    fn keys_needed(&self, rows: std::ops::Range<usize>) -> usize {
        self.keys[rows].iter().copied().max().unwrap_or(0)
    }
}

/// The mask of slice (b, h): computed once when it is the same for every slice (a mask
/// broadcast over batch and heads, as the causal mask is), else per slice.
fn mask_for<'m>(
    x: &Operands,
    shared: &'m Option<MaskRows>,
    own: &'m mut Option<MaskRows>,
    b: usize,
    h: usize,
) -> &'m MaskRows {
    match shared {
        Some(m) => m,
        None => own.insert(MaskRows::of(x, b, h)),
    }
}

fn shared_mask(x: &Operands) -> Option<MaskRows> {
    (x.allowed.strides[0] == 0 && x.allowed.strides[1] == 0).then(|| MaskRows::of(x, 0, 0))
}

impl<'a> Operands<'a> {
    fn of(inp: &'a [(InputTensor<'a>, ShapeTracker)]) -> Self {
        let (q, [b, h, s, dk]) = Operand::of(&inp[0].0, &inp[0].1);
        let (k, [_, _, t, _]) = Operand::of(&inp[1].0, &inp[1].1);
        let (v, [_, _, _, dv]) = Operand::of(&inp[2].0, &inp[2].1);
        let (allowed, _) = Operand::of(&inp[3].0, &inp[3].1);
        Operands {
            q,
            k,
            v,
            allowed,
            dims: [b, h, s, t, dk, dv],
        }
    }
}

/// The softmax constants read off the matched graph.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SoftmaxConsts {
    /// `1 / sqrt(d_head)` (or whatever the scores were multiplied by).
    pub scale: f32,
    /// The multiplier of `exp2` (`log2 e` as luminal's `exp` writes it).
    pub log2e: f32,
}

/// Row-major strides of a 4-D output whose axis `out_axes[r]` holds canonical axis `r`
/// (b, h, rows, columns), for the dims `lens` (canonical order).
fn out_strides(out_axes: [usize; 4], lens: [usize; 4]) -> [isize; 4] {
    let mut by_axis = [0usize; 4];
    for r in 0..4 {
        by_axis[out_axes[r]] = lens[r];
    }
    let mut stride_of_axis = [1isize; 4];
    for a in (0..3).rev() {
        stride_of_axis[a] = stride_of_axis[a + 1] * by_axis[a + 1] as isize;
    }
    std::array::from_fn(|r| stride_of_axis[out_axes[r]])
}

/// Scores of rows `i0..i0+r` against keys `0..j` into `p` (row stride `ld`), then the
/// chapter's masked softmax on each row, in place. Columns `j..ld` are set to 0.
#[allow(clippy::too_many_arguments)]
fn softmax_block(
    x: &Operands,
    mask: &MaskRows,
    c: SoftmaxConsts,
    b: usize,
    h: usize,
    i0: usize,
    r: usize,
    j: usize,
    p: &mut [f32],
    ld: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (just checked).
        return unsafe { softmax_block_avx2(x, mask, c, b, h, i0, r, j, p, ld) };
    }
    softmax_block_any(x, mask, c, b, h, i0, r, j, p, ld)
}

/// [`softmax_block_any`] compiled for AVX2: 8 floats per instruction, the same operations.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn softmax_block_avx2(
    x: &Operands,
    mask: &MaskRows,
    c: SoftmaxConsts,
    b: usize,
    h: usize,
    i0: usize,
    r: usize,
    j: usize,
    p: &mut [f32],
    ld: usize,
) {
    softmax_block_any(x, mask, c, b, h, i0, r, j, p, ld)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn softmax_block_any(
    x: &Operands,
    mask: &MaskRows,
    c: SoftmaxConsts,
    b: usize,
    h: usize,
    i0: usize,
    r: usize,
    j: usize,
    p: &mut [f32],
    ld: usize,
) {
    let dk = x.dims[4];
    let (qp, qrs, qcs) = x.q.slice(b, h);
    let (kp, krs, kcs) = x.k.slice(b, h);
    // SAFETY: rows i0..i0+r of q and keys 0..j are inside their views; `p` holds r rows of
    // `ld >= j` elements.
    unsafe {
        sgemm(
            r,
            dk,
            j,
            Mat::new(qp.offset(i0 as isize * qrs), qrs, qcs),
            Mat::new(kp, kcs, krs),
            Mat::new(p.as_mut_ptr(), ld as isize, 1),
        );
    }
    // ANCHOR: softmax_rows
    let t = x.dims[3];
    for (row, z) in p.chunks_mut(ld).take(r).enumerate() {
        let i = i0 + row;
        let (z, rest) = z.split_at_mut(j);
        rest.fill(0.0);
        if j == 0 {
            continue;
        }
        let a = &mask.rows[i * t..i * t + j];
        // LANES partial maxima and sums, so that the loops vectorise.
        let mut max = [f32::NEG_INFINITY; LANES];
        by_lanes(z, a, &mut max, |zj, a, m| {
            *zj = *zj * c.scale + (a - 1.0) * 1e9;
            *m = if *zj > *m { *zj } else { *m };
        });
        let max = max.into_iter().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = [0.0f32; LANES];
        by_lanes(z, a, &mut sum, |zj, a, l| {
            *zj = exp2((*zj - max) * c.log2e) * a; // z + max * -1, as the graph: the same bits
            *l += *zj;
        });
        let l: f32 = sum.iter().sum();
        let inv = 1.0 / (l + (l < 0.5) as u8 as f32);
        for zj in z.iter_mut() {
            *zj *= inv;
        }
    }
    // ANCHOR_END: softmax_rows
}

/// `step(z[j], a[j], acc[j % LANES])` along a row, in whole chunks of LANES (then the rest
/// into `acc[0]`), so that the compiler vectorises the chunks.
#[inline(always)]
fn by_lanes(
    z: &mut [f32],
    a: &[f32],
    acc: &mut [f32; LANES],
    step: impl Fn(&mut f32, f32, &mut f32),
) {
    let whole = z.len() - z.len() % LANES;
    for (zb, ab) in z[..whole]
        .chunks_exact_mut(LANES)
        .zip(a.chunks_exact(LANES))
    {
        for k in 0..LANES {
            step(&mut zb[k], ab[k], &mut acc[k]);
        }
    }
    for (zj, &a) in z[whole..].iter_mut().zip(&a[whole..]) {
        step(zj, a, &mut acc[0]);
    }
}

/// The scores' gradient from `dP` (in `db`, replaced) and `P` (`pb`), rows of `t` of which the
/// first `j` are used.
fn grad_rows(pb: &[f32], db: &mut [f32], t: usize, j: usize, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (just checked).
        return unsafe { grad_rows_avx2(pb, db, t, j, scale) };
    }
    grad_rows_any(pb, db, t, j, scale)
}

/// [`grad_rows_any`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn grad_rows_avx2(pb: &[f32], db: &mut [f32], t: usize, j: usize, scale: f32) {
    grad_rows_any(pb, db, t, j, scale)
}

#[inline(always)]
fn grad_rows_any(pb: &[f32], db: &mut [f32], t: usize, j: usize, scale: f32) {
    // ANCHOR: grad_rows
    // dS = P (dP - rowsum(P dP)) * scale, row by row, in place of dP
    for (prow, drow) in pb.chunks(t).zip(db.chunks_mut(t)) {
        let d = dot(&prow[..j], &drow[..j]);
        for (dsj, pj) in drow[..j].iter_mut().zip(prow) {
            *dsj = pj * (*dsj - d) * scale;
        }
        drow[j..].fill(0.0);
    }
    // ANCHOR_END: grad_rows
}

/// `sum a_i b_i`, in LANES partial sums so that it vectorises.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let whole = a.len() - a.len() % LANES;
    let mut sum = [0.0f32; LANES];
    for (x, y) in a[..whole].chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for k in 0..LANES {
            sum[k] += x[k] * y[k];
        }
    }
    let rest: f32 = a[whole..].iter().zip(&b[whole..]).map(|(x, y)| x * y).sum();
    sum.iter().sum::<f32>() + rest
}

// Listings show the op and its scale (the layouts are in the edges' views).
impl std::fmt::Debug for FusedAttention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FusedAttention(scale: {})", self.consts.scale)
    }
}

impl std::fmt::Debug for FusedAttentionGrad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FusedAttentionGrad(scale: {})", self.consts.scale)
    }
}

impl std::fmt::Debug for TakeRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TakeRange({})", ["dQ", "dK", "dV"][self.region.min(2)])
    }
}

/// Raw output pointer shared by the threads, which write disjoint elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each (batch, head) slice is written by one thread only; the pointer outlives them.
unsafe impl Send for OutPtr {}
// SAFETY: as for `Send`.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so that closures capture the `Sync` wrapper, not its field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Run `body(b, h, scratch)` for every (batch, head) slice, on the backend's threads.
fn for_each_slice(
    bh: [usize; 2],
    scratch_len: usize,
    body: impl Fn(usize, usize, &mut [f32]) + Sync,
) {
    let n = bh[0] * bh[1];
    if threads() == 1 || n == 1 {
        let mut scratch = vec![0.0f32; scratch_len];
        for s in 0..n {
            body(s / bh[1], s % bh[1], &mut scratch);
        }
        return;
    }
    use rayon::prelude::*;
    pool().install(|| {
        (0..n).into_par_iter().for_each_init(
            || vec![0.0f32; scratch_len],
            |scratch, s| body(s / bh[1], s % bh[1], scratch),
        )
    });
}

/// Chapter 5's masked attention, `softmax(Q K^T · scale + mask) V`, in one kernel.
/// Inputs: `q` (b, h, s, dk), `k` (b, h, t, dk), `v` (b, h, t, dv), `allowed` (b, h, s, t);
/// output (b, h, s, dv) laid out as the matmul it replaces wrote it (`out_axes`).
#[derive(Clone, PartialEq)]
pub struct FusedAttention {
    /// The softmax's constants.
    pub consts: SoftmaxConsts,
    /// Which output axis holds b, h, s and dv.
    pub out_axes: [usize; 4],
}

impl Operator for FusedAttention {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let x = Operands::of(&inp);
        let [b, h, s, t, _, dv] = x.dims;
        let os = out_strides(self.out_axes, [b, h, s, dv]);
        let mut out = vec![0.0f32; b * h * s * dv];
        let optr = OutPtr(out.as_mut_ptr());
        let c = self.consts;
        let shared = shared_mask(&x);
        for_each_slice([b, h], BLOCK * t, |bi, hi, p| {
            let mut own = None;
            let mask = mask_for(&x, &shared, &mut own, bi, hi);
            let (vp, vrs, vcs) = x.v.slice(bi, hi);
            for i0 in (0..s).step_by(BLOCK) {
                let r = BLOCK.min(s - i0);
                let j = mask.keys_needed(i0..i0 + r);
                softmax_block(&x, mask, c, bi, hi, i0, r, j, p, t.max(1));
                // SAFETY: rows i0..i0+r of this slice's output are written by this thread
                // only; keys 0..j of v are inside its view.
                unsafe {
                    let o = optr
                        .get()
                        .offset(bi as isize * os[0] + hi as isize * os[1] + i0 as isize * os[2]);
                    sgemm(
                        r,
                        j,
                        dv,
                        Mat::new(p.as_ptr(), t as isize, 1),
                        Mat::new(vp, vrs, vcs),
                        Mat::new(o, os[2], os[3]),
                    );
                }
            }
        });
        vec![Tensor::new(out)]
    }
}

/// The gradients of [`FusedAttention`] with respect to `q`, `k` and `v`, given `dO`
/// (inputs: `q`, `k`, `v`, `allowed`, `dO` (b, h, s, dv)). One buffer holds dQ, then dK,
/// then dV, each laid out as the matmul it replaces wrote it; [`TakeRange`] splits it.
#[derive(Clone, PartialEq)]
pub struct FusedAttentionGrad {
    /// The softmax's constants.
    pub consts: SoftmaxConsts,
    /// Output axes of dQ (b, h, s, dk), dK (b, h, t, dk) and dV (b, h, t, dv).
    pub out_axes: [[usize; 4]; 3],
}

impl Operator for FusedAttentionGrad {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let x = Operands::of(&inp[..4]);
        let (d_out, _) = Operand::of(&inp[4].0, &inp[4].1);
        let [b, h, s, t, dk, dv] = x.dims;
        let (nq, nk, nv) = (b * h * s * dk, b * h * t * dk, b * h * t * dv);
        let sq = out_strides(self.out_axes[0], [b, h, s, dk]);
        let sk = out_strides(self.out_axes[1], [b, h, t, dk]);
        let sv = out_strides(self.out_axes[2], [b, h, t, dv]);
        let mut out = vec![0.0f32; nq + nk + nv];
        let base = OutPtr(out.as_mut_ptr());
        let c = self.consts;
        let blocks = s.div_ceil(BLOCK);
        let shared = shared_mask(&x);
        // Scratch per slice: P and dS (s, t) and each block's key count.
        for_each_slice([b, h], 2 * s * t + blocks, |bi, hi, scratch| {
            let mut own = None;
            let mask = mask_for(&x, &shared, &mut own, bi, hi);
            let (p, rest) = scratch.split_at_mut(s * t);
            let (ds, js) = rest.split_at_mut(s * t);
            let (qp, qrs, qcs) = x.q.slice(bi, hi);
            let (kp, krs, kcs) = x.k.slice(bi, hi);
            let (vp, vrs, vcs) = x.v.slice(bi, hi);
            let (op, ors, ocs) = d_out.slice(bi, hi);
            let at = |st: [isize; 4], region: usize| {
                // SAFETY: the slice's first element of an output region inside `out`.
                unsafe {
                    base.get()
                        .add(region)
                        .offset(bi as isize * st[0] + hi as isize * st[1])
                }
            };
            let (dq, dkp, dvp) = (at(sq, 0), at(sk, nq), at(sv, nq + nk));
            for (blk, keys) in js.iter_mut().enumerate() {
                let (i0, r) = (blk * BLOCK, BLOCK.min(s - blk * BLOCK));
                let j = mask.keys_needed(i0..i0 + r);
                *keys = j as f32;
                let pb = &mut p[i0 * t..(i0 + r) * t];
                softmax_block(&x, mask, c, bi, hi, i0, r, j, pb, t);
                let db = &mut ds[i0 * t..(i0 + r) * t];
                // SAFETY (all three sgemms): rows i0..i0+r and keys 0..j are inside the views
                // and the scratch; dQ rows i0..i0+r of this slice are this thread's.
                unsafe {
                    // dP = dO V^T: (r, dv) x (dv, j)
                    sgemm(
                        r,
                        dv,
                        j,
                        Mat::new(op.offset(i0 as isize * ors), ors, ocs),
                        Mat::new(vp, vcs, vrs),
                        Mat::new(db.as_mut_ptr(), t as isize, 1),
                    );
                }
                grad_rows(pb, db, t, j, c.scale);
                // SAFETY: see above.
                unsafe {
                    // dQ = dS K: (r, j) x (j, dk)
                    sgemm(
                        r,
                        j,
                        dk,
                        Mat::new(db.as_ptr(), t as isize, 1),
                        Mat::new(kp, krs, kcs),
                        Mat::new(dq.offset(i0 as isize * sq[2]), sq[2], sq[3]),
                    );
                }
            }
            // dK and dV, by blocks of keys: only query blocks that reach a key block add to it.
            for j0 in (0..t).step_by(BLOCK) {
                let n = BLOCK.min(t - j0);
                let first = (0..blocks)
                    .find(|&blk| js[blk] as usize > j0)
                    .unwrap_or(blocks);
                let i0 = (first * BLOCK).min(s);
                let rows = s - i0;
                // SAFETY: keys j0..j0+n of this slice's dK and dV are this thread's; rows
                // i0..s of the scratch and of q and dO are inside their buffers and views.
                unsafe {
                    // dV = P^T dO: (n, rows) x (rows, dv)
                    sgemm(
                        n,
                        rows,
                        dv,
                        Mat::new(p.as_ptr().add(i0 * t + j0), 1, t as isize),
                        Mat::new(op.offset(i0 as isize * ors), ors, ocs),
                        Mat::new(dvp.offset(j0 as isize * sv[2]), sv[2], sv[3]),
                    );
                    // dK = dS^T Q: (n, rows) x (rows, dk)
                    sgemm(
                        n,
                        rows,
                        dk,
                        Mat::new(ds.as_ptr().add(i0 * t + j0), 1, t as isize),
                        Mat::new(qp.offset(i0 as isize * qrs), qrs, qcs),
                        Mat::new(dkp.offset(j0 as isize * sk[2]), sk[2], sk[3]),
                    );
                }
            }
        });
        vec![Tensor::new(out)]
    }
}

/// One of [`FusedAttentionGrad`]'s three gradients (`region` 0: dQ, 1: dK, 2: dV), copied
/// out as its own tensor for its readers. Inputs: the gradient buffer, then `q`, `k` and `v`
/// (only their views' sizes are read, to find where the region starts: the sizes are known
/// only when the graph runs).
#[derive(Clone, PartialEq)]
pub struct TakeRange {
    /// 0: dQ, 1: dK, 2: dV.
    pub region: usize,
}

impl Operator for TakeRange {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let src = super::data(&inp[0].0);
        let len = |i: usize| View::of(&inp[i].1).len();
        // dQ has q's size, dK k's and dV v's.
        let (nq, nk, nv) = (len(1), len(2), len(3));
        let start = [0, nq, nq + nk][self.region];
        let n = [nq, nk, nv][self.region];
        vec![Tensor::new(src[start..start + n].to_vec())]
    }
}

/// The pass that swaps chapter 5's attention (and chapter 8's backward of it, when the graph
/// has one) for [`FusedAttention`] and [`FusedAttentionGrad`]. Run it after
/// [`super::StridedMatMulPass`] (it looks for the products that pass makes) and before
/// [`super::FuseElementwise`] (which would fuse the softmax's ops away from view).
#[derive(Debug, Default)]
pub struct FuseAttention;

impl Compiler for FuseAttention {
    fn compile<T: ToIdsMut>(&self, graph: &mut Graph, mut remap: T) {
        let maxes: Vec<NodeIndex> = graph
            .graph
            .node_indices()
            .filter(|&n| G(graph).is::<op::MaxReduce>(n))
            .collect();
        for m in maxes {
            if !graph.graph.contains_node(m) {
                continue;
            }
            if let Some(found) = Match::find(&G(graph), m) {
                found.replace(graph, &mut remap);
            }
        }
    }
}

/// Read-only helpers over the graph for the pattern passes' matchers.
pub(super) struct G<'a>(pub(super) &'a Graph);

pub(super) type Src = (NodeIndex, u8, ShapeTracker);

impl G<'_> {
    pub(super) fn is<O: Operator + 'static>(&self, n: NodeIndex) -> bool {
        self.0
            .graph
            .node_weight(n)
            .is_some_and(|o| o.as_any().is::<O>())
    }
    pub(super) fn op<O: Operator + Clone + 'static>(&self, n: NodeIndex) -> Option<O> {
        self.0
            .graph
            .node_weight(n)?
            .as_any()
            .downcast_ref::<O>()
            .cloned()
    }
    pub(super) fn srcs(&self, n: NodeIndex) -> Vec<Src> {
        self.0.get_sources(n)
    }
    pub(super) fn consumers(&self, n: NodeIndex) -> Vec<NodeIndex> {
        let mut c: Vec<NodeIndex> = self
            .0
            .graph
            .edges_directed(n, Direction::Outgoing)
            .filter(|e| e.weight().as_data().is_some())
            .map(|e| e.target())
            .collect();
        c.sort();
        c.dedup();
        c
    }
    pub(super) fn constant(&self, n: NodeIndex) -> Option<f32> {
        match self.op::<op::Constant>(n)?.0 {
            op::ConstantValue::Float(f) => Some(f),
            _ => None,
        }
    }
    pub(super) fn is_const(&self, n: NodeIndex, value: f32) -> bool {
        self.constant(n)
            .is_some_and(|c| (c - value).abs() <= 1e-6 * value.abs().max(1.0))
    }
    /// `n` is a binary `O` with `x` as one input (either side, unless `first`): the other one.
    pub(super) fn other<O: Operator + 'static>(
        &self,
        n: NodeIndex,
        x: NodeIndex,
        first: bool,
    ) -> Option<Src> {
        if !self.is::<O>(n) {
            return None;
        }
        let s = self.srcs(n);
        match s.as_slice() {
            [a, b] if a.0 == x => Some(*b),
            [a, b] if b.0 == x && !first => Some(*a),
            _ => None,
        }
    }
    /// The consumer of `x` that is a binary `O` whose other input satisfies `want`.
    pub(super) fn next<O: Operator + 'static>(
        &self,
        x: NodeIndex,
        want: impl Fn(&Src) -> bool,
    ) -> Option<NodeIndex> {
        self.consumers(x)
            .into_iter()
            .find(|&c| self.other::<O>(c, x, false).is_some_and(|o| want(&o)))
    }
    /// The consumer of `x` that is a unary `O` (or a reduction) satisfying `check`.
    pub(super) fn next1<O: Operator + Clone + 'static>(
        &self,
        x: NodeIndex,
        check: impl Fn(&O) -> bool,
    ) -> Option<NodeIndex> {
        self.consumers(x)
            .into_iter()
            .find(|&c| self.op::<O>(c).is_some_and(|o| check(&o)) && self.srcs(c).len() == 1)
    }
    /// A [`StridedMatMul`] with rank-5 plain views.
    fn matmul(&self, n: NodeIndex) -> Option<(StridedMatMul, Vec<Src>)> {
        let mm = self.op::<StridedMatMul>(n)?;
        let s = self.srcs(n);
        let ok = s.len() == 2
            && s.iter()
                .all(|(_, _, st)| st.len() == 5 && !st.is_sliced() && !st.is_padded());
        ok.then_some((mm, s))
    }
}

/// For each axis of `st`, which of its node's real dims it reads (`None`: broadcast). `None`
/// overall when the view slices, pads or is not over 4 real dims.
fn roles(st: &ShapeTracker) -> Option<Vec<Option<usize>>> {
    if st.is_sliced() || st.is_padded() || st.fake.iter().filter(|f| !**f).count() != 4 {
        return None;
    }
    Some(
        (0..st.len())
            .map(|a| {
                let u = st.indexes[a];
                (!st.fake[u]).then(|| (0..u).filter(|&p| !st.fake[p]).count())
            })
            .collect(),
    )
}

/// A product that reads the (b, h, s, t) matrix `x` (P or dS) as its operand `x_side` and
/// writes a (b, h, row, c) result, row being x's dim `row` (2: queries, 3: keys). Returns the
/// other operand's view in canonical (b, h, reduced, c) order and the output's axis of each
/// of b, h, row, c.
fn product_form(s: &[Src], x_side: usize, row: usize) -> Option<(ShapeTracker, [usize; 4])> {
    let r = roles(&s[x_side].2)?;
    let reduced = 5 - row; // 2 <-> 3
    if r[4] != Some(reduced) {
        return None;
    }
    let axis = |want: Option<usize>| (0..4).find(|&a| r[a] == want);
    let (ab, ah, arow, ac) = (
        axis(Some(0))?,
        axis(Some(1))?,
        axis(Some(row))?,
        axis(None)?,
    );
    let mut y = s[1 - x_side].2;
    if !y.fake[y.indexes[arow]] || y.fake[y.indexes[ac]] {
        return None;
    }
    y.remove_dim(arow);
    let shift = |a: usize| a - (a > arow) as usize;
    y.permute(&[shift(ab), shift(ah), shift(4), shift(ac)]);
    Some((y, [ab, ah, arow, ac]))
}

/// A matched attention: the nodes to remove and what the fused ops read.
struct Match {
    /// Every node replaced (forward, and backward when there is one).
    nodes: Vec<NodeIndex>,
    /// The forward's output product, and the backward's three gradient products.
    out: NodeIndex,
    grads: Option<[NodeIndex; 3]>,
    q: Src,
    k: Src,
    v: Src,
    allowed: Src,
    d_out: Option<Src>,
    consts: SoftmaxConsts,
    out_axes: [usize; 4],
    grad_axes: [[usize; 4]; 3],
}

impl Match {
    /// The attention whose row maximum is `m`, if the graph around it is exactly chapter 5's
    /// (and chapter 8's backward of it).
    fn find(g: &G, m: NodeIndex) -> Option<Match> {
        let plain = |st: &ShapeTracker| !st.is_sliced() && !st.is_padded();
        let op::MaxReduce(3) = g.op::<op::MaxReduce>(m)? else {
            return None;
        };
        let [(z, _, zv)] = <[Src; 1]>::try_from(g.srcs(m)).ok()?;
        if zv.len() != 4 || !g.is::<op::Add>(z) || !plain(&zv) {
            return None;
        }
        // z = S * scale + (allowed - 1) * 1e9, S = q k^T
        let zs = g.srcs(z);
        let (sc, bias) = [(zs[0].0, zs[1].0), (zs[1].0, zs[0].0)]
            .into_iter()
            .find(|&(sc, _)| g.srcs(sc).iter().any(|s| g.is::<StridedMatMul>(s.0)))?;
        let scs = g.srcs(sc);
        if !g.is::<op::Mul>(sc) || scs.len() != 2 {
            return None;
        }
        let (s_node, c_scale) = if g.is::<StridedMatMul>(scs[0].0) {
            (scs[0].0, scs[1].0)
        } else {
            (scs[1].0, scs[0].0)
        };
        let scale = g.constant(c_scale)?;
        let (mm, s_srcs) = g.matmul(s_node)?;
        if (mm.m_axis, mm.n_axis) != (2, 3) {
            return None;
        }
        let (mut q, mut k) = (s_srcs[0], s_srcs[1]);
        q.2.remove_dim(3);
        k.2.remove_dim(2);
        let bias_in = g.srcs(bias);
        if !g.is::<op::Mul>(bias) || bias_in.len() != 2 {
            return None;
        }
        let (bm1, c9) = if g.is_const(bias_in[1].0, 1e9) {
            (bias_in[0].0, bias_in[1].0)
        } else {
            (bias_in[1].0, bias_in[0].0)
        };
        if !g.is_const(c9, 1e9) {
            return None;
        }
        let bm1_in = g.srcs(bm1);
        if !g.is::<op::Add>(bm1) || bm1_in.len() != 2 {
            return None;
        }
        let allowed = *bm1_in.iter().find(|s| !g.is_const(s.0, -1.0))?;
        if !bm1_in.iter().any(|s| g.is_const(s.0, -1.0)) || !plain(&allowed.2) {
            return None;
        }
        let a = allowed.0;
        let is_allowed = |s: &Src| s.0 == a && s.2 == allowed.2;
        // The softmax, op by op.
        let negm = g.next::<op::Mul>(m, |s| g.is_const(s.0, -1.0))?;
        let zm = g.next::<op::Add>(negm, |s| s.0 == z)?;
        let x = g.next::<op::Mul>(zm, |s| g.constant(s.0).is_some())?;
        let log2e = g.constant(g.other::<op::Mul>(x, zm, false)?.0)?;
        if (log2e - std::f32::consts::LOG2_E).abs() > 1e-6 {
            return None;
        }
        let e = g.next1::<op::Exp2>(x, |_| true)?;
        let em = g.next::<op::Mul>(e, is_allowed)?;
        let l = g.next1::<op::SumReduce>(em, |o| o.0 == 3)?;
        let lt = g.consumers(l).into_iter().find(|&c| {
            g.other::<op::LessThan>(c, l, true)
                .is_some_and(|s| g.is_const(s.0, 0.5))
        })?;
        let l2 = g.next::<op::Add>(lt, |s| s.0 == l)?;
        let r = g.next1::<op::Recip>(l2, |_| true)?;
        let p = g.next::<op::Mul>(r, |s| s.0 == em)?;
        let out = g
            .consumers(p)
            .into_iter()
            .find(|&c| g.matmul(c).is_some_and(|(_, s)| s[0].0 == p))?;
        let (_, o_srcs) = g.matmul(out)?;
        let (v_view, out_axes) = product_form(&o_srcs, 0, 2)?;
        let v = (o_srcs[1].0, o_srcs[1].1, v_view);
        let forward = vec![s_node, sc, z, m, negm, zm, x, e, em, l, lt, l2, r, p, out];
        let consts = SoftmaxConsts { scale, log2e };
        let mut found = Match {
            nodes: forward.clone(),
            out,
            grads: None,
            q,
            k,
            v,
            allowed,
            d_out: None,
            consts,
            out_axes,
            grad_axes: [[0; 4]; 3],
        };
        let outside = |set: &[NodeIndex]| {
            set.iter()
                .filter(|&&n| n != out)
                .flat_map(|&n| g.consumers(n))
                .any(|c| !set.contains(&c))
        };
        if outside(&forward) {
            found.backward(g, [z, m, e, em, r, p], &forward)?;
        }
        // Nothing replaced may be needed by itself (retrieved or kept).
        let inner = found
            .nodes
            .iter()
            .filter(|&&n| n != out && !found.grads.is_some_and(|gs| gs.contains(&n)));
        for &n in inner {
            if g.0.no_delete.contains(&n) || g.0.to_retrieve.contains(&n) {
                return None;
            }
        }
        Some(found)
    }

    /// Match chapter 8's backward of the softmax and the two products.
    fn backward(
        &mut self,
        g: &G,
        [z, m, e, em, r, p]: [NodeIndex; 6],
        fwd: &[NodeIndex],
    ) -> Option<()> {
        let (a, av) = (self.allowed.0, self.allowed.2);
        // dP = dO v^T, and the first term of d(em): dP * r
        let t1 = g.next::<op::Mul>(r, |s| g.is::<StridedMatMul>(s.0))?;
        let dp = g.other::<op::Mul>(t1, r, false)?.0;
        let (mm, dp_srcs) = g.matmul(dp)?;
        if (mm.m_axis, mm.n_axis) != (2, 3) || dp_srcs[1].0 != self.v.0 {
            return None;
        }
        let (mut d_out, mut v2) = (dp_srcs[0], dp_srcs[1]);
        d_out.2.remove_dim(3);
        v2.2.remove_dim(2);
        if v2 != self.v {
            return None;
        }
        // -(sum(dP * em) * r * r), broadcast over the keys
        let t2 = g.next::<op::Mul>(dp, |s| s.0 == em)?;
        let t3 = g.next1::<op::SumReduce>(t2, |o| o.0 == 3)?;
        let t4 = g.next::<op::Mul>(t3, |s| s.0 == r)?;
        let t5 = g.next::<op::Mul>(t4, |s| s.0 == r)?;
        let t6 = g.next::<op::Mul>(t5, |s| g.is_const(s.0, -1.0))?;
        let t7 = g.next1::<op::Contiguous>(t6, |_| true)?;
        let dem = g.next::<op::Add>(t7, |s| s.0 == t1)?;
        let de = g.next::<op::Mul>(dem, |s| s.0 == a && s.2 == av)?;
        // through exp2 and its log2(e): d x = de * e * ln 2 * log2 e
        let t8 = g.next::<op::Mul>(de, |s| s.0 == e)?;
        let t9 = g.next::<op::Mul>(t8, |s| g.is_const(s.0, std::f32::consts::LN_2))?;
        let dz1 = g.next::<op::Mul>(t9, |s| g.is_const(s.0, self.consts.log2e))?;
        // through the max: -sum(dz1), sent to where z equals its row maximum
        let t10 = g.next::<op::Mul>(dz1, |s| g.is_const(s.0, -1.0))?;
        let dm = g.next1::<op::SumReduce>(t10, |o| o.0 == 3)?;
        let lt = g.consumers(z).into_iter().find(|&c| {
            g.other::<op::LessThan>(c, z, true)
                .is_some_and(|s| s.0 == m)
        })?;
        let i1 = g.next::<op::Mul>(lt, |s| g.is_const(s.0, -1.0))?;
        let ind = g.next::<op::Add>(i1, |s| g.is_const(s.0, 1.0))?;
        let t11 = g.next::<op::Mul>(dm, |s| s.0 == ind)?;
        let dz = g.next::<op::Add>(t11, |s| s.0 == dz1)?;
        let ds = g.next::<op::Mul>(dz, |s| g.is_const(s.0, self.consts.scale))?;
        // the three gradient products
        let product = |x: NodeIndex, side: usize, row: usize, other: &Src| {
            g.consumers(x).into_iter().find_map(|c| {
                let (_, s) = g.matmul(c)?;
                if s[side].0 != x || s[1 - side].0 != other.0 {
                    return None;
                }
                let (view, axes) = product_form(&s, side, row)?;
                (view == other.2).then_some((c, axes))
            })
        };
        let (dq, q_axes) = product(ds, 0, 2, &self.k)?;
        let (dk, k_axes) = product(ds, 0, 3, &self.q)?;
        let (dv, v_axes) = product(p, 1, 3, &d_out)?;
        let back = [
            dp, t1, t2, t3, t4, t5, t6, t7, dem, de, t8, t9, dz1, t10, dm, lt, i1, ind, t11, dz, ds,
        ];
        let mut all: Vec<NodeIndex> = fwd.to_vec();
        all.extend(back);
        let ends = [self.out, dq, dk, dv];
        // The region is closed: only the four products are read from outside.
        let leaks = all
            .iter()
            .filter(|&&n| n != self.out)
            .flat_map(|&n| g.consumers(n))
            .any(|c| !all.contains(&c) && !ends.contains(&c));
        if leaks || dq == dk {
            return None;
        }
        all.extend([dq, dk, dv]);
        self.nodes = all;
        self.grads = Some([dq, dk, dv]);
        self.d_out = Some(d_out);
        self.grad_axes = [q_axes, k_axes, v_axes];
        Some(())
    }

    fn replace<T: ToIdsMut>(self, graph: &mut Graph, remap: &mut T) {
        use luminal::prelude::{move_outgoing_edge, move_references};
        let operands = [self.q, self.k, self.v, self.allowed];
        let mut new = graph.add_op(FusedAttention {
            consts: self.consts,
            out_axes: self.out_axes,
        });
        for (n, o, st) in operands {
            new = new.input(n, o, st);
        }
        let fwd = new.finish();
        let mut moved = vec![(self.out, fwd)];
        if let (Some(grads), Some(d_out)) = (self.grads, self.d_out) {
            let mut new = graph.add_op(FusedAttentionGrad {
                consts: self.consts,
                out_axes: self.grad_axes,
            });
            for (n, o, st) in operands.into_iter().chain([d_out]) {
                new = new.input(n, o, st);
            }
            let grad = new.finish();
            for (region, old) in grads.into_iter().enumerate() {
                let take = graph
                    .add_op(TakeRange { region })
                    .input(grad, 0, self.q.2)
                    .input(self.q.0, self.q.1, self.q.2)
                    .input(self.k.0, self.k.1, self.k.2)
                    .input(self.v.0, self.v.1, self.v.2)
                    .finish();
                moved.push((old, take));
            }
        }
        for &(old, new) in &moved {
            move_outgoing_edge(old, new, &mut graph.graph);
            move_references(
                &mut *remap,
                &mut graph.no_delete,
                &mut graph.to_retrieve,
                old,
                new,
            );
        }
        // Remove the replaced nodes, then whatever only they read (the mask's bias, constants).
        let mut dangling: Vec<NodeIndex> = self
            .nodes
            .iter()
            .flat_map(|&n| graph.get_sources(n).into_iter().map(|s| s.0))
            .filter(|s| !self.nodes.contains(s))
            .collect();
        for &n in &self.nodes {
            graph.graph.remove_node(n);
        }
        while let Some(n) = dangling.pop() {
            let unused = graph.graph.contains_node(n)
                && graph.graph.edges_directed(n, Direction::Outgoing).count() == 0
                && !graph.no_delete.contains(&n)
                && !graph.to_retrieve.contains(&n)
                && !G(graph).is::<op::Function>(n);
            if unused {
                dangling.extend(graph.get_sources(n).into_iter().map(|s| s.0));
                graph.graph.remove_node(n);
            }
        }
    }
}
