//! One russh session to the Barman host, and exec channels on it.
//!
//! A call opens exactly one TCP connection (retried within bounds when it
//! cannot be made) and runs every remote command as an exec channel of that
//! session. Channels are read to their end, so their exit status is never
//! lost and sshd frees their `MaxSessions` slot.

use std::borrow::Cow;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use russh::client::{self, Handle};
use russh::keys::agent::client::AgentClient;
use russh::keys::ssh_key::{Algorithm, Certificate};
use russh::keys::{load_secret_key, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, Preferred};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};

use super::known_hosts::{self, HostKeyVerdict};
use super::target::{AddressFamily, Agent, HostKeyPolicy, Proxy, SshTarget};
use crate::error::{Error, ErrorKind};

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
    /// The fingerprint of the key the server proved it holds (for `--test`).
    seen: Arc<Mutex<Option<String>>>,
}

fn rsa_bits(key: &PublicKey) -> Option<u32> {
    key.key_data().rsa().map(|rsa| rsa.key_size())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let target = &self.target;
        let name = target.host_key_name();
        let files = target.known_hosts_files();
        let plain = key.public_key();
        *self.seen.lock().unwrap() = Some(match key {
            PublicKeyOrCertificate::Certificate(cert) => format!(
                "{} (certificate signed by {})",
                plain.fingerprint(Default::default()),
                cert.signature_key().fingerprint(Default::default())
            ),
            _ => plain.fingerprint(Default::default()).to_string(),
        });
        if let Some(bits) = rsa_bits(&plain) {
            if bits < target.required_rsa_size {
                *self.refusal.lock().unwrap() = Some(format!(
                    "host key of {name}:{} is RSA of {bits} bits, below RequiredRSASize {}",
                    target.port, target.required_rsa_size
                ));
                return Ok(false);
            }
        }
        let mut certificate_problem = None;
        if let PublicKeyOrCertificate::Certificate(cert) = key {
            match known_hosts::verify_certificate(
                name,
                target.port,
                cert,
                &files,
                unix_now(),
                &target.ca_signature_algorithms,
            ) {
                Ok(()) => return Ok(true),
                // OpenSSH then tries the certified key as a plain key.
                Err(why) => certificate_problem = Some(why),
            }
        }
        let scan = format!(
            "ssh-keyscan -p {} {} >> ~/.ssh/known_hosts",
            target.port, target.host_name
        );
        let verdict = known_hosts::verify(name, target.port, &plain, &files);
        let refusal = match (verdict, certificate_problem) {
            (HostKeyVerdict::Known, _) => return Ok(true),
            (HostKeyVerdict::Unknown, Some(why)) => {
                format!("host key of {name}:{} is not trusted: {why}", target.port)
            }
            (HostKeyVerdict::Unknown, None) => match target.host_key_policy {
                HostKeyPolicy::AcceptAny | HostKeyPolicy::AcceptNew => {
                    if let Some(file) = target.user_known_hosts.first() {
                        // Best effort, as OpenSSH: failing to record does not fail the call.
                        let _ = known_hosts::learn(
                            name,
                            target.port,
                            &plain,
                            file,
                            target.hash_known_hosts,
                        );
                    }
                    return Ok(true);
                }
                HostKeyPolicy::Strict => format!(
                    "host key of {name}:{} is not known ({}); after checking its fingerprint, add it: {scan}",
                    target.port,
                    plain.fingerprint(Default::default())
                ),
            },
            (HostKeyVerdict::Changed { file, line }, _) => format!(
                "HOST KEY OF {name}:{} HAS CHANGED (now {}; {}:{line} has another): possible \
                 man-in-the-middle; if the change is expected, remove that line and run: {scan}",
                target.port,
                plain.fingerprint(Default::default()),
                file.display()
            ),
            (HostKeyVerdict::Revoked { file, line }, _) => format!(
                "host key of {name}:{} is marked @revoked in {}:{line}",
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
    /// The fingerprint of the host key the server proved it holds.
    host_key: String,
    /// What carries the transport and must live as long as it: the
    /// ProxyJump hops' sessions, the ProxyCommand process.
    _carriers: Vec<Carrier>,
}

/// Something a transport depends on: held, never read; dropping it ends
/// the hop's session or kills the ProxyCommand.
#[allow(dead_code)]
enum Carrier {
    Hop(Box<Session>),
    Command(tokio::process::Child),
}

/// A byte stream the SSH protocol runs over.
trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

/// Why a channel could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The server refused the channel (OpenSSH's `MaxSessions`): back-pressure,
    /// try again when one of ours has closed.
    Refused,
    /// The session is gone.
    Failed(Error),
}

/// Our preference among `offered` (speed first: AES-GCM with AES-NI beats
/// chacha20-poly1305 per byte, docs/benchmarks.md), kept to what ssh_config
/// allows when it names a list.
fn allowed<N: Copy + AsRef<str>>(ours: &[N], config: &[String]) -> Vec<N> {
    ours.iter()
        .copied()
        .filter(|n| config.is_empty() || config.iter().any(|c| c == n.as_ref()))
        .collect()
}

/// russh's plain host key algorithm for an OpenSSH name, if it has one.
fn host_key_algorithm(name: &str) -> Option<Algorithm> {
    use russh::keys::ssh_key::{EcdsaCurve, HashAlg};
    Some(match name {
        "ssh-ed25519" => Algorithm::Ed25519,
        "ecdsa-sha2-nistp256" => Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP256,
        },
        "ecdsa-sha2-nistp384" => Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP384,
        },
        "ecdsa-sha2-nistp521" => Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP521,
        },
        "rsa-sha2-512" => Algorithm::Rsa {
            hash: Some(HashAlg::Sha512),
        },
        "rsa-sha2-256" => Algorithm::Rsa {
            hash: Some(HashAlg::Sha256),
        },
        "ssh-rsa" => Algorithm::Rsa { hash: None },
        _ => return None,
    })
}

