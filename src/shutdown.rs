//! Signals and the temp files they must not leave behind.
//!
//! Every file this process writes starts under a temp name registered here
//! ([`TempRegistry`]), and gets its final name only when complete. On SIGTERM
//! or SIGINT the handler installed by [`exit_on_signals`] removes whatever is
//! still registered and exits 143 or 130: PostgreSQL sends SIGTERM at
//! shutdown and expects exactly that. A SIGKILL leaves temp names, which are
//! recognisable (see [`crate::spool::names::TEMP_PREFIX`]) and removed by the next run.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::exit;

struct Registry {
    paths: HashSet<PathBuf>,
    /// Set once the signal handler has begun removing files: from then on
    /// no new temp file may be created, or it would survive the exit.
    closed: bool,
}

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY
        .get_or_init(|| {
            Mutex::new(Registry {
                paths: HashSet::new(),
                closed: false,
            })
        })
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// The process-wide set of temp files in progress.
pub struct TempRegistry;

impl TempRegistry {
    /// Creates a temp file with `create` and registers it under one lock,
    /// so a signal cannot come between the two and leave the file behind.
    /// Refused once the process is exiting on a signal.
    pub fn create<T>(path: &Path, create: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let mut registry = registry();
        if registry.closed {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "exiting on a signal",
            ));
        }
        let created = create()?;
        registry.paths.insert(path.to_path_buf());
        Ok(created)
    }

    pub fn unregister(path: &Path) {
        registry().paths.remove(path);
    }

    /// Removes every registered temp file and refuses new ones; returns how
    /// many were removed.
    pub fn remove_all() -> usize {
        let mut registry = registry();
        registry.closed = true;
        let paths: Vec<PathBuf> = registry.paths.drain().collect();
        paths
            .iter()
            .filter(|p| std::fs::remove_file(p).is_ok())
            .count()
    }
}

/// Spawns a task that, on SIGTERM or SIGINT, removes this run's temp files
/// and exits with 143 or 130. Must be called inside a tokio runtime.
pub fn exit_on_signals() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::spawn(async move {
        let code = tokio::select! {
            _ = term.recv() => exit::TERMINATED,
            _ = int.recv() => exit::INTERRUPTED,
        };
        TempRegistry::remove_all();
        tracing::error!(
            "interrupted by {}; temp files removed",
            if code == exit::TERMINATED {
                "SIGTERM"
            } else {
                "SIGINT"
            }
        );
        std::process::exit(code);
    });
}
