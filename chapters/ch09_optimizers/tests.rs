use super::*;
use crate::ch08_autograd::backward;
use crate::testing::{assert_close, device, uniform};
use approx::assert_relative_eq;
use proptest::prelude::*;

type R = Dyn<'r'>;
type C = Dyn<'c'>;

#[test]
fn sgd_on_hand_values() {
    let mut theta = [1.0, -2.0];
    sgd_ref(&mut theta, &[0.5, -1.0], 0.1); // 1 - 0.05, -2 + 0.1
    assert_close(&theta, &[0.95, -1.9], 1e-7).unwrap();
    // Decaying SGD at t = 3: lr / sqrt(4) = lr / 2.
    sgd_decaying_ref(&mut theta, &[1.0, 1.0], 0.2, 3);
    assert_close(&theta, &[0.85, -2.0], 1e-7).unwrap();
}

#[test]
fn first_adamw_step_moves_each_weight_by_about_lr() {
    // Step 1 from m = v = 0: decay first, theta = 1 * (1 - lr wd) = 0.999; then m = 0.1 g,
    // v = 0.001 g^2, a_1 = lr sqrt(0.001) / 0.1, so the step is
    // a_1 * 0.1 g / (sqrt(0.001) |g| + eps) = lr * sign(g) (up to eps): 0.999 - 0.01 = 0.989.
    let c = AdamWConfig {
        weight_decay: 0.1,
        ..AdamWConfig::default()
    };
    let (mut theta, mut m, mut v) = ([1.0f32], [0.0f32], [0.0f32]);
    adamw_ref(&mut theta, &[4.0], &mut m, &mut v, 1, 0.01, &c);
    assert_relative_eq!(theta[0], 0.989, max_relative = 1e-6);
    assert_relative_eq!(m[0], 0.4, max_relative = 1e-6);
    // 1 - 0.999 is not exact in f32 (0.0010000467): 1e-4.
    assert_relative_eq!(v[0], 0.016, max_relative = 1e-4);
}

#[test]
fn invalid_hyperparameters_are_refused() {
    let err = AdamWConfig {
        beta2: 1.0,
        ..AdamWConfig::default()
    }
    .validate()
    .unwrap_err();
    assert!(err.to_string().contains("beta2"), "{err}");
}

/// A least-squares problem `mean((x W^T - y)^2)` with W (rows, cols) a parameter, AdamW on it,
/// compiled for the CPU. Returns the graph pieces the tests drive.
struct Problem {
    cx: Graph,
    w: Param,
    loss: NodeIndex,
    opt: AdamW,
}

fn problem(
    x: &[f32],
    y: &[f32],
    w0: &[f32],
    [n, rows, cols]: [usize; 3],
    config: AdamWConfig,
) -> Box<Problem> {
    let mut p = Box::new(Problem {
        cx: Graph::new(),
        w: Param {
            name: String::new(),
            id: NodeIndex::default(),
            shape: vec![],
        },
        loss: NodeIndex::default(),
        opt: AdamW {
            config,
            slots: vec![],
            neg_step_size: NodeIndex::default(),
            neg_decay: NodeIndex::default(),
            t: 1,
        },
    });
    let cx = &mut p.cx;
    let w = tensor::input::<(R, C)>(cx, "w");
    let xt = tensor::input::<(Dyn<'n'>, C)>(cx, "x");
    let yt = tensor::input::<(Dyn<'n'>, R)>(cx, "y");
    tensor::set(w, &[rows, cols], w0.to_vec()).unwrap();
    tensor::set(xt, &[n, cols], x.to_vec()).unwrap();
    tensor::set(yt, &[n, rows], y.to_vec()).unwrap();
    let diff = xt.matmul(w.permute::<(C, R), _>()) - yt; // (n, rows)
    let loss = (diff * diff).sum_reduce::<(), Axes2<0, 1>>() * (1.0 / (n * rows) as f32);
    let param = Param::of(w, &[rows, cols]);
    let grads = backward(cx, std::slice::from_ref(&param), loss.id).unwrap();
    let mut opt = AdamW::new(cx, &grads, config).unwrap();
    let mut loss_id = loss.id;
    cx.keep_tensors(loss_id);
    device().compile(cx, (&mut opt, &mut loss_id));
    p.w = opt.slots[0].param.clone();
    p.loss = loss_id;
    p.opt = opt;
    p
}

