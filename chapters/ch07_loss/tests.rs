use super::*;
use crate::testing::{assert_close, device, uniform};
use approx::assert_relative_eq;
use proptest::prelude::*;

#[test]
fn cross_entropy_on_hand_values() {
    // Uniform logits over 4 classes: -log(1/4) = ln 4 = 1.3862944, perplexity 4.
    let ce = run_loss(
        &[0.0; 4],
        [1, 1, 4],
        &[3],
        &[true],
        Weighting::Token,
        device(),
    )
    .unwrap();
    assert_relative_eq!(ce, 1.386_294_4, max_relative = 1e-6);
    assert_relative_eq!(perplexity(ce), 4.0, max_relative = 1e-6);
    // [1, 2, 3], target 0: -1 + 3 + ln(e^-2 + e^-1 + 1) = 2 + ln(1.5032147) = 2.4076059.
    let ce = run_loss(
        &[1.0, 2.0, 3.0],
        [1, 1, 3],
        &[0],
        &[true],
        Weighting::Token,
        device(),
    )
    .unwrap();
    assert_relative_eq!(ce, 2.407_606, max_relative = 1e-6);
    assert_relative_eq!(
        cross_entropy_ref(&[1.0, 2.0, 3.0], 0),
        2.407_606,
        max_relative = 1e-6
    );
}

#[test]
fn cross_entropy_is_finite_for_huge_logits() {
    // Logits x 1000: [1000, 2000, 3000] with target 0 costs exactly 3000 - 1000 = 2000
    // (the other terms, e^-1000 and e^-2000, vanish); a naive softmax would overflow to inf.
    let x = [1000.0, 2000.0, 3000.0];
    let ce = run_loss(&x, [1, 1, 3], &[0], &[true], Weighting::Token, device()).unwrap();
    assert_eq!(ce, 2000.0);
    let naive = -x[0].exp().ln() + x.iter().map(|v: &f32| v.exp()).sum::<f32>().ln();
    assert!(!naive.is_finite(), "the naive form overflows: {naive}");
}

/// The book's example: two sequences of 3 positions, the second with its last 2 masked.
/// Feeding the basis losses e_i gives each position's weight in the mean.
#[test]
fn token_and_sequence_weights_of_the_book_example() {
    let mask = [true, true, true, true, false, false];
    let weights = |w: Weighting| -> Vec<f32> {
        (0..6)
            .map(|i| {
                let mut e = [0.0; 6];
                e[i] = 1.0;
                run_masked_mean(&e, &mask, w)
            })
            .collect()
    };
    // Token-centric: 4 tokens count, each 1/4. Sequence-centric: sequence A's 3 tokens 1/6
    // each (1/2 per sequence, shared by 3), sequence B's one token 1/2.
    let q = 0.25;
    assert_close(&weights(Weighting::Token), &[q, q, q, q, 0.0, 0.0], 1e-7).unwrap();
    let (a, b) = (1.0 / 6.0, 0.5);
    assert_close(&weights(Weighting::Sequence), &[a, a, a, b, 0.0, 0.0], 1e-7).unwrap();
}

/// Masked mean through the graph, of given per-position losses (b = 2, s = 3).
fn run_masked_mean(losses: &[f32], mask: &[bool], w: Weighting) -> f32 {
    let mut cx = Graph::new();
    let l = tensor::input::<(Batch, Seq)>(&mut cx, "losses");
    let m = tensor::input::<(Batch, Seq)>(&mut cx, "mask");
    let y = masked_mean(l, m, w).retrieve();
    tensor::set(l, &[2, 3], losses.to_vec()).unwrap();
    tensor::set(m, &[2, 3], mask.iter().map(|&k| k as u8 as f32).collect()).unwrap();
    tensor::execute(&mut cx).unwrap();
    tensor::read(y).unwrap().data[0]
}

#[test]
fn an_all_masked_batch_averages_to_zero_not_nan() {
    for w in [Weighting::Token, Weighting::Sequence] {
        assert_eq!(run_masked_mean(&[1.0; 6], &[false; 6], w), 0.0);
    }
}

#[test]
fn teacher_forcing_shifts_by_one() {
    let (input, target) = teacher_forcing(&[1, 7, 8, 9]).unwrap();
    assert_eq!((input, target), (vec![1, 7, 8], vec![7, 8, 9]));
    assert!(teacher_forcing(&[5])
        .unwrap_err()
        .to_string()
        .contains("at least 2 tokens"));
}

