//! Decoding a payload while it arrives.
//!
//! Barman stores each WAL file with its own compression (one archive can mix
//! them) and `--keep-compression` sends those bytes as they are. We sniff the
//! magic of every payload, whatever we asked for, and decode the stream
//! inline: chunks from the SSH channel go to a blocking thread that runs the
//! well-kept decoder crates (`flate2`, `bzip2`, `liblzma`, `zstd`,
//! `lz4_flex`, `snap`) through their `Read` adapters and writes the output to
//! the destination file. Nothing holds a whole file in memory.

use std::fs::File;
use std::io::{self, Read, Write};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::validate::RecordChecker;
use crate::wal::WalKind;

/// What a payload turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Uncompressed: a WAL segment (page header magic 0xD0xx/0xD1xx) or a
    /// text file (`.history`, `.backup`).
    Plain,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
    Lz4,
    Snappy,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Plain => "none",
            Format::Gzip => "gzip",
            Format::Bzip2 => "bzip2",
            Format::Xz => "xz",
            Format::Zstd => "zstd",
            Format::Lz4 => "lz4",
            Format::Snappy => "snappy",
        }
    }
}

/// The longest magic we look for (snappy's framed stream identifier).
pub const SNIFF_LEN: usize = 10;

/// How many first bytes are read before decoding starts: the magic, and
/// the headers that declare a decoder's window (zstd's frame header, xz's
/// first block header).
pub const PROBE_LEN: usize = 32;

/// What a decoder of this stream holds in memory, from its first bytes: the
/// window its header declares (zstd), the dictionary (xz: Barman's default
/// level has 4 MiB, "high" 8 MiB, level 9 64 MiB), four times the block
/// size (bzip2), the block size (lz4), a few KiB otherwise. It decides how
/// many streams decode at once ([`crate::client`]). Only an estimate: a
/// header we cannot read counts as 8 MiB.
pub fn decoder_memory(format: Format, prefix: &[u8]) -> u64 {
    const UNREADABLE: u64 = 8 << 20;
    match format {
        Format::Plain => 0,
        Format::Gzip | Format::Snappy => 64 << 10,
        Format::Bzip2 => match prefix.get(3) {
            Some(level @ b'1'..=b'9') => u64::from(level - b'0') * 100_000 * 4,
            _ => UNREADABLE,
        },
        Format::Zstd => zstd_window(prefix).unwrap_or(UNREADABLE),
        Format::Xz => xz_dictionary(prefix).unwrap_or(UNREADABLE),
        // The block size of the frame descriptor's BD byte (64 KiB to 4 MiB).
        Format::Lz4 => match prefix.get(5).map(|bd| (bd >> 4) & 7) {
            Some(max @ 4..=7) => 1 << (8 + 2 * u64::from(max)),
            _ => 4 << 20,
        },
    }
}

/// The window a zstd frame header declares (RFC 8878, 3.1.1.1): from the
/// window descriptor, or the content size of a single-segment frame.
fn zstd_window(prefix: &[u8]) -> Option<u64> {
    let descriptor = *prefix.get(4)?;
    let single_segment = descriptor & 0x20 != 0;
    if !single_segment {
        let window = *prefix.get(5)?;
        let log = 10 + u64::from(window >> 3);
        let base = 1u64 << log;
        return Some(base + (base / 8) * u64::from(window & 7));
    }
    let dictionary_id_len = [0, 1, 2, 4][usize::from(descriptor & 3)];
    let at = 5 + dictionary_id_len;
    let size = match descriptor >> 6 {
        0 => u64::from(*prefix.get(at)?),
        1 => u64::from(u16::from_le_bytes(prefix.get(at..at + 2)?.try_into().ok()?)) + 256,
        2 => u64::from(u32::from_le_bytes(prefix.get(at..at + 4)?.try_into().ok()?)),
        _ => u64::from_le_bytes(prefix.get(at..at + 8)?.try_into().ok()?),
    };
    Some(size)
}

