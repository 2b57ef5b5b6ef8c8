use super::*;
use crate::ch06_transformer::{
    init_seq2seq_weights, param_table, run_seq2seq, seq2seq_ref, Seq2Seq,
};
use crate::graph::params::{Parameters, StateDict};
use crate::testing::assert_close;
use crate::testing::device;
use luminal::prelude::Graph;
use proptest::prelude::*;
use rand::Rng;

/// Tiny sizes with an even head size (RoPE) and an odd number of source positions.
fn tiny(arch: Architecture) -> Seq2SeqConfig {
    let mut c = Seq2SeqConfig::original_transformer(9, 8, 8, 2, 1, 12);
    c.n_encoder_layers = 2;
    c.set_architecture(arch);
    c
}

/// Random ids, a source padding mask that keeps position 0 of each sequence, and targets.
fn batch(seed: u64, [b, t, s]: [usize; 3], vocab: usize) -> (Vec<u32>, Vec<bool>, Vec<u32>) {
    let mut rng = crate::graph::init::rng(seed);
    let src = (0..b * t).map(|_| rng.gen_range(0..vocab as u32)).collect();
    let keep = (0..b * t)
        .map(|i| i % t == 0 || rng.gen_bool(0.7))
        .collect();
    let tgt = (0..b * s).map(|_| rng.gen_range(0..vocab as u32)).collect();
    (src, keep, tgt)
}

/// Largest |graph - loops| / max(1, |loops|) for one config and seed (asserted <= `tol`).
fn graph_vs_loops(cfg: &Seq2SeqConfig, seed: u64, shape: [usize; 3], tol: f32) -> f32 {
    let [b, t, s] = shape;
    let dict = init_seq2seq_weights(cfg, seed).unwrap();
    let (src, keep, tgt) = batch(seed, shape, cfg.vocab_size);
    let got = run_seq2seq((&src, &keep, t), (&tgt, s), &dict, cfg, device()).unwrap();
    assert_eq!(got.shape, vec![b, s, cfg.vocab_size]);
    let want = seq2seq_ref(&src, &keep, &tgt, &dict, cfg, shape);
    assert_close(&got.data, &want, tol).unwrap_or_else(|e| panic!("{:?}: {e}", cfg.architecture()));
    let err = got
        .data
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs() / w.abs().max(1.0));
    err.fold(0.0, f32::max)
}

#[test]
fn the_preset_is_the_2017_architecture_and_the_default_is_the_modern_one() {
    let c = Seq2SeqConfig::original_transformer(100, 64, 512, 8, 6, 2048);
    assert_eq!(c.architecture(), Architecture::ORIGINAL);
    assert_eq!(
        (c.norm_position, c.norm, c.positions, c.ffn),
        (
            NormPosition::Post,
            Norm::Layer,
            Positions::Sinusoidal,
            Ffn::Relu
        )
    );
    assert_eq!(
        (c.n_encoder_layers, c.n_decoder_layers, c.tie_embeddings),
        (6, 6, true)
    );
    c.validate().unwrap();
    assert_eq!(Architecture::default().norm_position, NormPosition::Pre);
    assert_eq!(Architecture::all().len(), 16);
}

/// A JSON config written before the switches existed loads as the modern model, and a modern
/// config writes no switch (so old files and printed configs are unchanged); the original's
/// JSON names its switches and reads back equal.
#[test]
fn configs_without_the_switches_read_as_before() {
    let old = r#"{"vocab_size": 9, "context_length": 8, "d_model": 8, "n_heads": 2,
        "n_encoder_layers": 1, "n_decoder_layers": 1, "d_ff": 12, "rope_theta": 10000.0,
        "tie_embeddings": true}"#;
    let c: Seq2SeqConfig = serde_json::from_str(old).unwrap();
    assert_eq!(c.architecture(), Architecture::default());
    assert!(!serde_json::to_string(&c).unwrap().contains("norm"));
    let original = tiny(Architecture::ORIGINAL);
    let json = serde_json::to_string(&original).unwrap();
    for needle in [
        r#""norm_position":"post""#,
        r#""norm":"layer_norm""#,
        r#""positions":"sinusoidal""#,
        r#""ffn":"relu""#,
    ] {
        assert!(json.contains(needle), "{json}");
    }
    assert_eq!(
        serde_json::from_str::<Seq2SeqConfig>(&json).unwrap(),
        original
    );
    // A misspelt value lists the accepted ones.
    let bad = old.replace(
        "\"tie_embeddings\": true",
        "\"tie_embeddings\": true, \"norm_position\": \"middle\"",
    );
    let err = serde_json::from_str::<Seq2SeqConfig>(&bad)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown variant `middle`, expected `pre` or `post`"),
        "{err}"
    );
}