#[test]
fn out_of_range_targets_are_refused() {
    let err = run_loss(
        &[0.0; 4],
        [1, 1, 4],
        &[4],
        &[true],
        Weighting::Token,
        device(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("target id 4"), "{err}");
}

#[test]
fn compiled_op_listing_snapshot() {
    let mut cx = Graph::new();
    let mut x = tensor::input::<(Batch, Seq, Vocab)>(&mut cx, "logits");
    let mut t = tensor::input::<(Batch, Seq)>(&mut cx, "targets");
    let mut m = tensor::input::<(Batch, Seq)>(&mut cx, "mask");
    let mut loss = masked_mean(cross_entropy(x, t), m, Weighting::Token).retrieve();
    crate::backend::Device::Cpu.compile(&mut cx, (&mut x, &mut t, &mut m, &mut loss));
    insta::assert_snapshot!(crate::graph::viz::op_listing(&cx));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// Graph == loops for random logits (scaled up to x 1000), targets and masks, both
    /// weightings. Log-sum-exp of <= 12 terms: 1e-5 relative to max(1, |loss|).
    #[test]
    fn loss_matches_reference(
        b in 1usize..3, s in 1usize..5, v in 2usize..12, scale in prop::sample::select(vec![1.0f32, 10.0, 1000.0]),
        sequence in any::<bool>(), seed in any::<u64>()
    ) {
        use rand::Rng;
        let mut rng = crate::graph::init::rng(seed);
        let logits: Vec<f32> = uniform(&mut rng, b * s * v, 3.0).iter().map(|x| x * scale).collect();
        let targets: Vec<u32> = (0..b * s).map(|_| rng.gen_range(0..v as u32)).collect();
        let mask: Vec<bool> = (0..b * s).map(|_| rng.gen_bool(0.7)).collect();
        let w = if sequence { Weighting::Sequence } else { Weighting::Token };
        let got = run_loss(&logits, [b, s, v], &targets, &mask, w, device()).unwrap();
        let per_position: Vec<f32> = logits.chunks(v).zip(&targets).map(|(row, &t)| cross_entropy_ref(row, t as usize)).collect();
        let want = masked_mean_ref(&per_position, &mask, [b, s], w);
        prop_assert!(got.is_finite());
        assert_close(&[got], &[want], 1e-5)?;
    }
}

/// Chapter 8's gradient check: d CE / d logits (= (softmax - onehot) / count) through the
/// log-sum-exp, the one-hot pick and both masked means.
#[test]
fn gradients_match_finite_differences() {
    use crate::graph::params::Param;
    use crate::testing::assert_gradcheck;
    for w in [Weighting::Token, Weighting::Sequence] {
        let mut cx = Graph::new();
        let x = tensor::input::<(Batch, Seq, Vocab)>(&mut cx, "logits");
        tensor::set(
            x,
            &[2, 3, 4],
            uniform(&mut crate::graph::init::rng(14), 24, 3.0),
        )
        .unwrap();
        let t = tensor::input::<(Batch, Seq)>(&mut cx, "targets");
        tensor::set(t, &[2, 3], vec![0.0, 3.0, 1.0, 2.0, 2.0, 0.0]).unwrap();
        let m = tensor::input::<(Batch, Seq)>(&mut cx, "mask");
        tensor::set(m, &[2, 3], vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0]).unwrap();
        let loss = masked_mean(cross_entropy(x, t), m, w);
        assert_gradcheck(&mut cx, vec![Param::of(x, &[2, 3, 4])], loss);
    }
}

