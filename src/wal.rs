//! WAL file names: what PostgreSQL may ask for, and the arithmetic on them.
//!
//! PostgreSQL's `%f` is one of four shapes (the same ones `barman get-wal` accepts):
//! a 24-hex-digit segment (`TTTTTTTTLLLLLLLLSSSSSSSS`), a timeline history file
//! (`TTTTTTTT.history`), a backup label (`<segment>.<offset>.backup`) or a partial
//! segment (`<segment>.partial`). Anything else is refused before any connection,
//! so a name with `/`, `..` or a NUL can never reach a path or a remote command.

use std::cmp::Ordering;
use std::fmt;

/// What kind of file a WAL name designates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WalKind {
    Segment,
    History,
    Backup,
    Partial,
}

/// A validated WAL file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WalName {
    name: String,
    kind: WalKind,
    timeline: u32,
    /// Log id and segment within the log; zero for history files.
    log: u32,
    seg: u32,
}

/// Why a name is not a WAL name; the message names the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidWalName(pub String);

impl fmt::Display for InvalidWalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "'{}' is not a valid WAL file name (expected a 24-hex-digit segment, \
             TTTTTTTT.history, <segment>.partial or <segment>.XXXXXXXX.backup)",
            self.0.escape_debug()
        )
    }
}

impl std::error::Error for InvalidWalName {}

