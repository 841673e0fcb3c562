//! The SSH side: accept loop, per-connection russh handler, and the task that
//! answers one exec channel the way `sshd` + `barman get-wal` would.
//!
//! Each exec runs in its own task and writes through its channel's own
//! window (`ChannelWriteHalf::data_bytes`), so a channel whose reader is slow
//! or stalled never holds up the others; files are streamed in chunks from a
//! blocking reader (decompressing on the fly), never loaded whole.

use std::collections::HashMap;
use std::future::Future;
use std::io::{self, Read};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use russh::keys::PublicKey;
use russh::server::{
    self, Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, ChannelOpenFailure, ChannelWriteHalf};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::archive::Archive;
use super::command::{self, GetWal};
use super::compression::{delivery_reader, Delivery};
use super::faults::{FaultsHandle, Matched, Plan};
use super::{ConfigCheck, Stats, CHUNK_SIZE};
use barman_wal_restore::wal::WalName;

/// State every connection and channel task shares.
pub(crate) struct Shared {
    pub archive: Archive,
    pub servers: Vec<String>,
    pub config_check: ConfigCheck,
    pub faults: FaultsHandle,
    pub stats: Mutex<Stats>,
    pub client_key: PublicKey,
    /// Session channels open right now, over all connections.
    pub open_channels: AtomicU64,
    /// File transfers started, for [`super::Target::NthTransfer`].
    pub transfers: AtomicU64,
}

impl Shared {
    pub fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        self.stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The host keys: the right one, and the one [`super::Faults::wrong_host_key`] swaps in.
pub(crate) struct HostConfigs {
    pub right: Arc<server::Config>,
    pub wrong: Arc<server::Config>,
}

/// Accepts connections until `shutdown` is cancelled.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    configs: HostConfigs,
    shutdown: CancellationToken,
) {
    loop {
        let tcp = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                // Out of descriptors and the like: keep serving the others,
                // without spinning on an error that persists.
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        shared.stats().connections += 1;
        let _ = tcp.set_nodelay(true);
        let config = if shared.faults.lock().wrong_host_key {
            configs.wrong.clone()
        } else {
            configs.right.clone()
        };
        let kill = shutdown.child_token();
        let handler = Connection {
            shared: shared.clone(),
            kill: kill.clone(),
            open_here: Arc::new(AtomicUsize::new(0)),
            channels: HashMap::new(),
        };
        let stream = KillableStream::new(tcp, &kill);
        tokio::spawn(async move {
            if let Ok(session) = server::run_stream(config, stream, handler).await {
                let _ = session.await;
            }
            // Ends stalled channel tasks of this connection.
            kill.cancel();
        });
    }
}

/// A TCP stream that a fault (or shutdown) can reset at any moment, even
/// while russh is blocked reading it.
struct KillableStream {
    inner: TcpStream,
    // One waiter per direction, so whichever side is pending gets woken.
    killed_read: Pin<Box<WaitForCancellationFutureOwned>>,
    killed_write: Pin<Box<WaitForCancellationFutureOwned>>,
    dead: bool,
}

impl KillableStream {
    fn new(inner: TcpStream, kill: &CancellationToken) -> KillableStream {
        KillableStream {
            inner,
            killed_read: Box::pin(kill.clone().cancelled_owned()),
            killed_write: Box::pin(kill.clone().cancelled_owned()),
            dead: false,
        }
    }

    fn check(&mut self, cx: &mut Context<'_>, read: bool) -> Option<io::Error> {
        if !self.dead {
            let waiter = if read {
                &mut self.killed_read
            } else {
                &mut self.killed_write
            };
            if waiter.as_mut().poll(cx).is_ready() {
                self.dead = true;
                // Closing with SO_LINGER 0 sends a reset, like a dropped link
                // or a killed sshd, rather than an orderly FIN.
                let _ = self.inner.set_zero_linger();
            }
        }
        self.dead
            .then(|| io::Error::from(io::ErrorKind::ConnectionReset))
    }
}

