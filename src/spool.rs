//! The spool directory and atomic file delivery.
//!
//! Rules every writer follows: a file is written under a temp name in the
//! directory it will live in, synced, then renamed to its final name, and the
//! directory synced. So a final name always holds a complete file, in the
//! spool and at WAL_DEST alike. Temp names carry the writer's pid, so a later
//! run can tell the leftovers of a dead run from a live neighbour's work.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::Error;
use crate::shutdown::TempRegistry;
use crate::wal::{WalKind, WalName};

/// Every name we give a file in the spool besides WAL names: one list, so
/// that the code and the tests that audit a spool never disagree.
pub mod names {
    /// The last peek's answer, kept by [`super::Spool::remember_listing`].
    pub const PEEK_CACHE: &str = ".bwr-peek";
    /// Every temp file we create starts with this; nothing else does.
    pub const TEMP_PREFIX: &str = ".bwr-tmp.";
    /// `--direct-read`'s layout of one Barman server, learnt once.
    pub const LAYOUT_PREFIX: &str = ".bwr-layout.";
    /// Written when a Barman server refused `--keep-compression` (as
    /// Debian 12's 3.4 does): later calls ask it to decompress at once.
    pub const KEEP_REFUSED_PREFIX: &str = ".bwr-keep-refused.";
    /// The largest decoder memory a Barman server's files needed: how many
    /// streams a call decodes at once from its start.
    pub const DECODER_MEMORY_PREFIX: &str = ".bwr-decoder.";
    /// The `--async` worker's lock, held while it lives.
    pub const WORKER_LOCK: &str = ".bwr-worker.lock";
    /// The `--async` worker's log (and `.bwr-worker.log.1`, the one
    /// before it: [`crate::logging`] rotates it).
    pub const WORKER_LOG: &str = ".bwr-worker.log";
    /// Every worker file starts with this.
    pub const WORKER_PREFIX: &str = ".bwr-worker.";
    /// A call's request to the worker, and the worker's answer.
    pub const WANT_PREFIX: &str = ".bwr-want.";
    pub const ANSWER_PREFIX: &str = ".bwr-answer.";
    /// Whose spool it is, and who else asked for it.
    pub const OWNER: &str = ".bwr-owner";
    pub const OWNER_WANTED: &str = ".bwr-owner.wanted";

    /// Our own bookkeeping (not WAL, not a temp file): what an audit of a
    /// spool may find besides delivered WAL.
    pub fn is_bookkeeping(name: &str) -> bool {
        name == PEEK_CACHE
            || name.starts_with(LAYOUT_PREFIX)
            || name.starts_with(KEEP_REFUSED_PREFIX)
            || name.starts_with(DECODER_MEMORY_PREFIX)
            || name.starts_with(WORKER_PREFIX)
            || name.starts_with(OWNER)
    }
}

use names::{PEEK_CACHE, TEMP_PREFIX};

/// A temp file older than this is removed even if its pid is alive (the pid
/// was reused); no single transfer runs that long.
const STALE_TEMP_AGE: Duration = Duration::from_secs(6 * 3600);

/// A file being written under a temp name. Dropped without
/// [`TempFile::commit`], it is removed.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    committed: bool,
}