/// The LZMA2 dictionary size of an xz stream's first block (xz file format
/// 1.1.0, 3.1): the block header follows the 12-byte stream header; its
/// filter flags hold the dictionary size for filter 0x21.
fn xz_dictionary(prefix: &[u8]) -> Option<u64> {
    let block = prefix.get(12..)?;
    let flags = *block.get(1)?;
    let mut at = 2;
    let varint = |at: &mut usize| -> Option<u64> {
        let mut value = 0u64;
        for shift in 0..9 {
            let byte = *block.get(*at)?;
            *at += 1;
            value |= u64::from(byte & 0x7f) << (7 * shift);
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    };
    if flags & 0x40 != 0 {
        varint(&mut at)?; // compressed size
    }
    if flags & 0x80 != 0 {
        varint(&mut at)?; // uncompressed size
    }
    for _ in 0..=(flags & 3) {
        let id = varint(&mut at)?;
        let properties = varint(&mut at)? as usize;
        if id == 0x21 && properties == 1 {
            let bits = u32::from(*block.get(at)?);
            return match bits {
                0..=39 => Some(u64::from((2 | (bits & 1)) << (bits / 2 + 11))),
                40 => Some(u64::from(u32::MAX)),
                _ => None,
            };
        }
        at += properties;
    }
    None
}

/// Recognises a compressed stream by its first bytes; `None` when the prefix
/// matches no compression we know (plain data is judged by the caller).
pub fn sniff_compression(prefix: &[u8]) -> Option<Format> {
    const MAGICS: [(&[u8], Format); 6] = [
        (&[0x1f, 0x8b, 0x08], Format::Gzip),
        (b"BZh", Format::Bzip2),
        (&[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], Format::Xz),
        (&[0x28, 0xb5, 0x2f, 0xfd], Format::Zstd),
        (&[0x04, 0x22, 0x4d, 0x18], Format::Lz4),
        (
            &[0xff, 0x06, 0x00, 0x00, 0x73, 0x4e, 0x61, 0x50, 0x70, 0x59],
            Format::Snappy,
        ),
    ];
    MAGICS
        .iter()
        .find(|(magic, _)| prefix.starts_with(magic))
        .map(|&(_, format)| format)
}

/// Whether the decoded bytes can be a file of this kind: segments start with
/// a WAL page header (little-endian magic 0xD0xx or 0xD1xx for every
/// PostgreSQL release), history and backup files are text.
pub fn looks_plain(kind: WalKind, head: &[u8]) -> bool {
    match kind {
        WalKind::Segment | WalKind::Partial => {
            head.len() >= 2 && (head[1] == 0xD0 || head[1] == 0xD1)
        }
        WalKind::History | WalKind::Backup => {
            std::str::from_utf8(head).is_ok_and(|s| !s.contains('\0'))
        }
    }
}

/// The largest decoded file we accept: PostgreSQL's largest segment size.
/// A segment is held to the size its own long page header announces (see
/// [`decoded_limit`]), which is at most this.
pub const MAX_DECODED: u64 = 1 << 30;

/// The largest `.history` or `.backup` file we accept. A history file has
/// one line per timeline switch, `TLI<tab>LSN<tab>reason`, under 150 bytes
/// even with the longest reason (a 63-byte restore point name): 8 MiB is
/// over 55,000 switches, a failover a day for 150 years. A backup history
/// file is a few hundred bytes. Anything longer is a decompression bomb or
/// not the file asked for, and is refused before it fills `pg_wal`.
pub const MAX_TEXT: u64 = 8 << 20;

/// How many decoded bytes a file of this kind may have, once its first
/// bytes are known: a segment the size its long page header announces (a
/// header announcing no valid size keeps [`MAX_DECODED`]: validation refuses
/// it, unless `--no-verify` said not to judge it). `None`: not enough bytes
/// yet to tell.
pub fn decoded_limit(kind: WalKind, head: &[u8]) -> Option<u64> {
    match kind {
        WalKind::History | WalKind::Backup => Some(MAX_TEXT),
        WalKind::Segment | WalKind::Partial => {
            let header = crate::validate::LongPageHeader::parse(head)?;
            let size = u64::from(header.segment_size);
            Some(if crate::validate::is_valid_segment_size(size) {
                size
            } else {
                MAX_DECODED
            })
        }
    }
}

/// Why decoding stopped.
#[derive(Debug)]
pub enum DecodeError {
    /// The payload matches no compression we decode and is not plain data of
    /// the expected kind (Barman's `custom` compression, encrypted WAL,
    /// garbage). The first bytes are kept for the message.
    UnknownFormat(Vec<u8>),
    /// The compressed stream is damaged or truncated, or decodes to more
    /// than a file of its kind can hold (see [`decoded_limit`]; decoding
    /// stops there, nothing more is written).
    Corrupt { format: Format, detail: String },
    /// Writing the output failed (a full disk, an I/O error).
    Write(io::Error),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::UnknownFormat(head) => write!(
                f,
                "payload is in no format we can decode (custom compression or encryption?); \
                 first bytes: {}",
                head.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            DecodeError::Corrupt {
                format: Format::Plain,
                detail,
            } => write!(f, "payload is damaged: {detail}"),
            DecodeError::Corrupt { format, detail } => {
                write!(f, "{} stream is damaged: {detail}", format.name())
            }
            DecodeError::Write(e) => write!(f, "writing failed: {e}"),
        }
    }
}

