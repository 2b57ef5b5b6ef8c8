use super::*;
use crate::ch04_rope::{Rope, ROPE_THETA};
use crate::graph::dims::DModel;
use crate::testing::{assert_close, device, uniform};
use proptest::prelude::*;

#[test]
fn softmax_on_hand_values() {
    // e^0, e^1, e^2 over their sum 1 + 2.7182818 + 7.3890561 = 11.1073379:
    // [0.0900306, 0.2447285, 0.6652410]; adding 1000 to each changes nothing.
    let want = [0.090_030_6, 0.244_728_5, 0.665_241];
    assert_close(&softmax_ref(&[1.0, 2.0, 3.0]), &want, 1e-6).unwrap();
    let y = run_softmax(&[1001.0, 1002.0, 1003.0], [1, 1, 1, 3], None, device()).unwrap();
    assert_close(&y.data, &want, 1e-6).unwrap();
}

#[test]
fn a_row_with_every_key_masked_gives_zeros_not_nan() {
    // Row 0 may see key 1 only; row 1 may see nothing.
    let allowed = [false, true, false, false];
    let y = run_softmax(
        &[5.0, 1.0, 2.0, 3.0],
        [1, 1, 2, 2],
        Some(&allowed),
        device(),
    )
    .unwrap();
    assert_eq!(y.data, vec![0.0, 1.0, 0.0, 0.0]);
    // The same in full attention: a sequence whose keys are all padding outputs zeros.
    let mut rng = crate::graph::init::rng(7);
    let w: Vec<Vec<f32>> = (0..4).map(|_| uniform(&mut rng, 16, 1.0)).collect();
    let x = uniform(&mut rng, 2 * 3 * 4, 1.0);
    let mask = MaskSpec {
        causal: true,
        key_padding: Some(vec![true, true, false, false, false, false]),
    };
    let ws = [&w[0][..], &w[1], &w[2], &w[3]];
    let y = run_attention(&x, None, ws, [2, 3, 4], 2, &mask, None, device()).unwrap();
    assert!(y.data.iter().all(|v| v.is_finite()));
    assert!(
        y.data[12..].iter().all(|v| *v == 0.0),
        "{:?}",
        &y.data[12..]
    );
    let want = mha_ref(&x, &x, ws, &mask.to_bools(2, 3, 3), [2, 3, 3, 4], 2, None);
    assert_close(&y.data, &want, 1e-5).unwrap();
}

#[test]
fn bad_configs_are_refused() {
    let mut cx = Graph::new();
    let err = MultiHeadAttention::<DModel>::new(&mut cx, 10, 3, None)
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("MultiHeadAttention: d_model (10)"),
        "{err}"
    );
    // d_model 6 over 2 heads gives heads of 3: RoPE cannot pair 3 features.
    let w = [0.0; 36];
    let no_mask = MaskSpec::default();
    let err = run_attention(
        &[0.0; 6],
        None,
        [&w; 4],
        [1, 1, 6],
        2,
        &no_mask,
        Some(ROPE_THETA),
        device(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("d_head = 3"), "{err}");
}

#[test]
fn compiled_op_listing_snapshot() {
    let mut cx = Graph::new();
    let rope = Rope::new(&mut cx, 8, 2, ROPE_THETA).unwrap();
    let mut attn = MultiHeadAttention::<DModel>::new(&mut cx, 4, 2, Some(rope)).unwrap();
    crate::graph::params::label_inputs(&mut cx, &attn, "attn");
    let mut x = tensor::input::<(Batch, Seq, DModel)>(&mut cx, "x");
    let causal = causal_mask::<Seq>(&mut cx).expand::<(Batch, Seq, Seq), _>();
    let mut y = attn.attend(x, x, causal).retrieve();
    // The CPU pipeline without its pattern passes, so that the listing shows this chapter's
    // ops (`Device::Cpu` runs attention as one `FusedAttention`: appendix A).
    let pipeline = crate::backend::OpByOpCpuCompiler::default();
    cx.compile(pipeline, (&mut attn, &mut x, &mut y));
    insta::assert_snapshot!(crate::graph::viz::op_listing(&cx));
}

