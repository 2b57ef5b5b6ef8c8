//! Data for training: token files (memory-mapped), random batches, a byte-level tokenizer and
//! the copy task's samples.
//!
//! Book page: [Chapter 11](../../../book/ch11_training.html#data).

use std::path::{Path, PathBuf};

use rand::Rng;

use crate::graph::error::{CourseError, Result};
use crate::graph::files::{parse_npy_header, NpyDtype};
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

/// A file of token ids, read a window at a time: only the tokens a batch needs are read
/// (positioned reads), so a corpus larger than memory trains as well as a small one, and a file
/// that shrinks during a run gives an error naming it rather than a crash.
pub struct TokenFile {
    file: std::fs::File,
    dtype: NpyDtype,
    data_offset: u64,
    len: usize,
    path: PathBuf,
}

impl TokenFile {
    /// Open a raw file of `width` ids, or a NumPy `.npy` array (its header gives the type:
    /// uint16, uint32, int32 or int64). Refuses what is not a regular file, a size that is not a
    /// whole number of tokens, and a header that does not describe a 1-D token array.
    pub fn open(path: &Path, width: TokenWidth) -> Result<Self> {
        let io = |source| CourseError::Io {
            path: path.to_path_buf(),
            source,
        };
        let bad = |problem: String| CourseError::File {
            path: path.to_path_buf(),
            problem,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            // A FIFO would block, a device never end, a directory fail late: say so now.
            return Err(bad(
                "not a regular file (a directory, pipe or device?)".into()
            ));
        }
        let size = meta.len();
        let (dtype, data_offset) = if path.extension().is_some_and(|e| e == "npy") {
            let mut start = vec![0u8; size.min(1 << 16) as usize];
            read_at(&file, &mut start, 0).map_err(io)?;
            let h = parse_npy_header(&start).map_err(bad)?;
            (h.dtype, h.data_offset)
        } else {
            let dtype = match width {
                TokenWidth::U16 => NpyDtype::U16,
                TokenWidth::U32 => NpyDtype::U32,
            };
            (dtype, 0)
        };
        let bytes = size - data_offset.min(size);
        if bytes % dtype.bytes() as u64 != 0 {
            return Err(bad(format!(
                "{bytes} bytes of data is not a whole number of {dtype:?} tokens ({} bytes each)",
                dtype.bytes()
            )));
        }
        let f = Self {
            file,
            dtype,
            data_offset,
            len: (bytes / dtype.bytes() as u64) as usize,
            path: path.to_path_buf(),
        };
        f.refuse_u32_read_as_u16()?;
        Ok(f)
    }

    /// Little-endian u32 ids read as u16 come out as `id, 0, id, 0, ...`: valid-looking ids that
    /// would train on garbage without a word. No real u16 data has a 0 at every odd position of
    /// its first 4 096 tokens, so that pattern is refused, with the fix.
    fn refuse_u32_read_as_u16(&self) -> Result<()> {
        if self.dtype != NpyDtype::U16 || self.data_offset != 0 || self.len < 64 {
            return Ok(());
        }
        let mut head = vec![0u32; self.len.min(4096)];
        self.read(0, &mut head)?;
        let odd_all_zero = head.iter().skip(1).step_by(2).all(|&t| t == 0);
        if odd_all_zero && head.iter().step_by(2).any(|&t| t != 0) {
            return Err(CourseError::File {
                path: self.path.clone(),
                problem: "every second id of its start is 0: this looks like u32 ids read as u16 \
                          (pass --data-width u32, or TokenWidth::U32)"
                    .into(),
            });
        }
        Ok(())
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

    /// The file this reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The element type (from the `.npy` header, or the width given to [`TokenFile::open`]).
    pub fn dtype(&self) -> NpyDtype {
        self.dtype
    }
}

/// Anything that holds a sequence of token ids: a slice in memory or a file.
pub trait TokenSource {
    /// Number of tokens.
    fn len(&self) -> usize;
    /// Tokens `start..start + out.len()` into `out` (the range must be within `len()`).
    fn read(&self, start: usize, out: &mut [u32]) -> Result<()>;
    /// Where token `i` lives, for error messages (a file names its byte offset).
    fn locate(&self, i: usize) -> String {
        format!("position {i}")
    }
    /// True if there are no tokens.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl TokenSource for [u32] {
    fn len(&self) -> usize {
        <[u32]>::len(self)
    }
    fn read(&self, start: usize, out: &mut [u32]) -> Result<()> {
        out.copy_from_slice(&self[start..start + out.len()]);
        Ok(())
    }
}

impl TokenSource for Vec<u32> {
    fn len(&self) -> usize {
        <[u32]>::len(self)
    }
    fn read(&self, start: usize, out: &mut [u32]) -> Result<()> {
        self.as_slice().read(start, out)
    }
}

impl TokenSource for TokenFile {
    fn len(&self) -> usize {
        self.len
    }
    fn read(&self, start: usize, out: &mut [u32]) -> Result<()> {
        let width = self.dtype.bytes();
        let mut bytes = vec![0u8; out.len() * width];
        let at = self.data_offset + (start * width) as u64;
        read_at(&self.file, &mut bytes, at).map_err(|e| CourseError::File {
            path: self.path.clone(),
            problem: format!(
                "cannot read tokens {start}..{} ({e}); did the file change during the run?",
                start + out.len()
            ),
        })?;
        for (i, (o, b)) in out.iter_mut().zip(bytes.chunks_exact(width)).enumerate() {
            let id = match self.dtype {
                NpyDtype::U16 => u16::from_le_bytes([b[0], b[1]]) as i64,
                NpyDtype::U32 => u32::from_le_bytes(b.try_into().unwrap()) as i64,
                NpyDtype::I32 => i32::from_le_bytes(b.try_into().unwrap()) as i64,
                NpyDtype::I64 => i64::from_le_bytes(b.try_into().unwrap()),
            };
            *o = u32::try_from(id).map_err(|_| CourseError::OutOfRange {
                what: format!("token id {id} at {}", self.locate(start + i)),
                problem: "token ids are between 0 and 2^32 - 1".into(),
            })?;
        }
        Ok(())
    }
    fn locate(&self, i: usize) -> String {
        let offset = self.data_offset + (i * self.dtype.bytes()) as u64;
        format!(
            "token {i} (byte offset {offset}) of {}",
            self.path.display()
        )
    }
}

/// Fill `buf` from `file` at byte `offset` (a positioned read: no shared cursor, no mapping).
fn read_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset)
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
    fn read(&self, start: usize, out: &mut [u32]) -> Result<()> {
        assert!(
            start + out.len() <= self.len,
            "tokens {start}.. of a range of {}",
            self.len
        );
        self.source.read(self.start + start, out)
    }
    fn locate(&self, i: usize) -> String {
        self.source.locate(self.start + i)
    }
}

