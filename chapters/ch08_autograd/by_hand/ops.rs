//! The composite backward rules of single layers, as loops over flat row-major arrays. Each
//! takes the upstream gradient `dy` (shaped like the forward's output) and what the forward
//! read, and returns the gradient of every input; the forward is the crate's own reference
//! loop (`linear_ref`, `softmax_ref`, `rms_norm_ref`, ...) or, for attention, a copy of
//! `sdpa_ref` that keeps its probabilities.

use crate::ch01_linear::linear_ref;
use crate::ch03_feed_forward::silu_ref;
use crate::ch04_rope::rope_angle;
use crate::ch05_attention::softmax_ref;

/// `a · b` of two equally long slices.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

// ANCHOR: linear_backward
/// Backward of `y = x W^T` (chapter 1's `linear_ref`): `x` (n, d_in), `w` (d_out, d_in),
/// `dy` (n, d_out) -> `dx = dy W` (n, d_in) and `dW = dy^T x` (d_out, d_in).
/// Book: [the linear layer](../../../book/ch08_autograd.html#linear-layers-and-residuals).
pub fn linear_backward(
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    [n, d_in, d_out]: [usize; 3],
) -> (Vec<f32>, Vec<f32>) {
    // ANCHOR: learn_linear_backward ch08: dx = dy W (n, d_in) and dW = dy^T x (d_out, d_in); dy (n, d_out), x (n, d_in), w (d_out, d_in)
    let mut dx = vec![0.0; n * d_in];
    let mut dw = vec![0.0; d_out * d_in];
    for i in 0..n {
        for o in 0..d_out {
            // y[i, o] = sum_k x[i, k] w[o, k]: its gradient flows to both factors.
            let g = dy[i * d_out + o];
            for k in 0..d_in {
                dx[i * d_in + k] += g * w[o * d_in + k];
                dw[o * d_in + k] += g * x[i * d_in + k];
            }
        }
    }
    (dx, dw)
    // ANCHOR_END: learn_linear_backward
}
// ANCHOR_END: linear_backward

// ANCHOR: softmax_backward
/// Backward of one softmax row `p = softmax(s)` (chapter 5's `softmax_ref`): from `dp` to
/// `ds = p ⊙ (dp - (dp · p))`, without building the (len, len) Jacobian.
/// Book: [softmax](../../../book/ch08_autograd.html#softmax).
pub fn softmax_backward(p: &[f32], dp: &[f32]) -> Vec<f32> {
    // ANCHOR: learn_softmax_backward ch08: ds = p * (dp - (dp . p)) elementwise, no Jacobian; p, dp (len) -> (len)
    let mean_dp = dot(p, dp); // the p-weighted mean of dp
    p.iter().zip(dp).map(|(p, g)| p * (g - mean_dp)).collect()
    // ANCHOR_END: learn_softmax_backward
}
// ANCHOR_END: softmax_backward

// ANCHOR: rms_norm_backward
/// Backward of RMSNorm `y = g ⊙ x / rms(x)`, `rms = sqrt(mean(x^2) + eps)` (chapter 2's
/// `rms_norm_ref`), over rows of length `d`: `dx = (g ⊙ dy) / rms - x mean(x ⊙ g ⊙ dy) / rms^3`
/// per row, and `dg` = the sum over rows of `dy ⊙ x / rms`.
/// Book: [RMSNorm and LayerNorm](../../../book/ch08_autograd.html#rmsnorm-and-layernorm).
pub fn rms_norm_backward(
    dy: &[f32],
    x: &[f32],
    g: &[f32],
    d: usize,
    eps: f32,
) -> (Vec<f32>, Vec<f32>) {
    // ANCHOR: learn_rms_norm_backward ch08: per row, rms = sqrt(mean(x^2) + eps): dx = g dy / rms - x mean(x g dy) / rms^3; dg (d) = sum over rows of dy x / rms; x, dy (rows, d)
    let mut dx = vec![0.0; x.len()];
    let mut dg = vec![0.0; d];
    for ((x, dy), dx) in x.chunks(d).zip(dy.chunks(d)).zip(dx.chunks_mut(d)) {
        let rms = (dot(x, x) / d as f32 + eps).sqrt();
        // mean(x ⊙ g ⊙ dy): how much of the gradient points along x, which only rescales rms.
        let along_x = (0..d).map(|i| x[i] * g[i] * dy[i]).sum::<f32>() / d as f32;
        for i in 0..d {
            dx[i] = g[i] * dy[i] / rms - x[i] * along_x / (rms * rms * rms);
            dg[i] += dy[i] * x[i] / rms;
        }
    }
    (dx, dg)
    // ANCHOR_END: learn_rms_norm_backward
}
// ANCHOR_END: rms_norm_backward