/// Random attention problems: (batch, seq, heads, d_head), weights, input, and a padding
/// mask that keeps at least the first key of every sequence.
#[derive(Debug, Clone)]
struct Case {
    b: usize,
    s: usize,
    heads: usize,
    d: usize,
    w: Vec<Vec<f32>>,
    x: Vec<f32>,
    keep: Vec<bool>,
}

fn case(max_seq: usize) -> impl Strategy<Value = Case> {
    (1usize..3, 1..max_seq, 1usize..3, 1usize..3, any::<u64>()).prop_map(
        |(b, s, heads, half, seed)| {
            use rand::Rng;
            let d = heads * 2 * half; // even head size, so RoPE can run too
            let mut rng = crate::graph::init::rng(seed);
            let w = (0..4).map(|_| uniform(&mut rng, d * d, 1.0)).collect();
            let x = uniform(&mut rng, b * s * d, 2.0);
            let keep = (0..b * s)
                .map(|i| i % s == 0 || rng.gen_bool(0.7))
                .collect();
            Case {
                b,
                s,
                heads,
                d,
                w,
                x,
                keep,
            }
        },
    )
}

impl Case {
    fn weights(&self) -> [&[f32]; 4] {
        [&self.w[0], &self.w[1], &self.w[2], &self.w[3]]
    }
    fn run(&self, x: &[f32], mask: &MaskSpec, rope: Option<f32>) -> Vec<f32> {
        let shape = [self.b, self.s, self.d];
        run_attention(
            x,
            None,
            self.weights(),
            shape,
            self.heads,
            mask,
            rope,
            device(),
        )
        .unwrap()
        .data
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Rows of the graph's softmax sum to 1 and do not change when a constant is added to the
    /// row; scores shifted by +100 or scaled by 1000 stay finite. Sums: 1e-5 (t <= 8 terms).
    #[test]
    fn softmax_rows_sum_to_one_and_ignore_shifts(
        t in 1usize..9, rows in 1usize..4, seed in any::<u64>(), shift in -50.0f32..50.0
    ) {
        let mut rng = crate::graph::init::rng(seed);
        let x = uniform(&mut rng, rows * t, 5.0);
        let shape = [1, 1, rows, t];
        let y = run_softmax(&x, shape, None, device()).unwrap().data;
        for row in y.chunks(t) {
            prop_assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        for scores in [
            x.iter().map(|v| v + shift).collect::<Vec<_>>(),
            x.iter().map(|v| v + 100.0).collect(),
        ] {
            let shifted = run_softmax(&scores, shape, None, device()).unwrap().data;
            assert_close(&shifted, &y, 1e-4)?;
        }
        let scaled: Vec<f32> = x.iter().map(|v| v * 1000.0).collect();
        let big = run_softmax(&scaled, shape, None, device()).unwrap().data;
        prop_assert!(big.iter().all(|p| p.is_finite() && (0.0..=1.0).contains(p)));
        for (row, want) in big.chunks(t).zip(scaled.chunks(t)) {
            assert_close(row, &softmax_ref(want), 1e-5)?;
        }
    }

    /// Graph == loops for causal + padded self-attention, with and without RoPE. Tolerance
    /// 1e-4 relative: three projections, a softmax and an output projection of order-1 values.
    #[test]
    fn self_attention_matches_reference(c in case(6), causal in any::<bool>(), rope in any::<bool>()) {
        let mask = MaskSpec { causal, key_padding: Some(c.keep.clone()) };
        let theta = rope.then_some(ROPE_THETA);
        let got = c.run(&c.x, &mask, theta);
        let want = mha_ref(&c.x, &c.x, c.weights(), &mask.to_bools(c.b, c.s, c.s), [c.b, c.s, c.s, c.d], c.heads, theta);
        assert_close(&got, &want, 1e-4)?;
    }

    /// Cross-attention: queries from x (b, s, d), keys and values from a source of another
    /// length t with its own padding. Graph == loops, 1e-4 as above.
    #[test]
    fn cross_attention_matches_reference(c in case(5), t in 1usize..7, seed in any::<u64>()) {
        use rand::Rng;
        let mut rng = crate::graph::init::rng(seed);
        let memory = uniform(&mut rng, c.b * t * c.d, 2.0);
        let keep: Vec<bool> = (0..c.b * t).map(|i| i % t == 0 || rng.gen_bool(0.6)).collect();
        let mask = MaskSpec { causal: false, key_padding: Some(keep) };
        let got = run_attention(&c.x, Some((&memory, t)), c.weights(), [c.b, c.s, c.d], c.heads, &mask, None, device()).unwrap();
        let want = mha_ref(&c.x, &memory, c.weights(), &mask.to_bools(c.b, c.s, t), [c.b, c.s, t, c.d], c.heads, None);
        assert_close(&got.data, &want, 1e-4)?;
    }

    /// Causal attention ignores the future: changing the token at position p (in every
    /// sequence of the batch) leaves every output before p bit-for-bit unchanged.
    #[test]
    fn causal_attention_ignores_the_future(c in case(7), p in 0usize..7, rope in any::<bool>(), seed in any::<u64>()) {
        let p = p % c.s;
        let mask = MaskSpec { causal: true, key_padding: None };
        let theta = rope.then_some(ROPE_THETA);
        let mut changed = c.x.clone();
        let mut rng = crate::graph::init::rng(seed);
        for bi in 0..c.b {
            let row = (bi * c.s + p) * c.d;
            changed[row..row + c.d].copy_from_slice(&uniform(&mut rng, c.d, 5.0));
        }
        let (a, b) = (c.run(&c.x, &mask, theta), c.run(&changed, &mask, theta));
        for bi in 0..c.b {
            let before = bi * c.s * c.d..(bi * c.s + p) * c.d;
            prop_assert_eq!(&a[before.clone()], &b[before]);
        }
    }

    /// Padding is invisible: changing a padded position's input never changes the outputs
    /// at real positions (non-causal, so every real query sees every real key).
    #[test]
    fn padded_keys_are_ignored(c in case(7), seed in any::<u64>()) {
        let mask = MaskSpec { causal: false, key_padding: Some(c.keep.clone()) };
        let mut changed = c.x.clone();
        let mut rng = crate::graph::init::rng(seed);
        for (row, keep) in c.keep.iter().enumerate() {
            if !keep {
                changed[row * c.d..(row + 1) * c.d].copy_from_slice(&uniform(&mut rng, c.d, 5.0));
            }
        }
        let (a, b) = (c.run(&c.x, &mask, None), c.run(&changed, &mask, None));
        for (row, keep) in c.keep.iter().enumerate() {
            if *keep {
                prop_assert_eq!(&a[row * c.d..(row + 1) * c.d], &b[row * c.d..(row + 1) * c.d]);
            }
        }
    }
}

#[test]
fn attention_weights_are_causal_rows_that_sum_to_one() {
    // A (b = 1, s = 5, d = 4, 2 heads) causal map: row i spreads weight 1 over keys 0..=i only.
    let mut rng = crate::graph::init::rng(11);
    let w: Vec<Vec<f32>> = (0..4).map(|_| uniform(&mut rng, 16, 1.0)).collect();
    let x = uniform(&mut rng, 20, 1.0);
    let mask = MaskSpec {
        causal: true,
        key_padding: None,
    };
    let ws = [&w[0][..], &w[1], &w[2], &w[3]];
    let p = run_attention_weights(&x, ws, [1, 5, 4], 2, &mask, Some(ROPE_THETA), device()).unwrap();
    assert_eq!(p.shape, vec![1, 2, 5, 5]);
    for (r, row) in p.data.chunks(5).enumerate() {
        let i = r % 5;
        assert!(
            (row.iter().sum::<f32>() - 1.0).abs() < 1e-5,
            "row {r}: {row:?}"
        );
        assert!(
            row[i + 1..].iter().all(|v| *v == 0.0),
            "row {r} sees the future"
        );
        assert!(row[..=i].iter().all(|v| *v > 0.0));
    }
}

/// Chapter 8's gradient check: d loss / d (x, projections) through causal multi-head
/// attention with RoPE and a padded key (softmax, max, masks, 4-D matmuls).
#[test]
fn gradients_match_finite_differences() {
    use crate::graph::params::{Param, Parameters};
    use crate::testing::{assert_gradcheck, weighted_sum};
    let mut rng = crate::graph::init::rng(10);
    let mut cx = Graph::new();
    let rope = Rope::new(&mut cx, 8, 2, ROPE_THETA).unwrap();
    let attn = MultiHeadAttention::<DModel>::new(&mut cx, 4, 2, Some(rope)).unwrap();
    for p in attn.projections() {
        p.load(uniform(&mut rng, 16, 1.0)).unwrap();
    }
    let x = tensor::input::<(Batch, Seq, DModel)>(&mut cx, "x");
    tensor::set(x, &[2, 3, 4], uniform(&mut rng, 24, 1.0)).unwrap();
    let keep = tensor::input::<(Batch, Seq)>(&mut cx, "keep");
    tensor::set(keep, &[2, 3], vec![1.0, 1.0, 1.0, 1.0, 1.0, 0.0]).unwrap();
    let causal = causal_mask::<Seq>(&mut cx).expand::<(Batch, Seq, Seq), _>();
    let y = attn.attend(x, x, causal * key_padding_mask(keep));
    let loss = weighted_sum(y, &[2, 3, 4], 11);
    let params = [attn.params(), vec![Param::of(x, &[2, 3, 4])]].concat();
    assert_gradcheck(&mut cx, params, loss);
}

/// Book, chapter 5, exercise "Queries of zero": with $W_q = 0$ every score is 0, so causal
/// query $i$ gives each of its $i + 1$ keys the weight $1/(i+1)$, whatever $W_k$, $x$ and RoPE
/// (a rotated zero is zero). Tolerance $10^{-6}$: one reciprocal and one product in f32.
#[test]
fn exercise_zero_queries_attend_uniformly() {
    let (b, s, d, heads) = (1, 4, 4, 2);
    let mut rng = crate::graph::init::rng(0);
    let w: Vec<Vec<f32>> = (0..4)
        .map(|_| crate::graph::init::trunc_normal(&mut rng, d * d, 0.5))
        .collect();
    let zero = vec![0.0; d * d];
    let ws = [&zero[..], &w[1], &w[2], &w[3]];
    let x = crate::graph::init::trunc_normal(&mut rng, b * s * d, 1.0);
    let causal = MaskSpec {
        causal: true,
        key_padding: None,
    };
    let theta = Some(ROPE_THETA);
    let p = run_attention_weights(&x, ws, [b, s, d], heads, &causal, theta, device()).unwrap();
    let mut want = vec![];
    for _head in 0..heads {
        for i in 0..s {
            want.extend((0..s).map(|j| if j <= i { 1.0 / (i + 1) as f32 } else { 0.0 }));
        }
    }
    assert_close(&p.data, &want, 1e-6).unwrap();
}

/// Book, chapter 5, exercise "Forget the $1/\sqrt{d_k}$": scores $(1, 2, 3)$ scaled by
/// $\sqrt{64} = 8$ give $(1.125 \cdot 10^{-7}, 3.354 \cdot 10^{-4}, 0.99966)$, and the largest
/// diagonal entry of the softmax's Jacobian, $a_j(1 - a_j)$, falls from 0.2227 to
/// $3.354 \cdot 10^{-4}$. Values from float64 by hand; tolerance 1 % relative for the tiny
/// weight (f32 exp) and $10^{-6}$ absolute for the others.
#[test]
fn exercise_unscaled_scores_saturate_the_softmax() {
    let jacobian_max = |p: &[f32]| p.iter().map(|a| a * (1.0 - a)).fold(0.0f32, f32::max);
    let scaled = softmax_ref(&[1.0, 2.0, 3.0]);
    let unscaled = softmax_ref(&[8.0, 16.0, 24.0]);
    assert!(
        (unscaled[0] / 1.124_974_2e-7 - 1.0).abs() < 0.01,
        "{unscaled:?}"
    );
    assert_close(&unscaled[1..], &[3.353_501e-4, 0.999_664_5], 1e-6).unwrap();
    assert!((jacobian_max(&scaled) - 0.222_695_4).abs() < 1e-6);
    assert!((jacobian_max(&unscaled) - 3.353_501e-4).abs() < 1e-6);
}