/// The result of a complete decode.
#[derive(Debug)]
pub struct Decoded {
    pub format: Format,
    /// Bytes received (compressed size).
    pub bytes_in: u64,
    /// Bytes written to the file.
    pub bytes_out: u64,
    /// The first bytes written, for validation of the WAL header.
    pub head: Vec<u8>,
    /// For segments: the record walk's verdict (records checked, or why the
    /// bytes are damaged). `None` for text files.
    pub records: Option<Result<u64, String>>,
    /// The output file, flushed but not yet synced.
    pub file: File,
}

/// How many decoded bytes [`Decoded::head`] keeps: a WAL long page header
/// and more.
pub const HEAD_LEN: usize = 64;

/// Feeds chunks of one payload to a decoder running on a blocking thread.
///
/// Chunks queue in a small bounded channel: the decoder is much faster than
/// the network, so the queue stays short, and a slow disk pushes back on the
/// SSH window instead of growing memory.
pub struct DecodeSink {
    tx: Option<mpsc::Sender<Bytes>>,
    join: tokio::task::JoinHandle<Result<Decoded, DecodeError>>,
}

impl DecodeSink {
    /// `observe` learns what the decoder will hold ([`decoder_memory`]) as
    /// soon as the first bytes are read.
    pub fn start(
        out: File,
        kind: WalKind,
        observe: impl FnOnce(u64) + Send + 'static,
    ) -> DecodeSink {
        let (tx, rx) = mpsc::channel(8);
        let join = tokio::task::spawn_blocking(move || {
            decode_stream_observed(ChunkReader::new(rx), out, kind, observe)
        });
        DecodeSink { tx: Some(tx), join }
    }

    /// Hands a chunk to the decoder. `false` means the decoder has stopped
    /// (an error that [`DecodeSink::finish`] reports): stop feeding.
    pub async fn feed(&mut self, chunk: Bytes) -> bool {
        match &self.tx {
            Some(tx) => tx.send(chunk).await.is_ok(),
            None => false,
        }
    }

    /// Ends the input and waits for the decoder to finish the file.
    pub async fn finish(mut self) -> Result<Decoded, DecodeError> {
        self.tx.take();
        match self.join.await {
            Ok(result) => result,
            Err(e) => Err(DecodeError::Write(io::Error::other(format!(
                "decoder thread failed: {e}"
            )))),
        }
    }
}

/// A `Read` over the chunks sent by [`DecodeSink`]; end of input when the
/// sender is gone. Hand-written because it is the glue between tokio's
/// channel and the decoders' blocking `Read` interface, ten lines no crate
/// offers in this shape.
struct ChunkReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
    total: u64,
}

impl ChunkReader {
    fn new(rx: mpsc::Receiver<Bytes>) -> ChunkReader {
        ChunkReader {
            rx,
            current: Bytes::new(),
            total: 0,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        self.total += n as u64;
        Ok(n)
    }
}

/// What the decoder pulled from the compressed stream: its size, and its
/// last bytes (where an lz4 frame keeps its end mark).
#[derive(Debug, Default)]
struct Pulled {
    bytes: u64,
    last: [u8; 8],
}

impl Pulled {
    fn saw(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        let keep = data.len().min(self.last.len());
        self.last.rotate_left(keep);
        let end = self.last.len();
        self.last[end - keep..].copy_from_slice(&data[data.len() - keep..]);
    }
}

/// Records what the decoder pulled, readable after the decoder (which owns
/// the reader) is done.
struct Counting<R> {
    inner: R,
    pulled: std::sync::Arc<std::sync::Mutex<Pulled>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pulled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .saw(&buf[..n]);
        Ok(n)
    }
}