impl AsyncRead for KillableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.check(cx, true) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.check(cx, false) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.check(cx, false) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// One `MaxSessions` slot; freed on drop (channel closed, task ended).
struct SessionSlot {
    on_connection: Arc<AtomicUsize>,
    shared: Arc<Shared>,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.on_connection.fetch_sub(1, Ordering::SeqCst);
        self.shared.open_channels.fetch_sub(1, Ordering::SeqCst);
    }
}

enum ChannelEntry {
    /// Opened, no exec yet.
    Idle {
        channel: Channel<Msg>,
        slot: SessionSlot,
    },
    /// Its command runs in a task; aborted if the client closes first.
    Running(tokio::task::AbortHandle),
}

/// The russh handler of one connection.
struct Connection {
    shared: Arc<Shared>,
    kill: CancellationToken,
    open_here: Arc<AtomicUsize>,
    channels: HashMap<ChannelId, ChannelEntry>,
}

impl Connection {
    fn key_allowed(&self, key: &PublicKey) -> bool {
        !self.shared.faults.lock().refuse_auth
            && key.key_data() == self.shared.client_key.key_data()
    }

    fn reject(&self) -> Auth {
        self.shared.stats().auth_rejections += 1;
        Auth::reject()
    }
}

impl server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if self.key_allowed(offer.public_key) {
            Auth::Accept
        } else {
            self.reject()
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if !self.key_allowed(key.public_key) {
            return Ok(self.reject());
        }
        let mut stats = self.shared.stats();
        stats.auth_successes += 1;
        stats.users.push(user.to_string());
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let limit = self.shared.faults.lock().max_sessions.unwrap_or(usize::MAX);
        if self.open_here.load(Ordering::SeqCst) >= limit {
            self.shared.stats().channels_refused += 1;
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        }
        self.open_here.fetch_add(1, Ordering::SeqCst);
        let now_open = self.shared.open_channels.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let mut stats = self.shared.stats();
            stats.channels_opened += 1;
            stats.max_concurrent_channels = stats.max_concurrent_channels.max(now_open);
        }
        let slot = SessionSlot {
            on_connection: self.open_here.clone(),
            shared: self.shared.clone(),
        };
        self.channels
            .insert(channel.id(), ChannelEntry::Idle { channel, slot });
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        id: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data).into_owned();
        {
            let mut stats = self.shared.stats();
            if command::has_unquoted_shell_syntax(&command) {
                stats.shell_syntax_commands.push(command.clone());
            }
            stats.commands.push(command.clone());
        }
        let Some(ChannelEntry::Idle { channel, slot }) = self.channels.remove(&id) else {
            // A second exec on a busy channel: refused, as sshd does.
            return session.channel_failure(id);
        };
        session.channel_success(id)?;
        // Nobody reads what the client sends on an exec channel; dropping the
        // read half keeps russh from blocking on a full channel buffer.
        let (_, writer) = channel.split();
        let task = tokio::spawn(run_command(
            self.shared.clone(),
            writer,
            command,
            slot,
            self.kill.clone(),
        ));
        self.channels
            .insert(id, ChannelEntry::Running(task.abort_handle()));
        Ok(())
    }

    async fn shell_request(
        &mut self,
        id: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(id)
    }

    async fn subsystem_request(
        &mut self,
        id: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(id)
    }

    async fn channel_close(
        &mut self,
        id: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(ChannelEntry::Running(task)) = self.channels.remove(&id) {
            task.abort();
        }
        Ok(())
    }
}

/// What a command answers, before faults.
enum Answer {
    Fixed {
        stdout: Vec<u8>,
        stderr: String,
        status: u32,
    },
    File {
        wal: String,
        path: PathBuf,
        delivery: Delivery,
    },
}

impl Answer {
    fn error(status: u32, message: String) -> Answer {
        Answer::Fixed {
            stdout: Vec::new(),
            stderr: format!("ERROR: {message}\n"),
            status,
        }
    }
}

