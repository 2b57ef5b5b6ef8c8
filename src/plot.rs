//! Charts for the book and the notebooks: line charts (also used as scatter plots), line charts
//! with a logarithmic y axis (training losses), and heat maps (attention weights, one-hot
//! matrices). They are drawn with the `plotters` crate's SVG backend, and every function returns
//! one complete SVG document of 640 x 400 pixels as a `String`: [`show`] displays it inline in
//! an evcxr notebook, and callers write it to a file for the book.
//!
//! Text is written as SVG `<text>` elements that the viewer renders with its own sans-serif
//! font, so no font files are needed to draw. The price is that plotters can only estimate how
//! wide a text is; the layout here leaves room for labels generously, measuring them with an
//! estimate a little wider than real sans-serif fonts.

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// The size of every chart as displayed, in pixels.
const WIDTH: u32 = 640;
const HEIGHT: u32 = 400;
/// The charts are drawn on a canvas this many times larger and shown at the size above:
/// plotters rounds every coordinate to a whole canvas pixel, which makes curves visibly
/// jagged at 1x. All pixel numbers below are display pixels and pass through [`px`].
const SCALE: i32 = 2;
const FONT: &str = "sans-serif";
// Font sizes in display pixels.
const TITLE_PX: f64 = 16.0;
const DESC_PX: f64 = 12.0;
const TICK_PX: f64 = 11.0;
const LEGEND_PX: f64 = 11.5;
/// Height of one legend row, and the length of the line drawn before a line series' name.
const LEGEND_ROW: i32 = 18;
const SWATCH: i32 = 20;

/// Matplotlib's "tab10" colours, the first six in the order this module always used.
const PALETTE: [RGBColor; 10] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x17, 0xbe, 0xcf),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
];
/// Grid lines at labelled ticks, and the fainter ones between them (log axes only).
const GRID: RGBColor = RGBColor(0xe4, 0xe4, 0xe4);
const GRID_MINOR: RGBColor = RGBColor(0xf2, 0xf2, 0xf2);
const AXIS: RGBColor = RGBColor(0x55, 0x55, 0x55);
/// The heat map's colour ramp from its minimum (white) to its maximum (dark blue), evenly
/// spaced: matplotlib's "Blues" with a white start. A plain white-to-blue blend would pass
/// through dull greys.
const HEAT_RAMP: [RGBColor; 9] = [
    RGBColor(0xff, 0xff, 0xff),
    RGBColor(0xde, 0xeb, 0xf7),
    RGBColor(0xc6, 0xdb, 0xef),
    RGBColor(0x9e, 0xca, 0xe1),
    RGBColor(0x6b, 0xae, 0xd6),
    RGBColor(0x42, 0x92, 0xc6),
    RGBColor(0x21, 0x71, 0xb5),
    RGBColor(0x08, 0x51, 0x9c),
    RGBColor(0x08, 0x30, 0x6b),
];
const HEAT_NON_FINITE: RGBColor = RGBColor(0xbd, 0xbd, 0xbd);
/// Above this many cells a heat map's cells are too small to carry their values.
const MAX_LABELLED_CELLS: usize = 100;

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type DrawResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// One named series of (x, y) points.
#[derive(Clone, Debug)]
pub struct Series {
    /// The name shown in the legend.
    pub name: String,
    /// The points, in drawing order; non-finite ones are skipped (a line breaks there).
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

/// A line chart of `series` with labelled axes, light grid lines and a legend under the plot.
///
/// Non-finite points are skipped. The x axis spans the data, the y axis the data with a
/// little room above and below; an empty or flat range is widened so that the chart is still
/// drawn. With `equal_axes` both axes span the same length of data on a square plotting area,
/// so that circles stay round.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    equal_axes: bool,
) -> String {
    let scale = if equal_axes {
        Scale::Equal
    } else {
        Scale::Linear
    };
    xy_chart(title, x_label, y_label, series, scale)
}

/// Like [`line_chart`], with a logarithmic y axis: for training losses, which fall from about 5
/// to below 1e-3. Points with a non-positive (or non-finite) y are skipped. The y axis spans
/// whole decades, labelled at powers of ten (also at 2 and 5 times them when it spans only one
/// or two decades), with faint grid lines at the multiples in between.
pub fn line_chart_log_y(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    xy_chart(title, x_label, y_label, series, Scale::LogY)
}

/// A heat map of a (`rows`, `cols`) row-major matrix, white at its minimum to dark blue
/// (#08306b) at its maximum, with row 0 at the top and column 0 at the left.
///
/// Cells are square unless that would leave most of the chart empty (a long, thin matrix).
/// Each cell is labelled with its value when there are at most 100 cells and they are big
/// enough; a line under the chart gives the values of white and dark blue. Non-finite values
/// are drawn grey. When `values.len() != rows * cols`, or the matrix is empty, this does not
/// panic: the SVG shows the title and a message saying what is wrong, so that a notebook
/// still renders and the mistake is visible.
pub fn heatmap(
    title: &str,
    values: &[f32],
    rows: usize,
    cols: usize,
    row_label: &str,
    col_label: &str,
) -> String {
    if values.len() != rows * cols {
        let message = format!(
            "heatmap: {rows} x {cols} needs {} values, got {}",
            rows * cols,
            values.len()
        );
        return message_chart(title, &message);
    }
    if values.is_empty() {
        return message_chart(
            title,
            &format!("heatmap: the matrix is empty ({rows} x {cols})"),
        );
    }
    render(|root| draw_heatmap(root, title, values, (rows, cols), row_label, col_label))
        .unwrap_or_else(|e| message_chart(title, &format!("could not draw the heat map: {e}")))
}

/// Display an SVG inline in an evcxr (Jupyter) notebook; in a terminal this prints markup.
pub fn show(svg: &str) {
    println!("EVCXR_BEGIN_CONTENT image/svg+xml\n{svg}\nEVCXR_END_CONTENT");
}

// ---------------------------------------------------------------------------------------------
// Drawing

/// Display pixels to canvas pixels.
const fn px(v: i32) -> i32 {
    v * SCALE
}

#[derive(Clone, Copy, PartialEq)]
enum Scale {
    Linear,
    Equal,
    LogY,
}