// ANCHOR: layer_norm_backward
/// Backward of LayerNorm `y = gamma ⊙ x̂ + beta`, `x̂ = (x - mean) / sqrt(var + eps)`
/// (chapter 2's `layer_norm_ref`), over rows of length `d`. With `ĝ = gamma ⊙ dy`:
/// `dx = (ĝ - mean(ĝ) - x̂ mean(ĝ ⊙ x̂)) / sqrt(var + eps)`; `dgamma` and `dbeta` are the sums
/// over rows of `dy ⊙ x̂` and `dy`. Returns `(dx, dgamma, dbeta)`.
/// Book: [RMSNorm and LayerNorm](../../../book/ch08_autograd.html#rmsnorm-and-layernorm).
pub fn layer_norm_backward(
    dy: &[f32],
    x: &[f32],
    gamma: &[f32],
    d: usize,
    eps: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    // ANCHOR: learn_layer_norm_backward ch08: per row, x_hat = (x - mean) / sqrt(var + eps), g_hat = gamma dy: dx = (g_hat - mean(g_hat) - x_hat mean(g_hat x_hat)) / sqrt(var + eps); dgamma, dbeta (d) = sums over rows of dy x_hat and dy
    let mut dx = vec![0.0; x.len()];
    let (mut dgamma, mut dbeta) = (vec![0.0; d], vec![0.0; d]);
    for ((x, dy), dx) in x.chunks(d).zip(dy.chunks(d)).zip(dx.chunks_mut(d)) {
        let mean = x.iter().sum::<f32>() / d as f32;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
        let inv_std = 1.0 / (var + eps).sqrt();
        let x_hat: Vec<f32> = x.iter().map(|v| (v - mean) * inv_std).collect();
        let g_hat: Vec<f32> = gamma.iter().zip(dy).map(|(g, dy)| g * dy).collect();
        // Subtracting the mean removes the gradient's mean; dividing by the std removes its
        // component along x̂.
        let mean_g = g_hat.iter().sum::<f32>() / d as f32;
        let mean_gx = dot(&g_hat, &x_hat) / d as f32;
        for i in 0..d {
            dx[i] = (g_hat[i] - mean_g - x_hat[i] * mean_gx) * inv_std;
            dgamma[i] += dy[i] * x_hat[i];
            dbeta[i] += dy[i];
        }
    }
    (dx, dgamma, dbeta)
    // ANCHOR_END: learn_layer_norm_backward
}
// ANCHOR_END: layer_norm_backward

// ANCHOR: swiglu_backward
/// `silu'(a) = σ(a) (1 + a (1 - σ(a)))`, the derivative of chapter 3's `silu_ref`.
/// Book: [SwiGLU](../../../book/ch08_autograd.html#swiglu-and-rope).
pub fn silu_grad(a: f32) -> f32 {
    // ANCHOR: learn_silu_grad ch08: sigma(a) (1 + a (1 - sigma(a))) with sigma(a) = 1 / (1 + e^-a)
    let sigmoid = 1.0 / (1.0 + (-a).exp());
    sigmoid * (1.0 + a * (1.0 - sigmoid))
    // ANCHOR_END: learn_silu_grad
}