/// Barman 3.19's `get-wal`, minus Python.
fn answer<'a>(shared: &Shared, cmd: &'a GetWal) -> (Answer, Matched<'a>) {
    if let ConfigCheck::Require(expected) = &shared.config_check {
        match &cmd.config {
            Some(given) if given == expected => {}
            Some(given) => {
                return (
                    Answer::error(1, format!("Configuration file '{given}' does not exist")),
                    Matched::Other,
                )
            }
            // The host's default configuration does not know the server.
            None => {
                return (
                    Answer::error(1, format!("Unknown server '{}'", cmd.server)),
                    Matched::Other,
                )
            }
        }
    }
    if cmd.keep_compression && shared.faults.lock().without_keep_compression {
        let usage = Answer::Fixed {
            stdout: Vec::new(),
            stderr: "usage: barman get-wal [-h] [-o OUTPUT_DIRECTORY] [-P] [-z | -j] [-p PEEK] \
                     [-t] server_name wal_name\n\
                     barman get-wal: error: unrecognized arguments: --keep-compression\n"
                .to_string(),
            status: 2,
        };
        return (usage, Matched::Other);
    }
    if cmd.keep_compression && (cmd.gzip || cmd.bzip2) {
        let message =
            "--keep-compression cannot be used together with --gzip or --bzip2".to_string();
        return (Answer::error(1, message), Matched::Other);
    }
    if !shared.servers.contains(&cmd.server) {
        return (
            Answer::error(1, format!("Unknown server '{}'", cmd.server)),
            Matched::Other,
        );
    }
    if cmd.test {
        let stdout = format!(
            "Ready to retrieve WAL files from the server {}\n",
            cmd.server
        )
        .into_bytes();
        return (
            Answer::Fixed {
                stdout,
                stderr: String::new(),
                status: 0,
            },
            Matched::Other,
        );
    }
    if WalName::parse(&cmd.wal).is_err() {
        return (
            Answer::error(3, format!("'{}' is not a valid wal file name", cmd.wal)),
            Matched::Other,
        );
    }
    if let Some(n) = cmd.peek {
        let listing: String = shared
            .archive
            .peek(&cmd.wal, n as usize)
            .iter()
            .map(|name| format!("{name}\n"))
            .collect();
        let answer = Answer::Fixed {
            stdout: listing.into_bytes(),
            stderr: String::new(),
            status: 0,
        };
        return (answer, Matched::Peek);
    }
    let ordinal = shared.transfers.fetch_add(1, Ordering::SeqCst) + 1;
    let matched = Matched::Transfer {
        ordinal,
        wal: &cmd.wal,
    };
    let Some(path) = shared.archive.locate(&cmd.wal, cmd.partial) else {
        let message = format!(
            "WAL file '{}' not found in server '{}'",
            cmd.wal, cmd.server
        );
        return (Answer::error(1, message), matched);
    };
    let delivery = if path.extension().is_some_and(|e| e == "partial") {
        // Partial files are always sent as they are.
        Delivery::AsStored
    } else if cmd.keep_compression {
        Delivery::AsStored
    } else if cmd.gzip {
        Delivery::Gzip
    } else if cmd.bzip2 {
        Delivery::Bzip2
    } else {
        Delivery::Decompressed
    };
    (
        Answer::File {
            wal: cmd.wal.clone(),
            path,
            delivery,
        },
        matched,
    )
}

