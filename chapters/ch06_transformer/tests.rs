use super::*;
use crate::graph::params::{load_state_dict, read_safetensors, write_safetensors};
use crate::testing::assert_close;
use crate::testing::device;
use proptest::prelude::*;
use rand::Rng;

fn tiny_lm() -> TransformerConfig {
    TransformerConfig {
        vocab_size: 11,
        context_length: 8,
        d_model: 8,
        n_layers: 2,
        n_heads: 2,
        d_ff: 12,
        rope_theta: 10_000.0,
    }
}

fn tiny_seq2seq(tie_embeddings: bool) -> Seq2SeqConfig {
    Seq2SeqConfig {
        vocab_size: 9,
        context_length: 8,
        d_model: 8,
        n_heads: 2,
        n_encoder_layers: 2,
        n_decoder_layers: 1,
        d_ff: 12,
        rope_theta: 10_000.0,
        tie_embeddings,
        cross_attention_rope: false,
        // Chapter 6's modern architecture: pre-norm, RMSNorm, RoPE, SwiGLU.
        norm_position: Default::default(),
        norm: Default::default(),
        positions: Default::default(),
        ffn: Default::default(),
    }
}

fn ids(rng: &mut impl Rng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| rng.gen_range(0..vocab as u32)).collect()
}

#[test]
fn reference_config_has_the_hand_counted_parameters() {
    // token_embeddings 256 * 128 = 32768; per layer: attention 4 * 128 * 128 = 65536,
    // SwiGLU 3 * 128 * 384 = 147456, two norms 2 * 128 = 256 -> 213248, times 4 = 852992;
    // ln_final 128; lm_head 128 * 256 = 32768. Total 918656.
    let mut cx = Graph::new();
    let model = TransformerLm::new(&mut cx, &TransformerConfig::reference()).unwrap();
    assert_eq!(model.num_params(), 918_656);
    let table: Vec<String> = param_table(&model.params())
        .iter()
        .map(|(k, n)| format!("{k:<18} {n:>8}"))
        .collect();
    insta::assert_snapshot!(table.join("\n"));
}

#[test]
fn invalid_configs_name_the_setting() {
    let cases = [
        (
            TransformerConfig {
                n_heads: 3,
                ..tiny_lm()
            },
            "d_model (8) must be divisible by n_heads (3)",
        ),
        (
            TransformerConfig {
                n_heads: 8,
                ..tiny_lm()
            },
            "head size d_model / n_heads = 1 must be even",
        ),
        (
            TransformerConfig {
                n_layers: 0,
                ..tiny_lm()
            },
            "n_layers must be positive",
        ),
        (
            TransformerConfig {
                rope_theta: 0.5,
                ..tiny_lm()
            },
            "rope_theta (0.5)",
        ),
    ];
    for (cfg, needle) in cases {
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
    }
    let err = Seq2SeqConfig {
        n_decoder_layers: 0,
        ..tiny_seq2seq(true)
    }
    .validate()
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("n_decoder_layers must be positive"),
        "{err}"
    );
}

#[test]
fn too_long_sequences_and_unknown_ids_are_refused() {
    let cfg = tiny_lm();
    let dict = init_lm_weights(&cfg, 1).unwrap();
    let err = run_lm(&[0; 9], [1, 9], &dict, &cfg, device()).unwrap_err();
    assert!(err.to_string().contains("context_length is 8"), "{err}");
    let err = run_lm(&[0, 11], [1, 2], &dict, &cfg, device()).unwrap_err();
    assert!(err.to_string().contains("token id 11"), "{err}");
}

#[test]
fn a_state_dict_with_a_missing_or_misshapen_tensor_is_refused_by_name() {
    let cfg = tiny_lm();
    let mut dict = init_lm_weights(&cfg, 2).unwrap();
    let removed = dict.remove("layers.1.ffn.w2.weight").unwrap();
    let err = run_lm(&[1, 2], [1, 2], &dict, &cfg, device()).unwrap_err();
    assert!(
        err.to_string()
            .contains("missing tensor 'layers.1.ffn.w2.weight'"),
        "{err}"
    );
    dict.insert(
        "layers.1.ffn.w2.weight".into(),
        HostTensorExt::transposed(&removed),
    );
    let err = run_lm(&[1, 2], [1, 2], &dict, &cfg, device()).unwrap_err();
    assert!(
        err.to_string().contains("'layers.1.ffn.w2.weight'"),
        "{err}"
    );
}

