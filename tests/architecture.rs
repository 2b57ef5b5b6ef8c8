//! The crate's layering, checked from the source: every `crate::` path in the library's code
//! must point at its own layer or one below it.
//!
//! 1. `src/graph/` and `src/plot.rs`: the foundation; they use only each other.
//! 2. `chapters/chNN_*/`: the lessons; chapter N uses the foundation, chapters before N, and of
//!    the backend only `backend::Device` (how to compile), never its passes or kernels.
//! 3. `src/backend/`: devices and the fast CPU passes; it uses the foundation, never a chapter.
//! 4. The binary (`src/main.rs`, `src/cli.rs`): clap and printing, outside the library.
//!
//! Test code (`tests.rs` and `*_tests.rs` files, `src/testing.rs`) may use anything: a chapter's gradient checks
//! need chapter 8, for instance.

use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Layer {
    Foundation,
    Chapter(u32),
    Backend,
    Root,
    Test,
}

fn layer_of(path: &Path) -> Layer {
    let p = path.to_string_lossy().replace('\\', "/");
    if p.ends_with("/tests.rs") || p.ends_with("_tests.rs") || p.ends_with("src/testing.rs") {
        return Layer::Test;
    }
    if p.contains("src/graph/") || p.ends_with("src/plot.rs") {
        return Layer::Foundation;
    }
    if p.contains("src/backend/") {
        return Layer::Backend;
    }
    if let Some(rest) = p.split("chapters/ch").nth(1) {
        return Layer::Chapter(rest[..2].parse().expect("chapters/chNN_..."));
    }
    assert!(p.ends_with("src/lib.rs"), "unclassified source file {p}");
    Layer::Root
}

/// The layer a `crate::` path points into, from its first one or two segments.
fn target_of(path: &str) -> Option<Layer> {
    let mut segments = path.split("::");
    match segments.next()? {
        "graph" | "plot" => Some(Layer::Foundation),
        "backend" => Some(Layer::Backend),
        s if s.starts_with("ch") && s.len() > 4 => s[2..4].parse().ok().map(Layer::Chapter),
        "testing" => Some(Layer::Test),
        _ => None,
    }
}

/// Why `from` may not use `path` (pointing into `to`), if it may not.
fn violation(from: Layer, path: &str, to: Layer) -> Option<&'static str> {
    match (from, to) {
        (Layer::Test | Layer::Root, _) => None,
        (_, Layer::Test) => Some("library code uses test helpers"),
        (Layer::Foundation, Layer::Foundation) => None,
        (Layer::Foundation, _) => Some("the foundation uses a layer above it"),
        (Layer::Chapter(_), Layer::Foundation) => None,
        (Layer::Chapter(_), Layer::Backend) => (path != "backend::Device")
            .then_some("a chapter uses the backend's internals (only backend::Device is public)"),
        (Layer::Chapter(n), Layer::Chapter(m)) => {
            (m > n).then_some("a chapter uses a later chapter")
        }
        (Layer::Backend, Layer::Foundation | Layer::Backend) => None,
        (Layer::Backend, Layer::Chapter(_)) => Some("the backend uses a chapter"),
        (Layer::Chapter(_) | Layer::Backend, Layer::Root) => None, // `crate::Result` and such
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::a::B` path in the code (not the comments) of `text`, as `a::B`, with its line.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            let path: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            // Keep two segments: `backend::Device`, `graph::tensor`, `ch08_autograd::Gradient`.
            let two: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).take(2).collect();
            found.push((i + 1, two.join("::")));
        }
    }
    found
}

fn check(files: &[PathBuf]) -> Vec<String> {
    let mut problems = Vec::new();
    for file in files {
        let from = layer_of(file);
        let text = std::fs::read_to_string(file).unwrap();
        // Unit tests inside a library file are test code.
        let library = text.split("#[cfg(test)]").next().unwrap_or("");
        for (line, path) in crate_paths(library) {
            let Some(to) = target_of(&path) else {
                continue;
            };
            if let Some(why) = violation(from, &path, to) {
                problems.push(format!("{}:{line}: crate::{path}: {why}", file.display()));
            }
        }
    }
    problems
}

#[test]
fn every_layer_depends_only_on_the_layers_below_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src/graph"), &mut files);
    rust_files(&root.join("src/backend"), &mut files);
    rust_files(&root.join("chapters"), &mut files);
    files.extend(["src/plot.rs", "src/lib.rs"].map(|f| root.join(f)));
    assert!(files.len() > 40, "found only {} files", files.len());
    let problems = check(&files);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_command_line_is_not_part_of_the_library() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
    assert!(
        !lib.contains("mod cli"),
        "src/lib.rs declares the cli module"
    );
    let main = std::fs::read_to_string(root.join("src/main.rs")).unwrap();
    assert!(main.contains("mod cli;"), "the binary owns the cli module");
}

#[test]
fn the_checker_catches_each_kind_of_violation() {
    // Each line below breaks one rule; the checker must name every one of them.
    let dir = std::env::temp_dir().join(format!("architecture-{}", std::process::id()));
    let cases = [
        ("src/graph/bad.rs", "use crate::ch01_linear::Linear;"),
        ("src/graph/worse.rs", "let d = crate::backend::Device::Cpu;"),
        (
            "chapters/ch03_x/mod.rs",
            "use crate::ch05_attention::softmax;",
        ),
        (
            "chapters/ch04_x/mod.rs",
            "use crate::backend::fast_cpu::ProfileOps;",
        ),
        ("src/backend/bad.rs", "use crate::ch08_autograd::backward;"),
        ("src/backend/test_use.rs", "use crate::testing::uniform;"),
    ];
    let mut files = Vec::new();
    for (path, line) in cases {
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(
            &file,
            format!("// crate::ch11_training in a comment is fine\n{line}\n"),
        )
        .unwrap();
        files.push(file);
    }
    // Allowed uses: none of these may be reported.
    let fine = [
        (
            "chapters/ch05_y/mod.rs",
            "use crate::ch04_rope::Rope; use crate::backend::Device;",
        ),
        (
            "src/backend/ok.rs",
            "use crate::graph::primitive::inputs_of;",
        ),
        (
            "chapters/ch02_y/tests.rs",
            "use crate::ch08_autograd::GradCheck;",
        ),
    ];
    for (path, line) in fine {
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, line).unwrap();
        files.push(file);
    }
    let problems = check(&files);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(problems.len(), cases.len(), "{problems:#?}");
    for (path, _) in cases {
        assert!(
            problems.iter().any(|p| p.contains(path)),
            "{path} not caught"
        );
    }
}
