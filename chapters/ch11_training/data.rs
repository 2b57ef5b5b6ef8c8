//! Data for training: token files (memory-mapped), random batches, a byte-level tokenizer and
//! the copy task's samples.
//!
//! Book page: [Chapter 11](../../../book/ch11_training.html#data).

use std::path::{Path, PathBuf};

use rand::Rng;

use crate::graph::error::{CourseError, Result};
use crate::graph::init::CourseRng;

// ANCHOR: token_file
/// How token ids are stored in a file: little-endian u16 (vocabularies up to 65 536) or u32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TokenWidth {
    /// Two bytes per id: ids up to 65 535.
    U16,
    /// Four bytes per id.
    U32,
}

impl TokenWidth {
    /// Bytes per token.
    pub fn bytes(self) -> usize {
        match self {
            TokenWidth::U16 => 2,
            TokenWidth::U32 => 4,
        }
    }
}

/// A file of token ids, memory-mapped: the OS pages in only what batches touch, so a corpus
/// larger than memory trains as well as a small one.
pub struct TokenFile {
    map: memmap2::Mmap,
    width: TokenWidth,
    path: PathBuf,
}

impl TokenFile {
    /// Map `path`, refusing a file whose size is not a whole number of tokens.
    pub fn open(path: &Path, width: TokenWidth) -> Result<Self> {
        let io = |source| CourseError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; the course never writes a token file while reading it.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        if map.len() % width.bytes() != 0 {
            return Err(CourseError::File {
                path: path.to_path_buf(),
                problem: format!(
                    "{} bytes is not a whole number of {width:?} tokens ({} bytes each)",
                    map.len(),
                    width.bytes()
                ),
            });
        }
        Ok(Self {
            map,
            width,
            path: path.to_path_buf(),
        })
    }

    /// Write `tokens` to `path` atomically, refusing ids that do not fit the width.
    pub fn write(path: &Path, tokens: &[u32], width: TokenWidth) -> Result<()> {
        if let (TokenWidth::U16, Some(big)) = (width, tokens.iter().find(|&&t| t > 0xFFFF)) {
            return Err(CourseError::OutOfRange {
                what: format!("token id {big} for {}", path.display()),
                problem: "U16 files hold ids up to 65535; use U32".into(),
            });
        }
        let bytes: Vec<u8> = match width {
            TokenWidth::U16 => tokens
                .iter()
                .flat_map(|&t| (t as u16).to_le_bytes())
                .collect(),
            TokenWidth::U32 => tokens.iter().flat_map(|&t| t.to_le_bytes()).collect(),
        };
        crate::graph::files::write_atomic(path, &bytes)
    }

    /// The file this was mapped from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Anything that holds a sequence of token ids: a slice in memory or a mapped file.
pub trait TokenSource {
    /// Number of tokens.
    fn len(&self) -> usize;
    /// Token `i`, for `i < len()`.
    fn token(&self, i: usize) -> u32;
    /// True if there are no tokens.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl TokenSource for [u32] {
    fn len(&self) -> usize {
        <[u32]>::len(self)
    }
    fn token(&self, i: usize) -> u32 {
        self[i]
    }
}

impl TokenSource for Vec<u32> {
    fn len(&self) -> usize {
        <[u32]>::len(self)
    }
    fn token(&self, i: usize) -> u32 {
        self[i]
    }
}

impl TokenSource for TokenFile {
    fn len(&self) -> usize {
        self.map.len() / self.width.bytes()
    }
    fn token(&self, i: usize) -> u32 {
        let b = &self.map[i * self.width.bytes()..];
        match self.width {
            TokenWidth::U16 => u16::from_le_bytes([b[0], b[1]]) as u32,
            TokenWidth::U32 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        }
    }
}

/// A contiguous part of a token source (e.g. the last 10 % for validation), without copying.
pub struct TokenRange<T> {
    source: std::sync::Arc<T>,
    start: usize,
    len: usize,
}

impl<T: TokenSource> TokenRange<T> {
    /// Tokens `start..end` of `source` (clamped to its length).
    pub fn new(source: std::sync::Arc<T>, start: usize, end: usize) -> Self {
        let end = end.min(source.len());
        let start = start.min(end);
        Self {
            source,
            start,
            len: end - start,
        }
    }
}

impl<T: TokenSource> TokenSource for TokenRange<T> {
    fn len(&self) -> usize {
        self.len
    }
    fn token(&self, i: usize) -> u32 {
        assert!(i < self.len, "token {i} of a range of {}", self.len);
        self.source.token(self.start + i)
    }
}
// ANCHOR_END: token_file

// ANCHOR: get_batch
/// A batch for the language model: `inputs` and `targets` (batch, context), row-major;
/// `targets` are the inputs shifted left by one (the next token at every position).
#[derive(Clone, Debug, PartialEq)]
pub struct LmBatch {
    /// (batch, context) token ids the model reads.
    pub inputs: Vec<u32>,
    /// (batch, context) next tokens to predict: `inputs` shifted left by one.
    pub targets: Vec<u32>,
    /// Number of rows (sequences).
    pub batch: usize,
    /// Tokens per row.
    pub context: usize,
    /// Where each row starts in the data.
    pub starts: Vec<usize>,
}

/// Sample `batch` windows of `context + 1` tokens at uniform random starts (every start from 0
/// to `len - context - 1` is equally likely): inputs are the first `context`, targets the last.
pub fn get_batch(
    data: &(impl TokenSource + ?Sized),
    batch: usize,
    context: usize,
    rng: &mut CourseRng,
) -> Result<LmBatch> {
    if data.len() < context + 1 {
        return Err(CourseError::OutOfRange {
            what: format!("a data set of {} tokens", data.len()),
            problem: format!(
                "a context of {context} needs at least {} tokens",
                context + 1
            ),
        });
    }
    let starts: Vec<usize> = (0..batch)
        .map(|_| rng.gen_range(0..=data.len() - context - 1))
        .collect();
    let window = |s: usize, shift: usize| (0..context).map(move |i| data.token(s + i + shift));
    Ok(LmBatch {
        inputs: starts.iter().flat_map(|&s| window(s, 0)).collect(),
        targets: starts.iter().flat_map(|&s| window(s, 1)).collect(),
        batch,
        context,
        starts,
    })
}
// ANCHOR_END: get_batch

// ANCHOR: bytes
/// The simplest tokenizer: one token per UTF-8 byte, vocabulary 256. Every text round-trips.
pub struct ByteTokenizer;

impl ByteTokenizer {
    /// One token per byte value.
    pub const VOCAB_SIZE: usize = 256;