fn same_family(a: &Algorithm, b: &Algorithm) -> bool {
    a == b || (matches!(a, Algorithm::Rsa { .. }) && matches!(b, Algorithm::Rsa { .. }))
}

/// The host key algorithms to offer, as OpenSSH orders them: those
/// known_hosts holds a key of for this host first (so a host known only by
/// its ECDSA or RSA key is asked for that key), then the rest of
/// `HostKeyAlgorithms`; certificates only when a `@cert-authority` line
/// names the host.
fn host_key_preference(target: &SshTarget) -> (Vec<Algorithm>, Vec<Algorithm>) {
    let names: Vec<String> = if target.host_key_algorithms.is_empty() {
        Preferred::DEFAULT
            .key
            .iter()
            .map(|a| a.to_string())
            .collect()
    } else {
        target.host_key_algorithms.clone()
    };
    let plain: Vec<Algorithm> = names.iter().filter_map(|n| host_key_algorithm(n)).collect();
    let (known, has_authority) = known_hosts::known_algorithms(
        target.host_key_name(),
        target.port,
        &target.known_hosts_files(),
    );
    let (mut first, rest): (Vec<Algorithm>, Vec<Algorithm>) = plain
        .into_iter()
        .partition(|a| known.iter().any(|k| same_family(a, k)));
    first.extend(rest);
    let certificates = if has_authority {
        names
            .iter()
            .filter_map(|n| n.strip_suffix("-cert-v01@openssh.com"))
            .filter_map(|n| match n {
                // OpenSSH names RSA certificates by their signature hash.
                "rsa-sha2-512" | "rsa-sha2-256" | "ssh-rsa" => host_key_algorithm(n),
                other => host_key_algorithm(other),
            })
            .fold(Vec::new(), |mut acc, a| {
                if !acc.contains(&a) {
                    acc.push(a);
                }
                acc
            })
    } else {
        Vec::new()
    };
    (first, certificates)
}