impl Problem {
    /// One training step: returns the loss before the update.
    fn step(&mut self, lr: f32) -> f32 {
        self.cx.tensors.remove(&(self.loss, 0));
        self.opt.prepare(&mut self.cx, lr);
        tensor::execute(&mut self.cx).unwrap();
        let loss = self.read(self.loss)[0];
        self.opt.advance(&mut self.cx);
        loss
    }
    fn read(&self, id: NodeIndex) -> Vec<f32> {
        crate::graph::tensor::read_node(&self.cx, id, "a kept value")
            .unwrap()
            .into_owned()
    }
}

/// 120 in-graph AdamW steps against `torch.optim.AdamW` (fixture from scripts/make_fixtures.py).
/// Same order as PyTorch (decay first); PyTorch adds eps after dividing sqrt(v) by its bias
/// correction, we before (CS336's formula, book chapter 9), a difference of eps (1 - sqrt(1 - b2^t)) / sqrt(v)
/// ~ 1e-8 relative per step. f32 rounding over 120 steps of order-1 weights stays below 2e-5:
/// 2e-5 relative to max(1, |w|). The other decay order is off by up to ~8e-4 here: the test tells them apart.
#[test]
fn adamw_matches_pytorch_over_120_steps() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/adamw.safetensors");
    let f = crate::graph::params::read_safetensors(&path).unwrap();
    let (lr, config) = (
        1e-2,
        AdamWConfig {
            weight_decay: 0.1,
            ..AdamWConfig::default()
        },
    );
    let mut p = problem(
        &f["in.x"].data,
        &f["in.y"].data,
        &f["in.w0"].data,
        [8, 3, 4],
        config,
    );
    let losses: Vec<f32> = (0..120).map(|_| p.step(lr)).collect();
    assert_close(&losses, &f["out.losses"].data, 2e-5).unwrap();
    assert_close(&p.read(p.w.id), &f["out.w"].data, 2e-5).unwrap();
    assert!(
        losses[119] < losses[0] * 0.5,
        "AdamW trains: {} -> {}",
        losses[0],
        losses[119]
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]
    /// In-graph AdamW == the plain-Rust step, for three steps on random problems: same
    /// gradients (from the graph's loss), same moments, same weights. 1e-5 relative.
    #[test]
    fn graph_steps_equal_reference_steps(n in 1usize..4, rows in 1usize..4, cols in 1usize..4, seed in any::<u64>(), wd in 0.0f32..0.2) {
        let mut rng = crate::graph::init::rng(seed);
        let (x, y, w0) = (uniform(&mut rng, n * cols, 1.0), uniform(&mut rng, n * rows, 1.0), uniform(&mut rng, rows * cols, 1.0));
        let (lr, config) = (0.05, AdamWConfig { weight_decay: wd, ..AdamWConfig::default() });
        let mut p = problem(&x, &y, &w0, [n, rows, cols], config);
        let (mut theta, mut m, mut v) = (w0.clone(), vec![0.0; w0.len()], vec![0.0; w0.len()]);
        for t in 1..=3u64 {
            // The reference needs the gradient at theta: d mean((x W^T - y)^2) / dW.
            let mut g = vec![0.0; rows * cols];
            for i in 0..n {
                for r in 0..rows {
                    let pred: f32 = (0..cols).map(|c| x[i * cols + c] * theta[r * cols + c]).sum();
                    let e = 2.0 * (pred - y[i * rows + r]) / (n * rows) as f32;
                    for c in 0..cols {
                        g[r * cols + c] += e * x[i * cols + c];
                    }
                }
            }
            adamw_ref(&mut theta, &g, &mut m, &mut v, t, lr, &config);
            p.step(lr);
            assert_close(&p.read(p.w.id), &theta, 1e-5)?;
            assert_close(&p.read(p.opt.slots[0].m), &m, 1e-5)?;
        }
    }
}