/// Answers `--direct-read`'s commands the way a Barman host's shell would:
/// `show-server` lists the archive's directories, `cat` sends a stored file
/// as it is, `ls -1` lists a directory. With [`super::Faults::forced_command`]
/// only `barman` may run, as under an `authorized_keys` forced command.
fn answer_direct(shared: &Shared, direct: command::DirectCommand) -> Answer {
    use command::DirectCommand;
    let forced = shared.faults.lock().forced_command;
    let root = shared.archive.root();
    match direct {
        DirectCommand::ShowServer { server, .. } => {
            if !shared.servers.contains(&server) {
                return Answer::error(1, format!("Unknown server '{server}'"));
            }
            let stdout = format!(
                "Server {server}:\n\tactive: True\n\tdisabled: False\n\
                 \tincoming_wals_directory: {}\n\tstreaming_wals_directory: {}\n\
                 \twals_directory: {}\n",
                root.join("incoming").display(),
                root.join("streaming").display(),
                root.join("wals").display()
            );
            Answer::Fixed {
                stdout: stdout.into_bytes(),
                stderr: String::new(),
                status: 0,
            }
        }
        _ if forced => Answer::Fixed {
            stdout: Vec::new(),
            stderr: "This account may only run barman\n".to_string(),
            status: 1,
        },
        DirectCommand::Cat(path) => {
            let path = PathBuf::from(path);
            if path.starts_with(root) && path.is_file() {
                let wal = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                Answer::File {
                    wal,
                    path,
                    delivery: Delivery::AsStored,
                }
            } else {
                Answer::Fixed {
                    stdout: Vec::new(),
                    stderr: format!("cat: {}: No such file or directory\n", path.display()),
                    status: 1,
                }
            }
        }
        DirectCommand::List(dir) => match std::fs::read_dir(&dir) {
            Ok(entries) => {
                let mut names: Vec<String> = entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                Answer::Fixed {
                    stdout: names
                        .iter()
                        .map(|n| format!("{n}\n"))
                        .collect::<String>()
                        .into_bytes(),
                    stderr: String::new(),
                    status: 0,
                }
            }
            Err(_) => Answer::Fixed {
                stdout: Vec::new(),
                stderr: format!("ls: cannot access '{dir}': No such file or directory\n"),
                status: 2,
            },
        },
    }
}

/// Runs one exec request to completion on its channel.
async fn run_command(
    shared: Arc<Shared>,
    writer: ChannelWriteHalf<Msg>,
    command: String,
    slot: SessionSlot,
    kill: CancellationToken,
) {
    let direct = command::parse_direct(&command);
    // The emulated start-up is Barman's Python; `cat` and `ls` start at once.
    let runs_barman = !matches!(
        direct,
        Some(command::DirectCommand::Cat(_) | command::DirectCommand::List(_))
    );
    let latency = shared.faults.lock().command_latency;
    if runs_barman && !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let (answer, plan) = match (direct, command::parse(&command)) {
        (Some(direct), _) => {
            let plan = match direct {
                command::DirectCommand::ShowServer { .. } => {
                    shared.faults.plan_for(Matched::ShowServer)
                }
                _ => Plan::default(),
            };
            (answer_direct(&shared, direct), plan)
        }
        (None, parsed) => match parsed {
            Err(refusal) => (
                Answer::Fixed {
                    stdout: Vec::new(),
                    stderr: refusal.stderr,
                    status: refusal.status,
                },
                Plan::default(),
            ),
            Ok(cmd) => {
                let (answer, matched) = answer(&shared, &cmd);
                (answer, shared.faults.plan_for(matched))
            }
        },
    };
    // Only a clean end reaches the exit status; faults that drop or stall
    // the connection return early.
    if let Some((status, stderr)) = finish_payload(&shared, &writer, answer, &plan, &kill).await {
        if !stderr.is_empty() {
            let _ = writer.extended_data_bytes(1, Bytes::from(stderr)).await;
        }
        let _ = writer.eof().await;
        let _ = writer.exit_status(status).await;
        let _ = writer.close().await;
    }
    drop(slot);
}

