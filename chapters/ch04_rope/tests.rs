use super::*;
use crate::testing::{assert_close, device, uniform};
use approx::assert_relative_eq;
use proptest::prelude::*;

#[test]
fn rope_on_hand_values() {
    // d = 4, theta = 100: pair 0 turns by pos * 100^0 = pos, pair 1 by pos * 100^(-1/2) = pos / 10.
    // x = (1, 2, 3, 4) at position 1: pair 0 by 1 rad, pair 1 by 0.1 rad.
    let (s1, c1) = 1.0f32.sin_cos(); // 0.8414710, 0.5403023
    let (s2, c2) = 0.1f32.sin_cos(); // 0.0998334, 0.9950042
    let want = [
        c1 - 2.0 * s1,       // 0.5403 - 1.6829 = -1.1426397
        s1 + 2.0 * c1,       // 0.8415 + 1.0806 =  1.9220756
        3.0 * c2 - 4.0 * s2, // 2.9850 - 0.3993 =  2.5856786
        3.0 * s2 + 4.0 * c2, // 0.2995 + 3.9800 =  4.2795171
    ];
    assert_relative_eq!(want[0], -1.142_639_7, max_relative = 1e-6);
    let x = [0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0]; // positions 0 and 1
    let y = run_rope(&x, [1, 1, 2, 4], 4, 100.0, device()).unwrap();
    assert_close(&y.data[4..], &want, 1e-6).unwrap();
    assert_close(&rope_ref(&x[4..], &[1], 4, 100.0), &want, 1e-6).unwrap();
}

#[test]
fn sinusoidal_positions_on_hand_values() {
    // Position 0: sin 0 = 0 and cos 0 = 1 alternate. Position 1, d = 4: pair 0 at 1 rad,
    // pair 1 at 1 / 10000^(2/4) = 0.01 rad.
    let pe = sinusoidal_positions_ref(2, 4);
    assert_eq!(&pe[..4], &[0.0, 1.0, 0.0, 1.0]);
    assert_close(
        &pe[4..],
        &[1f32.sin(), 1f32.cos(), 0.01f32.sin(), 0.01f32.cos()],
        1e-7,
    )
    .unwrap();
}

#[test]
fn odd_head_size_and_long_sequences_are_refused() {
    let mut cx = Graph::new();
    let err = Rope::<MaxSeq, DHead>::new(&mut cx, 16, 5, ROPE_THETA)
        .err()
        .unwrap();
    assert!(err.to_string().contains("d_head = 5"), "{err}");
    let err = run_rope(&[0.0; 40], [1, 1, 10, 4], 8, ROPE_THETA, device()).unwrap_err();
    assert!(err.to_string().contains("max_seq_len = 8"), "{err}");
    // A theta that is not a finite number > 1 would give NaN or constant angles.
    for theta in [f32::NAN, f32::INFINITY, 1.0, -3.0] {
        let err = Rope::<MaxSeq, DHead>::new(&mut Graph::new(), 16, 4, theta)
            .err()
            .unwrap_or_else(|| panic!("theta {theta} accepted"));
        assert!(err.to_string().contains("finite theta > 1"), "{err}");
    }
}

#[test]
fn compiled_op_listing_snapshot() {
    let mut cx = Graph::new();
    let mut rope = Rope::<MaxSeq, DHead>::new(&mut cx, 16, 4, ROPE_THETA).unwrap();
    let mut x = tensor::input::<(Batch, Heads, Seq, DHead)>(&mut cx, "q");
    let mut y = rope.forward(x).retrieve();
    // The CPU pipeline without its pattern passes, so that the listing shows this chapter's
    // ops (`Device::Cpu` runs the pair swap as one `SwapPairs`: appendix A).
    let pipeline = crate::backend::OpByOpCpuCompiler::default();
    cx.compile(pipeline, (&mut rope, &mut x, &mut y));
    insta::assert_snapshot!(crate::graph::viz::op_listing(&cx));
}

