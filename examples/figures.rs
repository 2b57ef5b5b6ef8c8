//! Draw the book's graph pictures (DOT + SVG) into `book/src/figures/`.
//!
//! Run with `cargo run --example figures`; CI runs it before building the book, so every
//! picture shows the graph the current code builds.

use std::path::{Path, PathBuf};

use transformer_course::prelude::*;

fn main() -> Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "book/src/figures".into()),
    );

    // Chapter 0: y = x W + c, as built and after the CPU passes.
    let mut cx = Graph::new();
    let mut g = affine(&mut cx);
    save(&cx, &out, "ch00_affine_built")?;
    Device::Cpu.compile(&mut cx, g.handles());
    save(&cx, &out, "ch00_affine_compiled")?;

    // Chapter 1: embedding lookup, then a linear layer back to the vocabulary.
    let mut cx = Graph::new();
    let mut emb = Embedding::<Vocab, DModel>::new(&mut cx, 5, 4)?;
    let mut head = Linear::<DModel, Vocab>::new(&mut cx, 4, 5)?;
    params::label_inputs(&mut cx, &emb, "token_embeddings");
    params::label_inputs(&mut cx, &head, "lm_head");
    let mut ids = tensor::input::<(Batch, Seq)>(&mut cx, "ids");
    let mut logits = head.forward(emb.forward(ids)).retrieve();
    save(&cx, &out, "ch01_embedding_linear_built")?;
    Device::Cpu.compile(
        &mut cx,
        (&mut emb.weight, &mut head.weight, &mut ids, &mut logits),
    );
    save(&cx, &out, "ch01_embedding_linear_compiled")?;

    // Chapter 2: RMSNorm.
    let mut cx = Graph::new();
    let mut norm = RmsNorm::<DModel>::new(&mut cx, 4)?;
    params::label_inputs(&mut cx, &norm, "ln1");
    let mut x = tensor::input::<(Batch, Seq, DModel)>(&mut cx, "x");
    let mut y = norm.forward(x).retrieve();
    Device::Cpu.compile(&mut cx, (&mut norm.weight, &mut x, &mut y));
    save(&cx, &out, "ch02_rms_norm_compiled")?;

    // Chapter 3: SwiGLU after compilation (three matmuls, the SiLU's primitives between).
    let mut cx = Graph::new();
    let mut ffn = SwiGlu::<DModel, DFf>::new(&mut cx, 4, 8)?;
    params::label_inputs(&mut cx, &ffn, "ffn");
    let mut x = tensor::input::<(Batch, Seq, DModel)>(&mut cx, "x");
    let mut y = ffn.forward(x).retrieve();
    Device::Cpu.compile(&mut cx, (&mut ffn, &mut x, &mut y));
    save(&cx, &out, "ch03_swiglu_compiled")?;
    let silu_curve = |f: fn(f32) -> f32| {
        (-60..=60)
            .map(|i| i as f32 / 10.0)
            .map(|x| (x, f(x)))
            .collect()
    };
    write(
        &out,
        "ch03_silu",
        &plot::line_chart(
            "SiLU(x) = x sigmoid(x) and ReLU(x)",
            "x",
            "activation",
            &[
                plot::Series::line("SiLU", silu_curve(silu_ref)),
                plot::Series::line("ReLU", silu_curve(|x| x.max(0.0))),
            ],
            false,
        ),
    )?;

    // Chapter 4: RoPE turns each pair on a circle, fast pairs first; dot products depend only
    // on the offset between query and key positions.
    let (d, seq) = (8, 24);
    let x: Vec<f32> = [1.0, 0.0].repeat(d / 2 * seq);
    let y = run_rope(&x, [1, 1, seq, d], seq, ROPE_THETA, Device::Cpu)?;
    let pairs: Vec<plot::Series> = (0..d / 2)
        .map(|k| {
            let pts = (0..seq)
                .map(|p| (y.data[p * d + 2 * k], y.data[p * d + 2 * k + 1]))
                .collect();
            plot::Series::dots(&format!("pair {k}"), pts)
        })
        .collect();
    write(
        &out,
        "ch04_rope_pairs",
        &plot::line_chart(
            "(1, 0) at positions 0..23, per pair (d = 8)",
            "x[2k]",
            "x[2k+1]",
            &pairs,
            true,
        ),
    )?;
    let mut rng = init::rng(4);
    let (q, k) = (
        init::trunc_normal(&mut rng, d, 1.0),
        init::trunc_normal(&mut rng, d, 1.0),
    );
    let rq = run_rope(&q.repeat(seq), [1, 1, seq, d], seq, ROPE_THETA, Device::Cpu)?.data;
    let rk = run_rope(&k.repeat(seq), [1, 1, seq, d], seq, ROPE_THETA, Device::Cpu)?.data;
    let dot = |i: usize, j: usize| (0..d).map(|c| rq[i * d + c] * rk[j * d + c]).sum::<f32>();
    let series: Vec<plot::Series> = [0usize, 5, 10]
        .iter()
        .map(|&j| {
            plot::Series::line(
                &format!("key at {j}"),
                (j..seq).map(|i| ((i - j) as f32, dot(i, j))).collect(),
            )
        })
        .collect();
    write(
        &out,
        "ch04_rope_relative",
        &plot::line_chart(
            "q . k after RoPE against the offset i - j",
            "offset i - j",
            "q . k",
            &series,
            false,
        ),
    )?;

    // Chapter 5: attention weights of one head, causal and with the last two keys padded.
    let (b, s, dm, heads) = (1, 8, 8, 2);
    let mut rng = init::rng(5);
    let w: Vec<Vec<f32>> = (0..4)
        .map(|_| init::trunc_normal(&mut rng, dm * dm, 0.6))
        .collect();
    let x = init::trunc_normal(&mut rng, b * s * dm, 1.0);
    let ws = [&w[0][..], &w[1], &w[2], &w[3]];
    for (name, mask) in [
        (
            "ch05_attention_causal",
            MaskSpec {
                causal: true,
                key_padding: None,
            },
        ),
        (
            "ch05_attention_padded",
            MaskSpec {
                causal: false,
                key_padding: Some((0..s).map(|j| j < s - 2).collect()),
            },
        ),
    ] {
        let p = run_attention_weights(
            &x,
            ws,
            [b, s, dm],
            heads,
            &mask,
            Some(ROPE_THETA),
            Device::Cpu,
        )?;
        let title = if mask.causal {
            "causal: query i sees keys j <= i"
        } else {
            "padding: keys 6 and 7 are masked"
        };
        write(
            &out,
            name,
            &plot::heatmap(
                title,
                &p.data[..s * s],
                s,
                s,
                "query position i",
                "key position j",
            ),
        )?;
    }

    // Chapter 10: the schedule of chapter 11's copy-task run, and of the CS336 test.
    let copy = copy_task_config().schedule;
    let cs336 = CosineSchedule {
        lr_max: 3e-3,
        lr_min: 3e-4,
        warmup: 100,
        cosine_end: 400,
    };
    let curve = |s: CosineSchedule| (0..=600).map(|t| (t as f32, s.lr(t) * 1e3)).collect();
    write(
        &out,
        "ch10_schedule",
        &plot::line_chart(
            "warmup + cosine: learning rate per step",
            "step t",
            "lr (x 1e-3)",
            &[
                plot::Series::line("copy task: warmup 50, cosine to 600", curve(copy)),
                plot::Series::line("warmup 100, cosine to 400, then floor", curve(cs336)),
            ],
            false,
        ),
    )?;

    // Chapter 8: a forward graph, then the same graph with its backward pass added.
    let mut cx = Graph::new();
    let lin = Linear::<In, Out>::new(&mut cx, 3, 2)?;
    params::label_inputs(&mut cx, &lin, "w");
    let x = tensor::input::<(Rows, In)>(&mut cx, "x");
    let loss = (lin.forward(x).exp() * 0.5).sum_reduce::<(), Axes2<0, 1>>();
    save(&cx, &out, "ch08_forward")?;
    let mut grads = backward(&mut cx, &lin.params(), loss.id)?;
    save(&cx, &out, "ch08_forward_backward")?;
    let mut loss_id = loss.id;
    Device::Cpu.compile(&mut cx, (&mut grads, &mut loss_id));
    save(&cx, &out, "ch08_forward_backward_compiled")?;
    Ok(())
}

fn write(dir: &Path, name: &str, svg: &str) -> Result<()> {
    let path = dir.join(format!("{name}.svg"));
    transformer_course::graph::files::write_atomic(&path, svg.as_bytes())?;
    println!("wrote {}", path.display());
    Ok(())
}

fn save(cx: &Graph, dir: &Path, name: &str) -> Result<()> {
    let svg = viz::save(cx, &dir.join(name))?;
    println!("wrote {}", svg.display());
    Ok(())
}