/// Draws on an in-memory SVG canvas with a white background and returns the document.
fn render(draw: impl FnOnce(&Area<'_>) -> DrawResult) -> DrawResult<String> {
    let canvas = (WIDTH * SCALE as u32, HEIGHT * SCALE as u32);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, canvas).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    // Show the canvas (its viewBox) at the display size. plotters ends the document with a
    // newline; the callers' contract is that it ends with `</svg>`.
    let drawn = format!(r#"<svg width="{}" height="{}""#, canvas.0, canvas.1);
    let shown = format!(r#"<svg width="{WIDTH}" height="{HEIGHT}""#);
    Ok(svg.trim_end().replacen(&drawn, &shown, 1))
}

/// A chart with only a title and a message, instead of a panic or a broken document.
fn message_chart(title: &str, message: &str) -> String {
    render(|root| {
        let area = draw_title(root, title)?;
        let (w, h) = area.dim_in_pixel();
        let style = text_style(DESC_PX).pos(Pos::new(HPos::Center, VPos::Center));
        area.draw_text(message, &style, (w as i32 / 2, h as i32 / 2))?;
        Ok(())
    })
    // Drawing into a String does not fail; if it ever did, an empty chart is still valid.
    .unwrap_or_else(|_| {
        format!(
            r#"<svg width="{WIDTH}" height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg"></svg>"#
        )
    })
}

/// A text style of `size` display pixels. plotters writes `font-size = size / 1.24` into the
/// SVG, hence the factor.
fn text_style(size: f64) -> TextStyle<'static> {
    TextStyle::from((FONT, size * 1.24 * SCALE as f64).into_font())
}

/// An estimate of a text's width in canvas pixels, on the wide side: 0.6 em per character,
/// where common sans-serif fonts average about 0.55 em.
fn text_width(text: &str, size: f64) -> i32 {
    (text.chars().count() as f64 * 0.6 * size * SCALE as f64).ceil() as i32
}

/// Draws the title centred at the top, shrunk to fit the width, and returns the area below it.
fn draw_title<'a>(root: &Area<'a>, title: &str) -> DrawResult<Area<'a>> {
    let room = px(WIDTH as i32 - 20) as f64;
    let size = (TITLE_PX * room / text_width(title, TITLE_PX).max(1) as f64).clamp(10.0, TITLE_PX);
    Ok(root
        .margin(px(6), 0, 0, 0)
        .titled(title, text_style(size))?)
}

fn xy_chart(title: &str, x_label: &str, y_label: &str, series: &[Series], scale: Scale) -> String {
    render(|root| draw_xy(root, title, x_label, y_label, series, scale))
        .unwrap_or_else(|e| message_chart(title, &format!("could not draw the chart: {e}")))
}

/// The runs of drawable points of a series: a skipped point breaks a line, so that the chart
/// shows a gap where data is missing rather than a straight line across it.
fn runs(points: &[(f32, f32)], scale: Scale) -> Vec<Vec<(f64, f64)>> {
    let mut runs = vec![Vec::new()];
    for &(x, y) in points {
        let ok = x.is_finite() && y.is_finite() && (scale != Scale::LogY || y > 0.0);
        match (ok, runs.last_mut()) {
            (true, Some(run)) => run.push((x as f64, y as f64)),
            (false, Some(run)) if !run.is_empty() => runs.push(Vec::new()),
            _ => {}
        }
    }
    runs.retain(|r| !r.is_empty());
    runs
}

/// The width of a label area for an axis description (0 when there is none).
fn desc_room(label: &str) -> i32 {
    if label.is_empty() {
        0
    } else {
        px(20)
    }
}

fn draw_xy(
    root: &Area<'_>,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    scale: Scale,
) -> DrawResult {
    let drawn: Vec<Vec<Vec<(f64, f64)>>> = series.iter().map(|s| runs(&s.points, scale)).collect();
    let all = || drawn.iter().flatten().flatten();
    let (mut x0, mut x1) = span(all().map(|p| p.0));
    let (mut y0, mut y1) = span(all().map(|p| p.1));

    let area = draw_title(root, title)?;
    let (width, height) = area.dim_in_pixel();
    let legend = Legend::new(series, width as i32 - px(16));
    let (chart_area, legend_area) = area.split_vertically(height as i32 - legend.height());

    // Tick counts from the room there is: about one label per 90 px across and 50 px up.
    let (cw, ch) = chart_area.dim_in_pixel();
    let mut x_ticks = ((cw as i32 - px(100)) / px(90)).max(2) as usize;
    let mut y_ticks = ((ch as i32 - px(60)) / px(50)).max(2) as usize;
    match scale {
        Scale::Equal => {
            // The same data length on both axes and the same tick count, so the same step.
            let half = 0.55 * (x1 - x0).max(y1 - y0);
            let (cx, cy) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
            (x0, x1, y0, y1) = (cx - half, cx + half, cy - half, cy + half);
            x_ticks = x_ticks.min(y_ticks);
            y_ticks = x_ticks;
        }
        Scale::Linear => {
            let pad = 0.05 * (y1 - y0);
            (y0, y1) = (y0 - pad, y1 + pad);
        }
        Scale::LogY => {}
    }
    let x_axis = Axis::linear(x0, x1, x_ticks);
    let y_axis = if scale == Scale::LogY {
        Axis::log(positive_span(all().map(|p| p.1)))
    } else {
        Axis::linear(y0, y1, y_ticks)
    };

    // Label areas sized from their contents: the tick labels, their distance to the axis
    // (plotters puts twice the tick mark length there) and the axis description.
    let y_area = y_axis.widest_label() + px(14) + desc_room(y_label);
    let x_area = px(26) + desc_room(x_label);
    let (mut top, mut bottom, mut left) = (px(10), 0, 0);
    // Room for half of the last x label, which is centred on the right edge.
    let mut right = (x_axis.widest_label() / 2 + px(6)).max(px(16));
    if scale == Scale::Equal {
        // Centre a square plotting area in the room the label areas leave.
        let room_w = cw as i32 - y_area - right - left;
        let room_h = ch as i32 - x_area - top - bottom;
        let side = room_w.min(room_h);
        let (extra_w, extra_h) = (room_w - side, room_h - side);
        left += extra_w / 2;
        right += extra_w - extra_w / 2;
        top += extra_h / 2;
        bottom += extra_h - extra_h / 2;
    }
    let mut chart = ChartBuilder::on(&chart_area)
        .margin_top(top)
        .margin_bottom(bottom)
        .margin_left(left)
        .margin_right(right)
        .x_label_area_size(x_area)
        .y_label_area_size(y_area)
        .build_cartesian_2d(x_axis.clone(), y_axis.clone())?;
    let x_fmt = |v: &f64| x_axis.label(*v);
    let y_fmt = |v: &f64| y_axis.label(*v);
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .axis_desc_style(text_style(DESC_PX))
        .label_style(text_style(TICK_PX))
        .bold_line_style(GRID.stroke_width(SCALE as u32))
        .light_line_style(GRID_MINOR.stroke_width(SCALE as u32))
        .axis_style(AXIS.stroke_width(SCALE as u32))
        .set_all_tick_mark_size(px(4))
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .draw()?;
    for (i, (s, runs)) in series.iter().zip(&drawn).enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        for run in runs {
            // A lone point of a line would be invisible: it gets a small dot.
            if s.markers || run.len() == 1 {
                let radius = if s.markers { px(3) } else { px(2) };
                chart.draw_series(run.iter().map(|&p| Circle::new(p, radius, colour.filled())))?;
            } else {
                let style = colour.stroke_width(3 * SCALE as u32 / 2);
                chart.draw_series(LineSeries::new(run.iter().copied(), style))?;
            }
        }
    }
    legend.draw(&legend_area)
}

