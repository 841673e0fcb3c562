//! Is this really the WAL PostgreSQL asked for? Checked before a file gets
//! its final name, because a wrong segment handed over with exit 0
//! corrupts a standby silently.
//!
//! A segment's first page carries a long page header (PostgreSQL's
//! `XLogLongPageHeaderData`, little-endian on every platform Barman runs on):
//! magic u16, info u16, timeline u32, pageaddr u64, rem_len u32, padding,
//! system identifier u64, segment size u32, block size u32.
//!
//! Beyond the header, [`RecordChecker`] walks every WAL record of the
//! segment as the decoded bytes stream by and checks its CRC-32C, as
//! PostgreSQL does at replay: zstd and lz4 frames as Barman writes them carry
//! no checksum, so a flipped bit there would otherwise decode to plausible
//! WAL. Hand-written because no crate reads WAL; the layout is PostgreSQL's
//! `xlogrecord.h` / `xlog_internal.h`.

use crate::wal::{WalKind, WalName};

/// `XLOG_PAGE_MAGIC` of each PostgreSQL release from 9.6 to 18.
pub const KNOWN_MAGICS: [(u16, &str); 10] = [
    (0xD093, "9.6"),
    (0xD097, "10"),
    (0xD098, "11"),
    (0xD101, "12"),
    (0xD106, "13"),
    (0xD10D, "14"),
    (0xD110, "15"),
    (0xD113, "16"),
    (0xD116, "17"),
    (0xD118, "18"),
];

/// The first PostgreSQL major release newer than [`KNOWN_MAGICS`].
pub const FIRST_UNKNOWN_MAJOR: u32 = 19;

/// The major version of the cluster this process restores for, from
/// `PG_VERSION` in its data directory (see [`set_data_directory`]).
static CLUSTER_MAJOR: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();

/// Reads `PG_VERSION` of the data directory the call runs in (PostgreSQL
/// runs restore_command there; the `--async` worker is told where it is).
/// Only the first call counts.
pub fn set_data_directory(dir: &std::path::Path) {
    let _ = CLUSTER_MAJOR.set(read_pg_version(dir));
}

/// The major version in `dir/PG_VERSION`: "15" is 15, "9.6" is 9.
pub fn read_pg_version(dir: &std::path::Path) -> Option<u32> {
    let text = std::fs::read_to_string(dir.join("PG_VERSION")).ok()?;
    text.trim().split('.').next()?.parse().ok()
}

/// Whether a page magic we do not know is accepted: the data directory
/// says the cluster is a release newer than our table, and the magic is
/// newer than the newest we know (magics only grow). The record walk still
/// checks every CRC.
fn newer_release_accepted(magic: u16, cluster_major: Option<u32>) -> bool {
    let newest = KNOWN_MAGICS[KNOWN_MAGICS.len() - 1].0;
    cluster_major.is_some_and(|major| major >= FIRST_UNKNOWN_MAJOR)
        && magic > newest
        && magic >> 8 == newest >> 8
}

const XLP_LONG_HEADER: u16 = 0x0002;
const LONG_HEADER_LEN: usize = 40;

/// The fields of a segment's long page header that we check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongPageHeader {
    pub magic: u16,
    pub info: u16,
    pub timeline: u32,
    pub page_address: u64,
    pub system_identifier: u64,
    pub segment_size: u32,
    pub block_size: u32,
}