/// The first id `>= vocab_size` in `data` with where it is, reading a chunk at a time.
pub fn find_out_of_vocabulary(
    data: &(impl TokenSource + ?Sized),
    vocab_size: usize,
) -> Result<Option<(u32, String)>> {
    let mut chunk = vec![0u32; 1 << 20];
    for start in (0..data.len()).step_by(chunk.len()) {
        let n = chunk.len().min(data.len() - start);
        data.read(start, &mut chunk[..n])?;
        if let Some(i) = chunk[..n].iter().position(|&t| t as usize >= vocab_size) {
            return Ok(Some((chunk[i], data.locate(start + i))));
        }
    }
    Ok(None)
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
    // ANCHOR: learn_get_batch ch11: batch random starts in 0..=len - context - 1 (rng.gen_range); read context + 1 tokens from each: inputs the first context, targets shifted by one -> LmBatch with (batch, context) row-major and the starts; too short a data set is an OutOfRange error
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
    let (mut inputs, mut targets) = (Vec::new(), Vec::new());
    let mut window = vec![0u32; context + 1];
    for &s in &starts {
        data.read(s, &mut window)?; // context + 1 tokens: inputs, and targets one further
        inputs.extend_from_slice(&window[..context]);
        targets.extend_from_slice(&window[1..]);
    }
    Ok(LmBatch {
        inputs,
        targets,
        batch,
        context,
        starts,
    })
    // ANCHOR_END: learn_get_batch
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
        // ANCHOR: learn_byte_encode ch11: one id per UTF-8 byte of text, 0..=255
        text.bytes().map(u32::from).collect()
        // ANCHOR_END: learn_byte_encode
    }

    /// Ids back to text; ids >= 256 and invalid UTF-8 become U+FFFD.
    pub fn decode(ids: &[u32]) -> String {
        // ANCHOR: learn_byte_decode ch11: each id as one byte (ids > 255 become 0xFF), then lossy UTF-8 to a String
        let bytes: Vec<u8> = ids
            .iter()
            .map(|&i| u8::try_from(i).unwrap_or(0xFF))
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
        // ANCHOR_END: learn_byte_decode
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
        // ANCHOR: learn_copy_task_sample ch11: src (batch, t) of random data tokens SPECIALS..SPECIALS + data_tokens; per row full = START, src, src; tgt_in = full[..2t], tgt_out = full[1..]
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
        // ANCHOR_END: learn_copy_task_sample
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

impl TaskData {
    /// What the data is, as a short text stored in checkpoints and compared on resume: the two
    /// splits' lengths and a 64-bit FNV-1a hash of every id, in order (`None` for the copy task,
    /// whose data is made by the RNG the checkpoint already stores). Reads the whole data once.
    pub fn fingerprint(&self) -> Result<Option<String>> {
        let TaskData::Tokens { train, val } = self else {
            return Ok(None);
        };
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut chunk = vec![0u32; 1 << 20];
        for d in [train, val] {
            for start in (0..d.len()).step_by(chunk.len()) {
                let n = chunk.len().min(d.len() - start);
                d.read(start, &mut chunk[..n])?;
                for id in &chunk[..n] {
                    for b in id.to_le_bytes() {
                        hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
                    }
                }
            }
        }
        Ok(Some(format!(
            "{} + {} tokens, fnv1a64 {hash:016x}",
            train.len(),
            val.len()
        )))
    }
}
