//! `transformer-course learn ...`: create the learner's workspace, stub chapters, show progress,
//! and (for CI) check that every chapter's tests fail on its stubs.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Subcommand;

use crate::learn::{self, TestRun};
use transformer_course::graph::error::{CourseError, Result};

/// Tests that may pass on a chapter's stubs, each with the reason (they check code that is not
/// an exercise, such as error messages of constructors).
const EXEMPT: &str = "chapters/learner_exempt.txt";

/// The course's own folder (the solutions), where `cargo run` builds this binary from.
fn course_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What `learn` does.
#[derive(Subcommand, Debug)]
pub enum LearnAction {
    /// Copy the course into DIR (default learn/), ready for `learn start chNN`.
    Init {
        /// The workspace folder.
        #[arg(long, default_value = "learn")]
        dir: PathBuf,
        /// Stub every chapter now ("my own code all the way"); by default chapters keep the
        /// course's solutions until you start them.
        #[arg(long)]
        all: bool,
    },
    /// Replace a chapter's exercises by `todo!()` stubs in DIR (your own edits are kept).
    Start {
        /// Chapters, e.g. ch02 ch03.
        #[arg(required = true)]
        chapters: Vec<String>,
        /// The workspace folder.
        #[arg(long, default_value = "learn")]
        dir: PathBuf,
    },
    /// Per chapter: exercises, how many you have written, and the chapter's tests on your code.
    Status {
        /// The workspace folder.
        #[arg(long, default_value = "learn")]
        dir: PathBuf,
    },
    /// List every exercise with its hint.
    List,
    /// For CI: in a scratch copy, check that the crate compiles with the exercises stubbed and
    /// that every test of each chapter fails on that chapter's stubs.
    Check {
        /// Chapters to check (default: every chapter with exercises).
        chapters: Vec<String>,
    },
}

/// Run one `learn` action.
pub fn run(action: LearnAction) -> Result<()> {
    let root = course_root();
    match action {
        LearnAction::Init { dir, all } => {
            copy_course(&root, &dir)?;
            let mut stubbed = 0;
            if all {
                stubbed = learn::stub_workspace(&root, &dir, &all_chapters(&root)?)?;
            }
            println!(
                "made {} ({} exercises stubbed). Next: `cargo run -- learn start ch01`, write the \
                 bodies that say todo!(), then `cd {} && cargo test ch01_` or `cargo run -- learn status`.",
                dir.display(),
                stubbed,
                dir.display()
            );
            Ok(())
        }
        LearnAction::Start { chapters, dir } => {
            check_workspace(&dir)?;
            let known = all_chapters(&root)?;
            if let Some(c) = chapters.iter().find(|c| !known.contains(c)) {
                return Err(CourseError::Config(format!(
                    "no exercises in '{c}'; chapters with exercises: {}",
                    known.join(" ")
                )));
            }
            let n = learn::stub_workspace(&root, &dir, &chapters)?;
            println!(
                "{n} exercises stubbed in {}; run `cargo run -- learn status`",
                dir.display()
            );
            Ok(())
        }
        LearnAction::Status { dir } => status(&dir),
        LearnAction::List => {
            for (file, ex) in learn::exercises(&root)? {
                println!(
                    "{} {:<28} {}\n     {}",
                    ex.chapter,
                    ex.name,
                    file.display(),
                    ex.hint
                );
            }
            Ok(())
        }
        LearnAction::Check { chapters } => check(&root, chapters),
    }
}

fn all_chapters(root: &Path) -> Result<Vec<String>> {
    let mut chapters: Vec<String> = learn::exercises(root)?
        .into_iter()
        .map(|(_, e)| e.chapter)
        .collect();
    chapters.dedup();
    Ok(chapters)
}

fn check_workspace(dir: &Path) -> Result<()> {
    if dir.join("Cargo.toml").is_file() {
        return Ok(());
    }
    Err(CourseError::File {
        path: dir.to_path_buf(),
        problem: "is not a learner workspace; make one with `cargo run -- learn init`".into(),
    })
}

/// Copy the course's tracked files (`git ls-files`) into `dir`, without the notebooks and CI.
fn copy_course(root: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        return Err(CourseError::File {
            path: dir.to_path_buf(),
            problem: "already exists; `learn start chNN` stubs more chapters in it, or delete it \
                      to begin again"
                .into(),
        });
    }
    let out = Command::new("git")
        .current_dir(root)
        .args(["ls-files", "-z"])
        .output()
        .map_err(|source| CourseError::Io {
            path: root.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        return Err(CourseError::Config(format!(
            "`git ls-files` failed in {}: the learner track copies the course's tracked files",
            root.display()
        )));
    }
    let files = String::from_utf8_lossy(&out.stdout).into_owned();
    let skip = ["notebooks/", ".ci/", "scripts/", ".gitignore"];
    for file in files.split('\0').filter(|f| !f.is_empty()) {
        if skip.iter().any(|s| file.starts_with(s)) {
            continue;
        }
        let (from, to) = (root.join(file), dir.join(file));
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|source| CourseError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        std::fs::copy(&from, &to).map_err(|source| CourseError::Io { path: from, source })?;
    }
    // Another package name: cargo names build outputs after the package and its path relative
    // to the workspace, which a copy shares with the course, so without it a build of the copy
    // would overwrite the course's test binary and be taken for up to date by the course.
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).map_err(|source| CourseError::Io {
        path: manifest.clone(),
        source,
    })?;
    let renamed = text.replacen(
        "name = \"transformer-course\"\nversion",
        "name = \"transformer-course-learner\"\nversion",
        1,
    );
    if renamed == text {
        return Err(CourseError::File {
            path: manifest,
            problem: "has no [package] name = \"transformer-course\" to rename".into(),
        });
    }
    transformer_course::graph::files::write_atomic(&manifest, renamed.as_bytes())?;
    // Its own target folder as well: the workspace's binary must not replace the course's.
    let cargo = dir.join(".cargo");
    std::fs::create_dir_all(&cargo).map_err(|source| CourseError::Io {
        path: cargo.clone(),
        source,
    })?;
    let target = root.join("target").join("learn");
    let config = format!("[build]\ntarget-dir = {:?}\n", target.display().to_string());
    transformer_course::graph::files::write_atomic(&cargo.join("config.toml"), config.as_bytes())
}

