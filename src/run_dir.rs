//! A training run's output folder: claimed by one process at a time, never overwritten by
//! accident, cleaned of what crashed saves left, and holding the run's whole loss history.
//! Infrastructure for `train`; no lesson here.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use transformer_course::graph::error::{CourseError, Result};
use transformer_course::graph::files::write_atomic;

const LOCK: &str = ".lock";
/// The run's losses, one `step,kind,loss` line each (`kind` is `train` or `eval`).
pub const HISTORY: &str = "losses.csv";

/// (step, loss) points of one curve.
pub type Curve = Vec<(f32, f32)>;

/// The output folder of a run, locked for as long as this value lives.
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// Create (if needed) and lock `path`: an error names the other process if one holds it.
    /// A lock left by a process that no longer runs (killed) is taken over. Temporary files of
    /// saves that never finished are removed: with the lock held, no save is in progress.
    pub fn claim(path: &Path) -> Result<Self> {
        let io = |source| CourseError::Io {
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(path).map_err(io)?;
        let lock = path.join(LOCK);
        for _ in 0..2 {
            match std::fs::File::options()
                .write(true)
                .create_new(true)
                .open(&lock)
            {
                Ok(mut f) => {
                    write!(f, "{}", std::process::id()).map_err(io)?;
                    let dir = Self {
                        path: path.to_path_buf(),
                    };
                    dir.remove_stale_temporaries()?;
                    return Ok(dir);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&lock).unwrap_or_default();
                    let alive = holder.trim().parse::<u32>().is_ok_and(|pid| {
                        Path::new(&format!("/proc/{pid}")).exists() && pid != std::process::id()
                    });
                    if alive {
                        return Err(CourseError::File {
                            path: path.to_path_buf(),
                            problem: format!(
                                "another run (pid {}) is writing here; wait for it, stop it, or \
                                 choose another --out",
                                holder.trim()
                            ),
                        });
                    }
                    std::fs::remove_file(&lock).map_err(io)?; // its holder is gone
                }
                Err(e) => return Err(io(e)),
            }
        }
        Err(CourseError::File {
            path: lock,
            problem: "could not take the lock".into(),
        })
    }

    /// `write_atomic` names its temporary files `.<name>.tmp<pid>`; a kill during a save leaves
    /// one behind, as large as a checkpoint.
    fn remove_stale_temporaries(&self) -> Result<()> {
        let entries = std::fs::read_dir(&self.path).map_err(|source| CourseError::Io {
            path: self.path.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') && name.contains(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// The losses recorded so far, up to and including `step` (a resumed run drops what a
    /// crashed run logged after its last checkpoint). Empty if there is no history.
    pub fn read_history(&self, step: u64) -> Result<(Curve, Curve)> {
        let path = self.path.join(HISTORY);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(Default::default());
        };
        let (mut train, mut eval) = (Vec::new(), Vec::new());
        for (i, line) in text.lines().enumerate().skip(1) {
            let bad = || CourseError::File {
                path: path.clone(),
                problem: format!("line {}: expected step,kind,loss; got {line:?}", i + 1),
            };
            let mut parts = line.split(',');
            let (Some(s), Some(kind), Some(loss), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(bad());
            };
            let s: u64 = s.parse().map_err(|_| bad())?;
            let loss: f32 = loss.parse().map_err(|_| bad())?;
            if s > step {
                continue;
            }
            match kind {
                "train" => train.push((s as f32, loss)),
                "eval" => eval.push((s as f32, loss)),
                _ => return Err(bad()),
            }
        }
        Ok((train, eval))
    }

    /// Write the whole history (atomically, like the checkpoint it goes with).
    pub fn write_history(&self, train: &[(f32, f32)], eval: &[(f32, f32)]) -> Result<()> {
        let mut text = String::from("step,kind,loss\n");
        for (kind, points) in [("train", train), ("eval", eval)] {
            for (s, l) in points {
                text.push_str(&format!("{},{kind},{l}\n", *s as u64));
            }
        }
        write_atomic(&self.path.join(HISTORY), text.as_bytes())
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.path.join(LOCK));
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst); // async-signal-safe: one atomic store
}

/// From now on, Ctrl-C (SIGINT) sets a flag that [`interrupted`] reads instead of killing the
/// process, so the training loop can save a checkpoint at the step it is on and exit cleanly.
pub fn catch_interrupt() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

/// True once Ctrl-C was pressed (after [`catch_interrupt`]).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Let a closed pipe end the process quietly (`inspect ... | head`), as it does for other Unix
/// tools, instead of Rust's default of a panic on the next `println!`.
pub fn quiet_broken_pipe() {
    // SAFETY: restoring the default disposition of SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
