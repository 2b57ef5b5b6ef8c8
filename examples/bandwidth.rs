//! How fast one core streams memory: `c[i] = a[i] * b[i]` over buffers of the sizes a training
//! step's elementwise ops read (a 128-wide activation, a 384-wide one, one layer's attention
//! scores) and one far larger than the L3 cache. Three columns: `c` written into the same buffer
//! every pass; `c` freshly allocated every pass, as the backend's kernels allocate their
//! outputs (the allocator hands back the block just freed, still in cache); and `c` written
//! into buffers that together hold 96 MiB, three times the L3 cache, in turn, so that each pass
//! writes memory that has left the cache since it was last used. Prints the median time per
//! pass and the bytes moved per second (3 × 4 bytes per element). Nothing is asserted.
//!
//! ```sh
//! cargo run --release --example bandwidth
//! ```
//!
//! Appendix A ("What comes next") compares the elementwise kernels' rates with these.

use std::time::Instant;

/// Median seconds per call of `pass` over 5 timings of `reps` calls each.
fn median(reps: usize, mut pass: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            (0..reps).for_each(|_| pass());
            t.elapsed().as_secs_f64() / reps as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[2]
}

fn main() {
    transformer_course::backend::fast_cpu::keep_freed_memory(); // as `train` and `bench`
    println!(
        "| elements | what | same output: ms | GB/s | fresh output: ms | GB/s | cold output: ms | GB/s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let sizes = [
        (16 * 128 * 128, "(b, s, d_model)"),
        (16 * 128 * 384, "(b, s, d_ff)"),
        (16 * 4 * 128 * 128, "(b, h, s, s)"),
        (4 << 20, "16 MiB per buffer"),
    ];
    for (n, what) in sizes {
        let a: Vec<f32> = (0..n).map(|i| (i % 13) as f32).collect();
        let b: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
        let reps = ((100 << 20) / n).max(1); // about 100 M elements per timing
        let mut c = vec![0.0f32; n];
        let same = median(reps, || {
            c.iter_mut()
                .zip(a.iter().zip(&b))
                .for_each(|(c, (x, y))| *c = x * y);
            std::hint::black_box(&c);
        });
        let fresh = median(reps, || {
            let c: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x * y).collect();
            std::hint::black_box(&c);
        });
        // Outputs that together hold 96 MiB, three times the L3 cache, written in turn.
        let count = ((96 << 20) / (4 * n)).max(2);
        let mut pool: Vec<Vec<f32>> = (0..count).map(|_| vec![0.0f32; n]).collect();
        let mut next = 0;
        let cold = median(reps.max(count), || {
            let c = &mut pool[next];
            next = (next + 1) % count;
            c.iter_mut()
                .zip(a.iter().zip(&b))
                .for_each(|(c, (x, y))| *c = x * y);
            std::hint::black_box(&c);
        });
        let gbs = |t: f64| 12.0 * n as f64 / t / 1e9;
        println!(
            "| {n} | {what} | {:.3} | {:.1} | {:.3} | {:.1} | {:.3} | {:.1} |",
            same * 1e3,
            gbs(same),
            fresh * 1e3,
            gbs(fresh),
            cold * 1e3,
            gbs(cold)
        );
    }
}
