//! Synthetic WAL segments that look like PostgreSQL 15's to anything that
//! checks them: page headers at every 8 KiB page (long on page 0), records
//! that run across page boundaries (`xlp_rem_len`), and pgbench-like payload
//! that compresses a few times over, as real WAL does.
//!
//! Content is a pure function of (system identifier, timeline, segment
//! number, segment size), so a test can regenerate the bytes it expects
//! instead of keeping copies. The generator is our own SplitMix64, not
//! `rand`: its output must never change with a crate upgrade.

/// PostgreSQL 15's `XLOG_PAGE_MAGIC`.
pub const XLOG_PAGE_MAGIC_PG15: u16 = 0xD110;
/// `XLOG_BLCKSZ`.
pub const WAL_PAGE_SIZE: usize = 8192;
/// `XLP_FIRST_IS_CONTRECORD`: the page starts with the tail of a record.
pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// `XLP_LONG_HEADER`: set on the first page of a segment.
pub const XLP_LONG_HEADER: u16 = 0x0002;
/// `SizeOfXLogShortPHD` (20 bytes, MAXALIGNed).
pub const SHORT_HEADER_LEN: usize = 24;
/// `SizeOfXLogLongPHD` (36 bytes, MAXALIGNed).
pub const LONG_HEADER_LEN: usize = 40;

/// The identity of one segment: everything its bytes depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentId {
    pub system_identifier: u64,
    pub timeline: u32,
    /// PostgreSQL's `XLogSegNo`: byte position / segment size.
    pub segment_number: u64,
    pub segment_size: u64,
}

/// Generates the raw bytes of one segment.
pub fn segment_bytes(id: SegmentId) -> Vec<u8> {
    let size = usize::try_from(id.segment_size).expect("segment size fits in memory");
    let mut out = vec![0u8; size];
    let segment_start = id.segment_number.wrapping_mul(id.segment_size);
    let mut records = RecordStream::new(id, segment_start);
    // The segment starts in the middle of a record from the previous one.
    let mut pending = records.carried_tail();
    let mut pending_pos = 0;

    for page_start in (0..size).step_by(WAL_PAGE_SIZE) {
        let page_end = page_start + WAL_PAGE_SIZE;
        let rem_len = (pending.len() - pending_pos) as u32;
        let first = page_start == 0;
        let header_len = write_page_header(
            &mut out[page_start..],
            &id,
            segment_start + page_start as u64,
            rem_len,
            first,
        );
        let mut offset = page_start + header_len;
        while offset < page_end {
            if pending_pos == pending.len() {
                // Records start MAXALIGNed.
                offset = (offset + 7) & !7;
                if offset >= page_end {
                    break;
                }
                pending = records.next_record(segment_start + offset as u64);
                pending_pos = 0;
            }
            let n = (pending.len() - pending_pos).min(page_end - offset);
            out[offset..offset + n].copy_from_slice(&pending[pending_pos..pending_pos + n]);
            offset += n;
            pending_pos += n;
        }
    }
    out
}

fn write_page_header(
    page: &mut [u8],
    id: &SegmentId,
    pageaddr: u64,
    rem_len: u32,
    long: bool,
) -> usize {
    let mut info = 0u16;
    if long {
        info |= XLP_LONG_HEADER;
    }
    if rem_len > 0 {
        info |= XLP_FIRST_IS_CONTRECORD;
    }
    page[0..2].copy_from_slice(&XLOG_PAGE_MAGIC_PG15.to_le_bytes());
    page[2..4].copy_from_slice(&info.to_le_bytes());
    page[4..8].copy_from_slice(&id.timeline.to_le_bytes());
    page[8..16].copy_from_slice(&pageaddr.to_le_bytes());
    page[16..20].copy_from_slice(&rem_len.to_le_bytes());
    if !long {
        return SHORT_HEADER_LEN;
    }
    page[24..32].copy_from_slice(&id.system_identifier.to_le_bytes());
    page[32..36].copy_from_slice(&(id.segment_size as u32).to_le_bytes());
    page[36..40].copy_from_slice(&(WAL_PAGE_SIZE as u32).to_le_bytes());
    LONG_HEADER_LEN
}

