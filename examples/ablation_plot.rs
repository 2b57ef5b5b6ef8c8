//! Draw the pre-norm / post-norm × warmup ablation of `scripts/ablation_norm_warmup.sh`: the
//! training loss of each of the four copy-task runs, from their `losses.csv`.
//!
//! usage: `cargo run --example ablation_plot -- [runs/ablation] [book/src/figures]`
//! (writes `<runs folder name with "ablation" -> "ablation_norm_warmup">.svg`, e.g.
//! `ablation_norm_warmup.svg`, or `ablation_norm_warmup-lr0.03.svg` for `runs/ablation-lr0.03`;
//! the book's chapter 6 shows them).

use std::path::PathBuf;

use transformer_course::plot;

const RUNS: [(&str, &str); 4] = [
    ("prenorm_warmup50", "pre-norm, warmup 50"),
    ("prenorm_warmup0", "pre-norm, no warmup"),
    ("postnorm_warmup50", "post-norm, warmup 50"),
    ("postnorm_warmup0", "post-norm, no warmup"),
];

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let runs = PathBuf::from(args.next().unwrap_or_else(|| "runs/ablation".into()));
    let out = PathBuf::from(args.next().unwrap_or_else(|| "book/src/figures".into()));
    let mut series = Vec::new();
    for (name, label) in RUNS {
        let path = runs.join(name).join("losses.csv");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "{}: {e} (run scripts/ablation_norm_warmup.sh)",
                path.display()
            )
        })?;
        // `step,kind,loss` lines; the mean of each 10 steps keeps the four curves readable.
        let train: Vec<(f32, f32)> = text
            .lines()
            .filter_map(|l| {
                let mut f = l.split(',');
                let (step, kind, loss) = (f.next()?, f.next()?, f.next()?);
                (kind == "train").then(|| Some((step.parse().ok()?, loss.parse().ok()?)))?
            })
            .collect();
        let smoothed = train
            .chunks(10)
            .map(|c| {
                let n = c.len() as f32;
                (c[c.len() - 1].0, c.iter().map(|p| p.1).sum::<f32>() / n)
            })
            .collect();
        series.push(plot::Series::line(label, smoothed));
    }
    let folder = runs.file_name().map(|f| f.to_string_lossy().into_owned());
    let folder = folder.unwrap_or_else(|| "ablation".into());
    let title = match folder.split_once("-lr") {
        Some((_, lr)) => format!("copy task at peak lr {lr}: pre/post-norm, with/without warmup"),
        None => "copy task (peak lr 3e-3): pre/post-norm, with/without warmup".into(),
    };
    let svg = plot::line_chart_log_y(
        &title,
        "step",
        "training loss (mean of 10 steps, log scale)",
        &series,
    );
    let file = out.join(format!(
        "{}.svg",
        folder.replace("ablation", "ablation_norm_warmup")
    ));
    std::fs::write(&file, svg).map_err(|e| format!("{}: {e}", file.display()))?;
    println!("wrote {}", file.display());
    Ok(())
}