trait HostTensorExt {
    fn transposed(&self) -> Self;
}
impl HostTensorExt for crate::graph::tensor::HostTensor {
    fn transposed(&self) -> Self {
        let (r, c) = (self.shape[0], self.shape[1]);
        let data = (0..r * c).map(|i| self.data[(i % r) * c + i / r]).collect();
        crate::graph::tensor::HostTensor::new(&[c, r], data).unwrap()
    }
}

#[test]
fn safetensors_round_trip_gives_the_same_logits() {
    let cfg = tiny_lm();
    let dict = init_lm_weights(&cfg, 3).unwrap();
    let dir = std::env::temp_dir().join(format!("tc-ch06-{}", std::process::id()));
    let path = dir.join("lm.safetensors");
    write_safetensors(&path, &dict, None).unwrap();
    let loaded = read_safetensors(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let a = run_lm(&[1, 5, 7], [1, 3], &dict, &cfg, device()).unwrap();
    let b = run_lm(&[1, 5, 7], [1, 3], &loaded, &cfg, device()).unwrap();
    assert_eq!(a, b);
}

#[test]
fn tied_embeddings_share_one_table() {
    let mut cx = Graph::new();
    let model = Seq2Seq::new(&mut cx, &tiny_seq2seq(true)).unwrap();
    assert_eq!(model.lm_head.weight.id, model.token_embeddings.weight.id);
    assert!(model.params().iter().all(|p| p.name != "lm_head.weight"));
    let mut cx2 = Graph::new(); // a model's tensors point into their graph: keep it alive
    let untied = Seq2Seq::new(&mut cx2, &tiny_seq2seq(false)).unwrap();
    assert_eq!(untied.num_params(), model.num_params() + 9 * 8);
}

#[test]
fn compiled_op_counts_snapshot() {
    // One block's worth of ops, counted by kind: a reviewable summary of what the CPU runs.
    let mut cx = Graph::new();
    let cfg = TransformerConfig {
        n_layers: 1,
        ..tiny_lm()
    };
    let mut model = TransformerLm::new(&mut cx, &cfg).unwrap();
    let mut idt = crate::graph::tensor::input::<(crate::graph::dims::Batch, crate::graph::dims::Seq)>(
        &mut cx, "ids",
    );
    let mut logits = model.forward(idt).retrieve();
    let built = cx.graph.node_count();
    // Without the pattern passes (fused attention, pair swap), so that the chapters' own ops
    // are counted.
    let pipeline = crate::backend::OpByOpCpuCompiler::default();
    cx.compile(pipeline, (&mut model, &mut idt, &mut logits));
    let mut counts = std::collections::BTreeMap::new();
    for n in cx.graph.node_indices() {
        let op = cx.graph.node_weight(n).unwrap();
        let kind = if op.as_any().is::<luminal::op::Function>() {
            "Input".to_string() // weights, tables and ids
        } else {
            format!("{op:?}")
                .split(['(', ' '])
                .next()
                .unwrap_or("")
                .to_string()
        };
        *counts.entry(kind).or_insert(0) += 1;
    }
    let lines: Vec<String> = counts
        .iter()
        .map(|(k, n)| format!("{k:<16} {n:>3}"))
        .collect();
    insta::assert_snapshot!(format!(
        "built: {built} nodes, compiled: {} nodes\n{}",
        cx.graph.node_count(),
        lines.join("\n")
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    /// The whole LM, graph == loops, for random small configs and ids. Two blocks of order-1
    /// activations and a vocabulary projection: 2e-4 relative to max(1, |logit|).
    #[test]
    fn lm_matches_reference(b in 1usize..3, s in 1usize..6, heads in 1usize..3, layers in 1usize..3, seed in any::<u64>()) {
        let cfg = TransformerConfig { n_heads: heads, n_layers: layers, d_model: 4 * heads, ..tiny_lm() };
        let dict = init_lm_weights(&cfg, seed).unwrap();
        let mut rng = crate::graph::init::rng(seed);
        let x = ids(&mut rng, b * s, cfg.vocab_size);
        let got = run_lm(&x, [b, s], &dict, &cfg, device()).unwrap();
        prop_assert_eq!(&got.shape, &vec![b, s, cfg.vocab_size]);
        assert_close(&got.data, &lm_ref(&x, &dict, &cfg, [b, s]), 2e-4)?;
    }

    /// The LM is causal end to end: changing the token at position p never changes the
    /// logits at earlier positions (bit for bit).
    #[test]
    fn lm_logits_ignore_future_tokens(s in 2usize..7, p in 1usize..6, seed in any::<u64>()) {
        let p = p % s;
        let cfg = tiny_lm();
        let dict = init_lm_weights(&cfg, seed).unwrap();
        let mut rng = crate::graph::init::rng(seed);
        let mut x = ids(&mut rng, s, cfg.vocab_size);
        let a = run_lm(&x, [1, s], &dict, &cfg, device()).unwrap().data;
        x[p] = (x[p] + 1) % cfg.vocab_size as u32;
        let b = run_lm(&x, [1, s], &dict, &cfg, device()).unwrap().data;
        let v = cfg.vocab_size;
        prop_assert_eq!(&a[..p * v], &b[..p * v]);
        prop_assert_ne!(&a[p * v..], &b[p * v..]);
    }

    /// The encoder-decoder, graph == loops, tied and untied, with and without RoPE in
    /// cross-attention, with source padding. 2e-4 as above.
    #[test]
    fn seq2seq_matches_reference(b in 1usize..3, t in 1usize..6, s in 1usize..5, tie in any::<bool>(), cross_rope in any::<bool>(), seed in any::<u64>()) {
        let cfg = Seq2SeqConfig { cross_attention_rope: cross_rope, ..tiny_seq2seq(tie) };
        let dict = init_seq2seq_weights(&cfg, seed).unwrap();
        let mut rng = crate::graph::init::rng(seed);
        let src = ids(&mut rng, b * t, cfg.vocab_size);
        let keep: Vec<bool> = (0..b * t).map(|i| i % t == 0 || rng.gen_bool(0.7)).collect();
        let tgt = ids(&mut rng, b * s, cfg.vocab_size);
        let got = run_seq2seq((&src, &keep, t), (&tgt, s), &dict, &cfg, device()).unwrap();
        prop_assert_eq!(&got.shape, &vec![b, s, cfg.vocab_size]);
        assert_close(&got.data, &seq2seq_ref(&src, &keep, &tgt, &dict, &cfg, [b, t, s]), 2e-4)?;
    }

    /// Padded source tokens are invisible to the decoder: changing them changes no logit.
    #[test]
    fn seq2seq_ignores_source_padding(t in 2usize..7, seed in any::<u64>()) {
        let cfg = tiny_seq2seq(true);
        let dict = init_seq2seq_weights(&cfg, seed).unwrap();
        let mut rng = crate::graph::init::rng(seed);
        let mut src = ids(&mut rng, t, cfg.vocab_size);
        let keep: Vec<bool> = (0..t).map(|i| i < t / 2 + 1).collect();
        let tgt = ids(&mut rng, 3, cfg.vocab_size);
        let a = run_seq2seq((&src, &keep, t), (&tgt, 3), &dict, &cfg, device()).unwrap();
        for (id, k) in src.iter_mut().zip(&keep) {
            if !k {
                *id = (*id + 1) % cfg.vocab_size as u32;
            }
        }
        let b = run_seq2seq((&src, &keep, t), (&tgt, 3), &dict, &cfg, device()).unwrap();
        prop_assert_eq!(a, b);
    }
}

#[test]
fn loading_is_all_or_nothing() {
    // A bad state dict leaves the weights that were there before.
    let cfg = tiny_lm();
    let mut cx = Graph::new();
    let model = TransformerLm::new(&mut cx, &cfg).unwrap();
    let good = init_lm_weights(&cfg, 4).unwrap();
    load_state_dict(&mut cx, &model.params(), &good).unwrap();
    let mut bad = init_lm_weights(&cfg, 5).unwrap();
    bad.remove("ln_final.weight");
    assert!(load_state_dict(&mut cx, &model.params(), &bad).is_err());
    assert_eq!(
        crate::graph::params::state_dict(&cx, &model.params()).unwrap(),
        good
    );
}

/// Chapter 8's gradient check on a whole (tiny) LM: every parameter, through embedding,
/// RoPE attention, SwiGLU, norms and the LM head.
#[test]
fn lm_gradients_match_finite_differences() {
    use crate::testing::{assert_gradcheck, weighted_sum};
    let cfg = TransformerConfig {
        vocab_size: 5,
        context_length: 4,
        d_model: 4,
        n_layers: 1,
        n_heads: 2,
        d_ff: 4,
        rope_theta: 10_000.0,
    };
    let mut cx = Graph::new();
    let model = TransformerLm::new(&mut cx, &cfg).unwrap();
    model.init(&mut crate::graph::init::rng(12)).unwrap();
    let idt = crate::graph::tensor::input::<(crate::graph::dims::Batch, crate::graph::dims::Seq)>(
        &mut cx, "ids",
    );
    model.set_ids(idt, [1, 3], &[1, 4, 2]).unwrap();
    let loss = weighted_sum(model.forward(idt), &[1, 3, 5], 13);
    assert_gradcheck(&mut cx, model.params(), loss);
}

/// Book, chapter 6, Exercises 1 and 2: the copy task's model (chapter 11) has 199 680
/// parameters; the same sizes as the original Transformer have 166 528, and 199 296 with the
/// ReLU FFN widened to d_ff = 192 for parity. Counts of a fresh state dict: exact.
#[test]
fn exercise_copy_model_parameter_counts() {
    let count = |cfg: &Seq2SeqConfig| -> usize {
        let dict = init_seq2seq_weights(cfg, 0).unwrap();
        dict.values().map(|t| t.data.len()).sum()
    };
    let crate::ch11_training::ModelConfig::Seq2Seq(modern) =
        crate::ch11_training::copy_task_config().model
    else {
        panic!("the copy task uses the encoder-decoder")
    };
    // Encoder layer 16 384 + 24 576 + 128, decoder layer 2 * 16 384 + 24 576 + 192,
    // embeddings and head 2 * 18 * 64, two final norms 2 * 64.
    assert_eq!(count(&modern), 199_680);
    let original = Seq2SeqConfig::original_transformer(18, 64, 64, 4, 2, 128);
    assert_eq!(count(&original), 166_528);
    let wide = Seq2SeqConfig::original_transformer(18, 64, 64, 4, 2, 192);
    assert_eq!(count(&wide), 199_296);
}

/// Book, chapter 6, Exercises 3: with every `attn.output_proj` and `ffn.w2` at zero, each
/// pre-norm block adds nothing, so the logits at a position depend on its own token only.
/// Compared with `==`: the blocks add exact zeros, so nothing is rounded differently.
#[test]
fn exercise_zeroed_blocks_leave_the_identity_path() {
    let cfg = TransformerConfig {
        vocab_size: 11,
        context_length: 8,
        d_model: 8,
        n_layers: 2,
        n_heads: 2,
        d_ff: 12,
        rope_theta: crate::ch04_rope::ROPE_THETA,
    };
    let mut dict = init_lm_weights(&cfg, 0).unwrap();
    for (name, t) in dict.iter_mut() {
        if name.ends_with("attn.output_proj.weight") || name.ends_with("ffn.w2.weight") {
            t.data.iter_mut().for_each(|v| *v = 0.0);
        }
    }
    let a = lm_ref(&[3, 1, 4, 1, 5], &dict, &cfg, [1, 5]);
    let b = lm_ref(&[7, 2, 9, 1, 5], &dict, &cfg, [1, 5]);
    // Position 3 (token 1) and position 4 (token 5) have the same tokens in both sequences.
    assert_eq!(&a[3 * 11..], &b[3 * 11..]);
    // And position 1 of `a` (token 1) equals position 3 of `a` (token 1).
    assert_eq!(&a[11..22], &a[33..44]);
    assert_ne!(&a[..11], &b[..11]);
}