/// Book, chapter 9, exercise "Predict a first step": $\theta = 0.5$, $g = -0.02$, $\eta = 0.01$,
/// $\lambda = 0.01$. Decay: $0.5 (1 - 10^{-4}) = 0.49995$; then a step of $\eta$ against the
/// sign of $g$: $0.50995$. Tolerance $10^{-6}$: the $\varepsilon$ term changes the step by
/// $\eta\,\varepsilon / (\sqrt{0.001} \cdot 0.02) \approx 1.6 \cdot 10^{-10}$, and f32 rounding near
/// 0.5 is $3 \cdot 10^{-8}$.
#[test]
fn exercise_first_step_for_a_small_negative_gradient() {
    let c = AdamWConfig {
        weight_decay: 0.01,
        ..AdamWConfig::default()
    };
    let (mut theta, mut m, mut v) = (vec![0.5f32], vec![0.0f32], vec![0.0f32]);
    adamw_ref(&mut theta, &[-0.02], &mut m, &mut v, 1, 0.01, &c);
    assert!((theta[0] - 0.509_95).abs() < 1e-6, "{}", theta[0]);
}

/// Book, chapter 9, exercise "The step size over time": $a_t / \eta =
/// \sqrt{1 - 0.999^t} / (1 - 0.9^t)$ is 0.31623 at $t = 1$, falls to its minimum 0.15224 at
/// $t = 12$, and is back to 0.30857 at $t = 100$ and 0.79518 at $t = 1000$ (float64 by hand).
/// Tolerance $10^{-4}$ relative: `step_size` works in f32, where $1 - 0.999$ is already off by
/// $1.3 \cdot 10^{-5}$ relative.
#[test]
fn exercise_step_size_dips_then_rises() {
    let c = AdamWConfig::default();
    for (t, want) in [
        (1, 0.316_227_8),
        (10, 0.153_189_1),
        (12, 0.152_241_3),
        (100, 0.308_565_9),
        (1000, 0.795_175_8),
    ] {
        assert_relative_eq!(c.step_size(1.0, t), want, max_relative = 1e-4);
    }
    let ratios: Vec<f32> = (1..=100).map(|t| c.step_size(1.0, t)).collect();
    let lowest = (1..=100).min_by(|&a, &b| ratios[a - 1].total_cmp(&ratios[b - 1]));
    assert_eq!(lowest, Some(12));
}

/// Book, chapter 9, exercise "Multiply the loss by 1000": Adam's steps do not change, since
/// $m$ and $\sqrt v$ both scale by 1000. Five steps of three weights with gradients $g$ and
/// $1000\,g$ end within $10^{-6}$ of each other: the only difference is $\varepsilon$, relative
/// $\varepsilon / \sqrt{v} \approx 10^{-8} / 10^{-2}$ of a step of about $\eta = 0.01$, plus f32
/// rounding.
#[test]
fn exercise_adam_ignores_the_gradient_scale() {
    let c = AdamWConfig::default();
    let run = |scale: f32| {
        let (mut theta, mut m, mut v) = (vec![0.3f32, -1.0, 2.0], vec![0.0; 3], vec![0.0; 3]);
        for t in 1..=5 {
            // A gradient that changes with the weights: 2 (theta - 1), times the scale.
            let g: Vec<f32> = theta.iter().map(|w| scale * 2.0 * (w - 1.0)).collect();
            adamw_ref(&mut theta, &g, &mut m, &mut v, t, 0.01, &c);
        }
        theta
    };
    assert_close(&run(1.0), &run(1000.0), 1e-6).unwrap();
}

/// Book, chapter 9, exercise "Decay with no gradient": with $g = 0$ the Adam step is 0 and only
/// the decay acts: 1000 steps at $\eta = 2 \cdot 10^{-3}$, $\lambda = 0.1$ leave
/// $(1 - 2 \cdot 10^{-4})^{1000} = 0.818714$ of a weight (measured: 0.8187148). Tolerance
/// $10^{-5}$: 1000 f32 multiplications, each off by at most $6 \cdot 10^{-8}$ relative.
#[test]
fn exercise_weight_decay_alone_over_1000_steps() {
    let c = AdamWConfig {
        weight_decay: 0.1,
        ..AdamWConfig::default()
    };
    let (mut theta, mut m, mut v) = (vec![1.0f32], vec![0.0f32], vec![0.0f32]);
    for t in 1..=1000 {
        adamw_ref(&mut theta, &[0.0], &mut m, &mut v, t, 2e-3, &c);
    }
    assert!((theta[0] - 0.818_714).abs() < 1e-5, "{}", theta[0]);
}