/// The finite (min, max) of `values`, widened when empty or flat.
fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return (0.0, 1.0);
    }
    if hi - lo <= 1e-9 * hi.abs().max(1.0) {
        let half = (0.05 * lo.abs()).max(0.5);
        return (lo - half, hi + half);
    }
    (lo, hi)
}

/// The (min, max) of the positive finite `values`, (1, 10) when there are none.
fn positive_span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        (1.0, 10.0)
    } else {
        (lo, hi)
    }
}

/// One axis: its range, linear or logarithmic, the values that get a labelled tick and a grid
/// line, the values that get only a faint grid line, and the label of each tick.
///
/// It is its own plotters coordinate (`Ranged`) rather than plotters' `f64` ranges because
/// plotters picks and prints their ticks itself: `600.0`-style labels on linear axes, and
/// log axes whose decades can miss the lowest power of ten.
#[derive(Clone)]
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    ticks: Vec<f64>,
    minor: Vec<f64>,
    labels: Vec<String>,
}

impl Axis {
    /// Ticks at the multiples of a step of 1, 2 or 5 times a power of ten, at most about
    /// `target` of them. Each tick is an integer times a power of ten, so that its label is
    /// printed exactly from integers: never `0.30000000000000004` or `600.000`.
    fn linear(lo: f64, hi: f64, target: usize) -> Self {
        let (m, e) = nice_step((hi - lo) / target.max(1) as f64);
        let step = m as f64 * 10f64.powi(e);
        let first = (lo / step - 1e-9).ceil() as i64;
        let last = (hi / step + 1e-9).floor() as i64;
        // Very small or very large numbers read better as 5e-4 than as 0.0005.
        let biggest = lo.abs().max(hi.abs());
        let sci = !(1e-2..1e5).contains(&biggest);
        let (mut ticks, mut labels) = (Vec::new(), Vec::new());
        for n in first..=last {
            ticks.push(n as f64 * step);
            labels.push(if sci {
                scientific(n * m, e)
            } else {
                decimal(n * m, e)
            });
        }
        Self {
            lo,
            hi,
            log: false,
            ticks,
            minor: Vec::new(),
            labels,
        }
    }

    /// A base-10 logarithmic axis over the whole decades around `(lo, hi)` (both positive):
    /// labelled at powers of ten (every few decades when there are more than eight), also at
    /// 2 and 5 times them when there are only one or two decades, with faint grid lines at the
    /// other integer multiples.
    fn log((lo, hi): (f64, f64)) -> Self {
        let mut a = lo.log10().floor() as i32;
        let mut b = hi.log10().ceil() as i32;
        // log10 can round across a power of ten; the axis must contain the data.
        if 10f64.powi(a) > lo {
            a -= 1;
        }
        if 10f64.powi(b) < hi {
            b += 1;
        }
        let stride = ((b - a + 7) / 8).max(1);
        b = a + ((b - a + stride - 1) / stride).max(1) * stride;
        let labelled: &[i64] = if b - a <= 2 { &[1, 2, 5] } else { &[1] };
        let (mut ticks, mut labels, mut minor) = (Vec::new(), Vec::new(), Vec::new());
        for d in a..=b {
            // The last decade contributes only its power of ten, the axis end.
            let multiples = if d == b { 1 } else { 9 };
            for m in 1..=multiples {
                let v = m as f64 * 10f64.powi(d);
                if labelled.contains(&m) && (d - a) % stride == 0 {
                    ticks.push(v);
                    // 0.001 and 10000 are still easy to read; beyond, 1e-4 and 1e5.
                    labels.push(if (-3..=4).contains(&d) {
                        decimal(m, d)
                    } else {
                        scientific(m, d)
                    });
                } else if stride == 1 {
                    minor.push(v);
                }
            }
        }
        Self {
            lo: 10f64.powi(a),
            hi: 10f64.powi(b),
            log: true,
            ticks,
            minor,
            labels,
        }
    }

    /// An axis of cells `[i, i + 1]` from `lo` to `hi`, ticked at the centres of the cells
    /// `ticks` and labelled with their indices.
    fn cells(lo: f64, hi: f64, ticks: &[usize]) -> Self {
        Self {
            lo,
            hi,
            log: false,
            ticks: ticks.iter().map(|&i| i as f64 + 0.5).collect(),
            minor: Vec::new(),
            labels: ticks.iter().map(|i| i.to_string()).collect(),
        }
    }

    /// The label of the tick nearest to `v` (plotters asks with the tick values themselves).
    fn label(&self, v: f64) -> String {
        let nearest = self
            .ticks
            .iter()
            .enumerate()
            .min_by(|(_, a), (_, b)| (*a - v).abs().total_cmp(&(*b - v).abs()));
        nearest.map_or_else(String::new, |(i, _)| self.labels[i].clone())
    }

