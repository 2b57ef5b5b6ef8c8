//! Time the matrix products of the reference model's train step (batch 16 x 128) with the two
//! sgemm libraries the CPU backend can use (`gemm`, the default, and `matrixmultiply`), one
//! product at a time, in alternating rounds. Each row is one (m, k, n) and operand layout as the
//! backend calls it (strides: A's rows, A's columns, B's rows, B's columns, C's rows, C's
//! columns), how often a step calls it, and the microseconds per call (median of the rounds).
//!
//! ```sh
//! cargo run --release --example sgemm -- --threads 1
//! ```

use std::time::Instant;

use transformer_course::backend::fast_cpu::{self, Mat, MatMut, MatRef};

/// (calls per step, m, k, n, rsa, csa, rsb, csb, rsc, csc), logged from `bench --threads 1`.
const SHAPES: [(usize, [usize; 3], [isize; 6]); 19] = [
    (256, [32, 128, 128], [1, 128, 128, 1, 1, 128]),
    (256, [128, 32, 128], [32, 1, 1, 32, 128, 1]),
    (256, [128, 32, 128], [128, 1, 1, 128, 128, 1]),
    (256, [128, 128, 32], [128, 1, 32, 1, 32, 1]),
    (256, [128, 128, 32], [128, 1, 128, 1, 32, 1]),
    (256, [128, 128, 32], [1, 128, 32, 1, 32, 1]),
    (16, [2048, 128, 128], [128, 1, 128, 1, 128, 1]),
    (16, [2048, 128, 128], [128, 1, 1, 128, 128, 1]),
    (16, [128, 2048, 128], [1, 128, 128, 1, 128, 1]),
    (8, [384, 2048, 128], [1, 384, 128, 1, 128, 1]),
    (8, [2048, 384, 128], [384, 1, 128, 1, 128, 1]),
    (8, [2048, 128, 384], [128, 1, 1, 128, 384, 1]),
    (4, [2048, 384, 128], [384, 1, 1, 384, 128, 1]),
    (4, [2048, 128, 384], [128, 1, 384, 1, 384, 1]),
    (4, [128, 2048, 384], [1, 128, 384, 1, 384, 1]),
    (2, [2048, 256, 128], [256, 1, 128, 1, 128, 1]),
    (1, [256, 2048, 128], [1, 256, 128, 1, 128, 1]),
    (1, [2048, 128, 256], [128, 1, 1, 128, 256, 1]),
    (1, [128, 2048, 256], [1, 128, 256, 1, 1, 128]),
];

/// `fast_cpu::sgemm`'s signature: m, k, n, then A, B and C, each with its row and column strides.
type SgemmFn = unsafe fn(usize, usize, usize, MatRef, MatRef, MatMut);

/// Elements a strided r x c matrix spans.
fn span(r: usize, c: usize, rs: isize, cs: isize) -> usize {
    ((r - 1) as isize * rs + (c - 1) as isize * cs) as usize + 1
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads = args
        .iter()
        .position(|a| a == "--threads")
        .and_then(|i| args.get(i + 1))
        .map_or(1, |t| t.parse().expect("--threads N"));
    fast_cpu::set_threads(threads);
    let rounds = 7;
    println!("| m x k x n | strides | calls/step | gemm µs | matrixmultiply µs | ratio |");
    println!("|---|---|---|---|---|---|");
    let (mut total_g, mut total_m) = (0.0, 0.0);
    for (calls, [m, k, n], s) in SHAPES {
        let a = vec![0.5f32; span(m, k, s[0], s[1])];
        let b = vec![0.25f32; span(k, n, s[2], s[3])];
        let mut c = vec![0.0f32; span(m, n, s[4], s[5])];
        // enough calls per timing for about 10 ms of work at 50 GFLOP/s
        let reps = (5e8 / (2.0 * (m * n * k) as f64)).ceil() as usize;
        let mut time = |f: SgemmFn| {
            let t = Instant::now();
            for _ in 0..reps {
                // SAFETY: the buffers span the strided matrices.
                unsafe {
                    f(
                        m,
                        k,
                        n,
                        Mat::new(a.as_ptr(), s[0], s[1]),
                        Mat::new(b.as_ptr(), s[2], s[3]),
                        Mat::new(c.as_mut_ptr(), s[4], s[5]),
                    )
                };
            }
            t.elapsed().as_secs_f64() * 1e6 / reps as f64
        };
        let (mut g, mut mm) = (vec![], vec![]);
        for _ in 0..rounds {
            g.push(time(fast_cpu::sgemm_gemm));
            mm.push(time(fast_cpu::sgemm_matrixmultiply));
        }
        g.sort_by(f64::total_cmp);
        mm.sort_by(f64::total_cmp);
        let (g, mm) = (g[rounds / 2], mm[rounds / 2]);
        total_g += g * calls as f64;
        total_m += mm * calls as f64;
        println!(
            "| {m} x {k} x {n} | {s:?} | {calls} | {g:.1} | {mm:.1} | {:.2} |",
            mm / g
        );
    }
    println!(
        "\nper step: gemm {:.1} ms, matrixmultiply {:.1} ms",
        total_g / 1e3,
        total_m / 1e3
    );
}
