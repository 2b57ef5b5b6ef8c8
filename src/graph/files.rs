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

/// Bytes of memory the machine can give a new allocation without swapping (`MemAvailable` in
/// `/proc/meminfo`), or `None` where there is no such reading.
pub fn memory_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// The element types a token array may have in a NumPy `.npy` file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NpyDtype {
    /// `<u2`: little-endian u16 (what CS336's tokenizer scripts save).
    U16,
    /// `<u4`: little-endian u32.
    U32,
    /// `<i4`: little-endian i32.
    I32,
    /// `<i8`: little-endian i64.
    I64,
}

impl NpyDtype {
    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            NpyDtype::U16 => 2,
            NpyDtype::U32 | NpyDtype::I32 => 4,
            NpyDtype::I64 => 8,
        }
    }
}

/// What the header of a 1-D `.npy` array says: element type, length, where the data starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NpyHeader {
    /// Element type.
    pub dtype: NpyDtype,
    /// Number of elements.
    pub len: usize,
    /// Byte offset of the first element.
    pub data_offset: u64,
}

/// Parse the header of a `.npy` file (format versions 1–3) holding a 1-D, C-order array of
/// `<u2`, `<u4`, `<i4` or `<i8`, as `np.save(path, np.array(ids, dtype=np.uint16))` writes it.
/// `start` is the file's first bytes (at least the header; 64 kB is plenty). Anything else is an
/// error saying what was found.
pub fn parse_npy_header(start: &[u8]) -> std::result::Result<NpyHeader, String> {
    if start.len() < 10 || &start[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (no \\x93NUMPY magic)".into());
    }
    let (header_len, at) = match start[6] {
        1 => (u16::from_le_bytes([start[8], start[9]]) as usize, 10),
        2 | 3 if start.len() >= 12 => {
            let n = u32::from_le_bytes([start[8], start[9], start[10], start[11]]);
            (n as usize, 12)
        }
        v => {
            return Err(format!(
                ".npy format version {v} is not supported (1, 2 or 3)"
            ))
        }
    };
    let header = start
        .get(at..at + header_len)
        .ok_or_else(|| format!("the .npy header claims {header_len} bytes; the file is shorter"))?;
    let header = std::str::from_utf8(header).map_err(|_| "the .npy header is not text")?;
    // The header is a Python dict literal: {'descr': '<u2', 'fortran_order': False, 'shape': (n,), }
    let field = |key: &str| -> std::result::Result<&str, String> {
        let i = header
            .find(&format!("'{key}':"))
            .ok_or_else(|| format!("the .npy header has no '{key}': {header}"))?;
        Ok(header[i + key.len() + 3..].trim_start())
    };
    let descr = field("descr")?;
    let dtype = match descr.split('\'').nth(1) {
        Some("<u2") | Some("|u2") => NpyDtype::U16,
        Some("<u4") => NpyDtype::U32,
        Some("<i4") => NpyDtype::I32,
        Some("<i8") => NpyDtype::I64,
        other => {
            return Err(format!(
                "dtype {} is not a token type: save ids as uint16, uint32, int32 or int64 (little-endian)",
                other.unwrap_or("?")
            ))
        }
    };
    if !field("fortran_order")?.starts_with("False") {
        return Err("the array is in Fortran order; save a C-order array".into());
    }
    let shape = field("shape")?;
    let dims: Vec<&str> = shape
        .trim_start_matches('(')
        .split(')')
        .next()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    let [n] = dims[..] else {
        return Err(format!(
            "the array has shape ({}); token arrays are 1-D",
            dims.join(", ")
        ));
    };
    let len = n
        .parse()
        .map_err(|_| format!("the .npy shape ({n},) is not a length"))?;
    Ok(NpyHeader {
        dtype,
        len,
        data_offset: (at + header_len) as u64,
    })
}
