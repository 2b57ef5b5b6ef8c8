//! The learner track: a copy of the course in `learn/` where the bodies a learner writes are
//! `todo!()` stubs, and the course's own tests check them (book: "How to use this course").
//!
//! An exercise is marked in the chapter code by two mdBook anchor lines, which mdBook drops
//! from every listing, so the book shows the solution without them:
//!
//! ```text
//!     // ANCHOR: learn_rms_norm_ref ch02: y = x / sqrt(mean(x^2) + eps) * g, row by row
//!     ... the solution ...
//!     // ANCHOR_END: learn_rms_norm_ref
//! ```
//!
//! Stubbing replaces the lines between the two with `todo!("ch02 rms_norm_ref: <hint>")`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use transformer_course::graph::error::{CourseError, Result};
use transformer_course::graph::files::write_atomic;

const START: &str = "// ANCHOR: learn_";
const END: &str = "// ANCHOR_END: learn_";

/// One marked body.
#[derive(Clone, Debug, PartialEq)]
pub struct Exercise {
    /// `ch02`.
    pub chapter: String,
    /// The marker's name, usually the function's: `rms_norm_ref`.
    pub name: String,
    /// One line naming the formula and the shapes.
    pub hint: String,
    /// Lines strictly between the two markers (0-based, end exclusive).
    lines: std::ops::Range<usize>,
    indent: String,
}

impl Exercise {
    /// The line that replaces the solution: `todo!("ch02 rms_norm_ref: <hint>")`.
    fn stub_line(&self) -> String {
        let message = format!("{} {}: {}", self.chapter, self.name, self.hint);
        let message = message.replace('{', "{{").replace('}', "}}"); // todo! formats
        format!("{}todo!({message:?})", self.indent)
    }

    /// Whether `text` (the file) holds the stub, not a solution, in this exercise.
    fn is_stub(&self, lines: &[&str]) -> bool {
        lines[self.lines.clone()] == [self.stub_line().as_str()]
    }
}

fn bad(file: &Path, line: usize, problem: String) -> CourseError {
    CourseError::File {
        path: file.to_path_buf(),
        problem: format!("line {}: {problem}", line + 1),
    }
}

/// The exercises marked in `text`, the contents of `file` (named in errors).
pub fn parse(file: &Path, text: &str) -> Result<Vec<Exercise>> {
    let mut found = Vec::new();
    let mut open: Option<(usize, Exercise)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix(START) {
            if let Some((_, ex)) = &open {
                let problem = format!("an exercise starts inside '{}'", ex.name);
                return Err(bad(file, i, problem));
            }
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            let (chapter, hint) = tail.split_once(": ").unwrap_or(("", ""));
            let well_formed = chapter.len() == 4
                && chapter.starts_with("ch")
                && chapter[2..].bytes().all(|b| b.is_ascii_digit())
                && !hint.trim().is_empty();
            if !well_formed {
                let problem = format!("'learn_{name}' needs 'chNN: <hint>' after its name");
                return Err(bad(file, i, problem));
            }
            let ex = Exercise {
                chapter: chapter.into(),
                name: name.into(),
                hint: hint.trim().into(),
                lines: i + 1..i + 1,
                indent: line[..line.len() - trimmed.len()].into(),
            };
            open = Some((i, ex));
        } else if let Some(name) = trimmed.strip_prefix(END) {
            let Some((_, mut ex)) = open.take() else {
                return Err(bad(
                    file,
                    i,
                    format!("'learn_{name}' ends but never started"),
                ));
            };
            if name.trim() != ex.name {
                let problem = format!("'learn_{}' ends as 'learn_{name}'", ex.name);
                return Err(bad(file, i, problem));
            }
            ex.lines.end = i;
            found.push(ex);
        }
    }
    if let Some((start, ex)) = open {
        return Err(bad(file, start, format!("'learn_{}' never ends", ex.name)));
    }
    Ok(found)
}