/// Backward of SwiGLU `y = (silu(x W1^T) ⊙ x W3^T) W2^T` (chapter 3's `swiglu_ref`):
/// `x` (n, d_model), `dy` (n, d_model) -> `dx` (n, d_model) and `[dW1, dW2, dW3]`. The hidden
/// activations are recomputed from `x` (two matrix products) rather than stored.
/// Book: [SwiGLU](../../../book/ch08_autograd.html#swiglu-and-rope).
pub fn swiglu_backward(
    dy: &[f32],
    x: &[f32],
    [w1, w2, w3]: [&[f32]; 3],
    n: usize,
    d_model: usize,
    d_ff: usize,
) -> (Vec<f32>, [Vec<f32>; 3]) {
    // ANCHOR: learn_swiglu_backward ch08: recompute gate = x W1^T, value = x W3^T (n, d_ff), hidden = silu(gate) value; linear_backward through W2, d_gate = d_hidden value silu_grad(gate), d_value = d_hidden silu(gate), linear_backward through W1 and W3; dx = the sum of both
    let gate = linear_ref(x, w1, n, d_model, d_ff); // (n, d_ff)
    let value = linear_ref(x, w3, n, d_model, d_ff); // (n, d_ff)
    let hidden: Vec<f32> = gate
        .iter()
        .zip(&value)
        .map(|(&a, &v)| silu_ref(a) * v)
        .collect();
    let (d_hidden, dw2) = linear_backward(dy, &hidden, w2, [n, d_ff, d_model]);
    // hidden = silu(gate) ⊙ value: a product, so each factor gets d_hidden times the other.
    let d_gate: Vec<f32> = (0..n * d_ff)
        .map(|i| d_hidden[i] * value[i] * silu_grad(gate[i]))
        .collect();
    let d_value: Vec<f32> = (0..n * d_ff)
        .map(|i| d_hidden[i] * silu_ref(gate[i]))
        .collect();
    let (dx_gate, dw1) = linear_backward(&d_gate, x, w1, [n, d_model, d_ff]);
    let (dx_value, dw3) = linear_backward(&d_value, x, w3, [n, d_model, d_ff]);
    // x fed both projections: its gradients add up.
    let dx = dx_gate.iter().zip(&dx_value).map(|(a, b)| a + b).collect();
    (dx, [dw1, dw2, dw3])
    // ANCHOR_END: learn_swiglu_backward
}
// ANCHOR_END: swiglu_backward

// ANCHOR: rope_backward
/// Backward of chapter 4's `rope_ref`: each pair was turned by `angle`, an orthogonal map, so
/// its gradient is turned back by `-angle`: `(dy0 cos + dy1 sin, -dy0 sin + dy1 cos)`.
/// Book: [RoPE](../../../book/ch08_autograd.html#swiglu-and-rope).
pub fn rope_backward(dy: &[f32], positions: &[usize], d: usize, theta: f32) -> Vec<f32> {
    // ANCHOR: learn_rope_backward ch08: turn each pair (2k, 2k+1) of dy back by -rope_angle(pos, k, d, theta): (g0 cos + g1 sin, -g0 sin + g1 cos); dy (rows, d) -> dx (rows, d)
    let mut dx = dy.to_vec();
    for (row, &pos) in dx.chunks_mut(d).zip(positions) {
        for k in 0..d / 2 {
            let (sin, cos) = rope_angle(pos, k, d, theta).sin_cos();
            let (g0, g1) = (row[2 * k], row[2 * k + 1]);
            row[2 * k] = g0 * cos + g1 * sin;
            row[2 * k + 1] = -g0 * sin + g1 * cos;
        }
    }
    dx
    // ANCHOR_END: learn_rope_backward
}
// ANCHOR_END: rope_backward

