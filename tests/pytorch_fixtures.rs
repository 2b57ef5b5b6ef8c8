//! Chapters 01–06 against PyTorch: each fixture in tests/fixtures/ was written by
//! scripts/make_fixtures.py from plain PyTorch code (inputs `in.*`, weights by state-dict name,
//! expected outputs `out.*`). Regenerate with `python3 scripts/make_fixtures.py`.
//!
//! Tolerances are relative to max(1, |expected|), so absolute near zero. Both sides compute in
//! f32 but sum in different orders (PyTorch's blocked BLAS vs luminal's loops), so a dot
//! product of n terms of size ~1 may differ by ~n * 6e-8. Single layers use 1e-5; attention and
//! deeper stacks use 1e-4 (errors grow through softmax, residuals and normalisation; the largest
//! seen here is ~4e-6 (encoder-decoder logits); the margin catches real bugs: a wrong convention gives errors of order 1).

use std::path::Path;

use transformer_course::prelude::*;

/// The device under test: `DEVICE` from the environment, `cpu` when unset (see
/// `scripts/gpu_check.sh`).
fn device() -> Device {
    Device::from_env().unwrap_or_else(|e| panic!("DEVICE: {e}"))
}

/// A fixture split into inputs, expected outputs and weights (a state dict).
struct Fixture {
    inputs: StateDict,
    outputs: StateDict,
    weights: StateDict,
    /// d loss / d weight, by the weight's state-dict name.
    grads: StateDict,
}

fn fixture(name: &str) -> Fixture {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/{name}.safetensors"));
    let all = params::read_safetensors(&path).unwrap_or_else(|e| panic!("{e}"));
    let mut f = Fixture {
        inputs: StateDict::new(),
        outputs: StateDict::new(),
        weights: StateDict::new(),
        grads: StateDict::new(),
    };
    for (k, v) in all {
        if let Some(name) = k.strip_prefix("in.") {
            f.inputs.insert(name.into(), v);
        } else if let Some(name) = k.strip_prefix("out.") {
            f.outputs.insert(name.into(), v);
        } else if let Some(name) = k.strip_prefix("grad.") {
            f.grads.insert(name.into(), v);
        } else {
            f.weights.insert(k, v);
        }
    }
    f
}

impl Fixture {
    fn input(&self, name: &str) -> &HostTensor {
        &self.inputs[name]
    }
    fn ids(&self, name: &str) -> Vec<u32> {
        self.inputs[name].data.iter().map(|&v| v as u32).collect()
    }
    fn flags(&self, name: &str) -> Vec<bool> {
        self.inputs[name].data.iter().map(|&v| v != 0.0).collect()
    }
    /// Compare every gradient: |ours - PyTorch's| <= 1e-5 + 1e-3 |PyTorch's| (gradients are
    /// small, so a purely relative bound would be loose near 0 and an absolute one loose for
    /// large entries). Returns the largest absolute error.
    fn check_grads(&self, got: &[(String, HostTensor)]) -> f32 {
        assert_eq!(got.len(), self.grads.len(), "one gradient per weight");
        let mut worst = 0.0f32;
        for (name, g) in got {
            let want = &self.grads[name];
            assert_eq!(g.shape, want.shape, "shape of the gradient of {name}");
            for (i, (a, b)) in g.data.iter().zip(&want.data).enumerate() {
                let err = (a - b).abs();
                assert!(
                    err <= 1e-5 + 1e-3 * b.abs(),
                    "d loss / d {name}[{i}]: ours {a}, PyTorch {b}"
                );
                worst = worst.max(err);
            }
        }
        worst
    }
    /// Run chapter 8's backward pass on `loss`, then check the loss (1e-5) and every
    /// parameter's gradient against the fixture; returns the largest gradient error.
    fn check_loss_and_grads(
        &self,
        cx: &mut Graph,
        params: Vec<Param>,
        loss: GraphTensor<()>,
    ) -> f32 {
        let names: Vec<String> = params.iter().map(|p| p.name.clone()).collect();
        let mut gc = GradCheck::new(cx, params, loss, Some(device())).unwrap();
        let (l, grads) = gc.run().unwrap();
        self.check("loss", &HostTensor::new(&[1], vec![l]).unwrap(), 1e-5);
        let named: Vec<(String, HostTensor)> = names.into_iter().zip(grads).collect();
        self.check_grads(&named)
    }
    fn weight(&self, name: &str) -> &[f32] {
        &self.weights[name].data
    }
    /// Compare with the expected output `name`; returns the largest relative error seen.
    fn check(&self, name: &str, got: &HostTensor, tol: f32) -> f32 {
        let want = &self.outputs[name];
        assert_eq!(got.shape, want.shape, "shape of {name}");
        let mut worst = 0.0f32;
        for (i, (g, w)) in got.data.iter().zip(&want.data).enumerate() {
            let err = (g - w).abs() / w.abs().max(1.0);
            assert!(
                err <= tol,
                "{name}[{i}]: got {g}, PyTorch {w} (error {err:e} > {tol:e})"
            );
            worst = worst.max(err);
        }
        worst
    }
}

