//! Barman's stored compressions: writing them when the archive is generated,
//! recognising them by magic when a file is served, and streaming codecs for
//! the server's default (decompress) and `--gzip`/`--bzip2` modes.
//!
//! Written independently of the client's decoder on purpose: if both sides
//! shared one codec table, a wrong magic or framing would cancel out in tests.

use std::fmt;
use std::io::{self, Read, Write};

/// How a file is stored in the generated archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoredCompression {
    /// Raw WAL, as Barman keeps it with `compression` unset.
    None,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
    /// LZ4 frame format (`04 22 4d 18`), as Barman's `lz4` writes it.
    Lz4,
    /// Snappy framing format, as python-snappy's `stream_compress` writes it.
    Snappy,
    /// Barman's `custom` compression: bytes with no magic the client knows
    /// (here [`CUSTOM_HEADER`] followed by a zstd stream).
    Custom,
    /// Barman's WAL encryption (`encryption = gpg`): an OpenPGP message
    /// (here [`ENCRYPTED_HEADER`] followed by a zstd stream) that only the
    /// Barman host can decrypt; get-wal sends it decrypted.
    Encrypted,
    /// Rotate through [`StoredCompression::REAL`] segment by segment, so one
    /// archive mixes formats the way an archive whose setting changed does.
    Mixed,
}

/// A header no client-side sniffer recognises; the server strips it and
/// decodes the rest (zstd) when asked to decompress.
pub const CUSTOM_HEADER: &[u8; 8] = b"EBCUSTOM";

/// The start of an OpenPGP public-key-encrypted message as `gpg --encrypt`
/// writes it (a PKESK packet, old format, tag 1, version 3), then a fake
/// key id. The server strips it and decodes the rest (zstd): the emulation
/// stands for a decryption the client cannot do.
pub const ENCRYPTED_HEADER: &[u8; 12] = b"\x85\x01\x0c\x03EBCRYPT\x01";

impl StoredCompression {
    /// The concrete formats [`StoredCompression::Mixed`] rotates through.
    pub const REAL: [StoredCompression; 7] = [
        StoredCompression::None,
        StoredCompression::Gzip,
        StoredCompression::Bzip2,
        StoredCompression::Xz,
        StoredCompression::Zstd,
        StoredCompression::Lz4,
        StoredCompression::Snappy,
    ];

    /// The concrete format for the `index`-th generated segment.
    pub fn for_segment(self, index: usize) -> StoredCompression {
        match self {
            StoredCompression::Mixed => Self::REAL[index % Self::REAL.len()],
            other => other,
        }
    }

