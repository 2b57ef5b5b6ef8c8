//! Writing files safely: whole or not at all.

use std::io::Write;
use std::path::Path;

use crate::graph::error::{CourseError, Result};

/// Write `contents` to `path` atomically: a temporary file in the same folder, flushed to disk,
/// then renamed over `path`. A reader (or a crash) never sees half a file, and an existing file
/// at `path` stays intact until the new one is complete.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let io = |source| CourseError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let file_name = path.file_name().map(|n| n.to_string_lossy().to_string());
    let tmp = path.with_file_name(format!(
        ".{}.tmp{}",
        file_name.unwrap_or_default(),
        std::process::id()
    ));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp); // leave no temporary file behind
    }
    written.map_err(io)
}