// ANCHOR: attention_forward
/// Chapter 5's `sdpa_ref`, step for step (the same numbers), that also returns the attention
/// probabilities `p` (n, s, t), 0 where masked, for the backward pass. `q` (n, s, dk),
/// `k` (n, t, dk), `v` (n, t, dv), `mask` (n, s, t) with true = may attend -> (n, s, dv).
/// Book: [attention](../../../book/ch08_autograd.html#attention).
pub fn attention_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &[bool],
    [n, s, t, dk, dv]: [usize; 5],
) -> (Vec<f32>, Vec<f32>) {
    // ANCHOR: learn_attention_forward ch08: sdpa_ref step for step, also returning probs (n, s, t) = softmax of q . k / sqrt(dk) over the allowed keys, 0 where masked -> (out (n, s, dv), probs)
    let scale = 1.0 / (dk as f32).sqrt();
    let (mut out, mut probs) = (vec![0.0; n * s * dv], vec![0.0; n * s * t]);
    for b in 0..n {
        for i in 0..s {
            let row = b * s + i;
            let allowed: Vec<usize> = (0..t).filter(|&j| mask[row * t + j]).collect();
            let scores: Vec<f32> = allowed
                .iter()
                .map(|&j| dot(&q[row * dk..][..dk], &k[(b * t + j) * dk..][..dk]) * scale)
                .collect();
            for (&j, p) in allowed.iter().zip(softmax_ref(&scores)) {
                probs[row * t + j] = p;
                for c in 0..dv {
                    out[row * dv + c] += p * v[(b * t + j) * dv + c];
                }
            }
        }
    }
    (out, probs)
    // ANCHOR_END: learn_attention_forward
}
// ANCHOR_END: attention_forward

// ANCHOR: attention_backward
/// Backward of `O = P V`, `P = softmax(S)`, `S = Q K^T / sqrt(dk) + mask`, from `d_out`
/// (n, s, dv) and the forward's `probs` -> `(dq, dk, dv)`. Per query row `i`:
/// `dP_i = dO_i V^T`, `dV += P_i^T dO_i`, `dS_i = softmax_backward(P_i, dP_i)`,
/// `dQ_i = dS_i K / sqrt(dk)`, `dK += dS_i^T Q_i / sqrt(dk)`. Masked entries have `P = 0`, so
/// their `dS` is 0: no mask is needed here.
/// Book: [attention](../../../book/ch08_autograd.html#attention).
pub fn attention_backward(
    d_out: &[f32],
    [q, k, v, probs]: [&[f32]; 4],
    [n, s, t, dk, dv]: [usize; 5],
) -> [Vec<f32>; 3] {
    // ANCHOR: learn_attention_backward ch08: per query row: dP = dO V^T, dV += P^T dO, dS = softmax_backward(P, dP), dQ = dS K / sqrt(dk), dK += dS^T Q / sqrt(dk) -> [dq (n, s, dk), dk (n, t, dk), dv (n, t, dv)]
    let scale = 1.0 / (dk as f32).sqrt();
    let (mut dq, mut dkey, mut dval) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    for b in 0..n {
        for i in 0..s {
            let row = b * s + i;
            let p = &probs[row * t..][..t];
            let d_o = &d_out[row * dv..][..dv];
            // O_i = sum_j P_ij V_j: dP_ij = dO_i · V_j and dV_j += P_ij dO_i.
            let dp: Vec<f32> = (0..t)
                .map(|j| dot(d_o, &v[(b * t + j) * dv..][..dv]))
                .collect();
            for j in 0..t {
                for c in 0..dv {
                    dval[(b * t + j) * dv + c] += p[j] * d_o[c];
                }
            }
            let ds = softmax_backward(p, &dp);
            // S_ij = Q_i · K_j / sqrt(dk): the gradient flows to both factors.
            for (j, ds) in ds.iter().enumerate() {
                for c in 0..dk {
                    dq[row * dk + c] += ds * k[(b * t + j) * dk + c] * scale;
                    dkey[(b * t + j) * dk + c] += ds * q[row * dk + c] * scale;
                }
            }
        }
    }
    [dq, dkey, dval]
    // ANCHOR_END: learn_attention_backward
}
// ANCHOR_END: attention_backward