/// `text` with the exercises of `chapters` replaced by their stubs (all if `None`).
pub fn stub(file: &Path, text: &str, chapters: Option<&[String]>) -> Result<String> {
    let exercises = parse(file, text)?;
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::with_capacity(lines.len());
    let mut next = 0;
    for ex in &exercises {
        if chapters.is_some_and(|c| !c.contains(&ex.chapter)) {
            continue;
        }
        out.extend(lines[next..ex.lines.start].iter().map(|l| l.to_string()));
        out.push(ex.stub_line());
        next = ex.lines.end;
    }
    out.extend(lines[next..].iter().map(|l| l.to_string()));
    let mut text = out.join("\n");
    text.push('\n');
    Ok(text)
}

/// The environment variable that turns a [`switched`] chapter's exercises into stubs.
pub const STUBBED_VAR: &str = "COURSE_STUBBED";

/// `text` with every exercise made switchable (for `learn check`): the solution stays, preceded
/// by the exercise's stub, which runs instead when the environment variable [`STUBBED_VAR`]
/// names the exercise's chapter. One build of such a crate then checks every chapter's tests
/// against that chapter's stubs, where a crate per chapter took one build each. The block
/// keeps the solution's names to itself, as a `todo!()` in its place would.
pub fn switched(file: &Path, text: &str) -> Result<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<String> = Vec::with_capacity(lines.len());
    let mut next = 0;
    for ex in parse(file, text)? {
        out.extend(lines[next..ex.lines.start].iter().map(|l| l.to_string()));
        let i = &ex.indent;
        out.push(format!(
            "{i}{{ static STUBBED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();"
        ));
        out.push(format!(
            "{i}if *STUBBED.get_or_init(|| std::env::var_os({STUBBED_VAR:?}).is_some_and(|c| c == {:?})) {{",
            ex.chapter
        ));
        out.push(format!("    {}", ex.stub_line()));
        out.push(format!("{i}}}"));
        out.extend(lines[ex.lines.clone()].iter().map(|l| l.to_string()));
        out.push(format!("{i}}}"));
        next = ex.lines.end;
    }
    out.extend(lines[next..].iter().map(|l| l.to_string()));
    Ok(out.join("\n") + "\n")
}

/// Make every exercise of the workspace `dir` switchable ([`switched`]).
pub fn switch_workspace(root: &Path, dir: &Path) -> Result<()> {
    for file in chapter_files(root)? {
        let text = read(&root.join(&file))?;
        if !parse(&file, &text)?.is_empty() {
            write(&dir.join(&file), &switched(&file, &text)?)?;
        }
    }
    Ok(())
}

/// Every `.rs` file under `root/chapters`, relative to `root`, sorted.
fn chapter_files(root: &Path) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let entries = std::fs::read_dir(dir).map_err(|source| CourseError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, root, out)?;
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(&root.join("chapters"), root, &mut out)?;
    out.sort();
    Ok(out)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| CourseError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Every exercise of the course under `root`, with its file.
pub fn exercises(root: &Path) -> Result<Vec<(PathBuf, Exercise)>> {
    let mut all = Vec::new();
    for file in chapter_files(root)? {
        let text = read(&root.join(&file))?;
        all.extend(parse(&file, &text)?.into_iter().map(|e| (file.clone(), e)));
    }
    Ok(all)
}

/// Replace the exercises of `chapters` in the workspace `dir` by stubs, where they still hold
/// the course's solution (a learner's own attempt is never overwritten). Returns how many.
pub fn stub_workspace(root: &Path, dir: &Path, chapters: &[String]) -> Result<usize> {
    let mut count = 0;
    for file in chapter_files(root)? {
        let (solution, mine) = (read(&root.join(&file))?, read(&dir.join(&file))?);
        let wanted: Vec<Exercise> = parse(&file, &solution)?
            .into_iter()
            .filter(|e| chapters.contains(&e.chapter))
            .collect();
        if wanted.is_empty() {
            continue;
        }
        if mine != solution {
            // The learner has edited this file: stub only the untouched exercises.
            let theirs = parse(&file, &mine)?;
            let (sol_lines, my_lines): (Vec<&str>, Vec<&str>) =
                (solution.lines().collect(), mine.lines().collect());
            let untouched: Vec<String> = wanted
                .iter()
                .filter(|w| {
                    theirs.iter().any(|t| {
                        t.name == w.name && my_lines[t.lines.clone()] == sol_lines[w.lines.clone()]
                    })
                })
                .map(|w| w.name.clone())
                .collect();
            let text = stub_named(&file, &mine, &untouched)?;
            count += untouched.len();
            write(&dir.join(&file), &text)?;
        } else {
            count += wanted.len();
            write(&dir.join(&file), &stub(&file, &solution, Some(chapters))?)?;
        }
    }
    Ok(count)
}

