use super::*;
use crate::graph::params::{read_safetensors, Param};
use crate::graph::tensor;
use crate::testing::assert_close;
use crate::testing::device;
use proptest::prelude::*;

/// Every step of the CS336 assignment's schedule test (lr_max 1, lr_min 0.1, warmup 7,
/// cosine end 21), computed independently in Python float64 and rounded to 7 digits: linear
/// warmup 0, 1/7, ... 1 at t = 7; the cosine's midpoint t = 14 gives (1 + 0.1) / 2 = 0.55;
/// t >= 21 stays at 0.1 (endpoints included).
#[test]
fn cosine_schedule_at_every_step() {
    let s = CosineSchedule {
        lr_max: 1.0,
        lr_min: 0.1,
        warmup: 7,
        cosine_end: 21,
    };
    let want = [
        0.0,
        0.142_857_1,
        0.285_714_3,
        0.428_571_4,
        0.571_428_6,
        0.714_285_7,
        0.857_142_9,
        1.0,
        0.988_717_6,
        0.955_436,
        0.901_824_2,
        0.830_570_4,
        0.745_247_7,
        0.650_134_4,
        0.55,
        0.449_865_6,
        0.354_752_3,
        0.269_429_6,
        0.198_175_8,
        0.144_564,
        0.111_282_4,
        0.1,
        0.1,
        0.1,
        0.1,
    ];
    let got: Vec<f32> = (0..25).map(|t| s.lr(t)).collect();
    assert_close(&got, &want, 1e-6).unwrap();
    // Each bad field is named, with its value (no struct dump).
    for (bad, needle) in [
        (
            CosineSchedule { warmup: 30, ..s },
            "warmup (30) must not exceed cosine_end (21)",
        ),
        (
            CosineSchedule { lr_max: -1.0, ..s },
            "(lr_max, --lr) must be positive and finite; got -1",
        ),
        (
            CosineSchedule { lr_min: 2.0, ..s },
            "lr_min must be between 0 and lr_max (1); got 2",
        ),
    ] {
        let err = bad.validate().unwrap_err().to_string();
        assert!(
            err.contains(needle) && !err.contains("CosineSchedule"),
            "{err}"
        );
    }
}

/// Clip the gradients of three parameters in the graph; returns (norm, clipped gradients).
fn run_clip(grads: &[Vec<f32>], shapes: &[Vec<usize>], max_norm: f32) -> (f32, Vec<Vec<f32>>) {
    let mut cx = Graph::new();
    let mut gs = Vec::new();
    for (i, (g, shape)) in grads.iter().zip(shapes).enumerate() {
        let t = tensor::input::<(Dyn<'x'>,)>(&mut cx, &format!("g{i}"));
        cx.set_tensor(t.id, 0, Tensor::new(g.clone()));
        cx.keep_tensors(t.id);
        let param = Param {
            name: format!("p{i}"),
            id: t.id,
            shape: shape.clone(),
        };
        gs.push(Gradient { param, grad: t.id });
    }
    let (mut clipped, mut norm) = clip_grad_norm(&mut cx, &gs, max_norm);
    device().compile(&mut cx, (&mut clipped, &mut norm));
    tensor::execute(&mut cx).unwrap();
    let read = |id: NodeIndex| {
        tensor::read_node(&cx, id, "a kept value")
            .unwrap()
            .into_owned()
    };
    (
        read(norm)[0],
        clipped.iter().map(|g| read(g.grad)).collect(),
    )
}

/// Against `torch.nn.utils.clip_grad_norm_` (fixtures from scripts/make_fixtures.py), once
/// clipping (norm ~ 7 > 1) and once not (max 100). A sum of 21 squares in f32 vs PyTorch's
/// order: 1e-5 relative.
#[test]
fn clipping_matches_pytorch() {
    for (name, max_norm) in [("clip", 1.0), ("clip_small", 100.0)] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/fixtures/{name}.safetensors"));
        let f = read_safetensors(&path).unwrap();
        let grads: Vec<Vec<f32>> = (0..3)
            .map(|i| f[&format!("in.g{i}")].data.clone())
            .collect();
        let shapes: Vec<Vec<usize>> = (0..3)
            .map(|i| f[&format!("in.g{i}")].shape.clone())
            .collect();
        let (norm, clipped) = run_clip(&grads, &shapes, max_norm);
        assert_close(&[norm], &f["out.norm"].data, 1e-5).unwrap();
        for (i, c) in clipped.iter().enumerate() {
            assert_close(c, &f[&format!("out.g{i}")].data, 1e-5).unwrap();
        }
        let mut reference = grads.clone();
        clip_grad_norm_ref(&mut reference, max_norm);
        assert_close(&reference.concat(), &clipped.concat(), 1e-6).unwrap();
    }
}