#[test]
fn contradicting_or_relaxed_switches_are_checked_by_name() {
    let mut c = tiny(Architecture::ORIGINAL);
    c.cross_attention_rope = true;
    let err = c.validate().unwrap_err().to_string();
    assert!(
        err.contains("cross_attention_rope needs positions = \"rope\""),
        "{err}"
    );
    // Without RoPE nothing rotates pairs, so an odd head size (8 / 8 = 1) is fine...
    let c = Seq2SeqConfig {
        n_heads: 8,
        ..tiny(Architecture::ORIGINAL)
    };
    c.validate().unwrap();
    // ...but with RoPE it is refused, naming the head size.
    let c = Seq2SeqConfig {
        n_heads: 8,
        ..tiny(Architecture::default())
    };
    let err = c.validate().unwrap_err().to_string();
    assert!(
        err.contains("head size d_model / n_heads = 1 must be even"),
        "{err}"
    );
}

/// The original's state dict: LayerNorms have `weight` and `bias`, ReLU FFNs `w1` and `w2`
/// only, and there are no RoPE tables. Counted by hand for d 8, d_ff 12, vocab 9, 2 encoder
/// and 1 decoder layers, tied: embeddings 72; encoder layer attn 4*64 = 256, ffn 2*96 = 192,
/// 2 LayerNorms 2*16 = 32 -> 480, twice 960; decoder layer 2 attentions 512 + ffn 192 + 3
/// LayerNorms 48 = 752; final norms 2*16 = 32. Total 72 + 960 + 752 + 32 = 1816.
#[test]
fn the_original_has_layer_norm_biases_and_two_ffn_weights() {
    let mut cx = Graph::new();
    let model = Seq2Seq::new(&mut cx, &tiny(Architecture::ORIGINAL)).unwrap();
    let names: Vec<String> = model.params().into_iter().map(|p| p.name).collect();
    for name in [
        "encoder.layers.1.ln2.bias",
        "decoder.layers.0.ln3.bias",
        "decoder.ln_final.bias",
        "decoder.layers.0.ffn.w2.weight",
    ] {
        assert!(
            names.iter().any(|n| n == name),
            "{name} missing from {names:?}"
        );
    }
    assert!(!names.iter().any(|n| n.contains("w3")), "{names:?}");
    assert!(model.rope.is_none());
    assert_eq!(model.num_params(), 1816);
    let table = param_table(&model.params());
    assert_eq!(table.last().unwrap(), &("total".to_string(), 1816));
}

/// The original configuration, graph == loops: post-norm LayerNorm blocks, sinusoids built in
/// the graph vs the f64-angle table, ReLU FFNs. 2e-4 relative to max(1, |logit|), as for the
/// modern model: three blocks of order-1 activations and a vocabulary projection, plus the
/// table's f32 angles (< 4e-5, chapter 4).
#[test]
fn the_original_matches_the_reference() {
    let cfg = tiny(Architecture::ORIGINAL);
    let mut worst = 0.0f32;
    for (seed, shape) in [(1, [2, 5, 4]), (2, [1, 8, 8]), (3, [3, 1, 2])] {
        worst = worst.max(graph_vs_loops(&cfg, seed, shape, 2e-4));
    }
    println!("original transformer: largest relative error vs the loops {worst:e}");
}

/// Every one of the 16 combinations of the four switches builds, runs and matches the loops
/// (2e-4 as above), tied and untied alternately.
#[test]
fn every_combination_of_switches_matches_the_reference() {
    let mut worst = 0.0f32;
    for (i, arch) in Architecture::all().into_iter().enumerate() {
        let cfg = Seq2SeqConfig {
            tie_embeddings: i % 2 == 0,
            ..tiny(arch)
        };
        worst = worst.max(graph_vs_loops(&cfg, 40 + i as u64, [2, 4, 3], 2e-4));
    }
    println!("16 architectures: largest relative error vs the loops {worst:e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]
    /// Post-norm is not pre-norm: the same weights give different logits (a switch that did
    /// nothing would pass every test above).
    #[test]
    fn each_switch_changes_the_logits(seed in any::<u64>(), which in 0usize..4) {
        let base = Architecture::default();
        let mut other = base;
        match which {
            0 => other.norm_position = NormPosition::Post,
            1 => other.norm = Norm::Layer,
            2 => other.positions = Positions::Sinusoidal,
            _ => other.ffn = Ffn::Relu,
        }
        // Weights of the larger model (LayerNorm biases 0 at init, w3 present) serve both.
        let union = Architecture { norm: Norm::Layer, ..base };
        let dict = init_seq2seq_weights(&tiny(union), seed).unwrap();
        let (src, keep, tgt) = batch(seed, [1, 4, 3], 9);
        let run = |arch| {
            // Keep the tensors this architecture has (loading refuses unexpected ones).
            let names = init_seq2seq_weights(&tiny(arch), 0).unwrap();
            let own: StateDict = dict.iter().filter(|(k, _)| names.contains_key(*k)).map(|(k, v)| (k.clone(), v.clone())).collect();
            run_seq2seq((&src, &keep, 4), (&tgt, 3), &own, &tiny(arch), device()).unwrap().data
        };
        let (a, b) = (run(base), run(other));
        let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        prop_assert!(diff > 1e-3, "switch {} changed the logits by only {}", which, diff);
    }
}
