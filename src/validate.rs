//! Is this really the WAL PostgreSQL asked for? Checked before a file gets
//! its final name, because a wrong segment handed over with exit 0
//! corrupts a standby silently.
//!
//! A segment's first page carries a long page header (PostgreSQL's
//! `XLogLongPageHeaderData`, little-endian on every platform Barman runs on):
//! magic u16, info u16, timeline u32, pageaddr u64, rem_len u32, padding,
//! system identifier u64, segment size u32, block size u32.

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
    if !KNOWN_MAGICS.iter().any(|&(m, _)| m == header.magic) {
        return Err(format!(
            "{wal} has page magic {:#06x}, which no PostgreSQL release from 9.6 to 18 writes",
            header.magic
        ));
    }
    if header.info & XLP_LONG_HEADER == 0 {
        return Err(format!("{wal} does not start with a long page header"));
    }
    let seg_size = u64::from(header.segment_size);
    if !seg_size.is_power_of_two() || !((1 << 20)..=(1 << 30)).contains(&seg_size) {
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
}