/// The fixture LM's sizes (scripts/make_fixtures.py).
fn lm_config() -> TransformerConfig {
    TransformerConfig {
        vocab_size: 32,
        context_length: 16,
        d_model: 16,
        n_layers: 2,
        n_heads: 2,
        d_ff: 48,
        rope_theta: ROPE_THETA,
    }
}

/// The fixture encoder-decoder's sizes (scripts/make_fixtures.py).
fn seq2seq_config() -> Seq2SeqConfig {
    Seq2SeqConfig {
        vocab_size: 18,
        context_length: 16,
        d_model: 16,
        n_heads: 2,
        n_encoder_layers: 2,
        n_decoder_layers: 2,
        d_ff: 48,
        rope_theta: ROPE_THETA,
        tie_embeddings: true,
        cross_attention_rope: false,
        // Chapter 6's modern architecture: pre-norm, RMSNorm, RoPE, SwiGLU.
        norm_position: Default::default(),
        norm: Default::default(),
        positions: Default::default(),
        ffn: Default::default(),
    }
}

#[test]
fn linear_matches_pytorch() {
    let f = fixture("linear");
    let (x, w) = (f.input("x"), &f.weights["linear.weight"]);
    let y = run_linear(
        &x.data,
        &w.data,
        x.shape[0],
        x.shape[1],
        w.shape[0],
        device(),
    )
    .unwrap();
    f.check("y", &y, 1e-5);
}

#[test]
fn embedding_matches_pytorch() {
    let f = fixture("embedding");
    let table = &f.weights["token_embeddings.weight"];
    let shape = [f.input("ids").shape[0], f.input("ids").shape[1]];
    let y = run_embedding(
        &f.ids("ids"),
        shape,
        &table.data,
        table.shape[0],
        table.shape[1],
        device(),
    )
    .unwrap();
    f.check("y", &y, 0.0); // a lookup is exact
}

#[test]
fn rms_norm_matches_pytorch() {
    let f = fixture("rms_norm");
    let x = f.input("x");
    let shape = [x.shape[0], x.shape[1], x.shape[2]];
    let y = run_norm(
        Norm::Rms,
        &x.data,
        shape,
        f.weight("ln.weight"),
        &[],
        device(),
    )
    .unwrap();
    f.check("y", &y, 1e-5);
}

#[test]
fn swiglu_matches_pytorch() {
    let f = fixture("swiglu");
    let x = f.input("x");
    let w = ["ffn.w1.weight", "ffn.w2.weight", "ffn.w3.weight"].map(|n| f.weight(n));
    let d_ff = f.weights["ffn.w1.weight"].shape[0];
    let y = run_ffn(
        Ffn::SwiGlu,
        &x.data,
        [x.shape[0], x.shape[1], x.shape[2]],
        &w,
        d_ff,
        device(),
    )
    .unwrap();
    f.check("y", &y, 1e-5);
}