    /// The name Barman writes in `xlog.db` and `show-server` for this format.
    pub fn barman_name(self) -> &'static str {
        match self {
            StoredCompression::None => "None",
            StoredCompression::Gzip => "gzip",
            StoredCompression::Bzip2 => "bzip2",
            StoredCompression::Xz => "xz",
            StoredCompression::Zstd => "zstd",
            StoredCompression::Lz4 => "lz4",
            StoredCompression::Snappy => "snappy",
            StoredCompression::Custom => "custom",
            // xlog.db keeps the compression under the encryption; the
            // emulation compresses with zstd before "encrypting".
            StoredCompression::Encrypted => "zstd",
            StoredCompression::Mixed => "mixed",
        }
    }

    /// Recognises a stored file by its first bytes, as Barman does per file.
    /// Anything unrecognised is served as raw bytes.
    pub fn sniff(head: &[u8]) -> StoredCompression {
        use barman_wal_restore::decode::{sniff_compression, Format};
        if head.starts_with(CUSTOM_HEADER) {
            return StoredCompression::Custom;
        }
        if head.starts_with(ENCRYPTED_HEADER) {
            return StoredCompression::Encrypted;
        }
        match sniff_compression(head) {
            Some(Format::Gzip) => StoredCompression::Gzip,
            Some(Format::Bzip2) => StoredCompression::Bzip2,
            Some(Format::Xz) => StoredCompression::Xz,
            Some(Format::Zstd) => StoredCompression::Zstd,
            Some(Format::Lz4) => StoredCompression::Lz4,
            Some(Format::Snappy) => StoredCompression::Snappy,
            Some(Format::Plain) | None => StoredCompression::None,
        }
    }

    /// Compresses `raw` into this format. Levels are low: the archive is
    /// generated at every test start, and ratios barely matter to the tests.
    pub fn compress(self, raw: &[u8]) -> io::Result<Vec<u8>> {
        let out = Vec::with_capacity(raw.len() / 3);
        match self {
            StoredCompression::None => Ok(raw.to_vec()),
            StoredCompression::Gzip => {
                let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
                enc.write_all(raw)?;
                enc.finish()
            }
            StoredCompression::Bzip2 => {
                let mut enc = bzip2::write::BzEncoder::new(out, bzip2::Compression::new(1));
                enc.write_all(raw)?;
                enc.finish()
            }
            StoredCompression::Xz => {
                let mut enc = liblzma::write::XzEncoder::new(out, 1);
                enc.write_all(raw)?;
                enc.finish()
            }
            StoredCompression::Zstd => zstd::stream::encode_all(raw, 3),
            StoredCompression::Lz4 => {
                // python-lz4's defaults, which Barman uses: 64 KiB linked blocks.
                let info = lz4_flex::frame::FrameInfo::new()
                    .block_size(lz4_flex::frame::BlockSize::Max64KB)
                    .block_mode(lz4_flex::frame::BlockMode::Linked);
                let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, out);
                enc.write_all(raw)?;
                enc.finish().map_err(io::Error::other)
            }
            StoredCompression::Snappy => {
                let mut enc = snap::write::FrameEncoder::new(out);
                enc.write_all(raw)?;
                enc.into_inner().map_err(|e| e.into_error())
            }
            StoredCompression::Custom => {
                let mut out = CUSTOM_HEADER.to_vec();
                out.extend(zstd::stream::encode_all(raw, 3)?);
                Ok(out)
            }
            StoredCompression::Encrypted => {
                let mut out = ENCRYPTED_HEADER.to_vec();
                out.extend(zstd::stream::encode_all(raw, 3)?);
                Ok(out)
            }
            StoredCompression::Mixed => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "Mixed is a rotation, not a format: use for_segment()",
            )),
        }
    }

    /// A streaming decoder of this format over `stored`, as the server uses
    /// it to send raw WAL without holding the file in memory.
    pub fn decoder<'a, R: Read + Send + 'a>(
        self,
        mut stored: R,
    ) -> io::Result<Box<dyn Read + Send + 'a>> {
        Ok(match self {
            StoredCompression::None | StoredCompression::Mixed => Box::new(stored),
            StoredCompression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(stored)),
            StoredCompression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(stored)),
            StoredCompression::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(stored)),
            StoredCompression::Zstd => Box::new(zstd::stream::read::Decoder::new(stored)?),
            StoredCompression::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(stored)),
            StoredCompression::Snappy => Box::new(snap::read::FrameDecoder::new(stored)),
            StoredCompression::Custom => {
                strip_header(&mut stored, CUSTOM_HEADER, "custom header missing")?;
                Box::new(zstd::stream::read::Decoder::new(stored)?)
            }
            StoredCompression::Encrypted => {
                strip_header(&mut stored, ENCRYPTED_HEADER, "OpenPGP header missing")?;
                Box::new(zstd::stream::read::Decoder::new(stored)?)
            }
        })
    }

    /// Decompresses a whole stored file (for tests and small files).
    pub fn decompress(self, stored: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.decoder(stored)?.read_to_end(&mut out)?;
        Ok(out)
    }
}

/// Reads `header` off the front of `stored`, or fails with `missing`.
fn strip_header(stored: &mut impl Read, header: &[u8], missing: &str) -> io::Result<()> {
    let mut head = vec![0u8; header.len()];
    stored.read_exact(&mut head)?;
    if head != header {
        return Err(io::Error::new(io::ErrorKind::InvalidData, missing));
    }
    Ok(())
}

impl fmt::Display for StoredCompression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.barman_name())
    }
}

/// What `get-wal` sends for a stored file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Default: decompress on the server, send raw WAL.
    Decompressed,
    /// `--keep-compression`: the stored bytes as they are.
    AsStored,
    /// `--gzip`: decompress, then recompress as gzip.
    Gzip,
    /// `--bzip2`: decompress, then recompress as bzip2.
    Bzip2,
}

/// Opens the stream `get-wal` sends for a stored file. `.partial` files are
/// the caller's business (always [`Delivery::AsStored`]).
pub fn delivery_reader<'a, R: Read + Send + 'a>(
    mut stored: R,
    delivery: Delivery,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    if delivery == Delivery::AsStored {
        return Ok(Box::new(stored));
    }
    // Sniff without losing the bytes: read the head, then chain it back.
    let mut head = Vec::with_capacity(16);
    (&mut stored).take(16).read_to_end(&mut head)?;
    let format = StoredCompression::sniff(&head);
    let raw = format.decoder(io::Cursor::new(head).chain(stored))?;
    Ok(match delivery {
        Delivery::Decompressed | Delivery::AsStored => raw,
        Delivery::Gzip => Box::new(flate2::read::GzEncoder::new(
            raw,
            flate2::Compression::fast(),
        )),
        Delivery::Bzip2 => Box::new(bzip2::read::BzEncoder::new(raw, bzip2::Compression::new(1))),
    })
}