fn client_config(target: &SshTarget) -> Result<client::Config, Error> {
    let ciphers = allowed(
        &[
            russh::cipher::AES_256_GCM,
            russh::cipher::AES_128_GCM,
            russh::cipher::CHACHA20_POLY1305,
            russh::cipher::AES_256_CTR,
            russh::cipher::AES_192_CTR,
            russh::cipher::AES_128_CTR,
        ],
        &target.ciphers,
    );
    // ext-info-c and kex-strict are protocol extensions, not algorithms.
    let kex: Vec<russh::kex::Name> = Preferred::DEFAULT
        .kex
        .iter()
        .copied()
        .filter(|k| {
            let name = k.as_ref();
            name.starts_with("ext-info-")
                || name.starts_with("kex-strict-")
                || target.kex_algorithms.is_empty()
                || target.kex_algorithms.iter().any(|c| c == name)
        })
        .collect();
    let macs = allowed(&Preferred::DEFAULT.mac, &target.macs);
    let (key, host_key_certificates) = host_key_preference(target);
    let none_of = |what: &str, list: &[String]| {
        Error::invalid_input(format!(
            "ssh_config for {}: none of {what} {} is supported here",
            target.alias,
            list.join(",")
        ))
    };
    if ciphers.is_empty() {
        return Err(none_of("Ciphers", &target.ciphers));
    }
    if !kex
        .iter()
        .any(|k| !k.as_ref().starts_with("ext-info-") && !k.as_ref().starts_with("kex-strict-"))
    {
        return Err(none_of("KexAlgorithms", &target.kex_algorithms));
    }
    if macs.is_empty() {
        return Err(none_of("MACs", &target.macs));
    }
    if key.is_empty() && host_key_certificates.is_empty() {
        return Err(none_of("HostKeyAlgorithms", &target.host_key_algorithms));
    }
    Ok(client::Config {
        preferred: Preferred {
            cipher: Cow::Owned(ciphers),
            kex: Cow::Owned(kex),
            mac: Cow::Owned(macs),
            key: Cow::Owned(key),
            host_key_certificates: Cow::Owned(host_key_certificates),
            ..Default::default()
        },
        // A large window keeps each channel streaming instead of waiting for
        // window adjustments (measured: 16 MiB helped).
        window_size: 4 << 20,
        maximum_packet_size: 65535,
        channel_buffer_size: 16,
        keepalive_interval: target.server_alive_interval,
        keepalive_max: target.server_alive_count_max,
        nodelay: true,
        ..Default::default()
    })
}

impl Session {
    /// Connects and authenticates once, within the connect timeout (which
    /// covers every hop of a ProxyJump chain).
    pub async fn connect(
        target: Arc<SshTarget>,
        stats: Arc<SessionStats>,
    ) -> Result<Session, Error> {
        let deadline = target.connect_timeout;
        match tokio::time::timeout(deadline, Session::connect_inner(target.clone(), stats)).await {
            Ok(result) => result,
            Err(_) => Err(Error::connection(format!(
                "connection to {} timed out after {} s (--connect-timeout)",
                target.display(),
                deadline.as_secs_f32()
            ))),
        }
    }

    /// The transport to `target` (TCP, a ProxyCommand's stdio, or a
    /// channel through the hop before it), the SSH handshake with its host
    /// key check, and authentication.
    fn connect_inner(
        target: Arc<SshTarget>,
        stats: Arc<SessionStats>,
    ) -> Pin<Box<dyn Future<Output = Result<Session, Error>> + Send>> {
        Box::pin(async move {
            let where_ = target.display();
            let config = Arc::new(client_config(&target)?);
            let mut carriers = Vec::new();
            let transport: Box<dyn Transport> = match &target.proxy {
                Proxy::Direct => Box::new(tcp_connect(&target).await?),
                Proxy::Command(command) => {
                    let (child, stream) = spawn_proxy_command(command, &where_)?;
                    carriers.push(Carrier::Command(child));
                    Box::new(stream)
                }
                Proxy::Jump(hop) => {
                    let hop_session =
                        Session::connect_inner(Arc::new((**hop).clone()), stats.clone()).await?;
                    let channel = hop_session
                        .handle
                        .channel_open_direct_tcpip(
                            target.host_name.clone(),
                            target.port.into(),
                            "127.0.0.1",
                            0,
                        )
                        .await
                        .map_err(|e| {
                            let kind = transport_kind(&e);
                            Error::new(
                                kind,
                                format!(
                                    "jump host {} cannot reach {}:{}: {e}",
                                    hop.display(),
                                    target.host_name,
                                    target.port
                                ),
                            )
                            .with_source(e)
                        })?;
                    carriers.push(Carrier::Hop(Box::new(hop_session)));
                    Box::new(channel.into_stream())
                }
            };
            stats.connections.fetch_add(1, Ordering::Relaxed);
            let refusal = Arc::new(Mutex::new(None));
            let seen = Arc::new(Mutex::new(None));
            let handler = ClientHandler {
                target: target.clone(),
                refusal: refusal.clone(),
                seen: seen.clone(),
            };
            let mut handle = match client::connect_stream(config, transport, handler).await {
                Ok(handle) => handle,
                Err(e) => {
                    let refused = refusal.lock().unwrap().take();
                    return Err(match refused {
                        Some(why) => Error::new(ErrorKind::HostKeyRejected, why),
                        None => Error::new(
                            transport_kind(&e),
                            format!("SSH handshake with {where_} failed: {e}"),
                        )
                        .with_source(e),
                    });
                }
            };
            authenticate(&mut handle, &target).await?;
            let host_key = seen.lock().unwrap().take().unwrap_or_default();
            Ok(Session {
                handle,
                target,
                stats,
                host_key,
                _carriers: carriers,
            })
        })
    }

