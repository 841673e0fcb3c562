//! The cluster's own identity, read from `global/pg_control` of the data
//! directory PostgreSQL runs restore_command in.
//!
//! Hand-written because no crate reads `pg_control`, and we need two fields
//! of it: the system identifier and the WAL segment size. Both are read by
//! position markers that have not moved from PostgreSQL 9.6 to 18
//! (`ControlFileData` in `catalog/pg_control.h`), so no per-version table
//! of offsets is needed:
//!
//! - `system_identifier` is the struct's first field, a u64;
//! - `floatFormat` (the double 1234567.0, there to detect a float format
//!   mismatch) is followed by `blcksz`, `relseg_size`, `xlog_blcksz` and
//!   `xlog_seg_size`, u32 each. The fields before it (the checkpoint copy)
//!   grew across releases, so the double is looked for, 8-byte aligned, in
//!   the first 512 bytes (`PG_CONTROL_MAX_SAFE_SIZE`: PostgreSQL keeps the
//!   whole struct there).
//!
//! Checked against a PostgreSQL 15 `initdb --wal-segsize=4`: the double at
//! offset 208, then 8192 131072 8192 4194304, as `pg_controldata` prints.
//! Little-endian only, like the WAL checks of [`crate::validate`]: a
//! big-endian file does not match the double, and is reported unreadable.

use std::path::Path;

/// Where PostgreSQL keeps it, relative to the data directory.
pub const CONTROL_FILE: &str = "global/pg_control";

/// `PG_CONTROL_MAX_SAFE_SIZE`: the struct lives in these first bytes.
const SAFE_SIZE: usize = 512;

/// `FLOATFORMAT_VALUE`.
const FLOAT_FORMAT: f64 = 1234567.0;

/// What a data directory says about the WAL that belongs to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterIdentity {
    pub system_identifier: u64,
    /// `wal_segment_size` in bytes.
    pub segment_size: u32,
}

impl ClusterIdentity {
    /// The identity of the cluster whose data directory is `dir`: `Ok(None)`
    /// when `dir` is not one (no readable `global/pg_control`, as for a
    /// manual run), `Err` when the file is there but not understood.
    pub fn of_data_dir(dir: &Path) -> Result<Option<ClusterIdentity>, String> {
        let path = dir.join(CONTROL_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(_) => return Ok(None),
        };
        ClusterIdentity::parse(&bytes)
            .map(Some)
            .ok_or_else(|| format!("{} is not a pg_control we can read", path.display()))
    }

    /// Reads the two fields from the bytes of a `pg_control` file.
    pub fn parse(bytes: &[u8]) -> Option<ClusterIdentity> {
        let head = &bytes[..bytes.len().min(SAFE_SIZE)];
        let system_identifier = u64::from_le_bytes(head.get(..8)?.try_into().ok()?);
        let u32_at = |o: usize| -> Option<u32> {
            Some(u32::from_le_bytes(head.get(o..o + 4)?.try_into().ok()?))
        };
        let marker = FLOAT_FORMAT.to_le_bytes();
        let at = (8..head.len().saturating_sub(8))
            .step_by(8)
            .find(|&o| head[o..o + 8] == marker)?;
        let block_size = u32_at(at + 8)?;
        let wal_block_size = u32_at(at + 16)?;
        let segment_size = u32_at(at + 20)?;
        let plausible = block_size.is_power_of_two()
            && (1024..=32768).contains(&block_size)
            && wal_block_size.is_power_of_two()
            && (1024..=65536).contains(&wal_block_size)
            && segment_size.is_power_of_two()
            && ((1 << 20)..=(1 << 30)).contains(&segment_size);
        (plausible && system_identifier != 0).then_some(ClusterIdentity {
            system_identifier,
            segment_size,
        })
    }
}

/// A `pg_control` laid out as PostgreSQL 15 does (the double at offset
/// 208), with the fields we read set and everything else zero: for tests
/// and the in-process Barman's users, which need a data directory.
pub fn fake(system_identifier: u64, segment_size: u32) -> Vec<u8> {
    let mut bytes = vec![0u8; 8192];
    bytes[..8].copy_from_slice(&system_identifier.to_le_bytes());
    bytes[204..208].copy_from_slice(&8u32.to_le_bytes()); // maxAlign
    bytes[208..216].copy_from_slice(&FLOAT_FORMAT.to_le_bytes());
    for (i, v) in [8192u32, 131072, 8192, segment_size].iter().enumerate() {
        bytes[216 + 4 * i..220 + 4 * i].copy_from_slice(&v.to_le_bytes());
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `global/pg_control` of a real PostgreSQL 15 (`initdb --wal-segsize=4`),
    /// whose `pg_controldata` said: "Database system identifier:
    /// 7714976645960903772", "Bytes per WAL segment: 4194304".
    const PG15: &[u8] = include_bytes!("../fixtures/pg_control/pg15-wal-segsize-4");

    #[test]
    fn reads_a_real_pg15_pg_control() {
        assert_eq!(
            ClusterIdentity::parse(PG15),
            Some(ClusterIdentity {
                system_identifier: 7_714_976_645_960_903_772,
                segment_size: 4 << 20
            })
        );
    }

    #[test]
    fn the_fake_reads_as_it_was_made() {
        assert_eq!(
            ClusterIdentity::parse(&fake(7, 1 << 20)),
            Some(ClusterIdentity {
                system_identifier: 7,
                segment_size: 1 << 20
            })
        );
    }

    #[test]
    fn refuses_what_is_not_a_pg_control() {
        assert_eq!(ClusterIdentity::parse(&[0u8; 8192]), None);
        assert_eq!(ClusterIdentity::parse(b"short"), None);
        let mut bytes = fake(1, 16 << 20);
        bytes[208 + 20..208 + 24].copy_from_slice(&12345u32.to_le_bytes());
        assert_eq!(ClusterIdentity::parse(&bytes), None, "odd segment size");
    }

    #[test]
    fn the_marker_may_move_as_the_checkpoint_copy_grows() {
        // PostgreSQL 9.6's ControlFileData is shorter before floatFormat.
        let mut bytes = vec![0u8; 8192];
        bytes[..8].copy_from_slice(&42u64.to_le_bytes());
        bytes[184..192].copy_from_slice(&FLOAT_FORMAT.to_le_bytes());
        for (i, v) in [8192u32, 131072, 8192, 16 << 20].iter().enumerate() {
            bytes[192 + 4 * i..196 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
        assert_eq!(
            ClusterIdentity::parse(&bytes).map(|c| (c.system_identifier, c.segment_size)),
            Some((42, 16 << 20))
        );
    }
}
