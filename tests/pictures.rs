//! Graph pictures are drawn offline: DOT text that names every op and view, and an SVG.

use transformer_course::prelude::*;

fn affine_graph() -> (Graph, Affine) {
    let mut cx = Graph::new();
    let g = affine(&mut cx);
    (cx, g)
}

#[test]
fn dot_names_every_node_and_edge_view() {
    let (cx, _) = affine_graph();
    let dot = viz::to_dot(&cx);
    assert!(dot.starts_with("digraph"));
    for label in [
        "Input(x)",
        "Input(W)",
        "Input(c)",
        "Mul",
        "SumReduce(2)",
        "Add",
    ] {
        assert!(dot.contains(label), "missing {label} in\n{dot}");
    }
    // One arrow per data edge: Mul has 2 inputs, SumReduce 1, Add 2.
    assert_eq!(dot.matches("->").count(), 5);
    assert!(
        dot.contains("[n, o*, i]"),
        "broadcast views are marked:\n{dot}"
    );
}

#[test]
fn svg_is_drawn_without_network() {
    let (cx, _) = affine_graph();
    let svg = viz::to_svg(&cx).unwrap();
    assert!(svg.contains("<svg"));
    assert!(svg.contains("SumReduce(2)"));
    // The only URL in the file is the SVG namespace, which is an identifier, not a fetch.
    let urls = svg.matches("http").count();
    assert_eq!(
        urls,
        svg.matches("http://www.w3.org/").count(),
        "external reference in SVG"
    );
}

#[test]
fn save_writes_dot_and_svg_atomically() {
    let (cx, _) = affine_graph();
    let dir = std::env::temp_dir().join(format!("tc-pictures-{}", std::process::id()));
    let svg_path = viz::save(&cx, &dir.join("affine")).unwrap();
    assert!(svg_path.ends_with("affine.svg"));
    let dot = std::fs::read_to_string(dir.join("affine.dot")).unwrap();
    assert_eq!(dot, viz::to_dot(&cx));
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn saving_into_an_unwritable_place_names_the_path() {
    let (cx, _) = affine_graph();
    let err = viz::save(&cx, std::path::Path::new("/proc/forbidden/affine")).unwrap_err();
    assert!(err.to_string().contains("/proc/forbidden"), "{err}");
}