/// Random (batch, heads, seq, d_head) with an even d_head, and values in [-3, 3].
fn case() -> impl Strategy<Value = ([usize; 4], Vec<f32>)> {
    (1usize..3, 1usize..3, 1usize..7, 1usize..5).prop_flat_map(|(b, h, s, half)| {
        let shape = [b, h, s, 2 * half];
        (
            Just(shape),
            prop::collection::vec(-3.0f32..3.0, b * h * s * 2 * half),
        )
    })
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// Graph == loops. Both use the same f32 tables and do one multiply-add per output:
    /// 1e-5 relative to max(1, |y|) for values up to 3 * sqrt(2).
    #[test]
    fn rope_matches_reference((shape, x) in case()) {
        let [_, _, s, d] = shape;
        let got = run_rope(&x, shape, 8, ROPE_THETA, device()).unwrap();
        let positions: Vec<usize> = (0..x.len() / d).map(|row| row % s).collect();
        assert_close(&got.data, &rope_ref(&x, &positions, d, ROPE_THETA), 1e-5)?;
    }

    /// A rotation keeps the length of every pair (so of every vector): 1e-5 relative.
    #[test]
    fn rope_preserves_norms((shape, x) in case()) {
        let got = run_rope(&x, shape, 8, ROPE_THETA, device()).unwrap();
        for (a, b) in x.chunks(2).zip(got.data.chunks(2)) {
            let (na, nb) = (dot(a, a).sqrt(), dot(b, b).sqrt());
            prop_assert!((na - nb).abs() <= 1e-5 * na.max(1.0), "{} vs {}", na, nb);
        }
    }

    /// Position 0 turns by angle 0: the first position comes out exactly as it went in.
    #[test]
    fn position_zero_is_the_identity((shape, x) in case()) {
        let [_, _, s, d] = shape;
        let got = run_rope(&x, shape, 8, ROPE_THETA, device()).unwrap();
        for (row, (a, b)) in x.chunks(d).zip(got.data.chunks(d)).enumerate() {
            if row % s == 0 {
                prop_assert_eq!(a, b);
            }
        }
    }

    /// <RoPE(q, i), RoPE(k, j)> depends only on i - j: shifting both positions by t changes
    /// nothing. q and k are repeated at all 12 positions of one sequence, rotated by the graph,
    /// and every pair (i, j) is compared with (i + t, j + t). Tolerance 1e-4 relative: dot
    /// products of <= 8 terms of size <= 9.
    #[test]
    fn rope_dot_products_depend_only_on_relative_position(half in 1usize..5, seed in any::<u64>(), t in 1usize..4) {
        let d = 2 * half;
        let mut rng = crate::graph::init::rng(seed);
        let (q, k) = (uniform(&mut rng, d, 3.0), uniform(&mut rng, d, 3.0));
        let seq = 12;
        let rq = run_rope(&q.repeat(seq), [1, 1, seq, d], seq, ROPE_THETA, device()).unwrap().data;
        let rk = run_rope(&k.repeat(seq), [1, 1, seq, d], seq, ROPE_THETA, device()).unwrap().data;
        let at = |v: &[f32], p: usize| v[p * d..(p + 1) * d].to_vec();
        for i in 0..seq - t {
            for j in 0..seq - t {
                let a = dot(&at(&rq, i), &at(&rk, j));
                let b = dot(&at(&rq, i + t), &at(&rk, j + t));
                prop_assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "({}, {}) {} vs {}", i, j, a, b);
            }
        }
    }

    /// The sinusoids' relative-position property: for each frequency w, (sin, cos) at p + t is
    /// (sin, cos) at p rotated by t w, a linear map that does not depend on p. 1e-5 absolute.
    #[test]
    fn sinusoidal_shift_is_a_rotation(p in 0usize..40, t in 1usize..20, half in 1usize..8) {
        let d = 2 * half;
        let pe = sinusoidal_positions_ref(p + t + 1, d);
        for i in 0..half {
            let (s0, c0) = (pe[p * d + 2 * i], pe[p * d + 2 * i + 1]);
            let (st, ct) = rope_angle(t, i, d, ROPE_THETA).sin_cos();
            let (s1, c1) = (pe[(p + t) * d + 2 * i], pe[(p + t) * d + 2 * i + 1]);
            prop_assert!((s1 - (s0 * ct + c0 * st)).abs() < 1e-5);
            prop_assert!((c1 - (c0 * ct - s0 * st)).abs() < 1e-5);
        }
    }
}

