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
    let mut emb = Embedding::<Vocab, DModel>::new(&mut cx, "token_embeddings.weight", 5, 4)?;
    let mut head = Linear::<DModel, Vocab>::new(&mut cx, "lm_head.weight", 4, 5)?;
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
    let mut norm = RmsNorm::<DModel>::new(&mut cx, "ln1.weight", 4)?;
    let mut x = tensor::input::<(Batch, Seq, DModel)>(&mut cx, "x");
    let mut y = norm.forward(x).retrieve();
    Device::Cpu.compile(&mut cx, (&mut norm.weight, &mut x, &mut y));
    save(&cx, &out, "ch02_rms_norm_compiled")?;
    Ok(())
}

fn save(cx: &Graph, dir: &Path, name: &str) -> Result<()> {
    let svg = viz::save(cx, &dir.join(name))?;
    println!("wrote {}", svg.display());
    Ok(())
}
