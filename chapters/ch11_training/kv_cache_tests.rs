use super::*;
use crate::ch06_transformer::lm_ref;
use crate::ch11_training::{Generator, ModelConfig};
use crate::graph::init;
use crate::testing::assert_close;

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
    let mut g = CachedGenerator::new(cfg, Device::Cpu).unwrap();
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
    let mut plain = Generator::new(&ModelConfig::Lm(cfg.clone()), Device::Cpu).unwrap();
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