/// Chapter 8's gradient check: d loss / d x through RoPE (slices, pads and table views).
#[test]
fn gradients_match_finite_differences() {
    use crate::graph::params::Param;
    use crate::testing::{assert_gradcheck, weighted_sum};
    let mut cx = Graph::new();
    let rope = Rope::<MaxSeq, DHead>::new(&mut cx, 8, 4, ROPE_THETA).unwrap();
    let x = tensor::input::<(Batch, Heads, Seq, DHead)>(&mut cx, "q");
    tensor::set(
        x,
        &[1, 2, 3, 4],
        uniform(&mut crate::graph::init::rng(8), 24, 2.0),
    )
    .unwrap();
    let loss = weighted_sum(rope.forward(x), &[1, 2, 3, 4], 9);
    assert_gradcheck(&mut cx, vec![Param::of(x, &[1, 2, 3, 4])], loss);
}

/// RoPE at arbitrary positions (repeated, out of order, far apart) equals the reference loops
/// at those positions, within 1e-6 relative (the same f32 tables and products); positions
/// `0..s` give bit for bit what the sliced tables of `forward` give (the one-hot matmul adds
/// exact zeros); a position past the tables is refused rather than rotated by nothing.
#[test]
fn rope_at_arbitrary_positions_matches_the_reference() {
    let (b, h, s, d, max) = (2, 3, 5, 8, 64);
    let x = uniform(&mut crate::graph::init::rng(7), b * h * s * d, 1.0);
    let positions = [7, 7, 0, 63, 20, 4, 3, 2, 1, 0];
    let y = run_rope_at(&x, [b, h, s, d], &positions, max, ROPE_THETA, device()).unwrap();
    // Row (b, h, s) of x sits at positions[b, s].
    let rows: Vec<usize> = (0..b * h * s)
        .map(|r| positions[(r / (h * s)) * s + r % s])
        .collect();
    assert_close(&y.data, &rope_ref(&x, &rows, d, ROPE_THETA), 1e-6).unwrap();

    let first: Vec<usize> = (0..b).flat_map(|_| 0..s).collect();
    let at = run_rope_at(&x, [b, h, s, d], &first, max, ROPE_THETA, device()).unwrap();
    let sliced = run_rope(&x, [b, h, s, d], max, ROPE_THETA, device()).unwrap();
    assert_eq!(at.data, sliced.data);

    let err = run_rope_at(&x, [b, h, s, d], &[64; 10], max, ROPE_THETA, device()).unwrap_err();
    assert!(err.to_string().contains("position 64"), "{err}");
}

/// The sinusoidal table as a graph: position 0 is exactly [0, 1, 0, 1, ...] (sin 0, cos 0 =
/// sin(pi/2) in f32), position 1 of a width-4 table is (sin 1, cos 1, sin 0.01, cos 0.01) by
/// hand, and every entry of tables up to 128 x 33 (odd widths too) matches the f64-angle loop.
/// Tolerance 1e-4 absolute (the entries are in [-1, 1]): the graph forms p w_i and the
/// quarter-turn phase in f32, so the angle is off by a few ulp of p w_i < 128, i.e. < 4e-5.
#[test]
fn sinusoidal_table_graph_matches_the_loop() {
    let pe = run_sinusoidal_table(2, 4, device()).unwrap();
    assert_eq!(pe.shape, vec![2, 4]);
    assert_close(&pe.data[..4], &[0.0, 1.0, 0.0, 1.0], 1e-7).unwrap();
    let by_hand = [1f32.sin(), 1f32.cos(), 0.01f32.sin(), 0.01f32.cos()];
    assert_close(&pe.data[4..], &by_hand, 1e-6).unwrap();
    let mut worst = 0.0f32;
    for (s, d) in [(1, 1), (7, 5), (65, 16), (128, 33), (128, 64)] {
        let got = run_sinusoidal_table(s, d, device()).unwrap();
        let want = sinusoidal_positions_ref(s, d);
        assert_close(&got.data, &want, 1e-4).unwrap();
        let err = got.data.iter().zip(&want).map(|(a, b)| (a - b).abs());
        worst = err.fold(worst, f32::max);
    }
    println!("sinusoidal table: largest error vs the loop {worst:e}");
}

