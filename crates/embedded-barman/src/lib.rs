//! An in-process Barman host: an SSH server on 127.0.0.1 that answers
//! `barman get-wal` from a generated archive, with faults on demand.
//!
//! It exists so that the client can be tested hermetically (no sshd, no
//! Python, no PostgreSQL) and so that `barman-wal-bench --embedded` has a
//! realistic peer on any machine. A crate of its own, beside the restore
//! crate, so that the shipped `barman-wal-restore` never links a server.
//!
//! The parts:
//! - [`archive`]: a Barman server directory generated on disk (`wals/`,
//!   `incoming/`, `streaming/`, `xlog.db`) and get-wal's lookups in it;
//! - [`walgen`]: synthetic PostgreSQL 15 WAL segments, reproducible per name;
//! - [`compression`]: the stored formats Barman writes, their magic, and
//!   streaming codecs;
//! - [`command`]: the exec string, split as `sh` would and parsed as Barman's
//!   argparse would;
//! - [`faults`]: what can go wrong, changeable while the server runs;
//! - `server`: the russh server, one task per exec channel.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use embedded_barman::{EmbeddedBarman, EmbeddedConfig};
//! let barman = EmbeddedBarman::start(EmbeddedConfig::default()).await?;
//! let first = &barman.archive().segments()[0];
//! // ssh -p {port} -i {key} -o UserKnownHostsFile={known_hosts} barman@127.0.0.1 \
//! //     barman get-wal angus {first}
//! println!("{} {} {first}", barman.port(), barman.client_key_path().display());
//! # Ok(()) }
//! ```

pub mod archive;
pub mod command;
pub mod compression;
pub mod faults;
mod server;
pub mod walgen;

use std::io::{self, Write};
use std::net::SocketAddr;
use std::ops::Deref;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{PrivateKey, PublicKey};
use russh::{MethodKind, MethodSet};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use archive::{Archive, ArchiveSpec};
pub use compression::StoredCompression;
pub use faults::{FaultRule, Faults, FaultsHandle, StreamFault, Target};

/// Payload bytes per SSH data write; also the unit of [`StreamFault::DelayPerChunk`].
pub const CHUNK_SIZE: usize = 64 * 1024;

/// What `--config`/`-c` must say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ConfigCheck {
    /// Any or no `--config` is fine.
    #[default]
    Ignore,
    /// Exactly this `--config` value; anything else fails like a host
    /// whose configuration does not know the server.
    Require(String),
}

/// How to start an [`EmbeddedBarman`].
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// Where the archive and keys go; `None` = a temporary directory removed
    /// when the server is dropped.
    pub dir: Option<PathBuf>,
    pub archive: ArchiveSpec,
    /// Server names `get-wal` knows; all of them serve the one archive.
    pub servers: Vec<String>,
    pub config_check: ConfigCheck,
    pub faults: Faults,
}

impl Default for EmbeddedConfig {
    fn default() -> EmbeddedConfig {
        EmbeddedConfig {
            dir: None,
            archive: ArchiveSpec::default(),
            servers: vec!["angus".to_string()],
            config_check: ConfigCheck::Ignore,
            faults: Faults::default(),
        }
    }
}

/// Counters and logs for assertions; a snapshot from [`EmbeddedBarman::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// TCP connections accepted.
    pub connections: u64,
    pub auth_successes: u64,
    pub auth_rejections: u64,
    /// Session channels accepted.
    pub channels_opened: u64,
    /// Session channels refused by [`Faults::max_sessions`].
    pub channels_refused: u64,
    /// Most session channels open at once, over all connections.
    pub max_concurrent_channels: u64,
    /// File transfers requested (`get-wal` without `--peek`/`--test`, with a
    /// valid WAL name), found or not.
    pub transfers: u64,
    /// User name of every successful authentication.
    pub users: Vec<String>,
    /// Every exec string received, in order.
    pub commands: Vec<String>,
    /// Exec strings with unquoted shell syntax (`;`, `|`, `$(`...): what a
    /// real `sh -c` would have acted on. A correct client sends none.
    pub shell_syntax_commands: Vec<String>,
}

/// A running embedded Barman host. Stops when dropped.
pub struct EmbeddedBarman {
    shared: Arc<server::Shared>,
    address: SocketAddr,
    dir: PathBuf,
    client_key_path: PathBuf,
    known_hosts_path: PathBuf,
    host_key: PublicKey,
    shutdown: CancellationToken,
    accept_task: Option<tokio::task::JoinHandle<()>>,
    // Last, so it is removed after everything using it is stopped.
    _tempdir: Option<tempfile::TempDir>,
}

fn random_key() -> PrivateKey {
    PrivateKey::from(Ed25519Keypair::from_seed(&rand::random::<[u8; 32]>()))
}

fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)
}

fn server_config(key: PrivateKey) -> Arc<russh::server::Config> {
    Arc::new(russh::server::Config {
        keys: vec![key],
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        // Constant-time rejection protects nothing here and would cost every
        // refused-auth test a second.
        auth_rejection_time: Duration::from_millis(5),
        auth_rejection_time_initial: Some(Duration::ZERO),
        nodelay: true,
        ..Default::default()
    })
}