/// A threshold as large as f32 allows never clips, and must not overflow on the way: the
/// formula's unused branch once computed `f32::MAX / 1e-6 = inf` and `0 * inf = NaN`. Tiny
/// gradients (norm 5e-7 < eps) make the unused branch as large as it gets.
#[test]
fn the_largest_threshold_leaves_gradients_unchanged() {
    for grads in [
        vec![vec![3.0, 4.0], vec![12.0]],
        vec![vec![3e-7, 4e-7], vec![0.0]],
    ] {
        let shapes = vec![vec![2], vec![1]];
        let (norm, clipped) = run_clip(&grads, &shapes, f32::MAX);
        assert!(norm.is_finite(), "{norm}");
        assert_eq!(clipped, grads); // scale exactly 1: bit-identical
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// Graph clipping == the plain-Rust reference, and the clipped norm is min(norm, M).
    #[test]
    fn graph_clipping_equals_reference(a in prop::collection::vec(-3.0f32..3.0, 1..8), b in prop::collection::vec(-3.0f32..3.0, 1..8), max_norm in 0.1f32..6.0) {
        let grads = vec![a.clone(), b.clone()];
        let shapes = vec![vec![a.len()], vec![b.len()]];
        let (norm, clipped) = run_clip(&grads, &shapes, max_norm);
        let mut reference = grads.clone();
        let ref_norm = clip_grad_norm_ref(&mut reference, max_norm);
        assert_close(&[norm], &[ref_norm], 1e-5)?;
        assert_close(&clipped.concat(), &reference.concat(), 1e-5)?;
        let after = clipped.concat().iter().map(|g| g * g).sum::<f32>().sqrt();
        prop_assert!(after <= max_norm.max(norm) * (1.0 + 1e-5) && (after - norm.min(max_norm)).abs() < 1e-4 * max_norm.max(1.0));
    }
}

/// Book, chapter 10, exercise "Read the copy task's schedule": `copy_task_config` (peak
/// $3 \cdot 10^{-3}$ after 50 warmup steps, cosine to $3 \cdot 10^{-4}$ at step 600). The trainer
/// feeds steps 1 to 600. Tolerance $10^{-9}$: f32 values near $10^{-3}$ are spaced about
/// $10^{-10}$ apart.
#[test]
fn exercise_copy_task_schedule_values() {
    let s = crate::ch11_training::copy_task_config().schedule;
    for (t, want) in [
        (0, 0.0),
        (1, 6e-5), // 3e-3 / 50
        (25, 1.5e-3),
        (50, 3e-3),
        (325, 1.65e-3), // the midpoint: (3e-3 + 3e-4) / 2
        (600, 3e-4),
        (601, 3e-4),
    ] {
        assert!((s.lr(t) - want).abs() < 1e-9, "lr({t}) = {}", s.lr(t));
    }
}

/// Book, chapter 10, exercise "A quarter of the way down": a quarter through the cosine the
/// factor is $\frac12 (1 + \cos\frac\pi4) = 0.853553$; for the book's LM (`book_lm_config`:
/// $2 \cdot 10^{-3}$ to $2 \cdot 10^{-4}$, steps 100 to 1000) that is step 325, at
/// $2 \cdot 10^{-4} + 0.853553 \cdot 1.8 \cdot 10^{-3} = 1.736396 \cdot 10^{-3}$. Tolerance
/// $10^{-9}$, as above.
#[test]
fn exercise_a_quarter_of_the_way_down_the_cosine() {
    let s = crate::ch11_training::book_lm_config().schedule;
    assert!((s.lr(325) - 1.736_396e-3).abs() < 1e-9, "{}", s.lr(325));
}

/// Book, chapter 10, exercise "How far does weight decay pull?": over the book LM's 1000 steps
/// the learning rates add up to $\sum_t \eta_t = 1.0901$, and a weight with no gradient keeps
/// $\prod_t (1 - 0.1\,\eta_t) = 0.89671$ of its value, about $e^{-0.1 \cdot 1.0901}$.
/// Tolerances $10^{-4}$ (the sum: 1000 terms in f64, each an f32) and $10^{-5}$ (the product).
#[test]
fn exercise_weight_decay_over_the_book_lm_run() {
    let config = crate::ch11_training::book_lm_config();
    let lrs: Vec<f64> = (1..=config.steps)
        .map(|t| config.schedule.lr(t) as f64)
        .collect();
    let sum: f64 = lrs.iter().sum();
    let kept: f64 = lrs
        .iter()
        .map(|lr| 1.0 - config.adamw.weight_decay as f64 * lr)
        .product();
    assert!((sum - 1.0901).abs() < 1e-4, "{sum}");
    assert!((kept - 0.89671).abs() < 1e-5, "{kept}");
}

/// Book, chapter 10, exercise "Clipping and Adam's first step": gradients (3, 4) and (12),
/// clipped at $M = 1$ to $(0.2308, 0.3077, 0.9231)$, give the same first AdamW step as the raw
/// ones, $\eta\,\mathrm{sign}(g)$. Tolerance $10^{-7}$: the only difference is $\varepsilon$
/// against $\sqrt{0.001}\,|g| \geq 0.0073$, a relative $1.4 \cdot 10^{-6}$ of a step of $10^{-2}$.
#[test]
fn exercise_clipping_does_not_change_adams_first_step() {
    use crate::ch09_optimizers::{adamw_ref, AdamWConfig};
    let raw = vec![vec![3.0f32, 4.0], vec![12.0]];
    let mut clipped = raw.clone();
    assert_eq!(clip_grad_norm_ref(&mut clipped, 1.0), 13.0);
    assert_close(
        &clipped.concat(),
        &[0.230_769_2, 0.307_692_3, 0.923_076_9],
        1e-6,
    )
    .unwrap();
    let c = AdamWConfig::default();
    let first_step = |g: &[f32]| {
        let (mut theta, mut m, mut v) = (vec![1.0f32; 3], vec![0.0; 3], vec![0.0; 3]);
        adamw_ref(&mut theta, g, &mut m, &mut v, 1, 0.01, &c);
        theta
    };
    assert_close(
        &first_step(&raw.concat()),
        &first_step(&clipped.concat()),
        1e-7,
    )
    .unwrap();
}
