//! A generated Barman server directory on disk, and the lookups `barman
//! get-wal` makes in it.
//!
//! Layout (one server directory, the way Barman keeps `<barman_home>/<server>`):
//!
//! ```text
//! wals/<TLI+LOG>/<segment>              archived segments, compressed per file
//! wals/<TLI+LOG>/<segment>.<off>.backup backup label (plain text)
//! wals/<TLI>.history                    timeline history files (plain text)
//! wals/xlog.db                          Barman's WAL bookkeeping (name, size, time, compression)
//! incoming/<segment>                    received, not yet archived (raw)
//! streaming/<segment>.partial           the segment being streamed (raw)
//! ```

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::compression::StoredCompression;
use super::walgen::{self, SegmentId};
use barman_wal_restore::wal::{segments_per_log, WalKind, WalName};

/// What to generate.
#[derive(Debug, Clone)]
pub struct ArchiveSpec {
    /// Name of the first archived segment; its first 8 hex digits are the
    /// timeline of every generated segment.
    pub first_segment: String,
    /// How many segments go to `wals/`.
    pub segment_count: usize,
    /// Bytes per segment: a power of two from 1 MiB to 1 GiB.
    pub segment_size: u64,
    pub system_identifier: u64,
    pub compression: StoredCompression,
    /// Segments after the archived ones, left uncompressed in `incoming/`.
    pub incoming_count: usize,
    /// Write `streaming/<next>.partial` after the last segment.
    pub partial: bool,
    /// Write a backup label `<first>.00000028.backup` next to the first segment.
    pub backup_label: bool,
}

impl Default for ArchiveSpec {
    fn default() -> ArchiveSpec {
        ArchiveSpec {
            first_segment: "000000010000000000000001".to_string(),
            segment_count: 4,
            segment_size: 16 << 20,
            system_identifier: 7_312_345_678_901_234_567,
            compression: StoredCompression::Zstd,
            incoming_count: 0,
            partial: false,
            backup_label: true,
        }
    }
}

/// The generated archive: where it is and what it holds.
#[derive(Debug, Clone)]
pub struct Archive {
    root: PathBuf,
    spec: ArchiveSpec,
    first: WalName,
    segments: Vec<String>,
    incoming: Vec<String>,
    partial: Option<String>,
    histories: Vec<String>,
    backup_labels: Vec<String>,
    formats: HashMap<String, StoredCompression>,
}

