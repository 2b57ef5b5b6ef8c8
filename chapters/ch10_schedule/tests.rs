use super::*;
use crate::backend::Device;
use crate::graph::params::{read_safetensors, Param};
use crate::graph::tensor;
use crate::testing::assert_close;
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
    Device::Cpu.compile(&mut cx, (&mut clipped, &mut norm));
    tensor::execute(&mut cx).unwrap();
    let read = |id: NodeIndex| {
        cx.get_tensor_ref(id, 0)
            .unwrap()
            .data
            .as_any()
            .downcast_ref::<Vec<f32>>()
            .unwrap()
            .clone()
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
