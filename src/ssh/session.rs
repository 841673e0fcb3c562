//! One russh session to the Barman host, and exec channels on it.
//!
//! A call opens exactly one TCP connection (retried within bounds when it
//! cannot be made) and runs every remote command as an exec channel of that
//! session. Channels are read to their end, so their exit status is never
//! lost and sshd frees their `MaxSessions` slot.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use russh::client::{self, Handle};
use russh::keys::{load_secret_key, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, Preferred};
use tokio::net::TcpStream;

use super::known_hosts::{self, HostKeyVerdict};
use super::target::{HostKeyPolicy, SshTarget};
use crate::exit::Failure;
use crate::remote::RemoteExit;

/// Counters a benchmark or test reads to prove what a call did.
#[derive(Debug, Default)]
pub struct SessionStats {
    pub connections: AtomicU64,
    pub channels_opened: AtomicU64,
    pub channels_refused: AtomicU64,
}

impl SessionStats {
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.connections.load(Ordering::Relaxed),
            self.channels_opened.load(Ordering::Relaxed),
            self.channels_refused.load(Ordering::Relaxed),
        )
    }
}

struct ClientHandler {
    target: Arc<SshTarget>,
    /// Why the host key was refused, for the error message.
    refusal: Arc<Mutex<Option<String>>>,
}

impl client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let target = &self.target;
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            *self.refusal.lock().unwrap() = Some(format!(
                "{} presented a host certificate; only plain host keys in known_hosts are supported",
                target.host_name
            ));
            return Ok(false);
        };
        let scan = format!(
            "ssh-keyscan -p {} {} >> ~/.ssh/known_hosts",
            target.port, target.host_name
        );
        let refusal = match known_hosts::verify(&target.host_name, target.port, key, &target.known_hosts) {
            HostKeyVerdict::Known => return Ok(true),
            HostKeyVerdict::Unknown => match target.host_key_policy {
                HostKeyPolicy::AcceptAny => return Ok(true),
                HostKeyPolicy::AcceptNew => {
                    if let Some(file) = target.known_hosts.first() {
                        // Best effort, as OpenSSH: failing to record does not fail the call.
                        let _ = known_hosts::learn(&target.host_name, target.port, key, file);
                    }
                    return Ok(true);
                }
                HostKeyPolicy::Strict => format!(
                    "host key of {}:{} is not known ({}); after checking its fingerprint, add it: {scan}",
                    target.host_name,
                    target.port,
                    key.fingerprint(Default::default())
                ),
            },
            HostKeyVerdict::Changed { file, line } => format!(
                "HOST KEY OF {}:{} HAS CHANGED (now {}; {}:{line} has another): possible \
                 man-in-the-middle; if the change is expected, remove that line and run: {scan}",
                target.host_name,
                target.port,
                key.fingerprint(Default::default()),
                file.display()
            ),
            HostKeyVerdict::Revoked { file, line } => format!(
                "host key of {}:{} is marked @revoked in {}:{line}",
                target.host_name,
                target.port,
                file.display()
            ),
        };
        *self.refusal.lock().unwrap() = Some(refusal);
        Ok(false)
    }
}

/// An authenticated session to the Barman host.
pub struct Session {
    handle: Handle<ClientHandler>,
    target: Arc<SshTarget>,
    stats: Arc<SessionStats>,
}

/// Why a channel could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The server refused the channel (OpenSSH's `MaxSessions`): back-pressure,
    /// try again when one of ours has closed.
    Refused,
    /// The session is gone.
    Failed(Failure),
}

fn client_config(target: &SshTarget) -> client::Config {
    client::Config {
        // AES-GCM first: with AES-NI it is several times faster than russh's
        // default chacha20-poly1305 (russh-notes.md).
        preferred: Preferred {
            cipher: Cow::Borrowed(&[
                russh::cipher::AES_256_GCM,
                russh::cipher::AES_128_GCM,
                russh::cipher::CHACHA20_POLY1305,
                russh::cipher::AES_256_CTR,
                russh::cipher::AES_128_CTR,
            ]),
            ..Default::default()
        },
        // A large window keeps each channel streaming instead of waiting for
        // window adjustments (measured: 16 MiB helped).
        window_size: 4 << 20,
        maximum_packet_size: 65535,
        channel_buffer_size: 16,
        keepalive_interval: target.server_alive_interval,
        keepalive_max: 3,
        nodelay: true,
        ..Default::default()
    }
}

