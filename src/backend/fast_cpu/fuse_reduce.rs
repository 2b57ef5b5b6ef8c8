//! A reduction fused with the elementwise chain that feeds it: `sum(x * y)` reads `x` and `y`
//! once and never writes `x * y` to memory. RMSNorm (`sum(x²)`), its backward pass and every
//! weight gradient of a norm (`sum over tokens of x·g`), softmax's backward pass
//! (`sum(dP·P)`) are such pairs.

use super::fuse::{as_uninit, kernel, Arg, Kernel, Step, BLOCK};
use super::{data, next, par_rows_work, tensor, unravel, Row, View};
use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

/// Which reduction a [`FusedReduce`] applies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reduction {
    /// Add the values (`SumReduce`).
    Sum,
    /// Keep the largest value (`MaxReduce`).
    Max,
}

/// `SumReduce(axis)` or `MaxReduce(axis)` of a fused elementwise program's output, computed
/// row by row without materialising it. Each output element folds its values in the same
/// order as the stock reduction (index 0 first), so results are the same to the bit.
#[derive(Clone, PartialEq)]
pub struct FusedReduce {
    /// The elementwise program (as in [`super::FusedElementwise`]).
    pub steps: Vec<(Step, [Arg; 2])>,
    /// Sum or max.
    pub reduction: Reduction,
    /// The dimension of the program's output that is reduced away.
    pub axis: usize,
}

impl std::fmt::Debug for FusedReduce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.steps.iter().map(|(s, _)| format!("{s:?}")).collect();
        write!(
            f,
            "Fused({}) -> {:?}Reduce({})",
            names.join(", "),
            self.reduction,
            self.axis
        )
    }
}

/// Scratch space for computing one row of the program.
struct Scratch {
    /// The block kernel, chosen once per op.
    run: Kernel,
    loaded: Vec<[f32; BLOCK]>,
    regs: Vec<[f32; BLOCK]>,
    rows: Vec<Row>,
}

/// The program's values along the last axis at `index` (its last entry ignored) into `dst`.
fn program_row(
    steps: &[(Step, [Arg; 2])],
    views: &[View],
    srcs: &[&[f32]],
    index: &[usize],
    s: &mut Scratch,
    dst: &mut [f32],
) {
    let last = index.len() - 1;
    s.rows.clear();
    s.rows.extend(
        views
            .iter()
            .zip(srcs)
            .map(|(v, src)| Row::of(v, src, index, last).unwrap_or(Row::Splat(0.0))),
    );
    for start in (0..dst.len()).step_by(BLOCK) {
        let n = BLOCK.min(dst.len() - start);
        for (j, row) in s.rows.iter().enumerate() {
            if !matches!(row, Row::Dense(_)) {
                row.read_into(srcs[j], start, &mut s.loaded[j][..n]); // dense: read in place
            }
        }
        let (rows, loaded) = (&s.rows, &s.loaded);
        let input = |j: usize| -> &[f32] {
            match rows[j] {
                Row::Dense(at) => &srcs[j][at + start..at + start + n],
                _ => &loaded[j][..n],
            }
        };
        (s.run)(
            steps,
            &input,
            &mut s.regs,
            as_uninit(&mut dst[start..start + n]),
        );
    }
}

// ANCHOR: fused_reduce
/// One fused reduction's inputs, folded by [`Fold::run`] with the reduction inlined.
struct Fold<'a> {
    steps: &'a [(Step, [Arg; 2])],
    views: &'a [View],
    srcs: &'a [&'a [f32]],
    lens: &'a [usize],
    axis: usize,
    total: usize,
}

impl Fold<'_> {
    fn run(&self, out: &mut [f32], init: f32, f: impl Fn(f32, f32) -> f32 + Sync) {
        let Fold {
            steps,
            views,
            srcs,
            lens,
            axis,
            total,
        } = *self;
        let last = lens.len() - 1;
        let run = kernel();
        let scratch = || Scratch {
            run,
            loaded: vec![[0.0; BLOCK]; srcs.len()],
            regs: vec![[0.0; BLOCK]; steps.len()],
            rows: Vec::with_capacity(srcs.len()),
        };
        let row_len = lens[last];
        if axis == last {
            // Each output element folds one row of the program.
            par_rows_work(out, 1, total, |part, first| {
                let (mut s, mut row) = (scratch(), vec![0.0f32; row_len]);
                let mut index = unravel(first, lens, &[last]);
                for o in part.iter_mut() {
                    program_row(steps, views, srcs, &index, &mut s, &mut row);
                    *o = row.iter().fold(init, |a, &x| f(a, x));
                    next(&mut index, lens, Some(last));
                }
            });
        } else {
            // Rows of the program fold into rows of the output, k = 0, 1, ... in order.
            par_rows_work(out, row_len, total, |part, first| {
                let (mut s, mut row) = (scratch(), vec![0.0f32; row_len]);
                let mut index = unravel(first, lens, &[axis, last]);
                for o in part.chunks_mut(row_len) {
                    for k in 0..lens[axis] {
                        index[axis] = k;
                        program_row(steps, views, srcs, &index, &mut s, &mut row);
                        o.iter_mut().zip(&row).for_each(|(o, &x)| *o = f(*o, x));
                    }
                    index[axis] = 0;
                    super::next_skipping(&mut index, lens, &[axis, last]);
                }
            });
        }
    }
}

impl Operator for FusedReduce {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let mut views: Vec<View> = inp.iter().map(|(_, st)| View::of(st)).collect();
        let srcs: Vec<&[f32]> = inp.iter().map(|(t, _)| data(t)).collect();
        let mut axis = self.axis;
        let last = views[0].axes.len() - 1;
        // A 2-D reduction over rows that memory holds as columns (a weight gradient summed
        // over tokens, read through a transpose): walk it the other way round, so rows are
        // contiguous. Each output still folds its values in order.
        let transposed = |v: &View| v.axes[last].stride != 1 && v.axes[0].stride == 1;
        if last == 1 && axis == 1 && views.iter().any(transposed) {
            views.iter_mut().for_each(|v| v.axes.swap(0, 1));
            axis = 0;
        }
        let lens: Vec<usize> = views[0].axes.iter().map(|a| a.len).collect();
        let out_len: usize = (0..lens.len())
            .filter(|&a| a != axis)
            .map(|a| lens[a])
            .product();
        let init = match self.reduction {
            Reduction::Sum => 0.0,
            Reduction::Max => f32::NEG_INFINITY,
        };
        let mut out = vec![init; out_len];
        let total: usize = lens.iter().product();
        if total == 0 {
            return tensor(out);
        }
        let fold = Fold {
            steps: &self.steps,
            views: &views,
            srcs: &srcs,
            lens: &lens,
            axis,
            total,
        };
        match self.reduction {
            Reduction::Sum => fold.run(&mut out, init, |a, b| a + b),
            Reduction::Max => fold.run(&mut out, init, f32::max),
        }
        tensor(out)
    }
}
// ANCHOR_END: fused_reduce