/// SplitMix64: tiny, fast, and fixed forever.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// pgbench-shaped records: mostly heap updates of `pgbench_accounts` (whose
/// blank-padded filler is what makes real WAL compress well), index inserts,
/// commits, and now and then a full-page image.
struct RecordStream {
    rng: SplitMix64,
    xid: u32,
    aid: u32,
    block: u32,
    prev_lsn: u64,
    timestamp: u64,
}

const RM_XACT: u8 = 1;
const RM_HEAP: u8 = 10;
const RM_BTREE: u8 = 11;

impl RecordStream {
    fn new(id: SegmentId, segment_start: u64) -> RecordStream {
        let seed = id.system_identifier
            ^ (u64::from(id.timeline) << 48)
            ^ id.segment_number.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let mut rng = SplitMix64(seed);
        // Counters advance with the segment number so that neighbouring
        // segments look like one continuous history.
        let progress = id.segment_number.wrapping_mul(id.segment_size / 160);
        RecordStream {
            xid: 1000u32.wrapping_add((progress / 3) as u32),
            aid: (progress % 100_000) as u32 + 1,
            block: (rng.below(1 << 16)) as u32,
            prev_lsn: segment_start.saturating_sub(160),
            timestamp: 757_382_400_000_000 + progress * 50,
            rng,
        }
    }

    /// The tail of a record begun in the previous segment.
    fn carried_tail(&mut self) -> Vec<u8> {
        let len = self.rng.below(120) as usize;
        let mut tail = Vec::with_capacity(len);
        self.push_filler(&mut tail, len);
        tail
    }

    fn next_record(&mut self, lsn: u64) -> Vec<u8> {
        let roll = self.rng.below(100);
        let mut rec = Vec::with_capacity(256);
        // XLogRecord: tot_len, xid, prev, info, rmid, 2 pad, crc.
        rec.extend_from_slice(&[0u8; 4]);
        rec.extend_from_slice(&self.xid.to_le_bytes());
        rec.extend_from_slice(&self.prev_lsn.to_le_bytes());
        let (info, rmid) = match roll {
            0..=59 => (0x20, RM_HEAP),
            60..=84 => (0x00, RM_BTREE),
            85..=96 => (0x00, RM_XACT),
            _ => (0x00, RM_HEAP),
        };
        rec.extend_from_slice(&[info, rmid, 0, 0]);
        rec.extend_from_slice(&[0u8; 4]); // xl_crc, set below
        match roll {
            0..=59 => self.heap_update(&mut rec),
            60..=84 => self.btree_insert(&mut rec),
            85..=96 => self.commit(&mut rec),
            _ => self.full_page_image(&mut rec),
        }
        let len = rec.len() as u32;
        rec[0..4].copy_from_slice(&len.to_le_bytes());
        // xl_crc as PostgreSQL computes it: the data, then the header up to the CRC.
        let crc = crc32c::crc32c_append(crc32c::crc32c(&rec[24..]), &rec[..20]);
        rec[20..24].copy_from_slice(&crc.to_le_bytes());
        self.prev_lsn = lsn;
        rec
    }

    fn block_reference(&mut self, rec: &mut Vec<u8>, data_len: u16) {
        if self.rng.below(8) == 0 {
            self.block = self.block.wrapping_add(1);
        }
        rec.extend_from_slice(&[0, 0x20]);
        rec.extend_from_slice(&data_len.to_le_bytes());
        // RelFileNode: tablespace 1663, database 16384, pgbench_accounts.
        for oid in [1663u32, 16384, 16397] {
            rec.extend_from_slice(&oid.to_le_bytes());
        }
        rec.extend_from_slice(&self.block.to_le_bytes());
    }

    fn heap_update(&mut self, rec: &mut Vec<u8>) {
        self.aid = self.aid % 100_000 + 1 + self.rng.below(3) as u32;
        self.block_reference(rec, 121);
        // Tuple header, then aid, bid, abalance, and the char(84) filler.
        rec.extend_from_slice(&[0x04, 0x00, 0x03, 0x28, 0x18, 0x00]);
        rec.extend_from_slice(&self.xid.to_le_bytes());
        rec.extend_from_slice(&self.aid.to_le_bytes());
        rec.extend_from_slice(&(self.aid / 10_000 + 1).to_le_bytes());
        let balance = self.rng.below(10_001) as i32 - 5000;
        rec.extend_from_slice(&balance.to_le_bytes());
        rec.push(0xab);
        rec.extend(std::iter::repeat_n(b' ', 84));
        rec.extend_from_slice(&(self.rng.below(200) as u16).to_le_bytes());
    }

