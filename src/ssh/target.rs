//! Where and how to connect: the command line over the invoking user's
//! ssh_config, resolved by OpenSSH itself (`ssh -G`, see [`super::config`])
//! and mapped here into what the session uses. What we do not implement is
//! refused before any connection.

use std::path::PathBuf;
use std::time::Duration;

use super::config::{self, Applied, Query, Resolved, Tokens};
use crate::error::Error;

/// What `StrictHostKeyChecking` asks for an unknown host. A changed key is
/// refused whatever it says (OpenSSH lets `no` through with a warning; a
/// restore_command has nobody to read it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Refuse unknown hosts (OpenSSH's `yes` and `ask`: a restore_command
    /// has nobody to answer a prompt).
    Strict,
    /// Record an unknown host's key in the first user known_hosts file and
    /// go on (`accept-new`).
    AcceptNew,
    /// Record an unknown host's key and go on, as `accept-new` (OpenSSH's
    /// `no` records it too).
    AcceptAny,
}

/// `AddressFamily`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressFamily {
    Any,
    Inet,
    Inet6,
}

/// `IdentityAgent`: which ssh-agent, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Agent {
    /// `SSH_AUTH_SOCK` (the default) or another environment variable.
    FromEnv(String),
    Socket(PathBuf),
    None,
}

/// How the SSH transport reaches the host.
#[derive(Debug, Clone)]
pub enum Proxy {
    Direct,
    /// `ProxyCommand`, tokens expanded: run by `/bin/sh -c`, its stdio is
    /// the transport.
    Command(String),
    /// `ProxyJump`: a direct-tcpip channel through this (authenticated,
    /// host-key-checked) hop, itself reached its own way.
    Jump(Box<SshTarget>),
}

/// The command-line side of the connection, all optional: what is absent
/// comes from ssh_config, then from defaults.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    pub host: String,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identities: Vec<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    /// An ssh_config file to read instead of `~/.ssh/config` and the
    /// system file.
    pub ssh_config: Option<PathBuf>,
    pub connect_timeout: Option<Duration>,
    pub io_timeout: Duration,
}

/// A fully resolved destination.
#[derive(Debug, Clone)]
pub struct SshTarget {
    /// The host as given (an ssh_config alias, or the host itself).
    pub alias: String,
    pub host_name: String,
    pub port: u16,
    pub user: String,
    /// Identity files to try, in order; `identities_explicit` says whether
    /// the user named them with `-i` (then a missing one is an error and
    /// the agent is not asked).
    pub identities: Vec<PathBuf>,
    pub identities_explicit: bool,
    /// `IdentitiesOnly`: agent keys only when they are one of `identities`.
    pub identities_only: bool,
    pub agent: Agent,
    /// `CertificateFile`s (`IDENTITY-cert.pub` beside each identity is
    /// tried too, as OpenSSH does).
    pub certificates: Vec<PathBuf>,
    /// `UserKnownHostsFile`s (accept-new records into the first), then
    /// `GlobalKnownHostsFile`s.
    pub user_known_hosts: Vec<PathBuf>,
    pub global_known_hosts: Vec<PathBuf>,
    pub host_key_alias: Option<String>,
    pub host_key_policy: HostKeyPolicy,
    /// `HashKnownHosts`: how accept-new records a host.
    pub hash_known_hosts: bool,
    /// `HostKeyAlgorithms`, in OpenSSH's order (ours puts those with a
    /// known key for this host first, as OpenSSH does).
    pub host_key_algorithms: Vec<String>,
    pub ciphers: Vec<String>,
    pub kex_algorithms: Vec<String>,
    pub macs: Vec<String>,
    /// `RequiredRSASize`: smaller RSA host keys are refused, smaller RSA
    /// identities not offered.
    pub required_rsa_size: u32,
    /// `CASignatureAlgorithms`: how a host certificate's CA may sign.
    pub ca_signature_algorithms: Vec<String>,
    pub address_family: AddressFamily,
    pub bind_address: Option<String>,
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
    pub server_alive_interval: Option<Duration>,
    pub server_alive_count_max: usize,
    pub proxy: Proxy,
}