#[test]
fn rope_matches_pytorch() {
    let f = fixture("rope");
    let x = f.input("x");
    let shape = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
    let y = run_rope(&x.data, shape, 16, ROPE_THETA, device()).unwrap();
    f.check("y", &y, 1e-5);
}

#[test]
fn sdpa_matches_pytorch_with_3d_and_4d_batch_dims() {
    for (name, four_d) in [("sdpa_3d", false), ("sdpa_4d", true)] {
        let f = fixture(name);
        let (q, k, v) = (f.input("q"), f.input("k"), f.input("v"));
        let r = q.shape.len();
        let (b, h) = if four_d {
            (q.shape[0], q.shape[1])
        } else {
            (q.shape[0], 1)
        };
        let sizes = [
            b,
            h,
            q.shape[r - 2],
            k.shape[r - 2],
            q.shape[r - 1],
            v.shape[r - 1],
        ];
        let got = run_sdpa(
            [&q.data, &k.data, &v.data],
            &f.flags("mask"),
            sizes,
            device(),
        )
        .unwrap();
        let want_shape = &f.outputs["y"].shape;
        let got = HostTensor::new(want_shape, got.data).unwrap(); // (b, 1, s, dv) -> (b, s, dv)
        f.check("y", &got, 1e-5);
    }
}

#[test]
fn causal_multi_head_attention_with_rope_matches_pytorch() {
    let f = fixture("mha_rope_causal");
    let x = f.input("x");
    let w = ["q_proj", "k_proj", "v_proj", "output_proj"]
        .map(|p| f.weight(&format!("attn.{p}.weight")));
    let mask = MaskSpec {
        causal: true,
        key_padding: None,
    };
    let shape = [x.shape[0], x.shape[1], x.shape[2]];
    let y = run_attention(
        &x.data,
        None,
        w,
        shape,
        4,
        &mask,
        Some(ROPE_THETA),
        device(),
    )
    .unwrap();
    f.check("y", &y, 1e-4);
}

#[test]
fn one_block_matches_pytorch() {
    let f = fixture("block");
    let x = f.input("x");
    let (b, s, d) = (x.shape[0], x.shape[1], x.shape[2]);
    let mut cx = Graph::new();
    let rope = Rope::new(&mut cx, 16, d / 4, ROPE_THETA).unwrap();
    let mut block = Block::new(&mut cx, [d, 4, 48], Some(rope)).unwrap();
    // The fixture names the block's weights as the LM's first block (`layers.0.ln1.weight`).
    let dict: StateDict = (f.weights.iter())
        .map(|(k, v)| (k.trim_start_matches("layers.0.").to_string(), v.clone()))
        .collect();
    params::load_state_dict(&mut cx, &block.params(), &dict).unwrap();
    let mut xt = tensor::input::<(Batch, Seq, DModel)>(&mut cx, "x");
    let causal = causal_mask::<Seq>(&mut cx).expand::<(Batch, Seq, Seq), _>();
    let mut y = block.forward(xt, causal).retrieve();
    device().compile(&mut cx, (&mut block, &mut xt, &mut y));
    tensor::set(xt, &[b, s, d], x.data.clone()).unwrap();
    tensor::execute(&mut cx).unwrap();
    f.check("y", &tensor::read(y).unwrap(), 1e-4);
}

#[test]
fn decoder_only_lm_logits_match_pytorch() {
    let f = fixture("lm");
    let cfg = lm_config();
    let shape = [f.input("ids").shape[0], f.input("ids").shape[1]];
    let logits = run_lm(&f.ids("ids"), shape, &f.weights, &cfg, device()).unwrap();
    let worst = f.check("logits", &logits, 1e-4);
    println!("LM logits: largest relative error vs PyTorch {worst:e}");
}