    /// Text to ids: its UTF-8 bytes.
    pub fn encode(text: &str) -> Vec<u32> {
        text.bytes().map(u32::from).collect()
    }

    /// Ids back to text; ids >= 256 and invalid UTF-8 become U+FFFD.
    pub fn decode(ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .map(|&i| u8::try_from(i).unwrap_or(0xFF))
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}
// ANCHOR_END: bytes

/// A corpus the project owns: the book's own pages (Markdown), embedded in the crate.
pub fn book_corpus() -> String {
    [
        include_str!("../../book/src/introduction.md"),
        include_str!("../../book/src/ch00_graphs.md"),
        include_str!("../../book/src/ch01_linear.md"),
        include_str!("../../book/src/ch02_rmsnorm.md"),
        include_str!("../../book/src/ch03_feed_forward.md"),
        include_str!("../../book/src/ch04_rope.md"),
        include_str!("../../book/src/ch05_attention.md"),
        include_str!("../../book/src/ch06_transformer.md"),
        include_str!("../../book/src/ch07_loss.md"),
        include_str!("../../book/src/ch08_autograd.md"),
        include_str!("../../book/src/ch09_optimizers.md"),
        include_str!("../../book/src/ch10_schedule.md"),
    ]
    .join("\n")
}

// ANCHOR: copy_task
/// The copy task (as in x-transformers' example): a random source of `source_len` data tokens;
/// the target is `START, source, source`. Ids 0 and 1 are the specials, data tokens follow.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyTask {
    /// Number of distinct data tokens (ids `SPECIALS ..`).
    pub data_tokens: usize,
    /// Tokens per source sequence.
    pub source_len: usize,
}

/// One batch of the copy task: `src` (batch, t); decoder input `tgt_in` and prediction
/// targets `tgt_out` (batch, s), the target sequence shifted by one (teacher forcing).
#[derive(Clone, Debug, PartialEq)]
pub struct Seq2SeqBatch {
    /// (batch, source_len) source ids, for the encoder.
    pub src: Vec<u32>,
    /// (batch, 2 * source_len) decoder input: `START, source, source` without its last token.
    pub tgt_in: Vec<u32>,
    /// (batch, 2 * source_len) targets: the same sequence without `START`.
    pub tgt_out: Vec<u32>,
    /// Number of rows (sequences).
    pub batch: usize,
}

impl CopyTask {
    /// Start-of-target id: the decoder's first input.
    pub const START: u32 = 0;
    /// End-of-sequence id (reserved; the copy task's targets have a fixed length).
    pub const END: u32 = 1;
    /// Number of special ids before the data tokens.
    pub const SPECIALS: usize = 2;

    /// 16 data tokens, sources of 32.
    pub fn standard() -> Self {
        Self {
            data_tokens: 16,
            source_len: 32,
        }
    }

    /// Ids the model must know: the specials and the data tokens.
    pub fn vocab_size(&self) -> usize {
        self.data_tokens + Self::SPECIALS
    }

    /// Decoder positions: the target `START + 2 * source_len` minus the last (teacher forcing).
    pub fn target_len(&self) -> usize {
        2 * self.source_len
    }

    /// Ids as one character each, for printing: `S`, `E`, then data tokens as 0-9, a-z.
    pub fn show(ids: &[u32]) -> String {
        ids.iter()
            .map(|&i| match i {
                Self::START => 'S',
                Self::END => 'E',
                _ => char::from_digit(i - Self::SPECIALS as u32, 36).unwrap_or('?'),
            })
            .collect()
    }

    /// Fresh random sources and their targets.
    pub fn sample(&self, batch: usize, rng: &mut CourseRng) -> Seq2SeqBatch {
        let (t, s) = (self.source_len, self.target_len());
        let src: Vec<u32> = (0..batch * t)
            .map(|_| rng.gen_range(0..self.data_tokens) as u32 + Self::SPECIALS as u32)
            .collect();
        let (mut tgt_in, mut tgt_out) = (Vec::with_capacity(batch * s), Vec::new());
        for row in src.chunks(t) {
            let full: Vec<u32> = std::iter::once(Self::START)
                .chain(row.iter().copied())
                .chain(row.iter().copied())
                .collect(); // START, source, source: 1 + 2t tokens
            tgt_in.extend_from_slice(&full[..s]);
            tgt_out.extend_from_slice(&full[1..]);
        }
        Seq2SeqBatch {
            src,
            tgt_in,
            tgt_out,
            batch,
        }
    }
}
// ANCHOR_END: copy_task

/// The data a task trains and evaluates on.
pub enum TaskData {
    /// Fresh samples every batch (training) or from a fixed seed (evaluation).
    Copy,
    /// Token streams: training batches from `train`, evaluation batches from `val`.
    Tokens {
        /// Tokens to sample training batches from.
        train: Box<dyn TokenSource>,
        /// Held-out tokens for evaluation.
        val: Box<dyn TokenSource>,
    },
}