impl TempFile {
    /// Creates `dir/.bwr-tmp.<pid>.<random>.<name>` (mode 0600).
    pub fn create_in(dir: &Path, name: &str) -> io::Result<(TempFile, File)> {
        for _ in 0..16 {
            let path = dir.join(format!(
                "{TEMP_PREFIX}{}.{:08x}.{name}",
                std::process::id(),
                rand::random::<u32>()
            ));
            let opened = TempRegistry::create(&path, || {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
            });
            match opened {
                Ok(file) => {
                    return Ok((
                        TempFile {
                            path,
                            committed: false,
                        },
                        file,
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("could not find a free temp name"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Syncs `file` (this temp file's handle) and renames it to `dest`, so
    /// the final name can only ever hold all the bytes.
    ///
    /// The directory is not synced after the rename: what must never happen,
    /// a final name on incomplete bytes, is prevented by syncing the file
    /// first; WAL_DEST is then renamed durably by PostgreSQL itself
    /// (`durable_rename` when it keeps a restored file), and a spool entry
    /// lost in a crash is simply fetched again, and a directory fsync would
    /// be paid on every call (docs/benchmarks.md).
    pub fn commit(mut self, file: &File, dest: &Path) -> io::Result<()> {
        file.sync_all()?;
        fs::rename(&self.path, dest)?;
        self.committed = true;
        TempRegistry::unregister(&self.path);
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
            TempRegistry::unregister(&self.path);
        }
    }
}

/// Removes temp files of dead runs from `dir`. Ours are left alone, and so
/// are those of live processes (another invocation working beside us).
pub fn remove_dead_temp_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(TEMP_PREFIX)) else {
            continue;
        };
        let pid: Option<i32> = rest.split('.').next().and_then(|p| p.parse().ok());
        let too_old = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > STALE_TEMP_AGE);
        let dead = match pid {
            Some(pid) if pid == std::process::id() as i32 => false,
            Some(pid) => !process_alive(pid),
            None => true,
        };
        if dead || too_old {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// A directory's device and inode, or `None` when it is not a directory
/// (any more).
pub fn identity(dir: &Path) -> Option<(u64, u64)> {
    fs::metadata(dir)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| (m.dev(), m.ino()))
}

pub(crate) fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // kill(pid, 0) checks existence without sending anything; EPERM means it
    // exists but belongs to someone else.
    let rc = unsafe { libc::kill(pid, 0) };
    let exists = rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists && !is_zombie(pid)
}

/// A process that has exited but was not reaped yet (an `--async` worker
/// whose parent call is still running, or any orphan where pid 1 is slow to
/// reap, as in some containers) still answers `kill(pid, 0)`.
fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name, which is in parentheses and
        // may itself contain ") ".
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// Where prefetched files wait for PostgreSQL to ask for them.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// Opens the spool, creating it (mode 0700) if missing, and refuses one
    /// that another user could tamper with: a symlink, owned by someone else,
    /// or writable by group or others (the default lives in world-writable
    /// /var/tmp, where anyone could plant a file for the standby to replay).
    pub fn open(dir: &Path) -> Result<Spool, Error> {
        let refused =
            |what: String| Error::invalid_input(format!("spool {}: {what}", dir.display()));
        let failed =
            |what: String, e: io::Error| Error::io(format!("spool {}: {what}", dir.display()), e);
        match fs::symlink_metadata(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(dir)
                    .or_else(|e| {
                        if e.kind() == io::ErrorKind::AlreadyExists {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })
                    .map_err(|e| {
                        let what = format!(
                            "cannot create it ({e}); create its parent or choose another --spool-dir"
                        );
                        failed(what, e)
                    })?;
            }
            Err(e) => return Err(failed(format!("cannot inspect it: {e}"), e)),
            Ok(_) => {}
        }
        let meta =
            fs::symlink_metadata(dir).map_err(|e| failed(format!("cannot inspect it: {e}"), e))?;
        if meta.file_type().is_symlink() {
            return Err(refused(
                "is a symlink; refusing it (point --spool-dir at a real directory)".into(),
            ));
        }
        if !meta.is_dir() {
            return Err(refused("is not a directory".into()));
        }
        let euid = unsafe { libc::geteuid() };
        if meta.uid() != euid {
            return Err(refused(format!(
                "is owned by uid {}, not by us (uid {euid}); use a spool of our own with --spool-dir",
                meta.uid()
            )));
        }
        if meta.permissions().mode() & 0o022 != 0 {
            return Err(refused(format!(
                "is writable by group or others (mode {:o}); fix with: chmod go-w {}",
                meta.permissions().mode() & 0o777,
                dir.display()
            )));
        }
        remove_dead_temp_files(dir);
        Ok(Spool {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path_of(&self, wal: &WalName) -> PathBuf {
        self.dir.join(wal.as_str())
    }

    pub fn contains(&self, wal: &WalName) -> bool {
        self.path_of(wal).exists()
    }

    /// Moves a spooled file to `dest` if it is there. `Ok(false)` is a miss,
    /// including the race where another invocation took it first.
    pub fn take(&self, wal: &WalName, dest: &Path) -> Result<bool, Error> {
        let src = self.path_of(wal);
        // The spooled file was synced when it was written; see
        // TempFile::commit for why the directories are not.
        match fs::rename(&src, dest) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => self.copy_across(&src, wal, dest),
            Err(e) => Err(dest_failure(dest, e)),
        }
    }

    /// A spool on another filesystem than WAL_DEST: copy to a temp name
    /// beside WAL_DEST, sync, rename, then drop the spool copy.
    fn copy_across(&self, src: &Path, wal: &WalName, dest: &Path) -> Result<bool, Error> {
        let mut input = match File::open(src) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io(format!("cannot read {}: {e}", src.display()), e)),
        };
        let dir = parent_dir(dest);
        let (temp, mut out) =
            TempFile::create_in(dir, wal.as_str()).map_err(|e| dest_failure(dest, e))?;
        io::copy(&mut input, &mut out).map_err(|e| dest_failure(dest, e))?;
        temp.commit(&out, dest).map_err(|e| dest_failure(dest, e))?;
        let _ = fs::remove_file(src);
        Ok(true)
    }

    /// The `count` names Barman listed after `wal` in an earlier peek, if
    /// that listing reaches that far: a later miss then starts its
    /// prefetches at once instead of paying a `get-wal --peek` (a Python
    /// start-up on the Barman host) first. The archive only grows, so a
    /// name once listed stays valid; a miss outside the listing peeks again.
    pub fn known_after(&self, wal: &WalName, count: usize) -> Option<Vec<WalName>> {
        let text = fs::read_to_string(self.dir.join(PEEK_CACHE)).ok()?;
        let names: Vec<WalName> = text
            .lines()
            .filter_map(|l| WalName::parse(l).ok())
            .collect();
        let at = names.iter().position(|n| n == wal)?;
        let after = &names[at + 1..];
        (after.len() >= count).then(|| after[..count].to_vec())
    }

    /// Remembers a peek's answer for [`Spool::known_after`] (temp name, then
    /// rename: a concurrent reader sees the old list or the new one).
    pub fn remember_listing(&self, names: &[WalName]) {
        let text: String = names.iter().map(|n| format!("{n}\n")).collect();
        if let Ok((temp, mut file)) = TempFile::create_in(&self.dir, PEEK_CACHE) {
            use std::io::Write;
            if file.write_all(text.as_bytes()).is_ok() {
                let _ = temp.commit(&file, &self.dir.join(PEEK_CACHE));
            }
        }
    }

    /// Removes the spooled segments after `wal` (prefetches, which can be
    /// fetched again) to make room for `wal` itself; returns how many.
    pub fn evict_prefetched(&self, wal: &WalName) -> usize {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return 0;
        };
        entries
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| WalName::parse(n).ok())
                    .is_some_and(|n| n.is_segment() && n.cmp_position(wal).is_gt())
            })
            .filter(|e| fs::remove_file(e.path()).is_ok())
            .count()
    }

    /// Removes spooled segments PostgreSQL has moved past: those before
    /// `requested` on its timeline, and every segment of an older timeline
    /// once a newer one is asked for; `keep` stays whatever it is. Only
    /// names we could have written are touched.
    pub fn purge_stale(&self, requested: &WalName, keep: Option<&WalName>) {
        if requested.kind() != WalKind::Segment {
            return;
        }
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let Some(name) = entry
                .file_name()
                .to_str()
                .and_then(|n| WalName::parse(n).ok())
            else {
                continue;
            };
            if Some(&name) == keep {
                continue;
            }
            let stale = match name.kind() {
                WalKind::Segment => {
                    name.timeline() < requested.timeline()
                        || (name.timeline() == requested.timeline()
                            && name.position() < requested.position())
                }
                // Never served from the spool; a leftover of another tool.
                WalKind::History | WalKind::Partial => true,
                WalKind::Backup => false,
            };
            if stale {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The Python original's wording for an unwritable WAL_DEST; a full disk
/// is told by its kind.
pub fn dest_failure(dest: &Path, e: io::Error) -> Error {
    let message = format!(
        "Cannot open '{}' (WAL_DEST) for writing: {e}",
        dest.display()
    );
    Error::io(message, e)
}

/// Checks WAL_DEST before any work: not a directory, parent present.
pub fn check_destination(dest: &Path) -> Result<(), Error> {
    if dest.is_dir() {
        return Err(Error::invalid_input(format!(
            "WAL_DEST cannot be a directory: {}",
            dest.display()
        )));
    }
    let dir = parent_dir(dest);
    if !dir.is_dir() {
        return Err(Error::invalid_input(format!(
            "Cannot open '{}' (WAL_DEST) for writing: directory {} does not exist",
            dest.display(),
            dir.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal(s: &str) -> WalName {
        WalName::parse(s).unwrap()
    }

    #[test]
    fn temp_files_vanish_unless_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (temp, _file) = TempFile::create_in(dir.path(), "X").unwrap();
        let path = temp.path().to_path_buf();
        assert!(path.exists());
        drop(temp);
        assert!(!path.exists());
        let (temp, file) = TempFile::create_in(dir.path(), "X").unwrap();
        temp.commit(&file, &dir.path().join("X")).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn dead_runs_temp_files_are_removed_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let dead = dir.path().join(format!("{TEMP_PREFIX}999999999.0.X"));
        let ours = dir
            .path()
            .join(format!("{TEMP_PREFIX}{}.0.X", std::process::id()));
        fs::write(&dead, b"partial").unwrap();
        fs::write(&ours, b"partial").unwrap();
        remove_dead_temp_files(dir.path());
        assert!(!dead.exists());
        assert!(ours.exists());
    }

    #[test]
    fn purge_removes_what_replay_has_passed() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        for n in [
            "000000010000000000000001",
            "000000010000000000000004",
            "000000010000000000000005",
            "000000010000000000000009",
            "000000020000000000000009",
            "00000002.history",
        ] {
            fs::write(dir.path().join(n), b"x").unwrap();
        }
        let kept = wal("000000010000000000000004");
        spool.purge_stale(&wal("000000010000000000000005"), Some(&kept));
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "000000010000000000000004",
                "000000010000000000000005",
                "000000010000000000000009",
                "000000020000000000000009"
            ]
        );
        spool.purge_stale(&wal("00000002000000000000000A"), None);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn unsafe_spools_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(Spool::open(&open)
            .unwrap_err()
            .message()
            .contains("chmod go-w"));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/etc", &link).unwrap();
        assert!(Spool::open(&link)
            .unwrap_err()
            .message()
            .contains("symlink"));
        let orphan = dir.path().join("no/such/parent");
        assert!(Spool::open(&orphan)
            .unwrap_err()
            .message()
            .contains("create its parent"));
        let fresh = dir.path().join("fresh");
        Spool::open(&fresh).unwrap();
        assert_eq!(
            fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
}