#[test]
fn lm_loads_a_torch_compile_state_dict() {
    // torch.compile prefixes every key with `_orig_mod.`: same weights, same logits.
    let f = fixture("lm");
    let prefixed: StateDict = f
        .weights
        .iter()
        .map(|(k, v)| (format!("_orig_mod.{k}"), v.clone()))
        .collect();
    let cfg = lm_config();
    let shape = [f.input("ids").shape[0], f.input("ids").shape[1]];
    let logits = run_lm(&f.ids("ids"), shape, &prefixed, &cfg, device()).unwrap();
    f.check("logits", &logits, 1e-4);
}

#[test]
fn encoder_decoder_logits_match_pytorch() {
    let f = fixture("seq2seq");
    let cfg = seq2seq_config();
    let (t, s) = (f.input("src").shape[1], f.input("tgt").shape[1]);
    let (src, keep, tgt) = (f.ids("src"), f.flags("src_keep"), f.ids("tgt"));
    let logits = run_seq2seq((&src, &keep, t), (&tgt, s), &f.weights, &cfg, device()).unwrap();
    let worst = f.check("logits", &logits, 1e-4);
    println!("encoder-decoder logits: largest relative error vs PyTorch {worst:e}");
}

/// The LM's loss and the gradients of all its parameters, from chapter 8's backward pass,
/// against PyTorch autograd (token-centric masked mean cross-entropy, padding masked).
#[test]
fn decoder_only_lm_gradients_match_pytorch() {
    let f = fixture("lm");
    let cfg = lm_config();
    let shape = [f.input("ids").shape[0], f.input("ids").shape[1]];
    let mut cx = Graph::new();
    let model = TransformerLm::new(&mut cx, &cfg).unwrap();
    params::load_state_dict(&mut cx, &model.params(), &f.weights).unwrap();
    let ids = tensor::input::<(Batch, Seq)>(&mut cx, "ids");
    let targets = tensor::input::<(Batch, Seq)>(&mut cx, "targets");
    let mask = tensor::input::<(Batch, Seq)>(&mut cx, "mask");
    model.set_ids(ids, shape, &f.ids("ids")).unwrap();
    tensor::set(targets, &shape, f.input("targets").data.clone()).unwrap();
    tensor::set(mask, &shape, f.input("mask").data.clone()).unwrap();
    let loss = lm_loss(&model, ids, targets, mask, Weighting::Token);
    let worst = f.check_loss_and_grads(&mut cx, model.params(), loss);
    println!("LM gradients: largest absolute error vs PyTorch {worst:e}");
}

/// The encoder-decoder's gradients (tied embeddings: the table's gradient sums the encoder,
/// decoder and output-projection uses) against PyTorch autograd.
#[test]
fn encoder_decoder_gradients_match_pytorch() {
    let f = fixture("seq2seq");
    let cfg = seq2seq_config();
    let (b, t, s) = (
        f.input("src").shape[0],
        f.input("src").shape[1],
        f.input("tgt").shape[1],
    );
    let mut cx = Graph::new();
    let model = Seq2Seq::new(&mut cx, &cfg).unwrap();
    params::load_state_dict(&mut cx, &model.params(), &f.weights).unwrap();
    let src = tensor::input::<(Batch, SrcSeq)>(&mut cx, "src");
    let keep = tensor::input::<(Batch, SrcSeq)>(&mut cx, "src_keep");
    let tgt_in = tensor::input::<(Batch, Seq)>(&mut cx, "tgt_in");
    let tgt_out = tensor::input::<(Batch, Seq)>(&mut cx, "tgt_out");
    let tgt_mask = tensor::input::<(Batch, Seq)>(&mut cx, "tgt_mask");
    model.set_ids(src, [b, t], &f.ids("src")).unwrap();
    tensor::set(keep, &[b, t], f.input("src_keep").data.clone()).unwrap();
    model.set_ids(tgt_in, [b, s], &f.ids("tgt")).unwrap();
    tensor::set(tgt_out, &[b, s], f.input("tgt_out").data.clone()).unwrap();
    tensor::set(tgt_mask, &[b, s], f.input("tgt_mask").data.clone()).unwrap();
    let loss = seq2seq_loss(
        &model,
        src,
        keep,
        tgt_in,
        tgt_out,
        tgt_mask,
        Weighting::Token,
    );
    let worst = f.check_loss_and_grads(&mut cx, model.params(), loss);
    println!("encoder-decoder gradients: largest absolute error vs PyTorch {worst:e}");
}