/// `text` with the exercises named in `names` stubbed.
fn stub_named(file: &Path, text: &str, names: &[String]) -> Result<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<String> = Vec::new();
    let mut next = 0;
    for ex in parse(file, text)?
        .iter()
        .filter(|e| names.contains(&e.name))
    {
        out.extend(lines[next..ex.lines.start].iter().map(|l| l.to_string()));
        out.push(ex.stub_line());
        next = ex.lines.end;
    }
    out.extend(lines[next..].iter().map(|l| l.to_string()));
    Ok(out.join("\n") + "\n")
}

fn write(path: &Path, text: &str) -> Result<()> {
    write_atomic(path, text.as_bytes())
}

/// Per chapter: (exercises, still stubs) in the workspace `dir`.
pub fn progress(dir: &Path) -> Result<BTreeMap<String, (usize, usize)>> {
    let mut table: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for file in chapter_files(dir)? {
        let text = read(&dir.join(&file))?;
        let lines: Vec<&str> = text.lines().collect();
        for ex in parse(&file, &text)? {
            let row = table.entry(ex.chapter.clone()).or_default();
            row.0 += 1;
            row.1 += usize::from(ex.is_stub(&lines));
        }
    }
    Ok(table)
}

/// The outcome of one chapter's tests.
#[derive(Debug, Default)]
pub struct TestRun {
    /// Tests that passed.
    pub passed: Vec<String>,
    /// Tests that failed, each with the first line of its panic message.
    pub failed: Vec<(String, String)>,
    /// The build's error, if the workspace did not compile.
    pub build_error: Option<String>,
}

/// Build the library's tests in the crate at `dir` without running them: `Some(first lines
/// of the error)` if it does not compile.
pub fn build_tests(dir: &Path, target_dir: &Path) -> Result<Option<String>> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(dir)
        .args(["test", "--lib", "--no-run"])
        .env("CARGO_TARGET_DIR", target_dir)
        .output()
        .map_err(|source| CourseError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    Ok((!out.status.success()).then(|| first_error(&String::from_utf8_lossy(&out.stderr))))
}

/// The first error of a cargo build's output, up to 12 lines.
fn first_error(stderr: &str) -> String {
    (stderr.lines())
        .skip_while(|l| !l.starts_with("error"))
        .take(12)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Run the library tests of `chapter` (e.g. `ch02`) in the crate at `dir`. With `stubbed`,
/// the crate is a [`switched`] one and that chapter's stubs run instead of its solutions.
pub fn run_chapter_tests(
    dir: &Path,
    chapter: &str,
    target_dir: Option<&Path>,
    stubbed: bool,
) -> Result<TestRun> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    if stubbed {
        cmd.env(STUBBED_VAR, chapter);
    }
    cmd.current_dir(dir)
        .args([
            "test",
            "--lib",
            "--no-fail-fast",
            "--",
            "--test-threads",
            "2",
        ])
        .arg(format!("{chapter}_"));
    if let Some(t) = target_dir {
        cmd.env("CARGO_TARGET_DIR", t);
    }
    let out = cmd.output().map_err(|source| CourseError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut run = TestRun::default();
    if !stdout.contains("running ") {
        run.build_error = Some(first_error(&stderr));
        return Ok(run);
    }
    let mut messages: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in stdout.lines() {
        if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|l| l.strip_suffix(" stdout ----"))
        {
            current = Some(name.to_string());
        } else if let Some(name) = &current {
            let message = line.trim();
            if !message.is_empty()
                && !message.starts_with("thread '")
                && !message.starts_with("note:")
                && !messages.contains_key(name)
            {
                messages.insert(name.clone(), message.to_string());
            }
        }
        if let Some(rest) = line.strip_prefix("test ") {
            if let Some(name) = rest.strip_suffix(" ... ok") {
                run.passed.push(name.to_string());
            } else if let Some(name) = rest.strip_suffix(" ... FAILED") {
                run.failed.push((name.to_string(), String::new()));
            }
        }
    }
    for (name, message) in &mut run.failed {
        *message = messages.remove(name.as_str()).unwrap_or_default();
    }
    Ok(run)
}