    /// The fingerprint of the host key the server proved it holds.
    pub fn host_key_fingerprint(&self) -> &str {
        &self.host_key
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
        self.open_channel()
            .await?
            .exec(command)
            .await
            .map_err(OpenError::Failed)
    }

    /// Opens a session channel with nothing running on it yet: a round trip
    /// taken ahead of the command that will use it (no data flows on it,
    /// so an idle one holds up nothing else on the session).
    pub async fn open_channel(&self) -> Result<OpenChannel, OpenError> {
        let open = tokio::time::timeout(self.target.io_timeout, self.handle.channel_open_session());
        let channel = match open.await {
            Ok(Ok(channel)) => channel,
            Ok(Err(russh::Error::ChannelOpenFailure(_))) => {
                self.stats.channels_refused.fetch_add(1, Ordering::Relaxed);
                return Err(OpenError::Refused);
            }
            Ok(Err(e)) => {
                return Err(OpenError::Failed(Error::connection(format!(
                    "cannot open a channel to {}: {e}",
                    self.target.display()
                ))));
            }
            Err(_) => {
                return Err(OpenError::Failed(Error::connection(format!(
                    "{} did not answer a channel open within {} s",
                    self.target.display(),
                    self.target.io_timeout.as_secs()
                ))));
            }
        };
        self.stats.channels_opened.fetch_add(1, Ordering::Relaxed);
        Ok(OpenChannel {
            channel,
            idle: self.target.io_timeout,
            host: self.target.display(),
        })
    }