pub const DEFAULT_USER: &str = "barman";
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Keepalives even when ssh_config asks for none: a black-holed connection
/// must end within a bounded time, never hang recovery.
const DEFAULT_ALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// A ProxyJump chain deeper than this is a loop in ssh_config.
const MAX_HOPS: usize = 8;

/// The invoking user's home from the password database, as OpenSSH uses it
/// (not `$HOME`, which PostgreSQL's environment may not set usefully).
pub fn passwd_home() -> Option<PathBuf> {
    config::local_account().2
}

/// One `ssh -G` resolution, with what is needed to map and to refuse.
#[derive(Debug, Clone)]
pub struct Resolution {
    pub resolved: Resolved,
    pub defaults: Resolved,
    pub applied: Applied,
}

/// Who runs us: the values of the local `%` tokens.
#[derive(Debug, Clone)]
pub struct Local {
    pub user: String,
    pub uid: u32,
    pub home: Option<PathBuf>,
    pub host: String,
}

impl Local {
    pub fn current() -> Local {
        let (user, uid, home) = config::local_account();
        Local {
            user,
            uid,
            home,
            host: config::local_host_name(),
        }
    }
}

impl SshTarget {
    /// Resolves the target: flags win over ssh_config (read by OpenSSH's
    /// `ssh -G`), which wins over the defaults (user `barman`, port 22,
    /// OpenSSH's identities and known_hosts files, strict host keys).
    pub fn resolve(opts: &ConnectOptions) -> Result<SshTarget, Error> {
        let local = Local::current();
        if let Some(file) = &opts.ssh_config {
            if !file.exists() {
                return Err(Error::invalid_input(format!(
                    "ssh config {} does not exist",
                    file.display()
                )));
            }
        }
        let Some(program) = config::ssh_program() else {
            return SshTarget::resolve_without_ssh(opts, &local);
        };
        let resolver = |query: &Query| -> Result<Resolution, Error> {
            // With -F /dev/null the resolution is the defaults: one run less.
            if query.config_file.as_deref() == Some(std::path::Path::new("/dev/null")) {
                let (resolved, applied) = config::ssh_g(&program, query, false)?;
                return Ok(Resolution {
                    defaults: resolved.clone(),
                    resolved,
                    applied,
                });
            }
            // The two runs side by side: a call waits for one process, not two.
            let (ours, defaults) = std::thread::scope(|scope| {
                let defaults = scope.spawn(|| config::ssh_g(&program, query, true));
                let ours = config::ssh_g(&program, query, false);
                (ours, defaults.join())
            });
            let (resolved, applied) = ours?;
            let defaults = defaults
                .map_err(|_| Error::local("ssh -G -F /dev/null panicked"))??
                .0;
            Ok(Resolution {
                resolved,
                defaults,
                applied,
            })
        };
        SshTarget::resolve_with(opts, &local, &resolver)
    }

    /// The resolution, given how to run `ssh -G` (the tests give a
    /// recorded or a real one).
    pub fn resolve_with(
        opts: &ConnectOptions,
        local: &Local,
        resolver: &dyn Fn(&Query) -> Result<Resolution, Error>,
    ) -> Result<SshTarget, Error> {
        let mut query = Query {
            host: opts.host.clone(),
            user: opts.user.clone(),
            port: opts.port,
            config_file: opts.ssh_config.clone(),
            user_known_hosts: opts.known_hosts.clone(),
        };
        let mut resolution = resolver(&query)?;
        // Our default user is `barman` (the original always runs
        // `ssh barman@HOST`), ssh_config's User winning over it. `ssh -G`
        // says the local user when ssh_config sets none: then resolve again
        // as `barman`, so `Match user` and %r see the user we will be.
        if opts.user.is_none() && !sets_user(&resolution, local) {
            query.user = Some(DEFAULT_USER.to_string());
            resolution = resolver(&query)?;
        }
        let mut target = map(&resolution, opts, local)?;
        target.proxy = resolve_proxy(&resolution, &target, opts, local, resolver, 0)?;
        Ok(target)
    }

