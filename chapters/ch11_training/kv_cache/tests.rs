use super::seq2seq::CachedSeq2Seq;
use super::*;
use crate::ch06_transformer::{init_seq2seq_weights, lm_ref, seq2seq_ref, Seq2SeqConfig};
use crate::ch11_training::{Generator, ModelConfig};
use crate::graph::init;
use crate::testing::assert_close;
use crate::testing::device;

/// Two layers (so the cache of layer 1 holds values that depend on layer 0's attention), a
/// context of 12, random weights.
fn small_lm() -> TransformerConfig {
    TransformerConfig {
        vocab_size: 19,
        context_length: 12,
        d_model: 16,
        n_layers: 2,
        n_heads: 4,
        d_ff: 24,
        rope_theta: 10_000.0,
    }
}

fn cached(cfg: &TransformerConfig, dict: &StateDict) -> CachedGenerator {
    let mut g = CachedGenerator::new(cfg, device()).unwrap();
    g.load(dict).unwrap();
    g
}

/// Each cached step's logits equal the plain-Rust model's logits at that position when it
/// reads the whole sequence so far (chapter 6's `lm_ref`, no cache), at every position of the
/// context. Tolerance 1e-4 relative: the cached graph sums attention over all 12 cache rows
/// (masked ones contribute exact zeros) and in another order than the loops, so the two differ
/// by float32 rounding (measured max ~1e-6), while a wrong position, a stale or misplaced row,
/// or a missing mask changes logits by O(0.1).
#[test]
fn every_cached_step_matches_the_full_forward_pass() {
    let cfg = small_lm();
    let dict = ModelConfig::Lm(cfg.clone())
        .init_weights(&mut init::rng(8))
        .unwrap();
    let mut g = cached(&cfg, &dict);
    g.reset().unwrap();
    let ids: Vec<u32> = (0..12).map(|i| (i * 7 + 3) % 19).collect();
    for p in 0..ids.len() {
        let got = g.step(ids[p]).unwrap();
        let all = lm_ref(&ids[..=p], &dict, &cfg, [1, p + 1]); // (1, p + 1, vocab)
        let want = &all[p * cfg.vocab_size..];
        assert_close(&got, want, 1e-4).unwrap_or_else(|e| panic!("position {p}: {e}"));
    }
    // A full cache refuses another token with a message, not a wrong answer.
    let err = g.step(1).unwrap_err().to_string();
    assert!(err.contains("context_length = 12"), "{err}");
}

/// Greedy tokens with the cache are the tokens of chapter 11's `Generator`, which re-runs the
/// whole window for every token: 30 tokens from a 3-token prompt, so the sequence outgrows the
/// context of 12 and the window slides (the cache is refilled). Exact equality is meaningful:
/// at every step the reference's top logit leads by more than 1e-3 (checked), far above the
/// ~1e-6 differences between the two graphs.
#[test]
fn greedy_tokens_with_the_cache_equal_those_without() {
    let cfg = small_lm();
    let dict = ModelConfig::Lm(cfg.clone())
        .init_weights(&mut init::rng(2))
        .unwrap();
    let mut plain = Generator::new(&ModelConfig::Lm(cfg.clone()), device()).unwrap();
    plain.load(&dict).unwrap();
    let prompt = [5u32, 1, 17];
    let greedy = Sampling::greedy();
    let want = plain
        .generate(&prompt, 30, None, &greedy, &mut init::rng(0))
        .unwrap();
    let mut seq = prompt.to_vec();
    for &next in &want {
        let window = &seq[seq.len().saturating_sub(cfg.context_length)..];
        let logits = lm_ref(window, &dict, &cfg, [1, window.len()]);
        let mut last = logits[(window.len() - 1) * cfg.vocab_size..].to_vec();
        last.sort_by(|a, b| b.total_cmp(a));
        assert!(last[0] - last[1] > 1e-3, "near tie: pick another seed");
        seq.push(next);
    }
    let mut g = cached(&cfg, &dict);
    let got = g
        .generate(&prompt, 30, None, &greedy, &mut init::rng(0))
        .unwrap();
    assert_eq!(got, want);
    // Generating again starts from an empty cache, and a stop token ends it.
    let stopped = g
        .generate(&prompt, 30, Some(want[1]), &greedy, &mut init::rng(0))
        .unwrap();
    assert_eq!(
        stopped,
        want[..want.iter().position(|&t| t == want[1]).unwrap() + 1]
    );
}