    fn btree_insert(&mut self, rec: &mut Vec<u8>) {
        self.block_reference(rec, 16);
        rec.extend_from_slice(&(self.rng.below(400) as u16).to_le_bytes());
        rec.extend_from_slice(&[0x10, 0x00, 0x00, 0x00]);
        rec.extend_from_slice(&self.aid.to_le_bytes());
        rec.extend_from_slice(&self.block.to_le_bytes());
        rec.extend_from_slice(&[0u8; 6]);
    }

    fn commit(&mut self, rec: &mut Vec<u8>) {
        self.timestamp += 1000 + self.rng.below(4000);
        rec.extend_from_slice(&[0xff, 0x08]);
        rec.extend_from_slice(&self.timestamp.to_le_bytes());
        rec.extend_from_slice(&[0u8; 4]);
        self.xid = self.xid.wrapping_add(1);
    }

    fn full_page_image(&mut self, rec: &mut Vec<u8>) {
        let len = 1024 + self.rng.below(3072) as usize;
        self.block_reference(rec, len as u16);
        self.push_filler(rec, len);
    }

    /// Page-like filler: line pointers, tuple headers and mostly repeated
    /// tuple bodies, with a sprinkle of noise.
    fn push_filler(&mut self, out: &mut Vec<u8>, len: usize) {
        let start = out.len();
        while out.len() - start < len {
            match self.rng.below(10) {
                0 => out.extend_from_slice(&self.rng.next().to_le_bytes()),
                1..=3 => out.extend_from_slice(
                    &(self.aid.wrapping_add(self.rng.below(64) as u32)).to_le_bytes(),
                ),
                _ => out.extend(std::iter::repeat_n(b' ', 16)),
            }
        }
        out.truncate(start + len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(segment_number: u64) -> SegmentId {
        SegmentId {
            system_identifier: 7_300_000_000_000_000_001,
            timeline: 1,
            segment_number,
            segment_size: 1 << 20,
        }
    }

    #[test]
    fn pages_carry_valid_headers() {
        let seg = segment_bytes(id(5));
        assert_eq!(seg.len(), 1 << 20);
        assert_eq!(&seg[0..2], &[0x10, 0xd1]);
        assert_eq!(
            u16::from_le_bytes([seg[2], seg[3]]) & XLP_LONG_HEADER,
            XLP_LONG_HEADER
        );
        assert_eq!(u64::from_le_bytes(seg[8..16].try_into().unwrap()), 5 << 20);
        assert_eq!(u32::from_le_bytes(seg[32..36].try_into().unwrap()), 1 << 20);
        assert_eq!(u32::from_le_bytes(seg[36..40].try_into().unwrap()), 8192);
        for page in 1..(seg.len() / WAL_PAGE_SIZE) {
            let p = &seg[page * WAL_PAGE_SIZE..];
            assert_eq!(u16::from_le_bytes([p[0], p[1]]), XLOG_PAGE_MAGIC_PG15);
            assert_eq!(u16::from_le_bytes([p[2], p[3]]) & XLP_LONG_HEADER, 0);
            let addr = u64::from_le_bytes(p[8..16].try_into().unwrap());
            assert_eq!(addr, (5 << 20) + (page * WAL_PAGE_SIZE) as u64);
        }
    }

    #[test]
    fn content_is_reproducible_and_compresses_like_wal() {
        let a = segment_bytes(id(9));
        assert_eq!(a, segment_bytes(id(9)));
        assert_ne!(a, segment_bytes(id(10)));
        let z = zstd::stream::encode_all(&a[..], 3).unwrap();
        let ratio = a.len() as f64 / z.len() as f64;
        assert!((3.0..=8.0).contains(&ratio), "zstd ratio {ratio:.2}");
    }
}