/// The original Transformer's sizes in scripts/make_fixtures.py (`seq2seq_original`): PyTorch's
/// own `nn.Transformer` (post-norm, LayerNorm, ReLU), sinusoids added to tied embeddings.
fn original_config() -> Seq2SeqConfig {
    Seq2SeqConfig::original_transformer(18, 16, 16, 2, 2, 48)
}

/// Chapter 6's original configuration against `torch.nn.Transformer(norm_first=False)` with its
/// linear biases held at zero: logits within 1e-4 relative (as for the modern encoder-decoder;
/// the sinusoid table adds < 4e-5 of f32 angle error, chapter 4).
#[test]
fn original_transformer_logits_match_pytorch_nn_transformer() {
    let f = fixture("seq2seq_original");
    let cfg = original_config();
    let (t, s) = (f.input("src").shape[1], f.input("tgt").shape[1]);
    let (src, keep, tgt) = (f.ids("src"), f.flags("src_keep"), f.ids("tgt"));
    let logits = run_seq2seq((&src, &keep, t), (&tgt, s), &f.weights, &cfg, device()).unwrap();
    let worst = f.check("logits", &logits, 1e-4);
    println!("original transformer logits: largest relative error vs PyTorch {worst:e}");
}

/// The original configuration's loss and gradients (LayerNorm gains and biases, ReLU FFNs, the
/// tied table through two sinusoid-shifted embeddings and the output projection) against
/// PyTorch autograd, with the same bounds as the modern model's gradients.
#[test]
fn original_transformer_gradients_match_pytorch() {
    let f = fixture("seq2seq_original");
    let cfg = original_config();
    let (b, t, s) = (
        f.input("src").shape[0],
        f.input("src").shape[1],
        f.input("tgt").shape[1],
    );
    let mut cx = Graph::new();
    let model = Seq2Seq::new(&mut cx, &cfg).unwrap();
    params::load_state_dict(&mut cx, &model.params(), &f.weights).unwrap();
    let src = tensor::input::<(Batch, SrcSeq)>(&mut cx, "src");
    let keep = tensor::input::<(Batch, SrcSeq)>(&mut cx, "src_keep");
    let tgt_in = tensor::input::<(Batch, Seq)>(&mut cx, "tgt_in");
    let tgt_out = tensor::input::<(Batch, Seq)>(&mut cx, "tgt_out");
    let tgt_mask = tensor::input::<(Batch, Seq)>(&mut cx, "tgt_mask");
    model.set_ids(src, [b, t], &f.ids("src")).unwrap();
    tensor::set(keep, &[b, t], f.input("src_keep").data.clone()).unwrap();
    model.set_ids(tgt_in, [b, s], &f.ids("tgt")).unwrap();
    tensor::set(tgt_out, &[b, s], f.input("tgt_out").data.clone()).unwrap();
    tensor::set(tgt_mask, &[b, s], f.input("tgt_mask").data.clone()).unwrap();
    let loss = seq2seq_loss(
        &model,
        src,
        keep,
        tgt_in,
        tgt_out,
        tgt_mask,
        Weighting::Token,
    );
    let worst = f.check_loss_and_grads(&mut cx, model.params(), loss);
    println!("original transformer gradients: largest absolute error vs PyTorch {worst:e}");
}
