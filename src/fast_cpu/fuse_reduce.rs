//! A reduction fused with the elementwise chain that feeds it: `sum(x * y)` reads `x` and `y`
//! once and never writes `x * y` to memory. RMSNorm (`sum(x²)`), its backward pass and every
//! weight gradient of a norm (`sum over tokens of x·g`), softmax's backward pass
//! (`sum(dP·P)`) are such pairs.

use super::fuse::{run, Arg, Step, BLOCK};
use super::{data, next, par_rows_work, tensor, unravel, Row, View};
use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

/// Which reduction a [`FusedReduce`] applies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reduction {
    Sum,
    Max,
}

/// `SumReduce(axis)` or `MaxReduce(axis)` of a fused elementwise program's output, computed
/// row by row without materialising it. Each output element folds its values in the same
/// order as the stock reduction (index 0 first), so results are the same to the bit.
#[derive(Clone, PartialEq)]
pub struct FusedReduce {
    /// The elementwise program (as in [`super::FusedElementwise`]).
    pub steps: Vec<(Step, [Arg; 2])>,
    pub reduction: Reduction,
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
            let to = &mut s.loaded[j][..n];
            match *row {
                Row::Dense(at) => to.copy_from_slice(&srcs[j][at + start..at + start + n]),
                Row::Splat(x) => to.fill(x),
                Row::Strided(..) => {
                    for (k, x) in to.iter_mut().enumerate() {
                        *x = row.get(srcs[j], start + k);
                    }
                }
            }
        }
        let loaded = &s.loaded;
        run(steps, &|j| &loaded[j], &mut s.regs, &mut dst[start..start + n]);
    }
}

// ANCHOR: fused_reduce
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
        let (init, f): (f32, fn(f32, f32) -> f32) = match self.reduction {
            Reduction::Sum => (0.0, |a, b| a + b),
            Reduction::Max => (f32::NEG_INFINITY, f32::max),
        };
        let out_len: usize = (0..lens.len())
            .filter(|&a| a != axis)
            .map(|a| lens[a])
            .product();
        let mut out = vec![init; out_len];
        let total: usize = lens.iter().product();
        if total == 0 {
            return tensor(out);
        }
        let steps = &self.steps;
        let scratch = || Scratch {
            loaded: vec![[0.0; BLOCK]; srcs.len()],
            regs: vec![[0.0; BLOCK]; steps.len()],
            rows: Vec::with_capacity(srcs.len()),
        };
        let row_len = lens[last];
        if axis == last {
            // Each output element folds one row of the program.
            par_rows_work(&mut out, 1, total, |part, first| {
                let (mut s, mut row) = (scratch(), vec![0.0f32; row_len]);
                let mut index = unravel(first, &lens, &[last]);
                for o in part.iter_mut() {
                    program_row(steps, &views, &srcs, &index, &mut s, &mut row);
                    *o = row.iter().fold(init, |a, &x| f(a, x));
                    next(&mut index, &lens, Some(last));
                }
            });
        } else {
            // Rows of the program fold into rows of the output, k = 0, 1, ... in order.
            par_rows_work(&mut out, row_len, total, |part, first| {
                let (mut s, mut row) = (scratch(), vec![0.0f32; row_len]);
                let mut index = unravel(first, &lens, &[axis, last]);
                for o in part.chunks_mut(row_len) {
                    for k in 0..lens[axis] {
                        index[axis] = k;
                        program_row(steps, &views, &srcs, &index, &mut s, &mut row);
                        o.iter_mut().zip(&row).for_each(|(o, &x)| *o = f(*o, x));
                    }
                    index[axis] = 0;
                    super::next_skipping(&mut index, &lens, &[axis, last]);
                }
            });
        }
        tensor(out)
    }
}
// ANCHOR_END: fused_reduce