    /// Ends the session politely.
    pub async fn close(&self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

/// How a failure to reach the host is classified: EACCES is this
/// system's policy (a firewall rule, SELinux), which waiting does not
/// change; refused, unreachable, reset or timed out may pass.
fn connect_kind(e: &std::io::Error) -> ErrorKind {
    if e.raw_os_error() == Some(libc::EACCES) {
        ErrorKind::ConnectForbidden
    } else {
        ErrorKind::Connection
    }
}

/// The same for a transport failure that russh reports.
fn transport_kind(e: &russh::Error) -> ErrorKind {
    match e {
        russh::Error::IO(io) => connect_kind(io),
        _ => ErrorKind::Connection,
    }
}

/// TCP to the host, honouring `AddressFamily` and `BindAddress`: each
/// address of the host in turn, as OpenSSH tries them.
async fn tcp_connect(target: &SshTarget) -> Result<TcpStream, Error> {
    let where_ = target.display();
    let failed = |e: std::io::Error| {
        Error::new(connect_kind(&e), format!("cannot connect to {where_}: {e}")).with_source(e)
    };
    let family_ok = |a: &SocketAddr| match target.address_family {
        AddressFamily::Any => true,
        AddressFamily::Inet => a.is_ipv4(),
        AddressFamily::Inet6 => a.is_ipv6(),
    };
    let addresses: Vec<SocketAddr> =
        tokio::net::lookup_host((target.host_name.as_str(), target.port))
            .await
            .map_err(failed)?
            .filter(family_ok)
            .collect();
    let bind: Vec<IpAddr> = match &target.bind_address {
        None => Vec::new(),
        Some(name) => tokio::net::lookup_host((name.as_str(), 0))
            .await
            .map_err(|e| Error::invalid_input(format!("ssh_config BindAddress {name}: {e}")))?
            .map(|a| a.ip())
            .collect(),
    };
    let mut last = None;
    for address in &addresses {
        let socket = if address.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(failed)?;
        if target.bind_address.is_some() {
            let Some(ip) = bind.iter().find(|ip| ip.is_ipv4() == address.is_ipv4()) else {
                last = Some(std::io::Error::other(
                    "BindAddress has no address of this family",
                ));
                continue;
            };
            socket.bind(SocketAddr::new(*ip, 0)).map_err(failed)?;
        }
        match socket.connect(*address).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(failed(last.unwrap_or_else(|| {
        std::io::Error::other("no address of the family AddressFamily asks for")
    })))
}

/// Starts a ProxyCommand as OpenSSH does (`exec` through the shell), its
/// stdin and stdout the transport, its stderr ours.
fn spawn_proxy_command(
    command: &str,
    where_: &str,
) -> Result<(tokio::process::Child, impl Transport), Error> {
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("exec {command}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            let message = format!("cannot start ProxyCommand for {where_}: {e}");
            Error::new(connect_kind(&e), message).with_source(e)
        })?;
    let (Some(stdout), Some(stdin)) = (child.stdout.take(), child.stdin.take()) else {
        return Err(Error::connection(format!(
            "ProxyCommand for {where_} has no stdio"
        )));
    };
    Ok((child, tokio::io::join(stdout, stdin)))
}

/// The public key of an identity file: its `.pub`, else the private key
/// when it opens without a passphrase.
fn identity_public_key(path: &Path) -> Option<PublicKey> {
    let mut pub_path = path.as_os_str().to_owned();
    pub_path.push(".pub");
    if let Ok(text) = std::fs::read_to_string(&pub_path) {
        if let Ok(key) = PublicKey::from_openssh(text.trim()) {
            return Some(key);
        }
    }
    load_secret_key(path, None)
        .ok()
        .map(|k| k.public_key().clone())
}

/// The certificates to present: `CertificateFile`s, then
/// `IDENTITY-cert.pub` beside each identity, as OpenSSH loads them.
fn certificates(target: &SshTarget) -> Vec<(PathBuf, Certificate)> {
    let beside = target.identities.iter().map(|id| {
        let mut p = id.as_os_str().to_owned();
        p.push("-cert.pub");
        PathBuf::from(p)
    });
    target
        .certificates
        .iter()
        .cloned()
        .chain(beside)
        .filter_map(|path| {
            let text = std::fs::read_to_string(&path).ok()?;
            let cert = Certificate::from_openssh(text.trim()).ok()?;
            Some((path, cert))
        })
        .collect()
}

async fn connect_agent(agent: &Agent) -> Option<AgentClient<tokio::net::UnixStream>> {
    let socket = match agent {
        Agent::None => return None,
        Agent::FromEnv(var) => PathBuf::from(std::env::var_os(var)?),
        Agent::Socket(path) => path.clone(),
    };
    AgentClient::connect_uds(socket).await.ok()
}

/// Agent keys, then identity files, each with its certificates first, as
/// OpenSSH tries them; `IdentitiesOnly` keeps to the agent keys that are
/// identity files.
async fn authenticate(handle: &mut Handle<ClientHandler>, target: &SshTarget) -> Result<(), Error> {
    let user = target.user.clone();
    let rsa_hash = handle
        .best_supported_rsa_hash()
        .await
        .ok()
        .flatten()
        .flatten();
    let mut tried: Vec<String> = Vec::new();
    let certificates = certificates(target);
    let identity_keys: Vec<PublicKey> = target
        .identities
        .iter()
        .filter_map(|p| identity_public_key(p))
        .collect();

    if !target.identities_explicit {
        if let Some(mut agent) = connect_agent(&target.agent).await {
            if let Ok(identities) = agent.request_identities().await {
                let mut offered = false;
                for identity in identities {
                    let key = identity.public_key().into_owned();
                    if target.identities_only
                        && !identity_keys.iter().any(|k| k.key_data() == key.key_data())
                    {
                        continue;
                    }
                    offered = true;
                    for (_, cert) in certificates
                        .iter()
                        .filter(|(_, c)| c.public_key() == key.key_data())
                    {
                        let result = handle
                            .authenticate_certificate_with(
                                user.clone(),
                                cert.clone(),
                                rsa_hash,
                                &mut agent,
                            )
                            .await;
                        if matches!(result, Ok(r) if r.success()) {
                            return Ok(());
                        }
                    }
                    let result = handle
                        .authenticate_publickey_with(user.clone(), key, rsa_hash, &mut agent)
                        .await;
                    if matches!(result, Ok(r) if r.success()) {
                        return Ok(());
                    }
                }
                if offered {
                    tried.push("ssh-agent keys".to_string());
                }
            }
        }
    }

    // A transport error while offering a key: no other key would fare better.
    let refused = |e: russh::Error| {
        let message = format!("authentication to {} failed: {e}", target.display());
        Error::new(transport_kind(&e), message).with_source(e)
    };
    let mut problems = Vec::new();
    for path in &target.identities {
        if !path.exists() {
            if target.identities_explicit {
                problems.push(format!("{} does not exist", path.display()));
            }
            continue;
        }
        let key = match load_secret_key(path, None) {
            Ok(key) => Arc::new(key),
            Err(e) => {
                problems.push(format!("cannot use {}: {e}", path.display()));
                continue;
            }
        };
        if let Some(bits) = rsa_bits(key.public_key()).filter(|&b| b < target.required_rsa_size) {
            problems.push(format!(
                "{} is RSA of {bits} bits, below RequiredRSASize {}",
                path.display(),
                target.required_rsa_size
            ));
            continue;
        }
        for (cert_path, cert) in certificates
            .iter()
            .filter(|(_, c)| c.public_key() == key.public_key().key_data())
        {
            tried.push(cert_path.display().to_string());
            match handle
                .authenticate_openssh_cert(user.clone(), key.clone(), cert.clone())
                .await
            {
                Ok(result) if result.success() => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(refused(e)),
            }
        }
        tried.push(path.display().to_string());
        let key = PrivateKeyWithHashAlg::new(key, rsa_hash);
        match handle.authenticate_publickey(user.clone(), key).await {
            Ok(result) if result.success() => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(refused(e)),
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
    Err(Error::new(
        ErrorKind::AuthRefused,
        format!(
            "Permission denied (publickey) for {}: {tried}{problems}; add the public key to \
         ~{}/.ssh/authorized_keys on {} or choose a key with -i",
            target.display(),
            target.user,
            target.host_name
        ),
    ))
}

/// An open session channel on which no command runs yet.
pub struct OpenChannel {
    channel: russh::Channel<client::Msg>,
    idle: Duration,
    host: String,
}

impl OpenChannel {
    /// Starts `command`. Its output is not waited for here: the first
    /// bytes follow the request by a round trip and the command's start-up.
    pub async fn exec(self, command: &str) -> Result<ExecChannel, Error> {
        self.channel.exec(true, command).await.map_err(|e| {
            Error::connection(format!("cannot start a command on {}: {e}", self.host))
        })?;
        Ok(ExecChannel {
            channel: self.channel,
            exit: RemoteExit::default(),
            idle: self.idle,
            host: self.host,
        })
    }
}

/// How a remote command ended, as sshd reported it. What a status means
/// is the remote program's business: Barman's in [`crate::client`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteExit {
    /// `None` when the channel closed without an exit status.
    pub status: Option<u32>,
    pub signal: Option<String>,
    pub stderr: Vec<u8>,
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
    pub async fn next_stdout(&mut self) -> Result<Option<Bytes>, Error> {
        loop {
            let msg = match tokio::time::timeout(self.idle, self.channel.wait()).await {
                Ok(msg) => msg,
                Err(_) => {
                    return Err(Error::connection(format!(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_this_system_forbids_is_not_retried() {
        let forbidden = std::io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(connect_kind(&forbidden), ErrorKind::ConnectForbidden);
        let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(connect_kind(&refused), ErrorKind::Connection);
        let through_russh = russh::Error::IO(std::io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(transport_kind(&through_russh), ErrorKind::ConnectForbidden);
        assert_eq!(
            transport_kind(&russh::Error::Disconnect),
            ErrorKind::Connection
        );
        // Its words alone decide nothing.
        let said = std::io::Error::other("Permission denied");
        assert!(connect_kind(&said).is_retryable());
    }
}