/// `test name  # reason` lines (blank lines and `#` comments skipped) -> name -> reason.
pub fn parse_exempt(text: &str) -> BTreeMap<&str, &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, reason) = l.split_once('#').unwrap_or((l, ""));
            (name.trim(), reason.trim())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOLUTION: &str = "\
pub fn double(x: f32) -> f32 {
    // ANCHOR: learn_double ch02: y = 2 x, with {braces} and \"quotes\"
    let y = 2.0 * x;
    y
    // ANCHOR_END: learn_double
}
";

    #[test]
    fn a_marked_body_becomes_a_todo_naming_chapter_and_hint() {
        let file = Path::new("chapters/ch02/mod.rs");
        let ex = parse(file, SOLUTION).unwrap();
        assert_eq!((ex.len(), ex[0].chapter.as_str()), (1, "ch02"));
        let stubbed = stub(file, SOLUTION, None).unwrap();
        let want = "    todo!(\"ch02 double: y = 2 x, with {{braces}} and \\\"quotes\\\"\")";
        assert_eq!(stubbed.lines().nth(2).unwrap(), want, "{stubbed}");
        assert_eq!(stubbed.lines().count(), SOLUTION.lines().count() - 1);
        // Stubbing another chapter changes nothing; a stub is recognised as one.
        let other = stub(file, SOLUTION, Some(&["ch03".to_string()])).unwrap();
        assert_eq!(other, SOLUTION);
        let lines: Vec<&str> = stubbed.lines().collect();
        assert!(parse(file, &stubbed).unwrap()[0].is_stub(&lines));
        let lines: Vec<&str> = SOLUTION.lines().collect();
        assert!(!ex[0].is_stub(&lines));
    }

    #[test]
    fn a_switched_body_keeps_the_solution_behind_its_chapters_stub() {
        let file = Path::new("chapters/ch02/mod.rs");
        let want = "\
pub fn double(x: f32) -> f32 {
    // ANCHOR: learn_double ch02: y = 2 x, with {braces} and \"quotes\"
    { static STUBBED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *STUBBED.get_or_init(|| std::env::var_os(\"COURSE_STUBBED\").is_some_and(|c| c == \"ch02\")) {
        todo!(\"ch02 double: y = 2 x, with {{braces}} and \\\"quotes\\\"\")
    }
    let y = 2.0 * x;
    y
    }
    // ANCHOR_END: learn_double
}
";
        assert_eq!(switched(file, SOLUTION).unwrap(), want);
        // A file without exercises is unchanged.
        assert_eq!(switched(file, "fn f() {}\n").unwrap(), "fn f() {}\n");
    }

    #[test]
    fn malformed_markers_are_named_with_their_line() {
        let file = Path::new("x.rs");
        let cases = [
            (
                "// ANCHOR: learn_a ch02: h\n",
                "line 1: 'learn_a' never ends",
            ),
            (
                "// ANCHOR: learn_a ch02: h\n// ANCHOR_END: learn_b\n",
                "ends as 'learn_b'",
            ),
            (
                "// ANCHOR_END: learn_a\n",
                "'learn_a' ends but never started",
            ),
            (
                "// ANCHOR: learn_a chapter two: h\n",
                "needs 'chNN: <hint>'",
            ),
            ("// ANCHOR: learn_a ch02:\n", "needs 'chNN: <hint>'"),
            (
                "// ANCHOR: learn_a ch02: h\n// ANCHOR: learn_b ch02: h\n",
                "line 2: an exercise starts inside 'a'",
            ),
        ];
        for (text, want) in cases {
            let err = parse(file, text).unwrap_err().to_string();
            assert!(
                err.contains(want) && err.contains("x.rs"),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn exemptions_are_names_with_reasons() {
        let table = parse_exempt("# comment\n\na::b  # why\nc::d\n");
        assert_eq!(table.get("a::b"), Some(&"why"));
        assert_eq!(table.get("c::d"), Some(&""));
        assert_eq!(table.len(), 2);
    }
}