    /// No `ssh` to read ssh_config with: the flags and the defaults are
    /// all there is, and that is only right when there is no config file.
    fn resolve_without_ssh(opts: &ConnectOptions, local: &Local) -> Result<SshTarget, Error> {
        let candidates: Vec<PathBuf> = match &opts.ssh_config {
            Some(file) => vec![file.clone()],
            None => local
                .home
                .iter()
                .map(|h| h.join(".ssh/config"))
                .chain([PathBuf::from("/etc/ssh/ssh_config")])
                .collect(),
        };
        if let Some(file) = candidates
            .iter()
            .find(|f| f.as_path() != std::path::Path::new("/dev/null") && f.exists())
        {
            return Err(Error::invalid_input(format!(
                "{} exists but OpenSSH's ssh is not installed to read it (barman-wal-restore \
                 resolves ssh_config with `ssh -G`): install the OpenSSH client, or pass \
                 -F /dev/null to use only the command line",
                file.display()
            )));
        }
        let home = local.home.as_ref().map(|h| h.display().to_string());
        let mut lines = vec![format!("hostname {}", opts.host)];
        lines.push(format!("port {}", opts.port.unwrap_or(22)));
        lines.push(format!(
            "user {}",
            opts.user.as_deref().unwrap_or(DEFAULT_USER)
        ));
        for id in [
            "id_rsa",
            "id_ecdsa",
            "id_ecdsa_sk",
            "id_ed25519",
            "id_ed25519_sk",
        ] {
            lines.push(format!("identityfile ~/.ssh/{id}"));
        }
        lines
            .push("globalknownhostsfile /etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2".into());
        match (&opts.known_hosts, &home) {
            (Some(file), _) => lines.push(format!("userknownhostsfile {}", file.display())),
            (None, Some(home)) => lines.push(format!(
                "userknownhostsfile {home}/.ssh/known_hosts {home}/.ssh/known_hosts2"
            )),
            (None, None) => {}
        }
        lines.push("stricthostkeychecking ask".into());
        let resolved = Resolved::parse(&lines.join("\n"));
        let resolution = Resolution {
            defaults: resolved.clone(),
            resolved,
            applied: Applied::default(),
        };
        map(&resolution, opts, local)
    }

