//! Graph pictures without a browser or network: DOT text, and SVG rendered in pure Rust.
//!
//! luminal 0.2.0's `display()` sends the graph to an online Graphviz page. Here we write the
//! DOT ourselves and lay it out with the `layout-rs` crate, so the book, the notebooks and CI
//! all draw the same pictures offline. Also: [`op_listing`], a text form for snapshot tests.
//! See the book's [chapter 0](../../../book/ch00_graphs.html#pictures).

use std::fmt::Write as _;
use std::path::Path;

use luminal::prelude::petgraph::Direction;
use luminal::prelude::*;

use crate::graph::error::{CourseError, Result};
use crate::graph::primitive::inputs_of;

/// Nodes in a deterministic topological order: ties broken by node index.
pub fn topo_order(cx: &Graph) -> Vec<NodeIndex> {
    use std::cmp::Reverse;
    use std::collections::{BinaryHeap, HashMap};
    let mut indegree: HashMap<NodeIndex, usize> = cx
        .graph
        .node_indices()
        .map(|n| (n, cx.graph.edges_directed(n, Direction::Incoming).count()))
        .collect();
    let mut ready: BinaryHeap<Reverse<NodeIndex>> = indegree
        .iter()
        .filter(|(_, &d)| d == 0)
        .map(|(&n, _)| Reverse(n))
        .collect();
    let mut order = Vec::with_capacity(indegree.len());
    while let Some(Reverse(n)) = ready.pop() {
        order.push(n);
        for next in cx.graph.neighbors_directed(n, Direction::Outgoing) {
            let d = indegree.get_mut(&next).expect("node exists");
            *d -= 1;
            if *d == 0 {
                ready.push(Reverse(next));
            }
        }
    }
    order
}

/// A view in words: logical dims (`*` marks a broadcast dim), then any permute, slice or pad.
pub fn describe_view(st: &ShapeTracker) -> String {
    let dims: Vec<String> = st
        .indexes
        .iter()
        .map(|&i| {
            let d = st.dims[i];
            let mut s = format!("{d:?}"); // a number, a letter, or an expression like (v-1)
            if st.fake[i] {
                s.push('*');
            }
            s
        })
        .collect();
    let mut out = format!("[{}]", dims.join(", "));
    if st.indexes.iter().enumerate().any(|(a, &b)| a != b) {
        let _ = write!(out, " permute{:?}", st.indexes.as_slice());
    }
    if st.is_sliced() {
        out.push_str(" sliced");
    }
    if st.is_padded() {
        out.push_str(" padded");
    }
    out
}

/// The op's full label (with parameters), as luminal prints it; inputs as `Input(name)`.
fn op_label(cx: &Graph, node: NodeIndex) -> String {
    let label = format!("{:?}", cx.graph.node_weight(node).expect("node exists"));
    match label.strip_suffix(" (input)") {
        Some(name) => format!("Input({name})"),
        None => label,
    }
}

/// One line per node in topological order: `%3 = Mul(%1 [2, 3*], %2 [2*, 3])`.
///
/// Node numbers are positions in that order, so the listing depends only on the graph's
/// structure: this is what the chapters' `insta` snapshots record.
pub fn op_listing(cx: &Graph) -> String {
    let order = topo_order(cx);
    let number = |n: NodeIndex| order.iter().position(|&m| m == n).expect("node in order");
    let mut out = String::new();
    for (i, &node) in order.iter().enumerate() {
        let args: Vec<String> = inputs_of(cx, node)
            .iter()
            .map(|(src, st)| format!("%{} {}", number(*src), describe_view(st)))
            .collect();
        let call = if args.is_empty() {
            String::new()
        } else {
            format!("({})", args.join(", "))
        };
        let _ = writeln!(out, "%{i} = {}{call}", op_label(cx, node));
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "'")
}

/// The graph as Graphviz DOT: one box per op, one arrow per data edge labelled with its view.
pub fn to_dot(cx: &Graph) -> String {
    let order = topo_order(cx);
    let mut dot = String::from("digraph luminal {\n  node [shape=box];\n");
    for (i, &node) in order.iter().enumerate() {
        let _ = writeln!(dot, "  n{i} [label=\"{}\"];", escape(&op_label(cx, node)));
    }
    for (i, &node) in order.iter().enumerate() {
        for (src, st) in inputs_of(cx, node) {
            let j = order.iter().position(|&m| m == src).expect("node in order");
            let _ = writeln!(
                dot,
                "  n{j} -> n{i} [label=\"{}\"];",
                escape(&describe_view(&st))
            );
        }
    }
    dot.push_str("}\n");
    dot
}

/// Lay out DOT text and draw it as SVG.
pub fn dot_to_svg(dot: &str) -> Result<String> {
    use layout::backends::svg::SVGWriter;
    use layout::gv::{DotParser, GraphBuilder};
    let ast = DotParser::new(dot).process().map_err(CourseError::Render)?;
    let mut builder = GraphBuilder::new();
    builder.visit_graph(&ast);
    let mut visual = builder.get();
    let mut svg = SVGWriter::new();
    visual.do_it(false, false, false, &mut svg);
    Ok(sort_style_rules(&svg.finalize()))
}

/// layout-rs writes its CSS rules in hash-map order; sort them so the same graph always gives
/// the same file (the book's figures are committed and checked for staleness).
fn sort_style_rules(svg: &str) -> String {
    let (Some(start), Some(end)) = (svg.find("<style>\n"), svg.find("</style>")) else {
        return svg.to_string();
    };
    let body = start + "<style>\n".len();
    if end < body {
        return svg.to_string();
    }
    let mut rules: Vec<&str> = svg[body..end].lines().collect();
    rules.sort_unstable();
    let mut out = String::with_capacity(svg.len());
    out.push_str(&svg[..body]);
    for r in rules {
        out.push_str(r);
        out.push('\n');
    }
    out.push_str(&svg[end..]);
    out
}

/// The graph drawn as SVG.
pub fn to_svg(cx: &Graph) -> Result<String> {
    dot_to_svg(&to_dot(cx))
}

pub use crate::graph::files::write_atomic;

/// Write the graph as `<stem>.dot` and `<stem>.svg` (atomically); returns the SVG path.
pub fn save(cx: &Graph, stem: &Path) -> Result<std::path::PathBuf> {
    let dot = to_dot(cx);
    write_atomic(&stem.with_extension("dot"), dot.as_bytes())?;
    let svg_path = stem.with_extension("svg");
    write_atomic(&svg_path, dot_to_svg(&dot)?.as_bytes())?;
    Ok(svg_path)
}

/// Print the graph as an inline picture in an evcxr (Jupyter) notebook cell.
pub fn show(cx: &Graph) -> Result<()> {
    let svg = to_svg(cx)?;
    println!("EVCXR_BEGIN_CONTENT image/svg+xml\n{svg}\nEVCXR_END_CONTENT");
    Ok(())
}