impl LongPageHeader {
    pub fn parse(head: &[u8]) -> Option<LongPageHeader> {
        if head.len() < LONG_HEADER_LEN {
            return None;
        }
        let u16_at = |o: usize| u16::from_le_bytes([head[o], head[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(head[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(head[o..o + 8].try_into().unwrap());
        Some(LongPageHeader {
            magic: u16_at(0),
            info: u16_at(2),
            timeline: u32_at(4),
            page_address: u64_at(8),
            system_identifier: u64_at(24),
            segment_size: u32_at(32),
            block_size: u32_at(36),
        })
    }
}

/// Checks a decoded file against the name it will be given. Returns the
/// system identifier of a segment (so a fetch can check that all its
/// segments come from one cluster), `None` for text files.
pub fn check(wal: &WalName, size: u64, head: &[u8]) -> Result<Option<u64>, String> {
    match wal.kind() {
        WalKind::History | WalKind::Backup => {
            if size == 0 {
                return Err(format!("{wal} is empty"));
            }
            Ok(None)
        }
        WalKind::Segment | WalKind::Partial => check_segment(wal, size, head).map(Some),
    }
}

fn check_segment(wal: &WalName, size: u64, head: &[u8]) -> Result<u64, String> {
    let header = LongPageHeader::parse(head)
        .ok_or_else(|| format!("{wal} is too short to be WAL ({size} bytes)"))?;
    let cluster_major = CLUSTER_MAJOR.get().copied().flatten();
    if newer_release_accepted(header.magic, cluster_major) {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(
                "{wal} has page magic {:#06x}, newer than any release this client knows \
                 (9.6 to 18); accepted because PG_VERSION says the cluster is {} and its records' \
                 CRCs are checked",
                header.magic,
                cluster_major.unwrap_or_default()
            );
        });
    } else if !KNOWN_MAGICS.iter().any(|&(m, _)| m == header.magic) {
        return Err(format!(
            "{wal} has page magic {:#06x}, which no PostgreSQL release from 9.6 to 18 writes",
            header.magic
        ));
    }
    if header.info & XLP_LONG_HEADER == 0 {
        return Err(format!("{wal} does not start with a long page header"));
    }
    let seg_size = u64::from(header.segment_size);
    if !is_valid_segment_size(seg_size) {
        return Err(format!(
            "{wal} announces an impossible segment size of {seg_size} bytes"
        ));
    }
    let complete = wal.kind() == WalKind::Segment;
    if (complete && size != seg_size) || size > seg_size {
        return Err(format!(
            "{wal} has {size} bytes, but its header announces segments of {seg_size}: truncated or damaged"
        ));
    }
    let expected_address = wal.segment_number(seg_size) * seg_size;
    if header.page_address != expected_address {
        return Err(format!(
            "{wal} holds WAL from position {:X}/{:08X}, not from {:X}/{:08X}: it is another segment",
            header.page_address >> 32,
            header.page_address & 0xFFFF_FFFF,
            expected_address >> 32,
            expected_address & 0xFFFF_FFFF
        ));
    }
    // The first segment of a new timeline starts as a copy of the old one,
    // so its first page may carry an older timeline, never a newer one.
    if header.timeline == 0 || header.timeline > wal.timeline() {
        return Err(format!(
            "{wal} belongs to timeline {}, not to timeline {}",
            header.timeline,
            wal.timeline()
        ));
    }
    Ok(header.system_identifier)
}

/// `XLOG_BLCKSZ`: WAL page size.
const WAL_PAGE: u64 = 8192;
/// `SizeOfXLogShortPHD`, MAXALIGNed.
const SHORT_HEADER_LEN: usize = 24;
/// `SizeOfXLogRecord`: the fixed record header.
const RECORD_HEADER: usize = 24;
/// `offsetof(XLogRecord, xl_crc)`: the header bytes the CRC covers.
const CRC_COVERS: usize = 20;
/// `XLogRecordMaxSize`, rounded up: a longer length is damage.
const MAX_RECORD: u32 = 1 << 30;
const RM_XLOG_ID: u8 = 0;
const XLOG_SWITCH: u8 = 0x40;
/// `XLP_FIRST_IS_CONTRECORD`: the page starts with the rest of a record.
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// `XLP_FIRST_IS_OVERWRITE_CONTRECORD` (PostgreSQL 15, back-patched to
/// 10): the record the previous page began was never finished (a crash);
/// reading starts again after this page's header.
const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;

/// Whether `size` is a segment size PostgreSQL can be built or initdb'd with.
pub fn is_valid_segment_size(size: u64) -> bool {
    size.is_power_of_two() && ((1 << 20)..=(1 << 30)).contains(&size)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecordState {
    /// Skipping the tail of a record begun in the previous segment.
    Continuation(u64),
    /// Skipping padding up to the next MAXALIGNed record start.
    Align,
    Header,
    Data(u32),
    /// After an `XLOG_SWITCH` in a complete segment: what PostgreSQL writes
    /// up to the segment's end, zeros (and, before PostgreSQL 14, empty
    /// page headers).
    SwitchPadding,
    /// The walk has ended: a failure, or in a `.partial` the end of what
    /// was written (a zero length, a zeroed or recycled page, a switch).
    Done,
}

/// Checks, chunk by chunk, that a segment's page headers are consistent and
/// every record that starts and ends inside it has the right CRC-32C.
/// Records that run into the next segment are not judged.
///
/// A complete segment ([`RecordChecker::new`]) passes only when the walk
/// reaches its last byte, or ends at an `XLOG_SWITCH` record followed by
/// padding: a zero record length, a zeroed page or a file that stops short
/// are an archived segment whose end was lost (a disk or filesystem crash on
/// the Barman host leaves zero-filled tails), and PostgreSQL would read them
/// as the end of WAL, ending an archive recovery early.
#[derive(Debug)]
pub struct RecordChecker {
    offset: u64,
    page_header: Vec<u8>,
    first_magic: Option<u16>,
    first_address: u64,
    /// What the long page header announces, when it is a valid size.
    segment_size: Option<u64>,
    state: RecordState,
    header: [u8; RECORD_HEADER],
    header_len: usize,
    /// A page began while the record header was split over it: its
    /// `xlp_rem_len` and how many header bytes came before it, checked once
    /// the record's length is known.
    split_header_rem: Option<(u32, usize)>,
    crc: u32,
    records: u64,
    error: Option<String>,
    /// See [`RecordChecker::for_partial`].
    partial: bool,
}

impl Default for RecordChecker {
    fn default() -> Self {
        RecordChecker::new()
    }
}

impl RecordChecker {
    /// For a complete segment: see the type's documentation.
    pub fn new() -> RecordChecker {
        RecordChecker {
            offset: 0,
            page_header: Vec::with_capacity(LONG_HEADER_LEN),
            first_magic: None,
            first_address: 0,
            segment_size: None,
            state: RecordState::Align,
            header: [0; RECORD_HEADER],
            header_len: 0,
            split_header_rem: None,
            crc: 0,
            records: 0,
            error: None,
            partial: false,
        }
    }

    /// For a file *named* `.partial` (a segment still being written when it
    /// was archived or streamed): the WAL may end anywhere, at a zero length
    /// or a zeroed page, and a page left from an older segment the file was
    /// recycled from ends it too instead of failing the check. Only there:
    /// in a complete archived segment each of those is damage (a flipped bit
    /// in a page address could otherwise stop the walk early).
    pub fn for_partial() -> RecordChecker {
        RecordChecker {
            partial: true,
            ..RecordChecker::new()
        }
    }

    /// Records whose CRC was checked so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    fn fail(&mut self, why: String) {
        if self.error.is_none() {
            self.error = Some(why);
        }
        self.state = RecordState::Done;
    }

    /// The walk stopped before the segment's end without a switch.
    fn ends_early(&mut self, at: u64, what: &str) {
        if self.partial {
            self.state = RecordState::Done;
        } else {
            self.fail(format!(
                "its WAL ends early, at offset {at} ({what}) with no XLOG_SWITCH before it: \
                 a complete segment whose end was lost (zero-filled by a crash?)"
            ));
        }
    }

    /// Feeds the next decoded bytes.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.state != RecordState::Done {
            if let Some(size) = self.segment_size.filter(|&size| self.offset >= size) {
                self.fail(format!(
                    "it is longer than the {size} bytes its header announces"
                ));
                break;
            }
            let in_page = self.offset % WAL_PAGE;
            let header_len = if self.offset < WAL_PAGE {
                LONG_HEADER_LEN
            } else {
                SHORT_HEADER_LEN
            };
            if (in_page as usize) < header_len {
                let take = (header_len - in_page as usize).min(data.len());
                if in_page == 0 {
                    self.page_header.clear();
                }
                self.page_header.extend_from_slice(&data[..take]);
                self.offset += take as u64;
                data = &data[take..];
                if self.page_header.len() == header_len {
                    self.page_done();
                }
                continue;
            }
            let room = (WAL_PAGE - in_page) as usize;
            let avail = room.min(data.len());
            let used = self.consume(&data[..avail]);
            self.offset += used as u64;
            data = &data[used..];
        }
    }

    fn page_done(&mut self) {
        let header = &self.page_header;
        let magic = u16::from_le_bytes([header[0], header[1]]);
        let info = u16::from_le_bytes([header[2], header[3]]);
        let address = u64::from_le_bytes(header[8..16].try_into().unwrap());
        let rem_len = u32::from_le_bytes(header[16..20].try_into().unwrap());
        let page_start = self.offset - header.len() as u64;
        let all_zero = header.iter().all(|&b| b == 0);
        let Some(first) = self.first_magic else {
            self.first_magic = Some(magic);
            self.first_address = address;
            let announced = u64::from(u32::from_le_bytes(header[32..36].try_into().unwrap()));
            self.segment_size = is_valid_segment_size(announced).then_some(announced);
            if rem_len > MAX_RECORD {
                self.fail(format!(
                    "its first page continues a record of {rem_len} more bytes, longer than any \
                     WAL record: damaged"
                ));
            } else if rem_len > 0 && info & XLP_FIRST_IS_OVERWRITE_CONTRECORD == 0 {
                self.state = RecordState::Continuation(u64::from(rem_len));
            }
            return;
        };
        let expected = self.first_address + page_start;
        if self.state == RecordState::SwitchPadding {
            // PostgreSQL 14 and later zero whole pages after a switch; older
            // releases leave each page's header, with no record on it.
            let empty_header = magic == first
                && address == expected
                && rem_len == 0
                && info & XLP_FIRST_IS_CONTRECORD == 0;
            if !all_zero && !empty_header {
                self.fail(format!(
                    "page at offset {page_start}, after its XLOG_SWITCH record, is neither zeros \
                     nor an empty page: damaged"
                ));
            }
            return;
        }
        if magic == 0 && address == 0 {
            // A zeroed page: the end of what was written, as in a `.partial`
            // file streamed up to here. PostgreSQL reads it as the end of
            // WAL too; in a complete segment it is a lost end.
            self.ends_early(page_start, "a zeroed page");
            return;
        }
        // A page left from an older segment this file was recycled from:
        // the same place in a segment some whole number of segments earlier
        // (every segment size is a multiple of 1 MiB). A `.partial` that
        // PostgreSQL renamed at a promotion looks like this after its last
        // record, and PostgreSQL reads it as the end of WAL ("unexpected
        // pageaddr"), not as damage.
        if self.partial
            && magic == first
            && address < expected
            && (expected - address).is_multiple_of(1 << 20)
        {
            self.state = RecordState::Done;
            return;
        }
        if magic != first || address != expected {
            self.fail(format!(
                "page at offset {page_start} has magic {magic:#06x} and address {address:X}, \
                 expected {first:#06x} and {expected:X}: damaged"
            ));
            return;
        }
        // A record cut by a crash, then overwritten: PostgreSQL abandons it
        // and reads on after this page's header.
        if info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0 {
            self.split_header_rem = None;
            self.state = RecordState::Align;
            return;
        }
        // What PostgreSQL's reader demands of a page a record continues on
        // (`xlp_rem_len` is what is left of it), and of one it does not.
        let left = match self.state {
            RecordState::Continuation(left) => Some(left),
            RecordState::Data(left) => Some(u64::from(left)),
            RecordState::Header if self.header_len > 0 => {
                self.split_header_rem = Some((rem_len, self.header_len));
                None
            }
            _ => {
                if info & XLP_FIRST_IS_CONTRECORD != 0 || rem_len != 0 {
                    self.fail(format!(
                        "page at offset {page_start} says it continues a record ({rem_len} bytes), \
                         but no record runs into it: damaged"
                    ));
                }
                return;
            }
        };
        let flagged = info & XLP_FIRST_IS_CONTRECORD != 0;
        if let Some(left) = left {
            if !flagged || u64::from(rem_len) != left {
                self.fail(format!(
                    "page at offset {page_start} has xlp_rem_len {rem_len}, but {left} bytes of \
                     a record run into it: damaged"
                ));
            }
        } else if !flagged {
            self.fail(format!(
                "page at offset {page_start} lacks the continuation flag of the record header \
                 split over it: damaged"
            ));
        }
    }

    /// Consumes record bytes inside one page; returns how many were used.
    fn consume(&mut self, data: &[u8]) -> usize {
        match self.state {
            RecordState::Done => data.len(),
            RecordState::SwitchPadding => {
                if let Some(at) = data.iter().position(|&b| b != 0) {
                    let at = self.offset + at as u64;
                    self.fail(format!(
                        "byte at offset {at}, after its XLOG_SWITCH record, is not zero: damaged"
                    ));
                }
                data.len()
            }
            RecordState::Continuation(left) => {
                let n = (left.min(data.len() as u64)) as usize;
                self.state = if left as usize == n {
                    RecordState::Align
                } else {
                    RecordState::Continuation(left - n as u64)
                };
                n
            }
            RecordState::Align => {
                let pad = ((8 - self.offset % 8) % 8) as usize;
                if pad == 0 {
                    self.state = RecordState::Header;
                    self.header_len = 0;
                    self.split_header_rem = None;
                    0
                } else {
                    pad.min(data.len())
                }
            }
            RecordState::Header => {
                let n = (RECORD_HEADER - self.header_len).min(data.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
                self.header_len += n;
                if self.header_len == RECORD_HEADER {
                    let total = u32::from_le_bytes(self.header[0..4].try_into().unwrap());
                    let at = self.offset + n as u64 - RECORD_HEADER as u64;
                    if total == 0 {
                        self.ends_early(at, "a zero record length");
                    } else if total < RECORD_HEADER as u32 || total > MAX_RECORD {
                        self.fail(format!(
                            "record at offset {at} has impossible length {total}: damaged"
                        ));
                    } else if let Some((rem_len, before)) = self
                        .split_header_rem
                        .take()
                        .filter(|&(rem_len, before)| rem_len != total - before as u32)
                    {
                        self.fail(format!(
                            "record at offset {at} is {total} bytes long, but the next page says \
                             {rem_len} bytes of it follow {before}: damaged"
                        ));
                    } else {
                        self.crc = crc32c::crc32c(&[]);
                        self.state = RecordState::Data(total - RECORD_HEADER as u32);
                        if total as usize == RECORD_HEADER {
                            self.record_done(self.offset + n as u64);
                        }
                    }
                }
                n
            }
            RecordState::Data(left) => {
                let n = (left as usize).min(data.len());
                self.crc = crc32c::crc32c_append(self.crc, &data[..n]);
                let left = left - n as u32;
                self.state = RecordState::Data(left);
                if left == 0 {
                    self.record_done(self.offset + n as u64);
                }
                n
            }
        }
    }

    fn record_done(&mut self, end: u64) {
        let crc = crc32c::crc32c_append(self.crc, &self.header[..CRC_COVERS]);
        let stored = u32::from_le_bytes(self.header[20..24].try_into().unwrap());
        if crc != stored {
            self.fail(format!(
                "the WAL record ending at offset {end} fails its CRC check (stored {stored:08x}, \
                 computed {crc:08x}): damaged"
            ));
            return;
        }
        self.records += 1;
        let (info, rmid) = (self.header[16], self.header[17]);
        self.state = match (
            rmid == RM_XLOG_ID && info & 0xF0 == XLOG_SWITCH,
            self.partial,
        ) {
            (true, false) => RecordState::SwitchPadding,
            (true, true) => RecordState::Done,
            (false, _) => RecordState::Align,
        };
    }

    /// The verdict once every byte has been fed.
    pub fn finish(&self) -> Result<u64, String> {
        if let Some(why) = &self.error {
            return Err(why.clone());
        }
        if !self.partial {
            match self.segment_size {
                None => return Err("its header announces no valid segment size".to_string()),
                Some(size) if self.offset < size => {
                    return Err(format!(
                        "its WAL stops at offset {}, before the end of its {size}-byte segment",
                        self.offset
                    ))
                }
                Some(size) if self.offset > size => {
                    return Err(format!(
                        "it is longer than the {size} bytes its header announces"
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(self.records)
    }
}

/// Builds a long page header, for tests and the embedded server.
pub fn long_page_header(
    magic: u16,
    timeline: u32,
    page_address: u64,
    system_identifier: u64,
    segment_size: u32,
) -> [u8; LONG_HEADER_LEN] {
    let mut h = [0u8; LONG_HEADER_LEN];
    h[0..2].copy_from_slice(&magic.to_le_bytes());
    h[2..4].copy_from_slice(&XLP_LONG_HEADER.to_le_bytes());
    h[4..8].copy_from_slice(&timeline.to_le_bytes());
    h[8..16].copy_from_slice(&page_address.to_le_bytes());
    h[24..32].copy_from_slice(&system_identifier.to_le_bytes());
    h[32..36].copy_from_slice(&segment_size.to_le_bytes());
    h[36..40].copy_from_slice(&8192u32.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn wal(s: &str) -> WalName {
        WalName::parse(s).unwrap()
    }

    #[test]
    fn a_good_segment_passes() {
        let w = wal("000000010000000000000003");
        let head = long_page_header(0xD110, 1, 3 * MIB, 42, MIB as u32);
        assert_eq!(check(&w, MIB, &head), Ok(Some(42)));
        let second_log = wal("000000020000000100000002");
        let head = long_page_header(0xD110, 1, (4096 + 2) * MIB, 42, MIB as u32);
        assert_eq!(check(&second_log, MIB, &head), Ok(Some(42)));
    }

    #[test]
    fn wrong_segments_fail() {
        let w = wal("000000010000000000000003");
        let good = long_page_header(0xD110, 1, 3 * MIB, 42, MIB as u32);
        assert!(check(&w, MIB - 1, &good).unwrap_err().contains("truncated"));
        let other = long_page_header(0xD110, 1, 4 * MIB, 42, MIB as u32);
        assert!(check(&w, MIB, &other)
            .unwrap_err()
            .contains("another segment"));
        let newer_tli = long_page_header(0xD110, 2, 3 * MIB, 42, MIB as u32);
        assert!(check(&w, MIB, &newer_tli).unwrap_err().contains("timeline"));
        let bad_magic = long_page_header(0xBEEF, 1, 3 * MIB, 42, MIB as u32);
        assert!(check(&w, MIB, &bad_magic).unwrap_err().contains("magic"));
        let bad_size = long_page_header(0xD110, 1, 3 * MIB, 42, 3000);
        assert!(check(&w, MIB, &bad_size)
            .unwrap_err()
            .contains("segment size"));
        assert!(check(&w, 10, b"short").is_err());
        let partial = wal("000000010000000000000003.partial");
        assert_eq!(check(&partial, MIB / 2, &good), Ok(Some(42)));
    }

    fn generated(segment_number: u64) -> Vec<u8> {
        embedded_barman::walgen::segment_bytes(embedded_barman::walgen::SegmentId {
            system_identifier: 42,
            timeline: 1,
            segment_number,
            segment_size: MIB,
        })
    }

    fn walk(bytes: &[u8], chunk: usize) -> Result<u64, String> {
        walk_with(RecordChecker::new(), bytes, chunk)
    }

    fn walk_with(mut checker: RecordChecker, bytes: &[u8], chunk: usize) -> Result<u64, String> {
        for piece in bytes.chunks(chunk) {
            checker.feed(piece);
        }
        checker.finish()
    }

    #[test]
    fn records_of_a_good_segment_pass_in_any_chunking() {
        let bytes = generated(5);
        let whole = walk(&bytes, bytes.len()).unwrap();
        assert!(whole > 1000, "only {whole} records checked");
        for chunk in [1, 7, 24, 8191, 8192, 65536] {
            assert_eq!(walk(&bytes, chunk), Ok(whole), "chunk {chunk}");
        }
    }

    /// In a `.partial`, the tail of a recycled file (pages of a segment two
    /// earlier, at the same offsets) ends the WAL as it does for PostgreSQL;
    /// a page from a later segment, or one shifted inside a segment, is
    /// damage; in a complete segment, the recycled tail is damage too.
    #[test]
    fn a_recycled_tail_is_the_end_of_wal_not_damage() {
        let bytes = generated(5);
        let cut = 8192 * 40;
        let mut recycled = bytes.clone();
        recycled[cut..].copy_from_slice(&generated(3)[cut..]);
        let partial = |b: &[u8]| walk_with(RecordChecker::for_partial(), b, 65536);
        let records = partial(&recycled).expect("a recycled tail ends the WAL");
        assert!(records > 10 && records < walk(&bytes, 65536).unwrap());
        assert!(walk(&recycled, 65536).is_err(), "not in a complete segment");
        let mut later = bytes.clone();
        later[cut..].copy_from_slice(&generated(7)[cut..]);
        assert!(partial(&later).is_err(), "pages of a later segment");
        let mut shifted = bytes.clone();
        shifted[cut..cut + 8192].copy_from_slice(&bytes[cut - 8192..cut]);
        assert!(partial(&shifted).is_err(), "a page one page early");
    }

    #[test]
    fn a_flipped_bit_in_a_record_or_page_header_is_caught() {
        let bytes = generated(5);
        let mut caught = 0;
        let mut tried = 0;
        // Offsets spread over the segment, page headers included.
        for offset in (41..bytes.len())
            .step_by(9973)
            .chain([8192 + 3, 8192 * 7 + 9])
        {
            let mut damaged = bytes.clone();
            damaged[offset] ^= 0x10;
            tried += 1;
            if walk(&damaged, 65536).is_err() {
                caught += 1;
            }
        }
        // Only MAXALIGN padding between records escapes (a few bytes in a hundred).
        assert!(caught * 100 >= tried * 90, "caught {caught} of {tried}");
    }

    fn record(rmid: u8, info: u8, data: &[u8]) -> Vec<u8> {
        let mut rec = vec![0u8; 24];
        rec[0..4].copy_from_slice(&(24 + data.len() as u32).to_le_bytes());
        rec[16] = info;
        rec[17] = rmid;
        rec.extend_from_slice(data);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&rec[24..]), &rec[..20]);
        rec[20..24].copy_from_slice(&crc.to_le_bytes());
        rec
    }

    #[test]
    fn a_newer_magic_passes_only_for_a_cluster_that_new() {
        assert!(newer_release_accepted(0xD11A, Some(19)));
        assert!(newer_release_accepted(0xD120, Some(20)));
        assert!(!newer_release_accepted(0xD11A, Some(18)));
        assert!(!newer_release_accepted(0xD11A, None));
        // Older than the newest we know, or another family: not a newer release.
        assert!(!newer_release_accepted(0xD111, Some(19)));
        assert!(!newer_release_accepted(0xBEEF, Some(19)));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("PG_VERSION"), "9.6\n").unwrap();
        assert_eq!(read_pg_version(dir.path()), Some(9));
        std::fs::write(dir.path().join("PG_VERSION"), "19\n").unwrap();
        assert_eq!(read_pg_version(dir.path()), Some(19));
    }

    /// A segment of `MIB` bytes: `records`, then what follows them.
    fn built(records: &[Vec<u8>], rest: u8) -> Vec<u8> {
        let mut segment = long_page_header(0xD110, 1, 5 * MIB, 42, MIB as u32).to_vec();
        for rec in records {
            segment.resize(segment.len().next_multiple_of(8), 0);
            segment.extend(rec);
        }
        segment.resize(MIB as usize, rest);
        segment
    }

    #[test]
    fn a_switch_ends_the_walk_when_padding_follows() {
        let heap = record(10, 0x20, b"heap");
        let switch = record(RM_XLOG_ID, XLOG_SWITCH, b"");
        // PostgreSQL 14 and later: zeros up to the end.
        let zeros = built(&[heap.clone(), switch.clone()], 0);
        assert_eq!(walk(&zeros, 100), Ok(2));
        assert_eq!(walk(&zeros, 65536), Ok(2));
        // Before 14: every later page keeps an empty header.
        let mut headers = zeros.clone();
        for page in (8192..headers.len()).step_by(8192) {
            headers[page..page + 2].copy_from_slice(&0xD110u16.to_le_bytes());
            headers[page + 4] = 1;
            headers[page + 8..page + 16].copy_from_slice(&(5 * MIB + page as u64).to_le_bytes());
        }
        assert_eq!(walk(&headers, 8192), Ok(2));
        // Anything else after a switch is damage.
        let garbage = built(&[heap.clone(), switch], 0xAB);
        assert!(walk(&garbage, 100).unwrap_err().contains("XLOG_SWITCH"));
        let mut stray = zeros.clone();
        stray[MIB as usize - 3] = 1;
        assert!(walk(&stray, 4096).unwrap_err().contains("not zero"));
        let mut shifted = headers.clone();
        shifted[8192 * 3 + 9] ^= 1;
        assert!(walk(&shifted, 8192).unwrap_err().contains("neither zeros"));
    }

    /// The shapes a lost end takes: a zero record length, a zeroed page, a
    /// first page claiming a record longer than the segment, a file cut
    /// short. Each is the end of WAL in a `.partial`, damage otherwise.
    #[test]
    fn a_complete_segment_must_not_end_early() {
        let zero_length = built(&[record(10, 0x20, b"heap")], 0);
        let err = walk(&zero_length, 100).unwrap_err();
        assert!(
            err.contains("ends early") && err.contains("zero record length"),
            "{err}"
        );
        assert_eq!(
            walk_with(RecordChecker::for_partial(), &zero_length, 100),
            Ok(1)
        );

        let good = generated(5);
        let mut zero_page = good.clone();
        zero_page[8192 * 40..].fill(0);
        let err = walk(&zero_page, 65536).unwrap_err();
        assert!(err.contains("zeroed page"), "{err}");
        assert!(walk_with(RecordChecker::for_partial(), &zero_page, 65536).is_ok());

        let mut huge_rem = good.clone();
        huge_rem[16..20].copy_from_slice(&(MIB as u32 * 2).to_le_bytes());
        assert!(walk(&huge_rem, 65536).unwrap_err().contains("xlp_rem_len"));
        huge_rem[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(walk(&huge_rem, 65536)
            .unwrap_err()
            .contains("longer than any"));

        let err = walk(&good[..good.len() - 8192], 65536).unwrap_err();
        assert!(err.contains("stops at offset"), "{err}");
        let mut longer = good.clone();
        longer.extend_from_slice(&[0; 100]);
        assert!(walk(&longer, 65536).unwrap_err().contains("longer than"));
        assert!(walk(&longer, longer.len())
            .unwrap_err()
            .contains("longer than"));
    }

    /// A record a crash cut short, overwritten after recovery: PostgreSQL
    /// abandons it at the page flagged `XLP_FIRST_IS_OVERWRITE_CONTRECORD`.
    #[test]
    fn an_overwritten_contrecord_is_abandoned_not_damage() {
        let mut segment = long_page_header(0xD110, 1, 5 * MIB, 42, MIB as u32).to_vec();
        // A record header announcing 10000 bytes, cut at the page's end.
        let mut cut = vec![0u8; 24];
        cut[0..4].copy_from_slice(&10_000u32.to_le_bytes());
        segment.extend(cut);
        segment.resize(8192, 0x5A);
        let mut page = vec![0u8; 24];
        page[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        page[2..4].copy_from_slice(&XLP_FIRST_IS_OVERWRITE_CONTRECORD.to_le_bytes());
        page[8..16].copy_from_slice(&(5 * MIB + 8192).to_le_bytes());
        segment.extend(page);
        segment.extend(record(RM_XLOG_ID, XLOG_SWITCH, b""));
        segment.resize(MIB as usize, 0);
        assert_eq!(walk(&segment, 1000), Ok(1));
        segment[8194] = 0;
        assert!(walk(&segment, 1000).unwrap_err().contains("xlp_rem_len"));
    }
}