    /// The block `--test` prints, field by field as `ssh -G` names them, so
    /// a DBA can hold it against `ssh -G HOST`.
    pub fn describe(&self, host_key: &str) -> String {
        let paths = |list: &[PathBuf]| {
            if list.is_empty() {
                "none".to_string()
            } else {
                list.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        };
        let agent = match (&self.agent, self.identities_explicit) {
            (_, true) | (Agent::None, _) => "none".to_string(),
            (Agent::FromEnv(var), _) => format!("${var}"),
            (Agent::Socket(path), _) => path.display().to_string(),
        };
        let policy = match self.host_key_policy {
            HostKeyPolicy::Strict => "yes",
            HostKeyPolicy::AcceptNew => "accept-new",
            HostKeyPolicy::AcceptAny => "no (records new keys; a changed key is refused)",
        };
        format!(
            "ssh target {} (compare with `ssh -G {}`):\n  hostname {}\n  port {}\n  user {}\n  \
             identityfile {}\n  certificatefile {}\n  identityagent {agent}\n  identitiesonly {}\n  \
             proxy {}\n  userknownhostsfile {}\n  globalknownhostsfile {}\n  hostkeyalias {}\n  \
             stricthostkeychecking {policy}\n  server host key {host_key}\n",
            self.alias,
            self.alias,
            self.host_name,
            self.port,
            self.user,
            paths(&self.identities),
            paths(&self.certificates),
            if self.identities_only { "yes" } else { "no" },
            self.proxy_chain(),
            paths(&self.user_known_hosts),
            paths(&self.global_known_hosts),
            self.host_key_alias.as_deref().unwrap_or("none"),
        )
    }

    /// `user@host:port` for messages.
    pub fn display(&self) -> String {
        format!("{}@{}:{}", self.user, self.host_name, self.port)
    }

    /// The name known_hosts is searched for: HostKeyAlias, else HostName.
    pub fn host_key_name(&self) -> &str {
        self.host_key_alias.as_deref().unwrap_or(&self.host_name)
    }

    pub fn known_hosts_files(&self) -> Vec<PathBuf> {
        self.user_known_hosts
            .iter()
            .chain(&self.global_known_hosts)
            .cloned()
            .collect()
    }

    /// The proxy chain, outermost hop first, as `user@host:port` names.
    pub fn proxy_chain(&self) -> String {
        match &self.proxy {
            Proxy::Direct => "direct".to_string(),
            Proxy::Command(command) => format!("ProxyCommand {command}"),
            Proxy::Jump(hop) => {
                let before = match &hop.proxy {
                    Proxy::Direct => String::new(),
                    _ => format!("{} -> ", hop.proxy_chain()),
                };
                format!("{before}ProxyJump {}", hop.display())
            }
        }
    }
}

/// Whether ssh_config set the user `ssh -G` reports: it reports the local
/// user when none is set, so that case is told by a `User` line in what
/// applied.
fn sets_user(resolution: &Resolution, local: &Local) -> bool {
    match resolution.resolved.first("user") {
        Some(user) if user != local.user => true,
        Some(_) => resolution.applied.locate("user").is_some(),
        None => false,
    }
}

fn words(value: Option<&str>) -> Vec<String> {
    value
        .map(|v| v.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

fn list(value: Option<&str>) -> Vec<String> {
    value
        .map(|v| {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn seconds(value: Option<&str>) -> Option<Duration> {
    value
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&s| s > 0)
        .map(Duration::from_secs)
}

fn bad(key: &str, value: &str) -> Error {
    Error::invalid_input(format!(
        "ssh_config: cannot read {key} '{value}' as resolved by ssh -G"
    ))
}

/// Maps one `ssh -G` resolution into a target (proxy left direct), after
/// refusing what we do not implement. Flags win over it.
pub fn map(
    resolution: &Resolution,
    opts: &ConnectOptions,
    local: &Local,
) -> Result<SshTarget, Error> {
    let r = &resolution.resolved;
    if let Some(refused) = config::refusal(r, &resolution.defaults, &resolution.applied) {
        return Err(refused);
    }
    let host_name = r.first("hostname").unwrap_or(&opts.host).to_string();
    let port = match opts.port {
        Some(port) => port,
        None => {
            let raw = r.first("port").unwrap_or("22");
            raw.parse().map_err(|_| bad("Port", raw))?
        }
    };
    let user = opts
        .user
        .clone()
        .or_else(|| r.first("user").map(str::to_string))
        .unwrap_or_else(|| DEFAULT_USER.to_string());
    let host_key_alias = r.first("hostkeyalias").map(str::to_string);
    let tokens = Tokens {
        home: local
            .home
            .as_ref()
            .map(|h| h.display().to_string())
            .unwrap_or_default(),
        local_user: local.user.clone(),
        uid: local.uid,
        local_host: local.host.clone(),
        host: host_name.clone(),
        original_host: opts.host.clone(),
        port,
        remote_user: user.clone(),
        host_key_alias: host_key_alias.clone().unwrap_or_else(|| opts.host.clone()),
    };
    let expand = |key: &str, raw: &str| -> Result<PathBuf, Error> {
        tokens
            .expand_path(raw)
            .map(PathBuf::from)
            .map_err(|why| Error::invalid_input(format!("ssh_config {key}: {why}")))
    };

    let (identities, identities_explicit) = if !opts.identities.is_empty() {
        (opts.identities.clone(), true)
    } else {
        let files = r
            .all("identityfile")
            .into_iter()
            .map(|raw| expand("IdentityFile", raw))
            .collect::<Result<Vec<_>, _>>()?;
        (files, false)
    };
    let certificates = r
        .all("certificatefile")
        .into_iter()
        .map(|raw| expand("CertificateFile", raw))
        .collect::<Result<Vec<_>, _>>()?;
    // `ssh -G` prints IdentityAgent and UserKnownHostsFile already expanded.
    let agent = match r.first("identityagent") {
        None => Agent::FromEnv("SSH_AUTH_SOCK".into()),
        Some(v) if v.eq_ignore_ascii_case("none") => Agent::None,
        Some("SSH_AUTH_SOCK") => Agent::FromEnv("SSH_AUTH_SOCK".into()),
        Some(v) if v.starts_with('$') => Agent::FromEnv(v[1..].to_string()),
        Some(v) => Agent::Socket(PathBuf::from(v)),
    };
    let user_known_hosts = words(r.first("userknownhostsfile"))
        .iter()
        .map(PathBuf::from)
        .collect();
    let global_known_hosts = words(r.first("globalknownhostsfile"))
        .iter()
        .map(PathBuf::from)
        .collect();

    let host_key_policy = match r.first("stricthostkeychecking").unwrap_or("ask") {
        "true" | "yes" | "ask" => HostKeyPolicy::Strict,
        "accept-new" => HostKeyPolicy::AcceptNew,
        "false" | "no" | "off" => HostKeyPolicy::AcceptAny,
        other => return Err(bad("StrictHostKeyChecking", other)),
    };
    let yes = |key: &str| matches!(r.first(key), Some("yes" | "true"));

    let address_family = match r.first("addressfamily").unwrap_or("any") {
        "any" => AddressFamily::Any,
        "inet" => AddressFamily::Inet,
        "inet6" => AddressFamily::Inet6,
        other => return Err(bad("AddressFamily", other)),
    };

    let connect_timeout = opts
        .connect_timeout
        .or(seconds(r.first("connecttimeout")))
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let server_alive_interval = seconds(r.first("serveraliveinterval")).or(Some(
        DEFAULT_ALIVE_INTERVAL.min(opts.io_timeout.max(Duration::from_secs(1))),
    ));
    let server_alive_count_max = match r.first("serveralivecountmax") {
        None => 3,
        Some(raw) => raw.parse().map_err(|_| bad("ServerAliveCountMax", raw))?,
    };

    Ok(SshTarget {
        alias: opts.host.clone(),
        host_name,
        port,
        user,
        identities,
        identities_explicit,
        identities_only: yes("identitiesonly"),
        agent,
        certificates,
        user_known_hosts,
        global_known_hosts,
        host_key_alias,
        host_key_policy,
        hash_known_hosts: yes("hashknownhosts"),
        host_key_algorithms: list(r.first("hostkeyalgorithms")),
        ciphers: list(r.first("ciphers")),
        kex_algorithms: list(r.first("kexalgorithms")),
        macs: list(r.first("macs")),
        required_rsa_size: match r.first("requiredrsasize") {
            None => 1024,
            Some(raw) => raw.parse().map_err(|_| bad("RequiredRSASize", raw))?,
        },
        ca_signature_algorithms: list(r.first("casignaturealgorithms")),
        address_family,
        bind_address: r.first("bindaddress").map(str::to_string),
        connect_timeout,
        io_timeout: opts.io_timeout,
        server_alive_interval,
        server_alive_count_max,
        proxy: Proxy::Direct,
    })
}

/// `[user@]host[:port]`, `ssh://[user@]host[:port]`, or `[v6]:port`.
pub fn parse_jump(spec: &str) -> Result<(Option<String>, String, Option<u16>), Error> {
    let bad = || Error::invalid_input(format!("ssh_config: cannot read ProxyJump host '{spec}'"));
    let rest = spec.strip_prefix("ssh://").unwrap_or(spec);
    let (user, rest) = match rest.rsplit_once('@') {
        Some((user, rest)) => (Some(user.to_string()), rest),
        None => (None, rest),
    };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().map_err(|_| bad())?),
            None if after.is_empty() => None,
            None => return Err(bad()),
        };
        (host.to_string(), port)
    } else {
        match rest.split_once(':') {
            Some((host, p)) => (host.to_string(), Some(p.parse().map_err(|_| bad())?)),
            None => (rest.to_string(), None),
        }
    };
    if host.is_empty() || host.starts_with('-') {
        return Err(bad());
    }
    Ok((user, host, port))
}

/// The target's proxy: ProxyCommand with its tokens expanded, or the
/// ProxyJump chain, each hop resolved from ssh_config as OpenSSH resolves
/// it (`ssh -J h1,h2 T` runs `ssh -J h1 -W T h2`: the later hops' own
/// proxy settings yield to the chain, the first hop's apply).
fn resolve_proxy(
    resolution: &Resolution,
    target: &SshTarget,
    opts: &ConnectOptions,
    local: &Local,
    resolver: &dyn Fn(&Query) -> Result<Resolution, Error>,
    depth: usize,
) -> Result<Proxy, Error> {
    let r = &resolution.resolved;
    let tokens = Tokens {
        host: target.host_name.clone(),
        original_host: opts.host.clone(),
        port: target.port,
        remote_user: target.user.clone(),
        ..Tokens::default()
    };
    let proxy_failure = |why: String| Error::invalid_input(format!("ssh_config: {why}"));
    if let Some(command) = r
        .first("proxycommand")
        .filter(|c| !c.eq_ignore_ascii_case("none"))
    {
        let command = tokens.expand_proxy(command).map_err(proxy_failure)?;
        return Ok(Proxy::Command(command));
    }
    let Some(jump) = r
        .first("proxyjump")
        .filter(|c| !c.eq_ignore_ascii_case("none"))
    else {
        return Ok(Proxy::Direct);
    };
    let jump = tokens.expand_proxy(jump).map_err(proxy_failure)?;
    let mut via = Proxy::Direct;
    let hops: Vec<&str> = jump.split(',').collect();
    if depth + hops.len() > MAX_HOPS {
        return Err(Error::invalid_input(format!(
            "ssh_config: ProxyJump chain for {} is deeper than {MAX_HOPS} hops (a loop?)",
            opts.host
        )));
    }
    for (index, spec) in hops.iter().enumerate() {
        let (user, host, port) = parse_jump(spec.trim())?;
        // A hop is resolved as OpenSSH's own `ssh -W` would be: with -F,
        // its own user and port, none of our other flags.
        let hop_opts = ConnectOptions {
            host,
            user,
            port,
            ssh_config: opts.ssh_config.clone(),
            io_timeout: opts.io_timeout,
            ..ConnectOptions::default()
        };
        let query = Query {
            host: hop_opts.host.clone(),
            user: hop_opts.user.clone(),
            port: hop_opts.port,
            config_file: hop_opts.ssh_config.clone(),
            user_known_hosts: None,
        };
        let hop_resolution = resolver(&query)?;
        let mut hop = map(&hop_resolution, &hop_opts, local)?;
        // Unlike the target, a hop's default user is the local one, as
        // OpenSSH's: `ssh -G` already says so.
        hop.proxy = if index == 0 {
            resolve_proxy(
                &hop_resolution,
                &hop,
                &hop_opts,
                local,
                resolver,
                depth + hops.len(),
            )?
        } else {
            via
        };
        via = Proxy::Jump(Box::new(hop));
    }
    Ok(via)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn local() -> Local {
        Local {
            user: "postgres".into(),
            uid: 101,
            home: Some("/var/lib/postgresql".into()),
            host: "standby.example".into(),
        }
    }

    fn opts(host: &str) -> ConnectOptions {
        ConnectOptions {
            host: host.into(),
            io_timeout: Duration::from_secs(60),
            ..Default::default()
        }
    }

    /// What `ssh -G` says with no config for `query`, plus `lines`.
    fn resolution(query: &Query, lines: &str) -> Resolution {
        let base = format!(
            "host {h}\nhostname {h}\nport {}\nuser {}\nstricthostkeychecking ask\n\
             pkcs11provider none\n\
             userknownhostsfile /var/lib/postgresql/.ssh/known_hosts\n\
             globalknownhostsfile /etc/ssh/ssh_known_hosts\n",
            query.port.unwrap_or(22),
            query.user.as_deref().unwrap_or("postgres"),
            h = query.host,
        );
        let defaults = Resolved::parse(&format!("{base}identityfile ~/.ssh/id_ed25519\n"));
        // OpenSSH lists its default identities only when none is configured.
        let base = if lines.contains("identityfile") {
            base
        } else {
            format!("{base}identityfile ~/.ssh/id_ed25519\n")
        };
        // ssh -G prints each directive once: the case's lines replace the defaults'.
        let keys: Vec<&str> = lines.lines().filter_map(|l| l.split(' ').next()).collect();
        let base: String = base
            .lines()
            .filter(|l| !keys.contains(&l.split(' ').next().unwrap_or("")))
            .map(|l| format!("{l}\n"))
            .collect();
        let resolved = Resolved::parse(&format!("{lines}\n{base}"));
        Resolution {
            resolved,
            defaults,
            applied: Applied::default(),
        }
    }

    #[test]
    fn default_user_is_barman_and_match_user_sees_it() {
        let queries = RefCell::new(Vec::new());
        let resolver = |q: &Query| {
            queries.borrow_mut().push(q.user.clone());
            // `Match user barman` → port 2201, only when asked as barman.
            let extra = if q.user.as_deref() == Some("barman") {
                "port 2201"
            } else {
                ""
            };
            Ok(resolution(q, extra))
        };
        let t = SshTarget::resolve_with(&opts("b"), &local(), &resolver).unwrap();
        assert_eq!((t.user.as_str(), t.port), ("barman", 2201));
        assert_eq!(*queries.borrow(), [None, Some("barman".to_string())]);
    }

    #[test]
    fn ssh_config_user_wins_over_barman_and_flags_over_it() {
        let resolver = |q: &Query| {
            Ok(resolution(
                q,
                if q.user.is_none() { "user dba" } else { "" },
            ))
        };
        let t = SshTarget::resolve_with(&opts("b"), &local(), &resolver).unwrap();
        assert_eq!(t.user, "dba");
        let mut o = opts("b");
        o.user = Some("flag".into());
        o.port = Some(2300);
        let t = SshTarget::resolve_with(&o, &local(), &resolver).unwrap();
        assert_eq!((t.user.as_str(), t.port), ("flag", 2300));
    }

    #[test]
    fn every_stricthostkeychecking_value() {
        for (value, policy) in [
            ("true", HostKeyPolicy::Strict),
            ("ask", HostKeyPolicy::Strict),
            ("accept-new", HostKeyPolicy::AcceptNew),
            ("false", HostKeyPolicy::AcceptAny),
        ] {
            let resolver = |q: &Query| Ok(resolution(q, &format!("stricthostkeychecking {value}")));
            let t = SshTarget::resolve_with(&opts("b"), &local(), &resolver).unwrap();
            assert_eq!(t.host_key_policy, policy, "{value}");
        }
    }

    #[test]
    fn a_directive_we_do_not_implement_is_refused_unless_default() {
        let refused = |lines: &str| {
            let resolver = |q: &Query| Ok(resolution(q, lines));
            SshTarget::resolve_with(&opts("b"), &local(), &resolver).err()
        };
        let e = refused("pkcs11provider /usr/lib/p11.so").expect("refused");
        assert!(
            e.message().contains("PKCS11Provider /usr/lib/p11.so"),
            "{e}"
        );
        assert_eq!(e.kind(), crate::error::ErrorKind::ConfigRefused);
        assert_eq!(e.exit_code(), crate::exit::CONNECTION);
        // A directive a newer OpenSSH may print, unknown to us: refused too.
        assert!(refused("someday-trustsomething yes").is_some());
        // Harmless or honoured ones pass.
        let harmless = refused("controlmaster auto\nforwardagent yes\nsendenv LANG");
        assert!(harmless.is_none(), "{harmless:?}");
        assert!(refused("pkcs11provider none").is_none());
    }

    #[test]
    fn tokens_and_tilde_in_identity_files() {
        let resolver = |q: &Query| {
            Ok(resolution(
                q,
                "hostname real.example\nidentityfile ~/.ssh/k_%h_%r_%p_%u_%n_%L_%%\n\
                 certificatefile %d/c-%i",
            ))
        };
        let mut o = opts("alias");
        o.user = Some("dba".into());
        let t = SshTarget::resolve_with(&o, &local(), &resolver).unwrap();
        assert_eq!(
            t.identities,
            [PathBuf::from(
                "/var/lib/postgresql/.ssh/k_real.example_dba_22_postgres_alias_standby_%"
            )]
        );
        assert_eq!(t.certificates, [PathBuf::from("/var/lib/postgresql/c-101")]);
        let bad = |q: &Query| Ok(resolution(q, "identityfile ~/k%z"));
        assert!(SshTarget::resolve_with(&o, &local(), &bad).is_err());
    }

    #[test]
    fn proxy_jump_chain_in_openssh_order() {
        // barman -> ProxyJump j1,j2; j1's own ProxyJump j0 applies (it is reached first),
        // j2's own ProxyJump is overridden by the chain, as `ssh -J j1 -W barman j2` does.
        let resolver = |q: &Query| {
            Ok(resolution(
                q,
                match q.host.as_str() {
                    "barman" => "proxyjump j1,ops@j2:2022",
                    "j1" => "proxyjump j0",
                    "j2" => "proxyjump ignored",
                    _ => "",
                },
            ))
        };
        let mut o = opts("barman");
        o.user = Some("barman".into());
        o.identities = vec!["/flag/key".into()];
        let t = SshTarget::resolve_with(&o, &local(), &resolver).unwrap();
        assert_eq!(
            t.proxy_chain(),
            "ProxyJump postgres@j0:22 -> ProxyJump postgres@j1:22 -> ProxyJump ops@j2:2022"
        );
        // Our -i does not follow to the hops (OpenSSH's -W does not pass it either).
        let Proxy::Jump(hop) = &t.proxy else { panic!() };
        assert!(!hop.identities_explicit);
    }

    #[test]
    fn proxy_command_tokens_are_expanded() {
        let resolver = |q: &Query| {
            Ok(resolution(
                q,
                "hostname 10.0.0.9\nport 2222\nproxycommand nc -x %% %h %p %r %n",
            ))
        };
        let mut o = opts("barman");
        o.user = Some("u".into());
        let t = SshTarget::resolve_with(&o, &local(), &resolver).unwrap();
        assert!(
            matches!(&t.proxy, Proxy::Command(c) if c == "nc -x % 10.0.0.9 2222 u barman"),
            "{:?}",
            t.proxy
        );
    }

    #[test]
    fn without_ssh_a_config_file_is_refused_and_none_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        std::fs::write(&cfg, "Host x\n  Port 1\n").unwrap();
        let mut o = opts("barman");
        o.ssh_config = Some(cfg);
        let e = SshTarget::resolve_without_ssh(&o, &local()).unwrap_err();
        assert!(e.message().contains("not installed"), "{e}");
        o.ssh_config = Some("/dev/null".into());
        o.port = Some(2222);
        let t = SshTarget::resolve_without_ssh(&o, &local()).unwrap();
        assert_eq!((t.user.as_str(), t.port), ("barman", 2222));
        assert_eq!(t.host_key_policy, HostKeyPolicy::Strict);
    }
}