impl EmbeddedBarman {
    /// Generates the archive and keys, binds 127.0.0.1:0 and serves on the
    /// current tokio runtime.
    pub async fn start(config: EmbeddedConfig) -> io::Result<EmbeddedBarman> {
        if config.servers.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no server names configured",
            ));
        }
        let (tempdir, dir) = match &config.dir {
            Some(dir) => (None, dir.clone()),
            None => {
                let tempdir = tempfile::Builder::new()
                    .prefix("embedded-barman")
                    .tempdir()?;
                let dir = tempdir.path().to_path_buf();
                (Some(tempdir), dir)
            }
        };
        let archive_root = dir.join("barman").join(&config.servers[0]);
        let spec = config.archive.clone();
        let archive = tokio::task::spawn_blocking(move || Archive::generate(&archive_root, spec))
            .await
            .map_err(io::Error::other)??;

        let ssh_dir = dir.join("ssh");
        std::fs::create_dir_all(&ssh_dir)?;
        let client_key = random_key();
        let client_key_path = ssh_dir.join("id_ed25519");
        let openssh = client_key
            .to_openssh(LineEnding::LF)
            .map_err(io::Error::other)?;
        write_private(&client_key_path, openssh.as_bytes())?;
        let client_public = client_key.public_key().clone();
        let public_line = client_public.to_openssh().map_err(io::Error::other)?;
        std::fs::write(ssh_dir.join("id_ed25519.pub"), format!("{public_line}\n"))?;

        let host_key = random_key();
        let host_public = host_key.public_key().clone();
        let configs = server::HostConfigs {
            right: server_config(host_key),
            wrong: server_config(random_key()),
        };

        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let address = listener.local_addr()?;
        let shared = Arc::new(server::Shared {
            archive,
            servers: config.servers.clone(),
            config_check: config.config_check.clone(),
            faults: FaultsHandle::new(config.faults.clone()),
            stats: Mutex::new(Stats::default()),
            client_key: client_public,
            open_channels: AtomicU64::new(0),
            transfers: AtomicU64::new(0),
        });
        let shutdown = CancellationToken::new();
        let accept_task = tokio::spawn(server::accept_loop(
            listener,
            shared.clone(),
            configs,
            shutdown.clone(),
        ));
        let barman = EmbeddedBarman {
            shared,
            address,
            known_hosts_path: ssh_dir.join("known_hosts"),
            dir,
            client_key_path,
            host_key: host_public,
            shutdown,
            accept_task: Some(accept_task),
            _tempdir: tempdir,
        };
        barman.write_known_hosts(&barman.known_hosts_path)?;
        Ok(barman)
    }

    /// Starts on a runtime of its own, for plain `#[test]` functions that
    /// run the real binary as a subprocess. Stops when dropped.
    pub fn start_in_background(config: EmbeddedConfig) -> io::Result<BackgroundBarman> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("embedded-barman")
            .enable_all()
            .build()?;
        let barman = runtime.block_on(EmbeddedBarman::start(config))?;
        Ok(BackgroundBarman {
            barman: Some(barman),
            runtime: Some(runtime),
        })
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The directory holding `barman/<server>/` (the archive) and `ssh/`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The client's private key (OpenSSH format, mode 0600), for `ssh -i`.
    pub fn client_key_path(&self) -> &Path {
        &self.client_key_path
    }

    /// A known_hosts file with [`Self::known_hosts_line`], written at start.
    pub fn known_hosts_path(&self) -> &Path {
        &self.known_hosts_path
    }

    /// The host key clients should trust (not the one
    /// [`Faults::wrong_host_key`] presents).
    pub fn host_public_key(&self) -> &PublicKey {
        &self.host_key
    }

    /// `[127.0.0.1]:PORT ssh-ed25519 AAAA...`
    pub fn known_hosts_line(&self) -> String {
        let key = self.host_key.to_openssh().unwrap_or_default();
        format!("[127.0.0.1]:{} {key}", self.port())
    }

    /// Writes (replaces) a known_hosts file trusting this server.
    pub fn write_known_hosts(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, format!("{}\n", self.known_hosts_line()))
    }

    /// An `~/.ssh/config` block reaching this server as `alias`.
    pub fn ssh_config_block(&self, alias: &str, user: &str) -> String {
        format!(
            "Host {alias}\n    HostName 127.0.0.1\n    Port {}\n    User {user}\n    IdentityFile {}\n    \
             UserKnownHostsFile {}\n    StrictHostKeyChecking yes\n",
            self.port(),
            self.client_key_path.display(),
            self.known_hosts_path.display()
        )
    }

    pub fn archive(&self) -> &Archive {
        &self.shared.archive
    }

    /// Server names `get-wal` knows.
    pub fn servers(&self) -> &[String] {
        &self.shared.servers
    }

    /// A snapshot of the counters and command log.
    pub fn stats(&self) -> Stats {
        let mut stats = self.shared.stats().clone();
        stats.transfers = self
            .shared
            .transfers
            .load(std::sync::atomic::Ordering::SeqCst);
        stats
    }

    /// The live fault settings.
    pub fn faults(&self) -> &FaultsHandle {
        &self.shared.faults
    }

    /// Stops accepting, resets every open connection, and waits for the
    /// accept loop to end.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.accept_task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for EmbeddedBarman {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An [`EmbeddedBarman`] on its own runtime; see
/// [`EmbeddedBarman::start_in_background`]. Derefs to the server.
pub struct BackgroundBarman {
    barman: Option<EmbeddedBarman>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl BackgroundBarman {
    /// The runtime serving it, e.g. to drive an async client from a sync test.
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("runtime lives until drop")
    }
}

impl Deref for BackgroundBarman {
    type Target = EmbeddedBarman;
    fn deref(&self) -> &EmbeddedBarman {
        self.barman.as_ref().expect("server lives until drop")
    }
}

impl Drop for BackgroundBarman {
    fn drop(&mut self) {
        if let Some(barman) = &self.barman {
            barman.shutdown.cancel();
        }
        if let Some(runtime) = self.runtime.take() {
            // Never blocks, so dropping inside another runtime is safe too.
            runtime.shutdown_background();
        }
        // The archive directory goes last, once nothing serves from it.
        drop(self.barman.take());
    }
}

#[cfg(test)]
mod tests;