fn hex_u32(s: &str) -> Option<u32> {
    if s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        u32::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

impl WalName {
    /// Parses and validates a name as PostgreSQL passes it in `%f`.
    pub fn parse(name: &str) -> Result<WalName, InvalidWalName> {
        let invalid = || InvalidWalName(name.to_string());
        // Every valid shape is ASCII; checking first makes the byte slicing below safe.
        if !name.is_ascii() || name.len() > 40 {
            return Err(invalid());
        }
        let (kind, stem) = if let Some(stem) = name.strip_suffix(".history") {
            (WalKind::History, stem)
        } else if let Some(stem) = name.strip_suffix(".partial") {
            (WalKind::Partial, stem)
        } else if let Some(rest) = name.strip_suffix(".backup") {
            let (stem, offset) = rest.rsplit_once('.').ok_or_else(invalid)?;
            hex_u32(offset).ok_or_else(invalid)?;
            (WalKind::Backup, stem)
        } else {
            (WalKind::Segment, name)
        };
        match (kind, stem.len()) {
            (WalKind::History, 8) => {
                let timeline = hex_u32(stem).ok_or_else(invalid)?;
                Ok(WalName {
                    name: name.to_string(),
                    kind,
                    timeline,
                    log: 0,
                    seg: 0,
                })
            }
            (WalKind::History, _) => Err(invalid()),
            (_, 24) => {
                let timeline = hex_u32(&stem[0..8]).ok_or_else(invalid)?;
                let log = hex_u32(&stem[8..16]).ok_or_else(invalid)?;
                let seg = hex_u32(&stem[16..24]).ok_or_else(invalid)?;
                Ok(WalName {
                    name: name.to_string(),
                    kind,
                    timeline,
                    log,
                    seg,
                })
            }
            _ => Err(invalid()),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> WalKind {
        self.kind
    }

    pub fn timeline(&self) -> u32 {
        self.timeline
    }

    /// The position of a segment inside its timeline, comparable across
    /// segment sizes only within one cluster (which has one size).
    pub fn position(&self) -> (u32, u32) {
        (self.log, self.seg)
    }

    pub fn is_segment(&self) -> bool {
        self.kind == WalKind::Segment
    }

    /// The 24-character segment this name belongs to (the name itself for a
    /// segment), or `None` for a history file.
    pub fn segment_name(&self) -> Option<&str> {
        match self.kind {
            WalKind::History => None,
            _ => Some(&self.name[..24]),
        }
    }

    /// Barman's archive directory for this file: the first 16 hex digits
    /// (timeline + log id), or `None` for history files, which sit at the top.
    pub fn hash_dir(&self) -> Option<&str> {
        match self.kind {
            WalKind::History => None,
            _ => Some(&self.name[..16]),
        }
    }

    /// The segment after this one, for a given segment size (bytes, a power of
    /// two); wraps into the next log id as PostgreSQL does.
    pub fn next_segment(&self, segment_size: u64) -> Option<WalName> {
        if self.kind != WalKind::Segment {
            return None;
        }
        let per_log = segments_per_log(segment_size);
        let (log, seg) = if u64::from(self.seg) + 1 >= per_log {
            (self.log.checked_add(1)?, 0)
        } else {
            (self.log, self.seg + 1)
        };
        Some(WalName::segment(self.timeline, log, seg))
    }

    /// Builds a segment name from its parts.
    pub fn segment(timeline: u32, log: u32, seg: u32) -> WalName {
        WalName {
            name: format!("{timeline:08X}{log:08X}{seg:08X}"),
            kind: WalKind::Segment,
            timeline,
            log,
            seg,
        }
    }

    /// The segment number in units of `segment_size` since the start of the
    /// WAL stream: what PostgreSQL's `XLogSegNo` is.
    pub fn segment_number(&self, segment_size: u64) -> u64 {
        u64::from(self.log) * segments_per_log(segment_size) + u64::from(self.seg)
    }

    /// Orders two segments of any timeline by WAL position, then timeline.
    pub fn cmp_position(&self, other: &WalName) -> Ordering {
        (self.log, self.seg, self.timeline).cmp(&(other.log, other.seg, other.timeline))
    }
}

/// How many segments one log id holds (PostgreSQL's `XLogSegmentsPerXLogId`).
pub fn segments_per_log(segment_size: u64) -> u64 {
    0x1_0000_0000u64 / segment_size.max(1)
}

/// The segment a recovery starts from, as a base backup's `backup_label`
/// names it (`START WAL LOCATION: 0/18000028 (file 000000010000000000000018)`).
pub fn backup_label_start(label: &str) -> Option<WalName> {
    let line = label
        .lines()
        .find_map(|l| l.strip_prefix("START WAL LOCATION:"))?;
    let name = line.split_once("(file ")?.1.split_once(')')?.0.trim();
    WalName::parse(name).ok().filter(WalName::is_segment)
}

impl fmt::Display for WalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl std::str::FromStr for WalName {
    type Err = InvalidWalName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WalName::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_label_names_the_first_segment() {
        let label = "START WAL LOCATION: 0/18000028 (file 000000010000000000000018)\n\
                     CHECKPOINT LOCATION: 0/18000060\nBACKUP METHOD: streamed\n";
        assert_eq!(
            backup_label_start(label).map(|w| w.to_string()),
            Some("000000010000000000000018".to_string())
        );
        for bad in [
            "",
            "START WAL LOCATION: 0/18000028\n",
            "START WAL LOCATION: 0/1 (file ../../etc/passwd)\n",
            "START WAL LOCATION: 0/1 (file 00000002.history)\n",
        ] {
            assert_eq!(backup_label_start(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn accepts_the_four_shapes() {
        let seg = WalName::parse("000000010000000200000003").unwrap();
        assert_eq!(seg.kind(), WalKind::Segment);
        assert_eq!((seg.timeline(), seg.position()), (1, (2, 3)));
        assert_eq!(seg.hash_dir(), Some("0000000100000002"));
        let hist = WalName::parse("0000000A.history").unwrap();
        assert_eq!(
            (hist.kind(), hist.timeline(), hist.hash_dir()),
            (WalKind::History, 10, None)
        );
        let part = WalName::parse("000000010000000200000003.partial").unwrap();
        assert_eq!(part.kind(), WalKind::Partial);
        assert_eq!(part.segment_name(), Some("000000010000000200000003"));
        let backup = WalName::parse("000000010000000200000003.00000028.backup").unwrap();
        assert_eq!(backup.kind(), WalKind::Backup);
    }

    #[test]
    fn refuses_paths_and_junk() {
        for bad in [
            "",
            "../00000001000000020000000",
            "00000001/000000020000000",
            "000000010000000200000003/",
            "00000001000000020000000G",
            "0000000100000002000000031",
            "00000001.history/..",
            "000000010000000200000003.partial\0",
            "000000010000000200000003.backup",
            "000000010000000200000003.0000002.backup",
            "ä00000010000000200000003",
            &"0".repeat(200),
        ] {
            assert!(WalName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn next_segment_wraps_at_log_boundary() {
        let mib16 = 16 << 20;
        let last = WalName::parse("0000000100000002000000FF").unwrap();
        assert_eq!(
            last.next_segment(mib16).unwrap().as_str(),
            "000000010000000300000000"
        );
        let gib = 1 << 30;
        let last = WalName::parse("000000010000000200000003").unwrap();
        assert_eq!(
            last.next_segment(gib).unwrap().as_str(),
            "000000010000000300000000"
        );
        let mib1 = 1 << 20;
        let mid = WalName::parse("0000000100000002000000FF").unwrap();
        assert_eq!(
            mid.next_segment(mib1).unwrap().as_str(),
            "000000010000000200000100"
        );
    }
}
