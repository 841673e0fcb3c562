//! Signals and the temp files they must not leave behind.
//!
//! Every file this process writes starts under a temp name registered here
//! ([`TempRegistry`]), and gets its final name only when complete. On SIGTERM
//! or SIGINT the handler installed by [`exit_on_signals`] removes whatever is
//! still registered and exits 143 or 130: PostgreSQL sends SIGTERM at
//! shutdown and expects exactly that. A SIGKILL leaves temp names, which are
//! recognisable (see [`crate::spool::TEMP_PREFIX`]) and removed by the next run.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::exit;

fn registry() -> &'static Mutex<HashSet<PathBuf>> {
    static REGISTRY: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(HashSet::new()))
}

/// The process-wide set of temp files in progress.
pub struct TempRegistry;

impl TempRegistry {
    pub fn register(path: &Path) {
        registry()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_path_buf());
    }

    pub fn unregister(path: &Path) {
        registry()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(path);
    }

    /// Removes every registered temp file; returns how many were removed.
    pub fn remove_all() -> usize {
        let paths: Vec<PathBuf> = registry()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
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
        eprintln!(
            "ERROR: interrupted by {}; temp files removed",
            if code == exit::TERMINATED {
                "SIGTERM"
            } else {
                "SIGINT"
            }
        );
        std::process::exit(code);
    });
}
