//! Small, dependency-free SVG plots for the book and the notebooks: line charts (also used as
//! scatter plots) and heat maps. [`show`] displays an SVG inline in an evcxr notebook;
//! [`crate::graph::files::write_atomic`] saves it for the book.

use std::fmt::Write;

const W: f32 = 480.0;
const H: f32 = 320.0;
const MARGIN: f32 = 48.0;
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
];

/// One named series of (x, y) points.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f32, f32)>,
    /// Draw markers at the points instead of a line through them.
    pub markers: bool,
}

impl Series {
    /// A line through `points`.
    pub fn line(name: &str, points: Vec<(f32, f32)>) -> Self {
        Self {
            name: name.into(),
            points,
            markers: false,
        }
    }

    /// Dots at `points`.
    pub fn dots(name: &str, points: Vec<(f32, f32)>) -> Self {
        Self {
            name: name.into(),
            points,
            markers: true,
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A finite (min, max) over `values`, widened when empty or flat.
fn range(values: impl Iterator<Item = f32>) -> (f32, f32) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    (lo, hi)
}

/// A line chart with axes, ticks at the ends, and a legend. `equal_axes` keeps circles round.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    equal_axes: bool,
) -> String {
    let all = || series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1) = range(all().map(|p| p.0));
    let (mut y0, mut y1) = range(all().map(|p| p.1));
    if equal_axes {
        let half = (x1 - x0).max(y1 - y0) / 2.0;
        let (cx, cy) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
        (x0, x1, y0, y1) = (cx - half, cx + half, cy - half, cy + half);
    }
    let (pw, ph) = (W - 2.0 * MARGIN, H - 2.0 * MARGIN);
    let side = pw.min(ph);
    let (pw, ph) = if equal_axes { (side, side) } else { (pw, ph) };
    let sx = |x: f32| MARGIN + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f32| MARGIN + ph - (y - y0) / (y1 - y0) * ph;
    let mut svg = header(title);
    let _ = write!(
        svg,
        r##"<rect x="{MARGIN}" y="{MARGIN}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>"##
    );
    for (v, anchor) in [(x0, "start"), (x1, "end")] {
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" font-size="11" text-anchor="{anchor}">{v:.3}</text>"#,
            sx(v),
            MARGIN + ph + 14.0
        );
    }
    for v in [y0, y1] {
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" font-size="11" text-anchor="end">{v:.3}</text>"#,
            MARGIN - 4.0,
            sy(v) + 4.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">{}</text>"#,
        MARGIN + pw / 2.0,
        MARGIN + ph + 32.0,
        escape(x_label)
    );
    let _ = write!(
        svg,
        r#"<text x="14" y="{}" font-size="12" text-anchor="middle" transform="rotate(-90 14 {})">{}</text>"#,
        MARGIN + ph / 2.0,
        MARGIN + ph / 2.0,
        escape(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        if s.markers {
            for &(x, y) in s
                .points
                .iter()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
            {
                let _ = write!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                    sx(x),
                    sy(y)
                );
            }
        } else {
            let path: Vec<String> = s
                .points
                .iter()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
                .collect();
            let _ = write!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.5"/>"#,
                path.join(" ")
            );
        }
        let ly = MARGIN + 14.0 + 16.0 * i as f32;
        // Beside a square plot there is room on the right; otherwise inside, top right.
        let lx = if equal_axes {
            MARGIN + pw + 12.0
        } else {
            MARGIN + pw - 104.0
        };
        let _ = write!(
            svg,
            r#"<rect x="{lx}" y="{}" width="10" height="10" fill="{colour}"/><text x="{}" y="{ly}" font-size="11">{}</text>"#,
            ly - 9.0,
            lx + 14.0,
            escape(&s.name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A heat map of a (rows, cols) row-major matrix, white (min) to dark blue (max), each cell
/// labelled with its value when the matrix is small.
pub fn heatmap(
    title: &str,
    values: &[f32],
    rows: usize,
    cols: usize,
    row_label: &str,
    col_label: &str,
) -> String {
    assert_eq!(
        values.len(),
        rows * cols,
        "heatmap: {rows} x {cols} needs {} values",
        rows * cols
    );
    let (lo, hi) = range(values.iter().copied());
    let cell =
        ((W - 2.0 * MARGIN) / cols.max(1) as f32).min((H - 2.0 * MARGIN) / rows.max(1) as f32);
    let mut svg = header(title);
    for r in 0..rows {
        for c in 0..cols {
            let v = values[r * cols + c];
            let t = if v.is_finite() {
                (v - lo) / (hi - lo)
            } else {
                0.0
            };
            let shade = |a: f32, b: f32| (a + (b - a) * t).round() as u8;
            let fill = format!(
                "#{:02x}{:02x}{:02x}",
                shade(255.0, 8.0),
                shade(255.0, 48.0),
                shade(255.0, 107.0)
            );
            let (x, y) = (MARGIN + c as f32 * cell, MARGIN + r as f32 * cell);
            let _ = write!(
                svg,
                r##"<rect x="{x:.1}" y="{y:.1}" width="{cell:.1}" height="{cell:.1}" fill="{fill}" stroke="#fff" stroke-width="0.5"/>"##
            );
            if rows * cols <= 144 {
                let ink = if t > 0.5 { "#fff" } else { "#000" };
                let _ = write!(
                    svg,
                    r#"<text x="{:.1}" y="{:.1}" font-size="{:.0}" fill="{ink}" text-anchor="middle">{v:.2}</text>"#,
                    x + cell / 2.0,
                    y + cell / 2.0 + 4.0,
                    (cell / 3.5).min(11.0)
                );
            }
        }
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">{}</text>"#,
        MARGIN + cell * cols as f32 / 2.0,
        MARGIN - 8.0,
        escape(col_label)
    );
    let mid = MARGIN + cell * rows as f32 / 2.0;
    let _ = write!(
        svg,
        r#"<text x="30" y="{mid}" font-size="12" text-anchor="middle" transform="rotate(-90 30 {mid})">{}</text>"#,
        escape(row_label)
    );
    svg.push_str("</svg>");
    svg
}

fn header(title: &str) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/><text x="{}" y="20" font-size="14" text-anchor="middle">{}</text>"#,
        W / 2.0,
        escape(title)
    )
}

/// Display an SVG inline in an evcxr (Jupyter) notebook; in a terminal this prints markup.
pub fn show(svg: &str) {
    println!("EVCXR_BEGIN_CONTENT image/svg+xml\n{svg}\nEVCXR_END_CONTENT");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_well_formed_svg_with_every_series_and_cell() {
        let svg = line_chart(
            "t <1>",
            "x",
            "y",
            &[
                Series::line("a", vec![(0.0, 0.0), (1.0, 2.0)]),
                Series::dots("b", vec![(0.5, f32::NAN)]),
            ],
            false,
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(
            svg.contains("t &lt;1&gt;") && svg.contains("<polyline") && svg.contains(">b</text>")
        );
        let map = heatmap("attention", &[0.0, 1.0, 0.5, 0.25], 2, 2, "query", "key");
        assert_eq!(map.matches("<rect x=").count(), 4);
        assert!(
            map.contains("#082f6b") || map.contains("#08306b"),
            "max is dark blue"
        );
    }
}
