//! The encoder-decoder as plain loops: the reference every graph version is tested against.
//!
//! Book page: [Chapter 6](../../../book/ch06_transformer.html#the-encoder-decoder).

use super::{add, block_ref, NormPosition, Seq2SeqConfig};
use crate::ch01_linear::{embedding_ref, linear_ref};
use crate::ch02_rmsnorm::norm_ref_named;
use crate::ch03_feed_forward::ffn_ref_named;
use crate::ch04_rope::{sinusoidal_positions_ref, Positions};
use crate::ch05_attention::mha_ref;
use crate::graph::params::StateDict;

// ANCHOR: seq2seq_ref
/// The encoder-decoder as loops: `src` (b, t) with `src_keep` (b, t) (false = padding),
/// `tgt` (b, s) -> logits (b, s, vocab). Every switch of `cfg.architecture()` is honoured.
pub fn seq2seq_ref(
    src: &[u32],
    src_keep: &[bool],
    tgt: &[u32],
    dict: &StateDict,
    cfg: &Seq2SeqConfig,
    [b, t, s]: [usize; 3],
) -> Vec<f32> {
    // ANCHOR: learn_seq2seq_ref ch06: embed (+ sinusoids if absolute positions); encoder block_refs with a source padding mask, encoder.ln_final; decoder layers of self-attn (causal), cross-attn on memory (padding mask), ffn, pre or post norm; decoder.ln_final; lm_head or tied table -> (b, s, vocab)
    let (d, heads, arch) = (cfg.d_model, cfg.n_heads, cfg.architecture());
    let theta = (arch.positions == Positions::Rope).then_some(cfg.rope_theta);
    let table = &dict["token_embeddings.weight"].data;
    let w = |name: String| &dict[&name].data[..];
    let norm = |x: &[f32], name: String| norm_ref_named(arch.norm, x, dict, &name, d);
    // Token embeddings (n rows per sequence), plus the sinusoids when positions are absolute.
    let embed = |ids: &[u32], n: usize| {
        let x = embedding_ref(ids, table, d); // (b, n, d)
        match arch.positions {
            Positions::Rope => x,
            Positions::Sinusoidal => {
                let pe = sinusoidal_positions_ref(n, d).repeat(b); // (b, n, d)
                add(&x, &pe)
            }
        }
    };
    // Encoder: every source position sees every real source position.
    let enc_mask: Vec<bool> = (0..b * t * t)
        .map(|i| src_keep[(i / (t * t)) * t + i % t])
        .collect();
    let mut memory = embed(src, t);
    for i in 0..cfg.n_encoder_layers {
        let p = format!("encoder.layers.{i}");
        let sizes = [b, t, d, heads, cfg.d_ff];
        memory = block_ref(&memory, dict, &p, &enc_mask, sizes, theta, arch);
    }
    let memory = norm(&memory, "encoder.ln_final".into());
    // Decoder: causal over the target, padding-masked over the source.
    let causal: Vec<bool> = (0..b * s * s).map(|i| i % s <= (i / s) % s).collect();
    let cross: Vec<bool> = (0..b * s * t)
        .map(|i| src_keep[(i / (s * t)) * t + i % t])
        .collect();
    let cross_theta = theta.filter(|_| cfg.cross_attention_rope);
    let mut x = embed(tgt, s);
    for i in 0..cfg.n_decoder_layers {
        let p = |n: &str| format!("decoder.layers.{i}.{n}");
        let attn = |a: &str| {
            ["q_proj", "k_proj", "v_proj", "output_proj"].map(|m| w(p(&format!("{a}.{m}.weight"))))
        };
        let self_attn =
            |n: &[f32]| mha_ref(n, n, attn("self_attn"), &causal, [b, s, s, d], heads, theta);
        let cross_attn = |n: &[f32]| {
            let sizes = [b, s, t, d];
            mha_ref(
                n,
                &memory,
                attn("cross_attn"),
                &cross,
                sizes,
                heads,
                cross_theta,
            )
        };
        let ffn = |n: &[f32]| ffn_ref_named(arch.ffn, n, dict, &p("ffn"), [b * s, d, cfg.d_ff]);
        x = match arch.norm_position {
            NormPosition::Pre => {
                let h = add(&x, &self_attn(&norm(&x, p("ln1"))));
                let h = add(&h, &cross_attn(&norm(&h, p("ln2"))));
                add(&h, &ffn(&norm(&h, p("ln3"))))
            }
            NormPosition::Post => {
                let h = norm(&add(&x, &self_attn(&x)), p("ln1"));
                let h = norm(&add(&h, &cross_attn(&h)), p("ln2"));
                norm(&add(&h, &ffn(&h)), p("ln3"))
            }
        };
    }
    let x = norm(&x, "decoder.ln_final".into());
    let head = if cfg.tie_embeddings {
        table
    } else {
        &dict["lm_head.weight"].data
    };
    linear_ref(&x, head, b * s, d, cfg.vocab_size)
    // ANCHOR_END: learn_seq2seq_ref
}
// ANCHOR_END: seq2seq_ref
