//! Whose spool it is: the caller identity a spool's files (and its
//! `--async` worker) belong to.
//!
//! One spool path is easily shared by several clusters of a host (the
//! default `/var/tmp/walrestore`), and WAL names repeat from cluster to
//! cluster: a file in the spool says nothing about where it came from. So
//! the spool records its owner, the (Barman host, port, user, server,
//! `--config`, cluster system identifier) of the calls that fill it, in
//! `.bwr-owner`, and only calls of that identity use its files:
//!
//! - every user of the spool (a call, the worker) holds a shared `flock` on
//!   `.bwr-owner` while it uses the spool, and uses it only if the file
//!   names its own identity;
//! - a call of another identity takes the spool over only when nobody
//!   holds it (an exclusive lock, never waited for): it removes every WAL
//!   file and listing of the previous owner, then writes its own identity.
//!   While the spool is held, it works without one (fetches directly) and
//!   leaves a note in `.bwr-owner.wanted` (removed by the takeover), which
//!   a worker of the owner reads as "leave as soon as your own callers are
//!   gone".
//!
//! So no file of one identity is ever served to another, with or without a
//! data directory (where [`crate::pg_control`] checks each delivery too).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use crate::cli::RestoreArgs;
use crate::pg_control::ClusterIdentity;
use crate::spool::Spool;
use crate::wal::WalName;

use crate::spool::names::{
    ANSWER_PREFIX, OWNER as OWNER_FILE, OWNER_WANTED as WANTED_FILE, PEEK_CACHE, WANT_PREFIX,
};
/// The previous owner's listing and requests go with its WAL files.
const OWNED_PREFIXES: [&str; 3] = [PEEK_CACHE, WANT_PREFIX, ANSWER_PREFIX];

/// How long a call waits for a shared lock while another identity takes
/// the spool over (an instant: a read_dir and a few unlinks).
const PATIENCE: Duration = Duration::from_secs(1);

/// How long a note in [`WANTED_FILE`] counts: a standby of the other
/// identity asks again every few seconds and renews it.
const WANT_MEMORY: Duration = Duration::from_secs(300);

/// The identity of a caller, as written in `.bwr-owner`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner(String);

impl Owner {
    /// The identity of a call with `args`, in the cluster `cluster` (if run
    /// in a data directory). The host, port and user are as given on the
    /// command line: the same command line resolves them the same way.
    pub fn of(args: &RestoreArgs, cluster: Option<&ClusterIdentity>) -> Owner {
        let or_default = |v: Option<String>| v.unwrap_or_else(|| "(default)".into());
        Owner(format!(
            "host={}\nport={}\nuser={}\nserver={}\nconfig={}\nsystem_identifier={}\n",
            args.barman_host,
            or_default(args.connection.port.map(|p| p.to_string())),
            or_default(args.connection.user.clone()),
            args.server_name,
            or_default(args.connection.config.clone()),
            or_default(cluster.map(|c| c.system_identifier.to_string())),
        ))
    }

    /// One line for messages.
    pub fn describe(&self) -> String {
        self.0.trim_end().replace('\n', ", ")
    }
}

/// A hold on the spool as its owner: released when dropped (or when the
/// process exits).
#[derive(Debug)]
pub struct Claim {
    _file: File,
}

/// What a call may do with a spool.
#[derive(Debug)]
pub enum Claimed {
    Ours(Claim),
    /// Another identity holds it (described).
    Held(String),
}

/// Claims `spool` for `me`. With `take_over`, a spool of another identity
/// that nobody holds becomes ours (its files removed); without, it is
/// left alone (a `-p 0` call only reads the spool).
pub fn claim(spool: &Spool, me: &Owner, take_over: bool) -> std::io::Result<Claimed> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(spool.dir().join(OWNER_FILE))?;
    lock_shared(&file)?;
    let owner = read_owner(&mut file)?;
    if owner == me.0 {
        return Ok(Claimed::Ours(Claim { _file: file }));
    }
    let held = || Claimed::Held(Owner(owner.clone()).describe());
    if !take_over {
        return Ok(held());
    }
    file.unlock()?;
    if file.try_lock().is_err() {
        want(spool, me);
        return Ok(held());
    }
    if read_owner(&mut file)? != me.0 {
        remove_owned_files(spool);
        let _ = fs::remove_file(spool.dir().join(WANTED_FILE));
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(me.0.as_bytes())?;
        file.sync_all()?;
    }
    // flock converts the lock in two steps: another identity may have
    // taken the spool in between, so look again.
    lock_shared(&file)?;
    let now = read_owner(&mut file)?;
    if now == me.0 {
        Ok(Claimed::Ours(Claim { _file: file }))
    } else {
        Ok(Claimed::Held(Owner(now).describe()))
    }
}

/// Whether a call of another identity than `me` asked for the spool since
/// its last takeover, recently. (A note older than [`WANT_MEMORY`] is
/// from a caller that went away.)
pub fn wanted_by_another(spool: &Spool, me: &Owner) -> bool {
    let path = spool.dir().join(WANTED_FILE);
    let recent = fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|at| at.elapsed().ok())
        .is_some_and(|age| age < WANT_MEMORY);
    recent && fs::read_to_string(&path).is_ok_and(|who| who != me.0)
}

fn want(spool: &Spool, me: &Owner) {
    let _ = fs::write(spool.dir().join(WANTED_FILE), me.0.as_bytes());
}

fn lock_shared(file: &File) -> std::io::Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match file.try_lock_shared() {
            Ok(()) => return Ok(()),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => {
                return Err(std::io::Error::other(
                    "another caller kept the spool locked for over a second",
                ))
            }
        }
    }
}

fn read_owner(file: &mut File) -> std::io::Result<String> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0))?;
    file.take(4096).read_to_string(&mut text)?;
    Ok(text)
}

/// The WAL files, listing and requests of the previous owner.
fn remove_owned_files(spool: &Spool) {
    let Ok(entries) = fs::read_dir(spool.dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let owned =
            WalName::parse(name).is_ok() || OWNED_PREFIXES.iter().any(|p| name.starts_with(p));
        if owned {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(server: &str) -> RestoreArgs {
        RestoreArgs::parse_from(["bwr", "host", server, "000000010000000000000001", "x"])
    }

    #[test]
    fn one_identity_at_a_time_and_its_files_leave_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool")).unwrap();
        let a = Owner::of(&args("a"), None);
        let b = Owner::of(&args("b"), None);
        let held_by_a = match claim(&spool, &a, true).unwrap() {
            Claimed::Ours(c) => c,
            other => panic!("{other:?}"),
        };
        fs::write(spool.dir().join("000000010000000000000002"), b"a's").unwrap();
        assert!(matches!(claim(&spool, &b, true).unwrap(), Claimed::Held(_)));
        assert!(spool.dir().join("000000010000000000000002").exists());
        assert!(wanted_by_another(&spool, &a));
        assert!(!wanted_by_another(&spool, &b));
        // A second call of a's identity shares the spool.
        assert!(matches!(claim(&spool, &a, true).unwrap(), Claimed::Ours(_)));
        drop(held_by_a);
        assert!(matches!(
            claim(&spool, &b, false).unwrap(),
            Claimed::Held(_)
        ));
        assert!(matches!(claim(&spool, &b, true).unwrap(), Claimed::Ours(_)));
        assert!(!spool.dir().join("000000010000000000000002").exists());
        assert!(
            !spool.dir().join(WANTED_FILE).exists(),
            "the takeover answered the note"
        );
    }
}