/// Sends the payload under the fault plan; returns the exit status and
/// stderr to finish with, or `None` if the channel must not finish cleanly.
async fn finish_payload(
    shared: &Arc<Shared>,
    writer: &ChannelWriteHalf<Msg>,
    answer: Answer,
    plan: &Plan,
    kill: &CancellationToken,
) -> Option<(u32, String)> {
    if let Some((status, stderr)) = &plan.exit {
        let mut stderr = stderr.clone();
        if !stderr.is_empty() && !stderr.ends_with('\n') {
            stderr.push('\n');
        }
        return Some((*status, stderr));
    }
    let (source, mut status, mut stderr, wal): (Source, u32, String, String) = match answer {
        Answer::Fixed {
            stdout,
            stderr,
            status,
        } => (Source::Bytes(stdout), status, stderr, String::new()),
        Answer::File {
            wal,
            path,
            delivery,
        } => (Source::File { path, delivery }, 0, String::new(), wal),
    };
    let source = if plan.empty {
        Source::Bytes(Vec::new())
    } else if let Some(bytes) = &plan.bytes {
        Source::Bytes(bytes.clone())
    } else if let Some(len) = plan.garbage {
        Source::Bytes(garbage(len))
    } else if let Some(other) = &plan.other_file {
        match (shared.archive.locate(other, true), &source) {
            (Some(path), Source::File { delivery, .. }) => Source::File {
                path,
                delivery: *delivery,
            },
            _ => Source::Bytes(shared.archive.raw_file(other).unwrap_or_default()),
        }
    } else {
        source
    };

    let mut chunks = source.pump();
    let cut = plan.cut_at();
    let mut sent = 0u64;
    let mut reached_cut = cut == Some(0);
    let mut first_chunk: Option<Bytes> = None;
    while !reached_cut {
        let Some(item) = chunks.recv().await else {
            break;
        };
        let mut chunk = match item {
            Ok(chunk) => chunk,
            Err(e) => {
                status = 1;
                stderr = format!("ERROR: Error decompressing WAL file '{wal}': {e}\n");
                break;
            }
        };
        if !plan.delay_per_chunk.is_zero() {
            tokio::time::sleep(plan.delay_per_chunk).await;
        }
        let len = chunk.len() as u64;
        if let Some(at) = plan
            .flip_bit_at
            .filter(|at| (sent..sent + len).contains(at))
        {
            let mut bytes = BytesMut::from(&chunk[..]);
            bytes[(at - sent) as usize] ^= 1;
            chunk = bytes.freeze();
        }
        if let Some(cut) = cut.filter(|&cut| sent + len >= cut) {
            chunk.truncate((cut - sent) as usize);
            reached_cut = true;
        }
        if plan.endless.is_some() && first_chunk.is_none() {
            first_chunk = Some(chunk.clone());
        }
        sent += chunk.len() as u64;
        if let Some((bytes, every)) = plan.trickle {
            for piece in chunk.chunks(bytes.max(1)) {
                if writer
                    .data_bytes(Bytes::copy_from_slice(piece))
                    .await
                    .is_err()
                {
                    return None;
                }
                tokio::time::sleep(every).await;
            }
        } else if writer.data_bytes(chunk).await.is_err() {
            return None; // The client went away.
        }
    }
    drop(chunks);
    if let (Some(every), Some(chunk)) = (plan.endless, first_chunk) {
        loop {
            tokio::select! {
                _ = kill.cancelled() => return None,
                _ = tokio::time::sleep(every) => {}
            }
            if writer.data_bytes(chunk.clone()).await.is_err() {
                return None;
            }
        }
    }
    if reached_cut {
        if plan.drop_after == cut {
            // Let the bytes already queued reach the socket, then reset it.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            kill.cancel();
            return None;
        }
        if plan.stall_after == cut {
            kill.cancelled().await;
            return None;
        }
    }
    Some((status, stderr))
}

/// Where a payload comes from.
enum Source {
    Bytes(Vec<u8>),
    File { path: PathBuf, delivery: Delivery },
}

impl Source {
    /// Reads the source on a blocking thread into a short queue of chunks:
    /// file reads and decompression never block the runtime, and at most a
    /// few chunks are in memory per transfer.
    fn pump(self) -> mpsc::Receiver<io::Result<Bytes>> {
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let reader: io::Result<Box<dyn Read + Send>> = match self {
                Source::Bytes(bytes) => Ok(Box::new(io::Cursor::new(bytes))),
                Source::File { path, delivery } => std::fs::File::open(&path)
                    .and_then(|file| delivery_reader(io::BufReader::new(file), delivery)),
            };
            let mut reader = match reader {
                Ok(reader) => reader,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            loop {
                let mut buf = vec![0u8; CHUNK_SIZE];
                match read_up_to(&mut reader, &mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
        });
        rx
    }
}

/// Fills `buf` unless the reader ends first, so chunks have a fixed size
/// (what [`super::StreamFault::DelayPerChunk`] counts).
fn read_up_to(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn garbage(len: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut bytes = vec![0u8; len];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}