/// Book, chapter 4, Exercises 1: the slowest pair of the reference model's heads (d_head = 32)
/// turns by 10000^(-30/32) = 1.778e-4 radian per position: 0.0226 radian at position 127, and a
/// full turn takes 35 337 positions. Tolerance 1e-3 relative: the numbers are quoted to 4 digits.
#[test]
fn exercise_slowest_pair_angle() {
    let per_position = rope_angle(1, 15, 32, ROPE_THETA);
    assert_relative_eq!(per_position, 1.778e-4, max_relative = 1e-3);
    assert_relative_eq!(
        rope_angle(127, 15, 32, ROPE_THETA),
        0.02258,
        max_relative = 1e-3
    );
    let turn = std::f32::consts::TAU / per_position;
    assert!(
        (35_300.0..35_400.0).contains(&turn),
        "full turn after {turn} positions"
    );
}

/// Book, chapter 4, Exercises 2: (1, 0, 1, 0) at position 3, d = 4. Pair 0 turns by 3 radians,
/// pair 1 by 3 * 10000^(-1/2) = 0.03: (cos 3, sin 3, cos 0.03, sin 0.03)
/// = (-0.98999, 0.14112, 0.99955, 0.02999). Graph against the closed form within 1e-6 (f32
/// rounding of a sine and a cosine).
#[test]
fn exercise_rope_value_at_position_3() {
    let x = [1.0, 0.0, 1.0, 0.0].repeat(4);
    let y = run_rope(&x, [1, 1, 4, 4], 8, ROPE_THETA, device()).unwrap();
    let (s0, c0) = 3f32.sin_cos();
    let (s1, c1) = 0.03f32.sin_cos();
    for (a, b) in y.data[12..].iter().zip([c0, s0, c1, s1]) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    println!("position 3: {:?}", &y.data[12..]);
}

/// Book, chapter 4, Exercises 3: half-split RoPE (feature k paired with k + d/2) is interleaved
/// RoPE after the permutation new[2k] = old[k], new[2k + 1] = old[k + d/2]. Tolerance 1e-6:
/// the same products, rounded the same way, only stored in another order.
#[test]
fn exercise_half_split_is_a_permutation_of_interleaved() {
    let d = 8;
    let x: Vec<f32> = (0..d)
        .map(|i| (i as f32 * 0.7).sin() + 0.1 * i as f32)
        .collect();
    let perm: Vec<usize> = (0..d)
        .map(|j| if j % 2 == 0 { j / 2 } else { j / 2 + d / 2 })
        .collect();
    assert_eq!(perm, [0, 4, 1, 5, 2, 6, 3, 7]);
    for pos in [0, 1, 5, 17] {
        // Half-split, written out: pair k is (x[k], x[k + d/2]).
        let mut half = x.clone();
        for k in 0..d / 2 {
            let (s, c) = rope_angle(pos, k, d, ROPE_THETA).sin_cos();
            half[k] = x[k] * c - x[k + d / 2] * s;
            half[k + d / 2] = x[k] * s + x[k + d / 2] * c;
        }
        let permuted: Vec<f32> = perm.iter().map(|&i| x[i]).collect();
        let inter = rope_ref(&permuted, &[pos], d, ROPE_THETA);
        for (j, &i) in perm.iter().enumerate() {
            assert!((inter[j] - half[i]).abs() < 1e-6, "pos {pos}, feature {i}");
        }
    }
}