fn invalid_input(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl Archive {
    /// Writes the archive under `root` (created if needed). Segments are
    /// generated and compressed on all cores.
    pub fn generate(root: &Path, spec: ArchiveSpec) -> io::Result<Archive> {
        let size = spec.segment_size;
        if !size.is_power_of_two() || !((1 << 20)..=(1 << 30)).contains(&size) {
            return Err(invalid_input(format!(
                "segment size {size} is not a power of two between 1 MiB and 1 GiB"
            )));
        }
        let first = WalName::parse(&spec.first_segment)
            .ok()
            .filter(WalName::is_segment)
            .ok_or_else(|| {
                invalid_input(format!("'{}' is not a segment name", spec.first_segment))
            })?;
        if u64::from(first.position().1) >= segments_per_log(size) {
            return Err(invalid_input(format!(
                "'{first}' does not exist with {size}-byte segments"
            )));
        }

        let mut names = Vec::with_capacity(spec.segment_count + spec.incoming_count + 1);
        let mut name = first.clone();
        for _ in 0..spec.segment_count + spec.incoming_count + usize::from(spec.partial) {
            names.push(name.as_str().to_string());
            name = name
                .next_segment(size)
                .ok_or_else(|| invalid_input("the archive runs past the last log id".into()))?;
        }
        let partial = spec
            .partial
            .then(|| format!("{}.partial", names.pop().unwrap_or_default()));
        let incoming = names.split_off(spec.segment_count);
        let segments = names;

        let mut archive = Archive {
            root: root.to_path_buf(),
            first,
            segments,
            incoming,
            partial,
            histories: Vec::new(),
            backup_labels: Vec::new(),
            formats: HashMap::new(),
            spec,
        };
        for (index, name) in archive.segments.iter().enumerate() {
            archive
                .formats
                .insert(name.clone(), archive.spec.compression.for_segment(index));
        }
        for dir in ["wals", "incoming", "streaming"] {
            fs::create_dir_all(root.join(dir))?;
        }
        archive.write_segments()?;
        archive.write_text_files()?;
        archive.write_xlog_db()?;
        Ok(archive)
    }

    fn write_segments(&self) -> io::Result<()> {
        // Jobs: (name, stored format, path); the partial is half a segment of data.
        let mut jobs: Vec<(&str, StoredCompression, PathBuf)> = Vec::new();
        for name in &self.segments {
            jobs.push((name, self.formats[name], self.stored_path(name)));
        }
        for name in &self.incoming {
            jobs.push((
                name,
                StoredCompression::None,
                self.root.join("incoming").join(name),
            ));
        }
        if let Some(name) = &self.partial {
            jobs.push((
                name,
                StoredCompression::None,
                self.root.join("streaming").join(name),
            ));
        }
        for (_, _, path) in &jobs {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir)?;
            }
        }
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(jobs.len().max(1));
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|worker| {
                    let jobs = &jobs;
                    scope.spawn(move || -> io::Result<()> {
                        for (name, format, path) in jobs.iter().skip(worker).step_by(workers) {
                            let raw = self.raw_file(name).expect("generated names have content");
                            fs::write(path, format.compress(&raw)?)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("generator panicked")))
            })
        })
    }

    fn write_text_files(&mut self) -> io::Result<()> {
        let timeline = self.first.timeline();
        for tli in 2..=timeline {
            let name = format!("{tli:08X}.history");
            fs::write(self.stored_path(&name), self.history_text(tli))?;
            self.histories.push(name);
        }
        if self.spec.backup_label && !self.segments.is_empty() {
            let name = format!("{}.00000028.backup", self.first);
            fs::write(self.stored_path(&name), self.backup_label_text())?;
            self.backup_labels.push(name);
        }
        Ok(())
    }

    /// Barman's `wals/xlog.db`: one `name\tsize\ttime\tcompression\tencryption`
    /// line per archived file, as Barman 3.19 writes it.
    fn write_xlog_db(&self) -> io::Result<()> {
        let mut db = String::new();
        let all = self
            .histories
            .iter()
            .chain(&self.segments)
            .chain(&self.backup_labels);
        for (i, name) in all.enumerate() {
            let size = fs::metadata(self.stored_path(name))?.len();
            let format = self
                .formats
                .get(name)
                .copied()
                .unwrap_or(StoredCompression::None);
            let time = 1_700_000_000 + i as u64 * 60;
            let encryption = match format {
                StoredCompression::Encrypted => "gpg",
                _ => "None",
            };
            db.push_str(&format!(
                "{name}\t{size}\t{time}.0\t{}\t{encryption}\n",
                format.barman_name()
            ));
        }
        fs::write(self.root.join("wals").join("xlog.db"), db)
    }

    fn lsn_text(lsn: u64) -> String {
        format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
    }

    fn history_text(&self, timeline: u32) -> String {
        let switch = self.first.segment_number(self.spec.segment_size) * self.spec.segment_size;
        (1..timeline)
            .map(|parent| {
                let lsn = switch + u64::from(parent) * 0x28;
                format!(
                    "{parent}\t{}\tno recovery target specified\n",
                    Self::lsn_text(lsn)
                )
            })
            .collect()
    }

    fn backup_label_text(&self) -> String {
        let start =
            self.first.segment_number(self.spec.segment_size) * self.spec.segment_size + 0x28;
        let (first, tli) = (&self.first, self.first.timeline());
        format!(
            "START WAL LOCATION: {} (file {first})\nSTOP WAL LOCATION: {} (file {first})\n\
             CHECKPOINT LOCATION: {}\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n\
             START TIME: 2024-01-01 00:00:00 UTC\nLABEL: embedded-barman\nSTART TIMELINE: {tli}\n\
             STOP TIME: 2024-01-01 00:00:01 UTC\nSTOP TIMELINE: {tli}\n",
            Self::lsn_text(start),
            Self::lsn_text(start + 0x100),
            Self::lsn_text(start + 0x60),
        )
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn spec(&self) -> &ArchiveSpec {
        &self.spec
    }

    pub fn segment_size(&self) -> u64 {
        self.spec.segment_size
    }

    /// Archived segments (`wals/`), oldest first.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// Segments in `incoming/`, after the archived ones.
    pub fn incoming(&self) -> &[String] {
        &self.incoming
    }

    /// The `.partial` file in `streaming/`, if generated.
    pub fn partial(&self) -> Option<&str> {
        self.partial.as_deref()
    }

    /// `TTTTTTTT.history` files (timelines 2..=the archive's timeline).
    pub fn histories(&self) -> &[String] {
        &self.histories
    }

    pub fn backup_labels(&self) -> &[String] {
        &self.backup_labels
    }

    /// The format an archived segment is stored in.
    pub fn stored_compression(&self, name: &str) -> Option<StoredCompression> {
        self.formats.get(name).copied()
    }

    /// Where an archived file (segment, label, history) sits under `wals/`.
    pub fn stored_path(&self, name: &str) -> PathBuf {
        let wals = self.root.join("wals");
        match WalName::parse(name)
            .ok()
            .and_then(|n| n.hash_dir().map(str::to_string))
        {
            Some(hash) => wals.join(hash).join(name),
            None => wals.join(name),
        }
    }

    /// The raw bytes of any segment of this archive's cluster, generated or
    /// not (the content is a function of the name): what a client must end
    /// up with after decompression.
    pub fn raw_segment(&self, name: &str) -> Option<Vec<u8>> {
        let wal = WalName::parse(name).ok().filter(WalName::is_segment)?;
        Some(walgen::segment_bytes(SegmentId {
            system_identifier: self.spec.system_identifier,
            timeline: wal.timeline(),
            segment_number: wal.segment_number(self.spec.segment_size),
            segment_size: self.spec.segment_size,
        }))
    }

    /// The raw (uncompressed) content of any generated file: segments,
    /// `.partial` (first half generated, rest zero, as pg_receivewal
    /// leaves it), history files and backup labels.
    pub fn raw_file(&self, name: &str) -> Option<Vec<u8>> {
        let wal = WalName::parse(name).ok()?;
        match wal.kind() {
            WalKind::Segment => self.raw_segment(name),
            WalKind::Partial => {
                let mut bytes = self.raw_segment(wal.segment_name()?)?;
                let half = bytes.len() / 2;
                bytes[half..].fill(0);
                Some(bytes)
            }
            WalKind::History if self.histories.iter().any(|h| h == name) => {
                Some(self.history_text(wal.timeline()).into_bytes())
            }
            WalKind::Backup if self.backup_labels.iter().any(|b| b == name) => {
                Some(self.backup_label_text().into_bytes())
            }
            _ => None,
        }
    }

    /// The stored bytes of a file, as `--keep-compression` sends them.
    pub fn stored_bytes(&self, name: &str) -> io::Result<Vec<u8>> {
        let path = self.locate(name, true).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{name} is not in the archive"),
            )
        })?;
        fs::read(path)
    }

    /// `get-wal`'s lookup: `wals/<hash>/`, `incoming/`, `streaming/`, then
    /// (with `--partial`) the `.partial` variants. Without `--partial` a
    /// `.partial` name is never found.
    pub fn locate(&self, name: &str, partial: bool) -> Option<PathBuf> {
        let wal = WalName::parse(name).ok()?;
        let existing = |p: PathBuf| p.is_file().then_some(p);
        match wal.kind() {
            WalKind::History => existing(self.stored_path(name)),
            WalKind::Partial if !partial => None,
            kind => {
                let plain = [
                    self.stored_path(name),
                    self.root.join("incoming").join(name),
                    self.root.join("streaming").join(name),
                ];
                let found = plain.into_iter().find_map(existing);
                if found.is_some() || !partial || kind != WalKind::Segment {
                    return found;
                }
                let partial_name = format!("{name}.partial");
                [
                    self.stored_path(&partial_name),
                    self.root.join("incoming").join(&partial_name),
                    self.root.join("streaming").join(&partial_name),
                ]
                .into_iter()
                .find_map(existing)
            }
        }
    }

    /// `get-wal --peek N`: up to `n` names starting with `name` if it exists;
    /// segments walk forward (segment size and log-id boundary respected)
    /// until the first missing one; other kinds list only themselves.
    pub fn peek(&self, name: &str, n: usize) -> Vec<String> {
        let Ok(wal) = WalName::parse(name) else {
            return Vec::new();
        };
        if !wal.is_segment() {
            return self
                .locate(name, false)
                .map(|_| name.to_string())
                .into_iter()
                .take(n)
                .collect();
        }
        let mut listed = Vec::new();
        let mut next = Some(wal);
        while let Some(current) = next {
            if listed.len() >= n || self.locate(current.as_str(), false).is_none() {
                break;
            }
            listed.push(current.as_str().to_string());
            next = current.next_segment(self.spec.segment_size);
        }
        listed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(first: &str, count: usize, compression: StoredCompression) -> ArchiveSpec {
        ArchiveSpec {
            first_segment: first.to_string(),
            segment_count: count,
            segment_size: 1 << 20,
            compression,
            ..ArchiveSpec::default()
        }
    }

    #[test]
    fn every_compression_decompresses_to_the_raw_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut formats = StoredCompression::REAL.to_vec();
        formats.push(StoredCompression::Custom);
        formats.push(StoredCompression::Encrypted);
        for (i, format) in formats.into_iter().enumerate() {
            let root = dir.path().join(format!("a{i}"));
            let archive =
                Archive::generate(&root, spec("000000010000000000000010", 1, format)).unwrap();
            let name = &archive.segments()[0];
            let stored = archive.stored_bytes(name).unwrap();
            assert_eq!(
                StoredCompression::sniff(&stored),
                format,
                "{format} sniffed"
            );
            let raw = archive.raw_segment(name).unwrap();
            assert_eq!(
                format.decompress(&stored).unwrap(),
                raw,
                "{format} round trip"
            );
            if format != StoredCompression::None {
                assert!(stored.len() < raw.len() / 2, "{format} barely compresses");
            }
        }
    }

    #[test]
    fn mixed_rotates_and_extra_files_exist() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = spec("000000030000000000000001", 3, StoredCompression::Mixed);
        spec.incoming_count = 1;
        spec.partial = true;
        let archive = Archive::generate(dir.path(), spec).unwrap();
        let formats: Vec<_> = archive
            .segments()
            .iter()
            .map(|s| archive.stored_compression(s).unwrap())
            .collect();
        assert_eq!(formats, StoredCompression::REAL[..3]);
        assert_eq!(
            archive.histories(),
            ["00000002.history", "00000003.history"]
        );
        assert_eq!(
            String::from_utf8(archive.raw_file("00000003.history").unwrap()).unwrap(),
            "1\t0/100028\tno recovery target specified\n2\t0/100050\tno recovery target specified\n"
        );
        assert_eq!(archive.incoming(), ["000000030000000000000004"]);
        assert_eq!(archive.partial(), Some("000000030000000000000005.partial"));
        assert!(archive
            .locate("000000030000000000000004", false)
            .unwrap()
            .starts_with(dir.path().join("incoming")));
        assert!(archive.locate("000000030000000000000005", false).is_none());
        assert!(archive.locate("000000030000000000000005", true).is_some());
        assert!(archive
            .locate("000000030000000000000005.partial", false)
            .is_none());
        let db = fs::read_to_string(dir.path().join("wals/xlog.db")).unwrap();
        assert!(db.contains("000000030000000000000002\t"), "{db}");
    }

    #[test]
    fn peek_walks_across_the_log_boundary() {
        let dir = tempfile::tempdir().unwrap();
        // 1 MiB segments: 4096 per log id, the last one is ...00000FFF.
        let mut spec = spec("000000010000000100000FFE", 3, StoredCompression::None);
        spec.incoming_count = 1;
        spec.partial = true;
        let archive = Archive::generate(dir.path(), spec).unwrap();
        assert_eq!(
            archive.peek("000000010000000100000FFE", 10),
            [
                "000000010000000100000FFE",
                "000000010000000100000FFF",
                "000000010000000200000000",
                "000000010000000200000001",
            ]
        );
        assert_eq!(archive.peek("000000010000000100000FFF", 2).len(), 2);
        assert!(archive.peek("000000010000000100000FFD", 3).is_empty());
        assert!(archive
            .peek("000000010000000200000002.partial", 3)
            .is_empty());
        let label = &archive.backup_labels()[0];
        assert_eq!(archive.peek(label, 3), std::slice::from_ref(label));
    }
}