/// lz4_flex's frame decoder takes an end of input right after a data block
/// as the end of the frame: a transfer cut inside the frame's end mark (or
/// its content checksum) would pass as complete. The frame descriptor's
/// flag byte says whether a 4-byte content checksum follows the 4 zero
/// bytes of the end mark.
fn lz4_frame_ended(flags: u8, pulled: &Pulled) -> bool {
    const CONTENT_CHECKSUM: u8 = 0x04;
    let end_mark = if flags & CONTENT_CHECKSUM != 0 {
        &pulled.last[..4]
    } else {
        &pulled.last[4..]
    };
    pulled.bytes >= 11 && end_mark == [0, 0, 0, 0]
}

/// Decodes one payload from `input` into `out`. Runs on a blocking thread.
pub fn decode_stream<R: Read + Send>(
    input: R,
    out: File,
    kind: WalKind,
) -> Result<Decoded, DecodeError> {
    decode_stream_observed(input, out, kind, |_| {})
}

/// [`decode_stream`], telling `observe` what the decoder will hold before
/// it starts.
fn decode_stream_observed<R: Read + Send>(
    mut input: R,
    mut out: File,
    kind: WalKind,
    observe: impl FnOnce(u64),
) -> Result<Decoded, DecodeError> {
    let mut prefix = Vec::with_capacity(PROBE_LEN);
    let mut probe = [0u8; PROBE_LEN];
    while prefix.len() < PROBE_LEN {
        let n = input
            .read(&mut probe[..PROBE_LEN - prefix.len()])
            .map_err(|e| DecodeError::Corrupt {
                format: Format::Plain,
                detail: e.to_string(),
            })?;
        if n == 0 {
            break;
        }
        prefix.extend_from_slice(&probe[..n]);
    }
    let format = match sniff_compression(&prefix) {
        Some(format) => format,
        None if looks_plain(kind, &prefix) => Format::Plain,
        None if prefix.is_empty() => {
            return Err(DecodeError::Corrupt {
                format: Format::Plain,
                detail: "empty payload".to_string(),
            });
        }
        None => return Err(DecodeError::UnknownFormat(prefix)),
    };
    observe(decoder_memory(format, &prefix));
    let lz4_flags = prefix.get(4).copied().unwrap_or(0);
    let pulled = std::sync::Arc::new(std::sync::Mutex::new(Pulled::default()));
    let whole = Counting {
        inner: io::Cursor::new(prefix).chain(input),
        pulled: pulled.clone(),
    };
    let mut reader: Box<dyn Read + Send> =
        match format {
            Format::Plain => Box::new(whole),
            Format::Gzip => Box::new(flate2::read::MultiGzDecoder::new(whole)),
            Format::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(whole)),
            Format::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(whole)),
            Format::Zstd => Box::new(zstd::stream::read::Decoder::new(whole).map_err(|e| {
                DecodeError::Corrupt {
                    format,
                    detail: e.to_string(),
                }
            })?),
            Format::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(whole)),
            Format::Snappy => Box::new(snap::read::FrameDecoder::new(whole)),
        };
    // Straight to the file: 128 KiB per write(2) already makes the
    // syscalls cheap; a BufWriter in between would only copy every decoded
    // byte once more.
    let mut buf = vec![0u8; 128 << 10];
    let mut head = Vec::with_capacity(HEAD_LEN);
    let mut bytes_out = 0u64;
    let mut limit = None;
    let mut checker = match kind {
        WalKind::Segment => Some(RecordChecker::new()),
        WalKind::Partial => Some(RecordChecker::for_partial()),
        WalKind::History | WalKind::Backup => None,
    };
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(DecodeError::Corrupt {
                    format,
                    detail: e.to_string(),
                });
            }
        };
        if head.len() < HEAD_LEN {
            let take = n.min(HEAD_LEN - head.len());
            head.extend_from_slice(&buf[..take]);
        }
        if limit.is_none() {
            limit = decoded_limit(kind, &head);
        }
        bytes_out += n as u64;
        // Checked before writing: a bomb never puts more than a segment's
        // worth of bytes in pg_wal or the spool.
        let allowed = limit.unwrap_or(MAX_DECODED);
        if bytes_out > allowed {
            let what = match kind {
                WalKind::Segment | WalKind::Partial => "its WAL header announces",
                WalKind::History | WalKind::Backup => "any real history or backup file has",
            };
            return Err(DecodeError::Corrupt {
                format,
                detail: format!(
                    "decodes to more than the {allowed} bytes {what} (a decompression bomb?); \
                     decoding stopped there"
                ),
            });
        }
        if let Some(checker) = checker.as_mut() {
            checker.feed(&buf[..n]);
        }
        out.write_all(&buf[..n]).map_err(DecodeError::Write)?;
    }
    if format != Format::Plain && !looks_plain(kind, &head) {
        return Err(DecodeError::Corrupt {
            format,
            detail: "decoded bytes are not a PostgreSQL WAL file".to_string(),
        });
    }
    drop(reader);
    let pulled = std::mem::take(&mut *pulled.lock().unwrap_or_else(|e| e.into_inner()));
    if format == Format::Lz4 && !lz4_frame_ended(lz4_flags, &pulled) {
        return Err(DecodeError::Corrupt {
            format,
            detail: "the lz4 frame ends without its end mark (a truncated transfer?)".to_string(),
        });
    }
    Ok(Decoded {
        format,
        bytes_in: pulled.bytes,
        bytes_out,
        head,
        records: checker.map(|c| c.finish()),
        file: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom};

    /// The windows read from real encoders' headers, at the levels Barman
    /// uses ("low", "medium", "high").
    #[test]
    fn decoder_memory_is_read_from_the_headers() {
        let data = fake_segment(1 << 20);
        let probe = |stored: &[u8]| {
            let format = sniff_compression(stored).expect("a known format");
            decoder_memory(format, &stored[..PROBE_LEN.min(stored.len())])
        };
        let mib = 1 << 20;
        for (preset, dictionary) in [(1, mib), (3, 4 * mib), (5, 8 * mib), (9, 64 * mib)] {
            let mut enc = liblzma::write::XzEncoder::new(Vec::new(), preset);
            enc.write_all(&data).unwrap();
            assert_eq!(probe(&enc.finish().unwrap()), dictionary, "xz -{preset}");
        }
        // Streamed (as Barman writes it): the window descriptor.
        for (level, window) in [(1, 512 << 10), (4, 2 * mib), (9, 4 * mib)] {
            let mut enc = zstd::stream::Encoder::new(Vec::new(), level).unwrap();
            enc.write_all(&data).unwrap();
            assert_eq!(probe(&enc.finish().unwrap()), window, "zstd -{level}");
        }
        // Whole (the size known): a single segment as large as the content.
        let whole = zstd::bulk::compress(&data, 3).unwrap();
        assert_eq!(probe(&whole), data.len() as u64, "zstd, content size");
        for level in [1u32, 5, 9] {
            let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::new(level));
            enc.write_all(&data).unwrap();
            assert_eq!(probe(&enc.finish().unwrap()), u64::from(level) * 400_000);
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&data).unwrap();
        assert_eq!(probe(&gz.finish().unwrap()), 64 << 10);
        assert_eq!(
            decoder_memory(Format::Xz, &[0xfd, 0x37, 0x7a]),
            8 * mib,
            "unreadable"
        );
        assert_eq!(decoder_memory(Format::Plain, &data[..PROBE_LEN]), 0);
    }

    fn fake_segment(len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        data[0] = 0x10;
        data[1] = 0xD1;
        for (i, b) in data.iter_mut().enumerate().skip(40) {
            *b = (i % 251) as u8 ^ (i / 4096) as u8;
        }
        data
    }

    fn compress(format: Format, raw: &[u8]) -> Vec<u8> {
        match format {
            Format::Plain => raw.to_vec(),
            Format::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(raw).unwrap();
                e.finish().unwrap()
            }
            Format::Bzip2 => {
                let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
                e.write_all(raw).unwrap();
                e.finish().unwrap()
            }
            Format::Xz => {
                let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
                e.write_all(raw).unwrap();
                e.finish().unwrap()
            }
            Format::Zstd => zstd::encode_all(raw, 1).unwrap(),
            Format::Lz4 => {
                let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
                e.write_all(raw).unwrap();
                e.finish().unwrap()
            }
            Format::Snappy => {
                let mut e = snap::write::FrameEncoder::new(Vec::new());
                e.write_all(raw).unwrap();
                e.into_inner().unwrap()
            }
        }
    }

    const ALL: [Format; 7] = [
        Format::Plain,
        Format::Gzip,
        Format::Bzip2,
        Format::Xz,
        Format::Zstd,
        Format::Lz4,
        Format::Snappy,
    ];

    fn run(payload: &[u8], kind: WalKind) -> (Result<Decoded, DecodeError>, Vec<u8>) {
        let file = tempfile::tempfile().unwrap();
        let result = decode_stream(io::Cursor::new(payload.to_vec()), file, kind);
        let bytes = match &result {
            Ok(decoded) => {
                let mut f = decoded.file.try_clone().unwrap();
                f.seek(SeekFrom::Start(0)).unwrap();
                let mut v = Vec::new();
                f.read_to_end(&mut v).unwrap();
                v
            }
            Err(_) => Vec::new(),
        };
        (result, bytes)
    }

    #[test]
    fn every_format_round_trips() {
        let raw = fake_segment(1 << 20);
        for format in ALL {
            let (result, bytes) = run(&compress(format, &raw), WalKind::Segment);
            let decoded = result.unwrap_or_else(|e| panic!("{format:?}: {e}"));
            assert_eq!(decoded.format, format);
            assert_eq!(decoded.bytes_out, raw.len() as u64);
            assert!(bytes == raw, "{format:?} bytes differ");
        }
    }

    #[test]
    fn an_lz4_frame_cut_in_its_end_mark_or_checksum_is_refused() {
        let raw = fake_segment(64 << 10);
        let plain = compress(Format::Lz4, &raw);
        let mut with_checksum = lz4_flex::frame::FrameEncoder::with_frame_info(
            lz4_flex::frame::FrameInfo::new().content_checksum(true),
            Vec::new(),
        );
        with_checksum.write_all(&raw).unwrap();
        let with_checksum = with_checksum.finish().unwrap();
        for (stored, trailer) in [(plain, 4), (with_checksum, 8)] {
            let (whole, _) = run(&stored, WalKind::Segment);
            assert!(whole.is_ok(), "{:?}", whole.err());
            for cut in 1..=trailer {
                let (result, _) = run(&stored[..stored.len() - cut], WalKind::Segment);
                assert!(
                    result.is_err(),
                    "cut {cut} of a {trailer}-byte trailer passed"
                );
            }
        }
    }

    #[test]
    fn damaged_streams_are_refused() {
        let raw = fake_segment(256 << 10);
        for format in ALL.into_iter().skip(1) {
            let mut payload = compress(format, &raw);
            payload.truncate(payload.len() / 2);
            let (result, _) = run(&payload, WalKind::Segment);
            assert!(
                matches!(result, Err(DecodeError::Corrupt { .. })),
                "{format:?} truncated: {result:?}"
            );
        }
        let (result, _) = run(b"", WalKind::Segment);
        assert!(matches!(result, Err(DecodeError::Corrupt { .. })));
        let (result, _) = run(b"CUSTOM\x00\x01garbage", WalKind::Segment);
        assert!(matches!(result, Err(DecodeError::UnknownFormat(_))));
    }

    #[test]
    fn history_files_pass_as_text() {
        let text = b"1\t0/3000000\tno recovery target specified\n";
        let (result, bytes) = run(text, WalKind::History);
        assert_eq!(result.unwrap().format, Format::Plain);
        assert_eq!(bytes, text);
        let (result, bytes) = run(&compress(Format::Gzip, text), WalKind::History);
        assert_eq!(result.unwrap().format, Format::Gzip);
        assert_eq!(bytes, text);
    }
}