/// The progress table, with each started chapter's tests run on the learner's code.
fn status(dir: &Path) -> Result<()> {
    check_workspace(dir)?;
    let progress = learn::progress(dir)?;
    println!("| chapter | exercises | written | tests passing | first failure |");
    println!("|---------|----------:|--------:|--------------:|---------------|");
    for (chapter, (total, stubs)) in &progress {
        let written = total - stubs;
        let (tests, first) = if written == 0 && *stubs > 0 {
            ("not started".to_string(), String::new())
        } else {
            eprint!("running the {chapter} tests...\r");
            let run = learn::run_chapter_tests(dir, chapter, None, false)?;
            summary(&run)
        };
        println!("| {chapter} | {total} | {written} | {tests} | {first} |");
    }
    Ok(())
}

fn summary(run: &TestRun) -> (String, String) {
    if let Some(e) = &run.build_error {
        let first = e.lines().next().unwrap_or("").to_string();
        return ("does not compile".into(), first);
    }
    let total = run.passed.len() + run.failed.len();
    let first = (run.failed.first())
        .map(|(name, message)| format!("{name}: {message}"))
        .unwrap_or_default();
    (format!("{} of {total}", run.passed.len()), first)
}

/// CI: the crate compiles with every exercise stubbed, and every chapter's tests fail on that
/// chapter's stubs (with the solutions of every other chapter in place).
///
/// Two builds in all: the learner's crate, every exercise a `todo!()` (does it compile?), and
/// a [`learn::switched`] crate in which each chapter's stubs are turned on by an environment
/// variable, whose tests then run once per chapter. (A stubbed crate per chapter gave the same
/// table at one build per chapter: 12 builds, about 9 minutes of the CI's time.)
fn check(root: &Path, chapters: Vec<String>) -> Result<()> {
    let chapters = if chapters.is_empty() {
        all_chapters(root)?
    } else {
        chapters
    };
    let scratch = root.join("target").join("learn-check");
    let _ = std::fs::remove_dir_all(&scratch);
    copy_course(root, &scratch)?;
    // Share the course's target folder: dependencies are built once. The copy's package name
    // differs (see `copy_course`), so its test binary never replaces the course's, and only
    // library tests run here (`--lib`), so no binary is built from stubs.
    let target = root.join("target");
    let stubs = learn::stub_workspace(root, &scratch, &chapters)?;
    println!("building the crate with all {stubs} exercises of the checked chapters stubbed");
    if let Some(e) = learn::build_tests(&scratch, &target)? {
        copy_chapters(root, &scratch)?;
        return Err(CourseError::Config(format!(
            "the stubbed crate does not compile:\n{e}"
        )));
    }
    copy_chapters(root, &scratch)?; // the solutions back, then made switchable
    learn::switch_workspace(root, &scratch)?;
    let mut per_chapter: std::collections::BTreeMap<String, usize> = Default::default();
    for (_, ex) in learn::exercises(root)? {
        *per_chapter.entry(ex.chapter).or_default() += 1;
    }
    let mut problems = Vec::new();
    let exempt_text = std::fs::read_to_string(root.join(EXEMPT)).unwrap_or_default();
    let exempt = learn::parse_exempt(&exempt_text);
    println!("| chapter | exercises | tests | failing on the stubs |");
    println!("|---------|----------:|------:|---------------------:|");
    for chapter in &chapters {
        let n = per_chapter.get(chapter).copied().unwrap_or(0);
        let run = learn::run_chapter_tests(&scratch, chapter, Some(&target), true)?;
        if let Some(e) = &run.build_error {
            copy_chapters(root, &scratch)?;
            return Err(CourseError::Config(format!(
                "the switchable crate (learn::switched) does not compile, though the stubbed \
                 one does:\n{e}"
            )));
        }
        let total = run.passed.len() + run.failed.len();
        println!("| {chapter} | {n} | {total} | {} |", run.failed.len());
        if total == 0 {
            problems.push(format!("{chapter}: no tests ran"));
        }
        for name in &run.passed {
            if !exempt.contains_key(name.as_str()) {
                problems.push(format!(
                    "{chapter}: {name} passes on the stubs (make it exercise a stub, or list it \
                     with the reason in {EXEMPT})"
                ));
            }
        }
        for (name, _) in &run.failed {
            if exempt.contains_key(name.as_str()) {
                problems.push(format!(
                    "{chapter}: {name} is listed in {EXEMPT} but fails on the stubs: remove it"
                ));
            }
        }
    }
    copy_chapters(root, &scratch)?;
    if problems.is_empty() {
        println!("every test of every checked chapter fails on its stubs");
        return Ok(());
    }
    for p in &problems {
        eprintln!("{p}");
    }
    Err(CourseError::Config(format!(
        "{} problems with the learner track",
        problems.len()
    )))
}

/// Restore every chapter file of the workspace from the course.
fn copy_chapters(root: &Path, dir: &Path) -> Result<()> {
    for (file, _) in learn::exercises(root)? {
        let from = root.join(&file);
        std::fs::copy(&from, dir.join(&file))
            .map_err(|source| CourseError::Io { path: from, source })?;
    }
    Ok(())
}