/// The copy task's kind of model (pre-norm, RMSNorm, SwiGLU, RoPE in self- AND cross-attention,
/// untied head) and the original Transformer (post-norm, LayerNorm, sinusoidal, ReLU, tied).
fn seq2seq_configs() -> [Seq2SeqConfig; 2] {
    let modern = Seq2SeqConfig {
        vocab_size: 13,
        context_length: 10,
        d_model: 16,
        n_heads: 2,
        n_encoder_layers: 1,
        n_decoder_layers: 2,
        d_ff: 24,
        rope_theta: 10_000.0,
        tie_embeddings: false,
        cross_attention_rope: true,
        ..Seq2SeqConfig::original_transformer(13, 10, 16, 2, 1, 24)
    };
    let modern = Seq2SeqConfig {
        norm_position: Default::default(),
        norm: Default::default(),
        positions: Default::default(),
        ffn: Default::default(),
        ..modern
    };
    [
        modern,
        Seq2SeqConfig::original_transformer(13, 10, 16, 2, 2, 24),
    ]
}

/// Each cached decoder step's logits equal chapter 6's plain-Rust `seq2seq_ref` on the whole
/// target so far (last position), for 3 sources of 6 tokens and 8 greedy steps, in both
/// configurations. Tolerance 1e-4 relative, as for the LM: float32 rounding in a different
/// order (measured ~1e-6); a wrong cross-attention position, mask or norm placement is O(0.1).
#[test]
fn every_cached_decoder_step_matches_the_reference() {
    for (c, cfg) in seq2seq_configs().iter().enumerate() {
        let dict = init_seq2seq_weights(cfg, 5 + c as u64).unwrap();
        let mut g = CachedSeq2Seq::new(cfg, device()).unwrap();
        g.load(&dict).unwrap();
        let (b, t) = (3, 6);
        let src: Vec<u32> = (0..b * t).map(|i| 2 + (i as u32 * 5) % 11).collect();
        g.begin(&src, b).unwrap();
        let mut tgt: Vec<Vec<u32>> = vec![vec![1]; b];
        for step in 0..8 {
            let got = g
                .step(&tgt.iter().map(|r| r[step]).collect::<Vec<_>>())
                .unwrap();
            let flat: Vec<u32> = tgt.iter().flatten().copied().collect();
            let s = step + 1;
            let want = seq2seq_ref(&src, &vec![true; b * t], &flat, &dict, cfg, [b, t, s]);
            for (r, row) in got.iter().enumerate() {
                let last = &want[(r * s + s - 1) * cfg.vocab_size..][..cfg.vocab_size];
                assert_close(row, last, 1e-4)
                    .unwrap_or_else(|e| panic!("config {c}, step {step}, row {r}: {e}"));
                tgt[r].push(Sampling::greedy().distribution(last)[0].0);
            }
        }
    }
}

/// Greedy decoding with the cache gives the tokens of chapter 11's `Generator`, which re-runs
/// the encoder and the whole target for every token: 3 sources, 9 tokens each, both
/// configurations; each reference step's top logit leads by more than 1e-3 (checked).
#[test]
fn seq2seq_greedy_tokens_with_the_cache_equal_those_without() {
    for (c, cfg) in seq2seq_configs().iter().enumerate() {
        let dict = init_seq2seq_weights(cfg, 11 + c as u64).unwrap();
        let (b, t, len) = (3, 5, 9);
        let src: Vec<u32> = (0..b * t).map(|i| 2 + (i as u32 * 7) % 11).collect();
        let mut plain = Generator::new(&ModelConfig::Seq2Seq(cfg.clone()), device()).unwrap();
        plain.load(&dict).unwrap();
        let greedy = Sampling::greedy();
        let want = (plain.generate_seq2seq(&src, b, 1, len, &greedy, &mut init::rng(0))).unwrap();
        for r in 0..b {
            let row: Vec<u32> = [&[1][..], &want[r * len..(r + 1) * len]].concat();
            let src_r = &src[r * t..(r + 1) * t];
            let logits = seq2seq_ref(src_r, &[true; 5], &row[..len], &dict, cfg, [1, t, len]);
            for (p, z) in logits.chunks(cfg.vocab_size).enumerate() {
                let mut z = z.to_vec();
                z.sort_by(|a, b| b.total_cmp(a));
                assert!(
                    z[0] - z[1] > 1e-3,
                    "config {c}, row {r}, step {p}: near tie"
                );
            }
        }
        let mut g = CachedSeq2Seq::new(cfg, device()).unwrap();
        g.load(&dict).unwrap();
        let got = g
            .generate(&src, b, 1, len, &greedy, &mut init::rng(0))
            .unwrap();
        assert_eq!(got, want, "config {c}");
    }
}