impl Session {
    /// Connects and authenticates once, within the connect timeout.
    pub async fn connect(
        target: Arc<SshTarget>,
        stats: Arc<SessionStats>,
    ) -> Result<Session, Failure> {
        let deadline = target.connect_timeout;
        match tokio::time::timeout(deadline, Session::connect_inner(target.clone(), stats)).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Connection(format!(
                "connection to {} timed out after {} s (--connect-timeout)",
                target.display(),
                deadline.as_secs_f32()
            ))),
        }
    }

    /// Connects with bounded retries: a transient failure (refused, reset,
    /// timed out) is tried again after a growing pause; a host key or
    /// authentication refusal is not, since it cannot change by waiting.
    pub async fn connect_with_retries(
        target: Arc<SshTarget>,
        stats: Arc<SessionStats>,
        attempts: u32,
        verbose: bool,
    ) -> Result<Session, Failure> {
        let mut pause = Duration::from_millis(250);
        let mut attempt = 1;
        loop {
            match Session::connect(target.clone(), stats.clone()).await {
                Ok(session) => return Ok(session),
                Err(e) if attempt >= attempts || !is_retryable(&e) => return Err(e),
                Err(e) => {
                    if verbose {
                        eprintln!(
                            "WARNING: attempt {attempt}/{attempts}: {e}; retrying in {pause:?}"
                        );
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(4));
                    attempt += 1;
                }
            }
        }
    }

    async fn connect_inner(
        target: Arc<SshTarget>,
        stats: Arc<SessionStats>,
    ) -> Result<Session, Failure> {
        let where_ = target.display();
        let stream = TcpStream::connect((target.host_name.as_str(), target.port))
            .await
            .map_err(|e| Failure::Connection(format!("cannot connect to {where_}: {e}")))?;
        let _ = stream.set_nodelay(true);
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let refusal = Arc::new(Mutex::new(None));
        let handler = ClientHandler {
            target: target.clone(),
            refusal: refusal.clone(),
        };
        let config = Arc::new(client_config(&target));
        let mut handle = match client::connect_stream(config, stream, handler).await {
            Ok(handle) => handle,
            Err(e) => {
                let refused = refusal.lock().unwrap().take();
                return Err(match refused {
                    Some(why) => Failure::Connection(why),
                    None => Failure::Connection(format!("SSH handshake with {where_} failed: {e}")),
                });
            }
        };
        authenticate(&mut handle, &target).await?;
        Ok(Session {
            handle,
            target,
            stats,
        })
    }

    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    pub fn stats(&self) -> &Arc<SessionStats> {
        &self.stats
    }

    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Opens a session channel and starts `command` on it.
    pub async fn exec(&self, command: &str) -> Result<ExecChannel, OpenError> {
        let open = tokio::time::timeout(self.target.io_timeout, self.handle.channel_open_session());
        let channel = match open.await {
            Ok(Ok(channel)) => channel,
            Ok(Err(russh::Error::ChannelOpenFailure(_))) => {
                self.stats.channels_refused.fetch_add(1, Ordering::Relaxed);
                return Err(OpenError::Refused);
            }
            Ok(Err(e)) => {
                return Err(OpenError::Failed(Failure::Connection(format!(
                    "cannot open a channel to {}: {e}",
                    self.target.display()
                ))));
            }
            Err(_) => {
                return Err(OpenError::Failed(Failure::Connection(format!(
                    "{} did not answer a channel open within {} s",
                    self.target.display(),
                    self.target.io_timeout.as_secs()
                ))));
            }
        };
        self.stats.channels_opened.fetch_add(1, Ordering::Relaxed);
        channel.exec(true, command).await.map_err(|e| {
            OpenError::Failed(Failure::Connection(format!(
                "cannot start a command on {}: {e}",
                self.target.display()
            )))
        })?;
        Ok(ExecChannel {
            channel,
            exit: RemoteExit::default(),
            idle: self.target.io_timeout,
            host: self.target.display(),
        })
    }

    /// Runs a command whose output is small (peek, test) and returns its
    /// stdout and how it ended.
    pub async fn run(&self, command: &str) -> Result<(Vec<u8>, RemoteExit), OpenError> {
        let mut exec = self.exec(command).await?;
        let mut stdout = Vec::new();
        while let Some(chunk) = exec.next_stdout().await.map_err(OpenError::Failed)? {
            // Bounded: a peek answer is a few lines; more is not Barman.
            if stdout.len() < (1 << 20) {
                stdout.extend_from_slice(&chunk);
            }
        }
        Ok((stdout, exec.finish().await))
    }

    /// Ends the session politely.
    pub async fn close(&self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

fn is_retryable(failure: &Failure) -> bool {
    let message = failure.message();
    failure.is_transient()
        && !message.contains("host key")
        && !message.contains("HOST KEY")
        && !message.contains("Permission denied")
}

/// Agent first, then identity files, as OpenSSH tries them.
async fn authenticate(
    handle: &mut Handle<ClientHandler>,
    target: &SshTarget,
) -> Result<(), Failure> {
    let user = target.user.clone();
    let rsa_hash = handle
        .best_supported_rsa_hash()
        .await
        .ok()
        .flatten()
        .flatten();
    let mut tried: Vec<String> = Vec::new();

    if !target.identities_explicit {
        if let Ok(mut agent) = russh::keys::agent::client::AgentClient::connect_env().await {
            if let Ok(identities) = agent.request_identities().await {
                for identity in identities {
                    let key = identity.public_key().into_owned();
                    let result = handle
                        .authenticate_publickey_with(user.clone(), key, rsa_hash, &mut agent)
                        .await;
                    if matches!(result, Ok(r) if r.success()) {
                        return Ok(());
                    }
                }
                tried.push("ssh-agent keys".to_string());
            }
        }
    }

    let mut problems = Vec::new();
    for path in &target.identities {
        if !path.exists() {
            if target.identities_explicit {
                problems.push(format!("{} does not exist", path.display()));
            }
            continue;
        }
        let key = match load_secret_key(path, None) {
            Ok(key) => key,
            Err(e) => {
                problems.push(format!("cannot use {}: {e}", path.display()));
                continue;
            }
        };
        tried.push(path.display().to_string());
        let key = PrivateKeyWithHashAlg::new(Arc::new(key), rsa_hash);
        match handle.authenticate_publickey(user.clone(), key).await {
            Ok(result) if result.success() => return Ok(()),
            Ok(_) => {}
            Err(e) => {
                return Err(Failure::Connection(format!(
                    "authentication to {} failed: {e}",
                    target.display()
                )));
            }
        }
    }
    let tried = if tried.is_empty() {
        "no usable key found".to_string()
    } else {
        format!("tried {}", tried.join(", "))
    };
    let problems = if problems.is_empty() {
        String::new()
    } else {
        format!("; {}", problems.join("; "))
    };
    Err(Failure::Connection(format!(
        "Permission denied (publickey) for {}: {tried}{problems}; add the public key to \
         ~{}/.ssh/authorized_keys on {} or choose a key with -i",
        target.display(),
        target.user,
        target.host_name
    )))
}

/// A running remote command: its stdout as a stream of chunks, its stderr
/// and exit status collected on the way.
pub struct ExecChannel {
    channel: russh::Channel<client::Msg>,
    exit: RemoteExit,
    idle: Duration,
    host: String,
}

/// Remote stderr kept per command: Barman's messages are a few lines.
const STDERR_LIMIT: usize = 64 << 10;

impl ExecChannel {
    /// The next chunk of stdout, or `None` once the channel has closed.
    /// Fails when nothing at all arrives for the idle timeout.
    pub async fn next_stdout(&mut self) -> Result<Option<Bytes>, Failure> {
        loop {
            let msg = match tokio::time::timeout(self.idle, self.channel.wait()).await {
                Ok(msg) => msg,
                Err(_) => {
                    return Err(Failure::Connection(format!(
                        "no data from {} for {} s (--io-timeout)",
                        self.host,
                        self.idle.as_secs()
                    )));
                }
            };
            match msg {
                Some(ChannelMsg::Data { data }) => return Ok(Some(data)),
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                    if self.exit.stderr.len() < STDERR_LIMIT {
                        self.exit.stderr.extend_from_slice(&data);
                    }
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => {
                    self.exit.status = Some(exit_status)
                }
                Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                    self.exit.signal = Some(format!("{signal_name:?}"));
                }
                // The exit status may still follow EOF: keep reading to Close.
                Some(ChannelMsg::Close) | None => return Ok(None),
                Some(_) => {}
            }
        }
    }

    /// Closes our side and returns how the command ended.
    pub async fn finish(self) -> RemoteExit {
        let _ = self.channel.close().await;
        self.exit
    }

    /// Abandons the command (a failed transfer): close so the server frees
    /// the slot and stops sending.
    pub async fn abandon(self) {
        let _ = self.channel.close().await;
    }
}