/// Book, chapter 7, exercise "Predict the loss at initialisation": not exactly $\ln V$. With
/// logits of variance $s^2$ at each position, the expected loss is about $\ln V + s^2/2$. For
/// the book's LM (`book_lm_config`: $V = 256$, $d = 128$) the head's Glorot weights give
/// $s^2 = 128 \cdot 0.9733 \cdot 2/384 = 0.649$, so about $5.545 + 0.324 = 5.87$. Measured with
/// weights of seed 0 on 16 x 64 random tokens (seed 1): loss 5.890, logit variance 0.658.
/// Tolerances: 0.1 for the loss against $\ln V + s^2/2$ with the measured $s^2$ (1024 positions
/// with a spread of about $s \approx 0.8$ each: a standard error near 0.03), and 10 % for $s^2$
/// against 0.649 (one draw of 32 768 head weights).
#[test]
fn exercise_loss_at_initialisation_is_ln_vocab_plus_half_logit_variance() {
    use crate::ch06_transformer::{init_lm_weights, run_lm};
    use crate::ch11_training::{book_lm_config, ModelConfig};
    use rand::Rng;
    let ModelConfig::Lm(config) = book_lm_config().model else {
        unreachable!("the book's LM config is an LM")
    };
    let (b, s, v) = (16, 64, config.vocab_size);
    // Random tokens: at initialisation the loss does not depend on the text.
    let mut rng = crate::graph::init::rng(1);
    let tokens: Vec<u32> = (0..b * s * 2).map(|_| rng.gen_range(0..v as u32)).collect();
    let (ids, targets) = tokens.split_at(b * s);
    let dict = init_lm_weights(&config, 0).unwrap();
    let logits = run_lm(ids, [b, s], &dict, &config, device()).unwrap();
    let variance = logits
        .data
        .chunks(v)
        .map(|row| {
            let mean = row.iter().map(|&x| x as f64).sum::<f64>() / v as f64;
            row.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v as f64
        })
        .sum::<f64>()
        / (b * s) as f64;
    let predicted_variance = 128.0 * 0.9733 * 2.0 / 384.0;
    let mask = vec![true; b * s];
    let loss = run_loss(
        &logits.data,
        [b, s, v],
        targets,
        &mask,
        Weighting::Token,
        device(),
    )
    .unwrap() as f64;
    assert!(
        (variance / predicted_variance - 1.0).abs() < 0.1,
        "s^2 = {variance}"
    );
    let ln_v = (v as f64).ln();
    assert!(loss > ln_v, "loss {loss} is not above ln V = {ln_v}");
    assert!(
        (loss - (ln_v + variance / 2.0)).abs() < 0.1,
        "loss {loss}, s^2 {variance}"
    );
}

/// Book, chapter 7, exercise "A confident mistake": logits $(10, 0, 0)$ with target 1 cost
/// $10 + \ln(1 + 2e^{-10}) = 10.0000908$. Tolerance $10^{-5}$: an f32 step at 10 is
/// $9.5 \cdot 10^{-7}$, and the graph adds a few roundings.
#[test]
fn exercise_a_confident_mistake_costs_about_ten_nats() {
    let logits = [10.0, 0.0, 0.0];
    let want = 10.000_090_8_f64; // by hand, in f64; compared after widening each result
    assert!((f64::from(cross_entropy_ref(&logits, 1)) - want).abs() < 1e-5);
    let graph = run_loss(
        &logits,
        [1, 1, 3],
        &[1],
        &[true],
        Weighting::Token,
        device(),
    );
    assert!((f64::from(graph.unwrap()) - want).abs() < 1e-5);
}

/// Book, chapter 7, exercise "Token or sequence mean": A = (1, 1, 1, 1) all kept, B = (5, ., ., .)
/// with only its first position kept. Token mean $(4 + 5)/5 = 1.8$; sequence mean
/// $\frac12 (1 + 5) = 3$. Tolerance $10^{-6}$: sums of a few small numbers in f32.
#[test]
fn exercise_token_and_sequence_means_of_a_short_sequence() {
    let losses = [1.0, 1.0, 1.0, 1.0, 5.0, 6.0, 7.0, 8.0];
    let mask = [true, true, true, true, true, false, false, false];
    let token = masked_mean_ref(&losses, &mask, [2, 4], Weighting::Token);
    let sequence = masked_mean_ref(&losses, &mask, [2, 4], Weighting::Sequence);
    assert!((token - 1.8).abs() < 1e-6, "{token}");
    assert!((sequence - 3.0).abs() < 1e-6, "{sequence}");
}

/// Book, chapter 7, exercise "Nats, bits and perplexity": a validation loss of 1.86 nats per
/// byte is a perplexity of $e^{1.86} = 6.4237$. Tolerance $10^{-4}$ relative: one f32 `exp`.
#[test]
fn exercise_perplexity_of_the_book_lm() {
    assert_relative_eq!(perplexity(1.86), 6.423_737, max_relative = 1e-4);
}