    fn widest_label(&self) -> i32 {
        let widths = self.labels.iter().map(|l| text_width(l, TICK_PX));
        widths.max().unwrap_or(0)
    }
}

impl Ranged for Axis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let f = |v: f64| if self.log { v.ln() } else { v };
        let t = (f(*value) - f(self.lo)) / (f(self.hi) - f(self.lo));
        limit.0 + ((limit.1 - limit.0) as f64 * t).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // plotters asks twice: for the faint grid lines, then for the labelled ticks.
        if hint.weight().allow_light_points() {
            self.minor.clone()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// A step `m * 10^e` with `m` in {1, 2, 5}: the smallest at least `raw`.
fn nice_step(raw: f64) -> (i64, i32) {
    if !(raw.is_finite() && raw > 0.0) {
        return (1, 0);
    }
    let e = raw.log10().floor() as i32;
    let norm = raw / 10f64.powi(e);
    match [1, 2, 5]
        .into_iter()
        .find(|&m| norm <= m as f64 * (1.0 + 1e-9))
    {
        Some(m) => (m, e),
        None => (1, e + 1),
    }
}

/// `k * 10^e` in decimal notation without trailing zeros: (600, 0) is "600", (15, -1) "1.5".
fn decimal(k: i64, e: i32) -> String {
    if k == 0 {
        return "0".into();
    }
    let sign = if k < 0 { "-" } else { "" };
    let digits = k.unsigned_abs().to_string();
    if e >= 0 {
        return format!("{sign}{digits}{}", "0".repeat(e as usize));
    }
    let frac = e.unsigned_abs() as usize;
    let padded = format!("{digits:0>width$}", width = frac + 1);
    let (int, dec) = padded.split_at(padded.len() - frac);
    match dec.trim_end_matches('0') {
        "" => format!("{sign}{int}"),
        dec => format!("{sign}{int}.{dec}"),
    }
}

/// `k * 10^e` in scientific notation without trailing zeros: (3, -4) is "3e-4", (15, -4)
/// "1.5e-3".
fn scientific(mut k: i64, mut e: i32) -> String {
    if k == 0 {
        return "0".into();
    }
    while k % 10 == 0 {
        k /= 10;
        e += 1;
    }
    let sign = if k < 0 { "-" } else { "" };
    let digits = k.unsigned_abs().to_string();
    let exponent = e + digits.len() as i32 - 1;
    match digits.split_at(1) {
        (first, "") => format!("{sign}{first}e{exponent}"),
        (first, rest) => format!("{sign}{first}.{rest}e{exponent}"),
    }
}

/// A value with about three significant digits: 0.982, 12.3, 3e-4.
fn short_value(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let magnitude = v.abs().log10().floor() as i32;
    if (-3..5).contains(&magnitude) {
        let decimals = (2 - magnitude).max(0) as usize;
        let text = format!("{v:.decimals$}");
        if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            text
        }
    } else {
        let text = format!("{v:.2e}");
        let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
        let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
        format!("{mantissa}e{exponent}")
    }
}

/// One legend entry: a series' name (shortened if need be), colour and mark, where it goes.
struct LegendEntry {
    name: String,
    colour: RGBColor,
    mark: Mark,
    x: i32,
    width: i32,
    row: i32,
}

/// What a legend entry shows before its text.
#[derive(Clone, Copy, PartialEq)]
enum Mark {
    Line,
    Dot,
    /// None: the "+ N more" note of a legend with more series than rows.
    Nothing,
}

/// The legend, laid out in rows under the chart: entries flow left to right and wrap, each row
/// centred, and a name too long for a whole row is shortened with an ellipsis. Under the plot
/// it never hides data, and its height is known before the plot is laid out. It has at most
/// [`Legend::MAX_ROWS`] rows, so that many series cannot squeeze the plot away; the series
/// that do not fit are counted in a note instead.
struct Legend {
    entries: Vec<LegendEntry>,
    rows: i32,
}

impl Legend {
    const MAX_ROWS: i32 = 4;

    /// Lays out `series` in rows of at most `width` canvas pixels.
    fn new(series: &[Series], width: i32) -> Self {
        let spacing = px(18);
        let text_room = |mark: Mark| {
            if mark == Mark::Nothing {
                0
            } else {
                px(SWATCH + 6)
            }
        };
        let max_text = width - text_room(Mark::Line);
        let mut entries: Vec<LegendEntry> = Vec::new();
        // Places an entry after the last one, or at the start of a new row.
        let place = |entries: &[LegendEntry], w: i32| match entries.last() {
            Some(last) if last.x + last.width + spacing + w <= width => {
                (last.x + last.width + spacing, last.row)
            }
            Some(last) => (0, last.row + 1),
            None => (0, 0),
        };
        for (i, s) in series.iter().enumerate() {
            let mut name = s.name.clone();
            if text_width(&name, LEGEND_PX) > max_text {
                let keep = (max_text / text_width("x", LEGEND_PX)).max(2) as usize - 1;
                name = name.chars().take(keep).collect::<String>() + "…";
            }
            let mark = if s.markers { Mark::Dot } else { Mark::Line };
            let w = text_room(mark) + text_width(&name, LEGEND_PX);
            let (x, row) = place(&entries, w);
            if row == Self::MAX_ROWS {
                // Out of rows: make room for the note on the last row, then stop.
                let mut hidden = series.len() - i;
                loop {
                    let note = format!("+ {hidden} more");
                    let w = text_width(&note, LEGEND_PX);
                    let (x, row) = place(&entries, w);
                    if row < Self::MAX_ROWS || entries.is_empty() {
                        entries.push(LegendEntry {
                            name: note,
                            colour: BLACK,
                            mark: Mark::Nothing,
                            x,
                            width: w,
                            row: row.min(Self::MAX_ROWS - 1),
                        });
                        break;
                    }
                    entries.pop();
                    hidden += 1;
                }
                break;
            }
            entries.push(LegendEntry {
                name,
                colour: PALETTE[i % PALETTE.len()],
                mark,
                x,
                width: w,
                row,
            });
        }
        let rows = entries.last().map_or(0, |e| e.row + 1);
        for row in 0..rows {
            let in_row = || entries.iter().filter(|e| e.row == row);
            let used = in_row().map(|e| e.x + e.width).max().unwrap_or(0);
            let shift = (width - used) / 2 + px(8);
            for e in entries.iter_mut().filter(|e| e.row == row) {
                e.x += shift;
            }
        }
        Self { entries, rows }
    }

    /// The canvas height the legend needs.
    fn height(&self) -> i32 {
        if self.rows == 0 {
            0
        } else {
            px(self.rows * LEGEND_ROW + 6)
        }
    }

    fn draw(&self, area: &Area<'_>) -> DrawResult {
        let style = text_style(LEGEND_PX).pos(Pos::new(HPos::Left, VPos::Center));
        for e in &self.entries {
            let (x, y) = (e.x, px(e.row * LEGEND_ROW + LEGEND_ROW / 2));
            let text_x = match e.mark {
                Mark::Dot => {
                    let dot = Circle::new((x + px(SWATCH / 2), y), px(3), e.colour.filled());
                    area.draw(&dot)?;
                    x + px(SWATCH + 6)
                }
                Mark::Line => {
                    let line = vec![(x, y), (x + px(SWATCH), y)];
                    area.draw(&PathElement::new(line, e.colour.stroke_width(px(2) as u32)))?;
                    x + px(SWATCH + 6)
                }
                Mark::Nothing => x,
            };
            area.draw_text(&e.name, &style, (text_x, y))?;
        }
        Ok(())
    }
}

/// The heat map colour of `t` in [0, 1]: linear between the stops of [`HEAT_RAMP`].
fn heat_colour(t: f64) -> RGBColor {
    let pos = t.clamp(0.0, 1.0) * (HEAT_RAMP.len() - 1) as f64;
    let i = (pos.floor() as usize).min(HEAT_RAMP.len() - 2);
    let f = pos - i as f64;
    let (a, b) = (HEAT_RAMP[i], HEAT_RAMP[i + 1]);
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Whether text on `fill` should be white rather than black.
fn is_dark(fill: RGBColor) -> bool {
    let luma = 0.299 * fill.0 as f64 + 0.587 * fill.1 as f64 + 0.114 * fill.2 as f64;
    luma < 140.0
}

/// A cell's label: integers as integers when the whole matrix is integers (one-hot), else
/// two decimals, fewer digits of large values.
fn cell_label(v: f32, integers: bool) -> String {
    let v = v as f64;
    if !v.is_finite() {
        format!("{v}")
    } else if integers {
        format!("{v:.0}")
    } else if v.abs() < 100.0 {
        match format!("{v:.2}") {
            zero if zero == "-0.00" => "0.00".into(),
            text => text,
        }
    } else {
        short_value(v)
    }
}

/// Which of `n` cells of `cell` canvas pixels get an index label, so that labels `room`
/// pixels apart do not collide: every one, or every 2nd, 5th, 10th, ...
fn index_ticks(n: usize, cell: f64, room: f64) -> Vec<usize> {
    let (m, e) = nice_step(room / cell);
    let stride = if room <= cell {
        1
    } else {
        (m as usize) * 10usize.pow(e.max(0) as u32)
    };
    (0..n).step_by(stride.max(1)).collect()
}

fn draw_heatmap(
    root: &Area<'_>,
    title: &str,
    values: &[f32],
    (rows, cols): (usize, usize),
    row_label: &str,
    col_label: &str,
) -> DrawResult {
    let (lo, hi) = span(values.iter().map(|&v| v as f64));
    let area = draw_title(root, title)?;
    let (aw, ah) = area.dim_in_pixel();

    let widest_index = text_width(&rows.saturating_sub(1).to_string(), TICK_PX);
    let y_area = widest_index + px(14) + desc_room(row_label);
    let x_area = px(26) + desc_room(col_label);
    let (top, right, caption) = (px(6), px(16), px(22));
    let room_w = (aw as i32 - y_area - right) as f64;
    let room_h = (ah as i32 - top - x_area - caption) as f64;
    // Square cells, unless the square grid would fill less than half of the room: then each
    // side may stretch to twice the other.
    let side = (room_w / cols as f64).min(room_h / rows as f64);
    let (mut cell_w, mut cell_h) = (side, side);
    let filled = side * side * (rows * cols) as f64;
    if filled < 0.5 * room_w * room_h {
        cell_w = (room_w / cols as f64).min(2.0 * side);
        cell_h = (room_h / rows as f64).min(2.0 * side);
    }
    let grid_w = (cell_w * cols as f64).round() as i32;
    let grid_h = (cell_h * rows as f64).round() as i32;
    let extra_w = room_w as i32 - grid_w;
    let extra_h = room_h as i32 - grid_h;
    let (left, top) = (extra_w / 2, top + extra_h / 2);

    // Cells are [c, c + 1] x [r, r + 1]; the y axis runs from `rows` at the bottom to 0 at
    // the top, so that row 0 is the top row. Ticks and labels sit at the cells' centres.
    let col_room = text_width(&cols.saturating_sub(1).to_string(), TICK_PX) + px(8);
    let x_axis = Axis::cells(
        0.0,
        cols as f64,
        &index_ticks(cols, cell_w, col_room as f64),
    );
    let y_axis = Axis::cells(rows as f64, 0.0, &index_ticks(rows, cell_h, px(14) as f64));
    let (x_labels, y_labels) = (x_axis.clone(), y_axis.clone());
    let mut chart = ChartBuilder::on(&area)
        .margin_top(top)
        .margin_bottom(ah as i32 - top - grid_h - x_area)
        .margin_left(left)
        .margin_right(aw as i32 - left - y_area - grid_w)
        .x_label_area_size(x_area)
        .y_label_area_size(y_area)
        .build_cartesian_2d(x_axis, y_axis)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(col_label)
        .y_desc(row_label)
        .axis_desc_style(text_style(DESC_PX))
        .label_style(text_style(TICK_PX))
        .axis_style(AXIS.stroke_width(SCALE as u32))
        .set_all_tick_mark_size(px(4))
        .x_label_formatter(&|v| x_labels.label(*v))
        .y_label_formatter(&|v| y_labels.label(*v))
        .draw()?;

    let fill = |v: f32| {
        if v.is_finite() {
            heat_colour((v as f64 - lo) / (hi - lo))
        } else {
            HEAT_NON_FINITE
        }
    };
    let corner = |i: usize| ((i % cols) as f64, (i / cols) as f64);
    chart.draw_series(values.iter().enumerate().map(|(i, &v)| {
        let (c, r) = corner(i);
        Rectangle::new([(c, r), (c + 1.0, r + 1.0)], fill(v).filled())
    }))?;

    if values.len() <= MAX_LABELLED_CELLS {
        let integers = values.iter().all(|v| v.fract() == 0.0 && v.abs() < 1e4);
        let labels: Vec<String> = values.iter().map(|&v| cell_label(v, integers)).collect();
        let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(1);
        // As large as fits in 80% of a cell's width and 60% of its height, at most tick size.
        let size = (0.8 * cell_w / (0.6 * longest as f64 * SCALE as f64))
            .min(0.6 * cell_h / SCALE as f64)
            .min(TICK_PX);
        if size >= 6.0 {
            let style = text_style(size).pos(Pos::new(HPos::Center, VPos::Center));
            chart.draw_series(labels.into_iter().enumerate().map(|(i, label)| {
                let ink = if is_dark(fill(values[i])) {
                    &WHITE
                } else {
                    &BLACK
                };
                let (c, r) = corner(i);
                Text::new(label, (c + 0.5, r + 0.5), style.color(ink))
            }))?;
        }
    }

    let mut note = format!(
        "white = {}, dark blue = {}",
        short_value(lo),
        short_value(hi)
    );
    if values.iter().any(|v| !v.is_finite()) {
        note.push_str(", grey = not finite");
    }
    let style = text_style(TICK_PX).pos(Pos::new(HPos::Center, VPos::Center));
    let note_at = (
        left + y_area + grid_w / 2,
        top + grid_h + x_area + caption / 2,
    );
    area.draw_text(&note, &style, note_at)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks that `svg` is one well-formed element: every tag closed in order, quotes paired,
    /// `&` only in entities, nothing after the root.
    fn assert_well_formed(svg: &str) {
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"), "{svg}");
        let mut stack: Vec<&str> = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let text = &rest[..start];
            for (i, _) in text.match_indices('&') {
                let entity = &text[i..text[i..].find(';').map_or(text.len(), |j| i + j + 1)];
                let known = ["&lt;", "&gt;", "&amp;", "&quot;", "&apos;"];
                assert!(known.contains(&entity), "bare & in text {text:?}");
            }
            assert!(
                start == 0 || !stack.is_empty(),
                "text outside the root: {text:?}"
            );
            let end = start + rest[start..].find('>').expect("unclosed tag");
            let tag = &rest[start + 1..end];
            assert_eq!(tag.matches('"').count() % 2, 0, "unpaired quote in <{tag}>");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop(), Some(name), "mismatched </{name}>");
            } else if !tag.ends_with('/') {
                assert!(
                    !stack.is_empty() || start == 0,
                    "a second root element <{tag}>"
                );
                stack.push(tag.split_whitespace().next().unwrap_or(""));
            }
            rest = &rest[end + 1..];
        }
        assert!(stack.is_empty(), "unclosed {stack:?}");
    }

    /// The start tags `<name ...>` in `svg`.
    fn tags<'a>(svg: &'a str, name: &str) -> Vec<&'a str> {
        let open = format!("<{name} ");
        svg.match_indices(&open)
            .map(|(i, _)| &svg[i..i + svg[i..].find('>').unwrap_or(0)])
            .collect()
    }

    fn attr<'a>(tag: &'a str, key: &str) -> &'a str {
        let key = format!(" {key}=\"");
        let start = tag.find(&key).unwrap_or_else(|| panic!("{key} in {tag}")) + key.len();
        &tag[start..start + tag[start..].find('"').unwrap_or(0)]
    }

    fn num(tag: &str, key: &str) -> f64 {
        attr(tag, key).parse().unwrap()
    }

    /// Every `<text>` element: its start tag and its (still escaped) content, trimmed.
    fn texts(svg: &str) -> Vec<(&str, &str)> {
        tags(svg, "text")
            .into_iter()
            .map(|tag| {
                let at = tag.as_ptr() as usize - svg.as_ptr() as usize + tag.len() + 1;
                let end = at + svg[at..].find("</text>").unwrap();
                (tag, svg[at..end].trim())
            })
            .collect()
    }

    fn text_of<'a>(svg: &'a str, content: &str) -> &'a str {
        let found = texts(svg).into_iter().find(|(_, t)| *t == content);
        found.unwrap_or_else(|| panic!("no text {content:?}")).0
    }

    /// The canvas size from the `viewBox`.
    fn canvas(svg: &str) -> (f64, f64) {
        let view_box = attr(tags(svg, "svg")[0], "viewBox");
        let v: Vec<f64> = view_box.split(' ').map(|n| n.parse().unwrap()).collect();
        (v[2], v[3])
    }

    #[test]
    fn line_chart_is_well_formed_with_escaped_title_and_every_series() {
        let svg = line_chart(
            "loss <train> & \"eval\"",
            "step",
            "y",
            &[
                Series::line(
                    "a",
                    vec![
                        (0.0, 0.0),
                        (1.0, 2.0),
                        (2.0, f32::NAN),
                        (3.0, 1.0),
                        (4.0, 0.5),
                    ],
                ),
                Series::line("a single point", vec![(0.0, 2.0)]),
                Series::dots("b", vec![(0.5, f32::NAN), (2.5, 1.5)]),
            ],
            false,
        );
        assert_well_formed(&svg);
        assert_eq!(attr(tags(&svg, "svg")[0], "width"), "640");
        assert_eq!(attr(tags(&svg, "svg")[0], "height"), "400");
        let contents: Vec<&str> = texts(&svg).into_iter().map(|t| t.1).collect();
        assert!(contents.contains(&"loss &lt;train&gt; &amp; &quot;eval&quot;"));
        for name in ["a", "a single point", "b", "step", "y"] {
            assert!(contents.contains(&name), "{name} in {contents:?}");
        }
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        // Series "a" is blue: two runs either side of its NaN, and the legend's swatch.
        let blue = |tag: &&str| attr(tag, "stroke") == "#1F77B4";
        assert_eq!(tags(&svg, "polyline").into_iter().filter(blue).count(), 3);
        // The lone point of a line (red) is a dot; "b" (green) keeps its one finite point,
        // and its legend swatch is a dot too.
        let fill = |colour| {
            tags(&svg, "circle")
                .into_iter()
                .filter(move |t| attr(t, "fill") == colour)
        };
        assert_eq!(fill("#D62728").count(), 1);
        assert_eq!(fill("#2CA02C").count(), 2);
    }

    #[test]
    fn long_legend_names_fit_inside_the_image_without_overlapping() {
        let curve = |f: fn(f32) -> f32| (0..=600).map(|t| (t as f32, f(t as f32))).collect();
        let names = [
            "copy task: warmup 50, cosine to 600",
            "warmup 100, cosine to 400, then floor",
            &"a name far too long for one row of the legend, ".repeat(4),
        ];
        let svg = line_chart(
            "warmup + cosine: learning rate per step",
            "step t",
            "lr (x 1e-3)",
            &[
                Series::line(names[0], curve(|t| 3.0 - t / 200.0)),
                Series::line(names[1], curve(|t| (t / 100.0).min(3.0))),
                Series::line(names[2], curve(|t| t / 600.0)),
            ],
            false,
        );
        assert_well_formed(&svg);
        let (w, h) = canvas(&svg);
        // (left, right, y) of each legend entry's text, with the module's own width estimate,
        // which is wider than real fonts.
        let boxes: Vec<(f64, f64, f64)> = texts(&svg)
            .into_iter()
            .filter(|(tag, _)| attr(tag, "text-anchor") == "start")
            .map(|(tag, content)| {
                let chars = content.chars().count() as f64;
                let x = num(tag, "x");
                (x, x + 0.6 * num(tag, "font-size") * chars, num(tag, "y"))
            })
            .collect();
        assert_eq!(boxes.len(), 3);
        for (i, &(left, right, y)) in boxes.iter().enumerate() {
            assert!(left >= 0.0 && right <= w && y > 0.0 && y < h, "{boxes:?}");
            for &(l, r, other_y) in &boxes[..i] {
                assert!(other_y != y || r <= left || right <= l, "{boxes:?}");
            }
        }
        assert!(texts(&svg).iter().any(|t| t.1.ends_with('…')));
        assert!(svg.contains(names[0]) && svg.contains(names[1]));

        // Too many series for the legend's rows: the rest are counted, not drawn off the image.
        let many: Vec<Series> = (0..40)
            .map(|k| Series::line(&format!("series {k}"), vec![(0.0, k as f32), (1.0, 0.0)]))
            .collect();
        let svg = line_chart("many", "x", "y", &many, false);
        assert_well_formed(&svg);
        let contents: Vec<&str> = texts(&svg).into_iter().map(|t| t.1).collect();
        let shown = contents.iter().filter(|t| t.starts_with("series ")).count();
        let note = contents.iter().find_map(|t| t.strip_prefix("+ "));
        let hidden: usize = note
            .and_then(|n| n.strip_suffix(" more"))
            .unwrap()
            .parse()
            .unwrap();
        assert!(hidden > 0 && shown + hidden == 40, "{shown} + {hidden}");
        let lowest = texts(&svg)
            .iter()
            .map(|t| num(t.0, "y"))
            .fold(0.0, f64::max);
        assert!(lowest < canvas(&svg).1);
    }

    #[test]
    fn integer_ticks_print_without_decimals() {
        let points = (0..=600).map(|t| (t as f32, t as f32 / 200.0)).collect();
        let svg = line_chart("ticks", "step", "lr", &[Series::line("lr", points)], false);
        let labels: Vec<&str> = texts(&svg).into_iter().map(|t| t.1).collect();
        for expected in ["0", "100", "600", "1", "3"] {
            assert!(labels.contains(&expected), "{expected} in {labels:?}");
        }
        let numeric = labels.iter().filter(|l| l.parse::<f64>().is_ok());
        for label in numeric {
            assert!(!label.contains('.') || !label.ends_with('0'), "{label}");
        }
    }

    #[test]
    fn log_axis_is_labelled_in_decades_down_to_the_data() {
        let mut losses: Vec<(f32, f32)> = (0..=600)
            .map(|s| (s as f32, 5.0 * (3e-4f32 / 5.0).powf(s as f32 / 600.0)))
            .collect();
        // Non-positive losses cannot be drawn on a log axis and are skipped.
        losses.extend([(601.0, 0.0), (602.0, -1.0)]);
        let svg = line_chart_log_y(
            "loss",
            "step",
            "cross-entropy (log scale)",
            &[
                Series::line("train", losses),
                Series::dots("eval", vec![(600.0, 3e-4)]),
            ],
        );
        assert_well_formed(&svg);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        let y = |label| num(text_of(&svg, label), "y");
        // A power of ten below the smallest loss (3e-4) and one above the largest (5);
        // powers of ten stay evenly spaced and grow upwards.
        let decades = ["1e-4", "0.001", "0.01", "0.1", "1", "10"];
        let ys: Vec<f64> = decades.iter().map(|&l| y(l)).collect();
        for pair in ys.windows(2) {
            assert!(pair[0] > pair[1], "{ys:?}");
            assert!(
                ((pair[0] - pair[1]) - (ys[0] - ys[1])).abs() <= 1.0,
                "{ys:?}"
            );
        }
        // A loss that stays within one decade still gets labels between its ends.
        let flat = vec![(0.0, 4.5), (1.0, 2.2)];
        let svg = line_chart_log_y("loss", "step", "loss", &[Series::line("train", flat)]);
        for label in ["1", "2", "5", "10"] {
            text_of(&svg, label);
        }
    }

    #[test]
    fn equal_axes_keep_circles_round() {
        let circle: Vec<(f32, f32)> = (0..36)
            .map(|k| (k as f32 * 10f32.to_radians()).sin_cos())
            .map(|(s, c)| (3.0 + c, s))
            .collect();
        let extent = |equal| {
            let series = [Series::dots("unit circle", circle.clone())];
            let svg = line_chart("circle", "x", "y", &series, equal);
            assert_well_formed(&svg);
            let points: Vec<(f64, f64)> = tags(&svg, "circle")
                .into_iter()
                .map(|t| (num(t, "cx"), num(t, "cy")))
                .collect();
            // All but the legend's dot.
            let points = &points[..points.len() - 1];
            let spread = |f: fn(&(f64, f64)) -> f64| {
                let v = points.iter().map(f);
                v.clone().fold(f64::MIN, f64::max) - v.fold(f64::MAX, f64::min)
            };
            (spread(|p| p.0), spread(|p| p.1))
        };
        let (w, h) = extent(true);
        assert!(w > 200.0 && (w - h).abs() <= 2.0, "{w} x {h}");
        // Without equal axes the same circle fills the wide plot: an ellipse.
        let (w, h) = extent(false);
        assert!(w > 1.3 * h, "{w} x {h}");
    }

    #[test]
    fn heatmap_has_one_rect_per_cell_from_white_to_dark_blue() {
        let (rows, cols) = (3, 4);
        let values: Vec<f32> = (0..rows * cols).map(|i| i as f32 / 4.0).collect();
        let svg = heatmap("attention <weights>", &values, rows, cols, "query", "key");
        assert_well_formed(&svg);
        assert!(svg.contains("attention &lt;weights&gt;"));
        let (w, h) = canvas(&svg);
        let background = |t: &&str| num(t, "width") == w && num(t, "height") == h;
        let cells: Vec<&str> = tags(&svg, "rect")
            .into_iter()
            .filter(|t| !background(t))
            .collect();
        assert_eq!(cells.len(), rows * cols);
        // Drawn in row-major order: the first (minimum) is white, the last (maximum) dark
        // blue, and row 0 is at the top.
        assert_eq!(attr(cells[0], "fill"), "#FFFFFF");
        assert_eq!(attr(cells[rows * cols - 1], "fill"), "#08306B");
        assert_eq!(svg.matches("fill=\"#08306B\"").count(), 1);
        assert!(num(cells[0], "y") < num(cells[cols], "y"));
        assert!(num(cells[0], "x") < num(cells[1], "x"));
        // Small: every cell carries its value, white on the dark ones.
        let labels = texts(&svg);
        for v in ["0.00", "0.25", "2.75"] {
            assert!(labels.iter().any(|t| t.1 == v), "{v}");
        }
        assert_eq!(attr(text_of(&svg, "2.75"), "fill"), "#FFFFFF");
        assert_eq!(attr(text_of(&svg, "0.25"), "fill"), "#000000");
        text_of(&svg, "white = 0, dark blue = 2.75");

        // Larger than 100 cells: no cell labels, so no decimals anywhere.
        let values: Vec<f32> = (0..121).map(|i| i as f32 / 121.0).collect();
        let svg = heatmap("big", &values, 11, 11, "row", "col");
        let cells = tags(&svg, "rect")
            .into_iter()
            .filter(|t| !background(t))
            .count();
        assert_eq!(cells, 121);
        let labels = texts(&svg);
        assert!(labels
            .iter()
            .all(|t| !t.1.contains('.') || t.1.starts_with("white")));
    }

    #[test]
    fn heatmap_of_the_wrong_size_shows_a_message_instead_of_panicking() {
        let svg = heatmap("oops", &[1.0; 5], 2, 3, "r", "c");
        assert_well_formed(&svg);
        text_of(&svg, "oops");
        text_of(&svg, "heatmap: 2 x 3 needs 6 values, got 5");
        assert_eq!(tags(&svg, "rect").len(), 1, "only the background");
        let svg = heatmap("empty", &[], 0, 3, "r", "c");
        assert_well_formed(&svg);
        text_of(&svg, "heatmap: the matrix is empty (0 x 3)");
    }

    #[test]
    fn empty_and_flat_data_still_draw_axes() {
        for series in [
            vec![],
            vec![Series::line("flat", vec![(1.0, 2.0), (1.0, 2.0)])],
            vec![Series::dots(
                "nothing finite",
                vec![(f32::NAN, f32::INFINITY)],
            )],
        ] {
            for svg in [
                line_chart("t", "x", "y", &series, false),
                line_chart("t", "x", "y", &series, true),
                line_chart_log_y("t", "x", "y", &series),
            ] {
                assert_well_formed(&svg);
                assert!(!svg.contains("NaN") && !svg.contains("inf"));
                assert!(texts(&svg).len() >= 5, "title, descriptions and some ticks");
            }
        }
    }

    #[test]
    fn tick_labels_are_printed_exactly() {
        assert_eq!(decimal(600, 0), "600");
        assert_eq!(decimal(3, 2), "300");
        assert_eq!(decimal(15, -1), "1.5");
        assert_eq!(decimal(-5, -4), "-0.0005");
        assert_eq!(decimal(20, -1), "2");
        assert_eq!(scientific(3, -4), "3e-4");
        assert_eq!(scientific(15, -4), "1.5e-3");
        assert_eq!(scientific(-200, 3), "-2e5");
        assert_eq!(short_value(0.98234), "0.982");
        assert_eq!(short_value(3e-4), "3e-4");
        assert_eq!(short_value(2.0), "2");
        assert_eq!(nice_step(0.7), (1, 0));
        assert_eq!(nice_step(0.03), (5, -2));
        assert_eq!(nice_step(120.0), (2, 2));
        let axis = Axis::linear(0.0, 600.0, 6);
        assert_eq!(axis.labels, ["0", "100", "200", "300", "400", "500", "600"]);
        let axis = Axis::linear(0.0, 3e-3, 6);
        assert_eq!(
            axis.labels,
            ["0", "5e-4", "1e-3", "1.5e-3", "2e-3", "2.5e-3", "3e-3"]
        );
        let axis = Axis::linear(-0.3, 0.3, 6);
        assert_eq!(
            axis.labels,
            ["-0.3", "-0.2", "-0.1", "0", "0.1", "0.2", "0.3"]
        );
        let axis = Axis::log((3e-4, 5.0));
        assert_eq!(axis.labels, ["1e-4", "0.001", "0.01", "0.1", "1", "10"]);
        assert_eq!(axis.minor.len(), 5 * 8);
        assert!(axis.lo <= 3e-4 && axis.hi >= 5.0);
    }
}
