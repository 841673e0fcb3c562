//! ssh_config as OpenSSH reads it, because OpenSSH reads it: `ssh -G`.
//!
//! `ssh -G [-F FILE] [-l USER] [-p PORT] HOST` prints the fully resolved
//! configuration for HOST (user file then system file, or `-F` alone;
//! `Include`, `Host` and every `Match` criterion, first value wins, `%`
//! tokens in most paths, the defaults) without connecting. A second run with
//! `-F /dev/null` gives OpenSSH's defaults, so a directive we neither honour
//! nor know to be harmless is caught by its value differing from the default:
//! that is what [`refusal`] checks, and what keeps a newer OpenSSH's new
//! directives from being silently dropped.
//!
//! Without `ssh` installed there is nobody to read ssh_config the way OpenSSH
//! would: a call with a config file to read is refused, one without runs on
//! the defaults and the flags (see [`ssh_program`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::{Error, ErrorKind};

/// One `ssh -G` answer: every `key value` line, keys lowercased, in order
/// (keys such as `identityfile` repeat).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    entries: Vec<(String, String)>,
}

impl Resolved {
    pub fn parse(text: &str) -> Resolved {
        let entries = text
            .lines()
            .filter_map(|line| {
                let line = line.trim_end();
                let (key, value) = line.split_once(' ').unwrap_or((line, ""));
                (!key.is_empty()).then(|| (key.to_ascii_lowercase(), value.to_string()))
            })
            .collect();
        Resolved { entries }
    }

    pub fn first(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn grouped(&self) -> BTreeMap<&str, Vec<&str>> {
        let mut map: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (k, v) in &self.entries {
            map.entry(k.as_str()).or_default().push(v.as_str());
        }
        map
    }
}

/// What `ssh -G` is asked: the command line's part of the resolution.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub host: String,
    pub user: Option<String>,
    pub port: Option<u16>,
    /// `-F`: this file alone instead of the user's and the system's.
    pub config_file: Option<PathBuf>,
    /// `-o UserKnownHostsFile=...` (our `--known-hosts`).
    pub user_known_hosts: Option<PathBuf>,
}

/// Where a resolution came from, for the error line naming a directive:
/// the files `ssh -vvv -G` said it read and the `Host`/`Match` blocks it
/// said applied (file, line of the block's first line).
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub files: Vec<PathBuf>,
    pub blocks: Vec<(PathBuf, usize)>,
}

impl Applied {
    /// Reads OpenSSH's debug lines: `Reading configuration data FILE`,
    /// `FILE line N: Applying options for ...` (a `Host` block) and
    /// `FILE line N: matched '...'` followed by `match found` (a `Match`).
    pub fn parse(stderr: &str) -> Applied {
        let mut applied = Applied::default();
        let mut pending_match: Vec<(PathBuf, usize)> = Vec::new();
        let mut criteria = String::new();
        for line in stderr.lines() {
            let Some(rest) = line.split_once(": ").map(|(_, r)| r) else {
                continue;
            };
            if let Some(file) = rest.strip_prefix("Reading configuration data ") {
                applied.files.push(PathBuf::from(file.trim()));
            } else if rest.starts_with("match found") {
                if pending_match.is_empty() {
                    // `Match all` (and `canonical`/`final` alone) print no line:
                    // find the block by its criteria.
                    if let Some(block) = applied.find_match_line(&criteria) {
                        pending_match.push(block);
                    }
                }
                applied.blocks.append(&mut pending_match);
            } else if rest.starts_with("match not found") {
                pending_match.clear();
            } else if let Some(what) = rest.strip_prefix("checking match for '") {
                pending_match.clear();
                criteria = what
                    .split_once("' host ")
                    .map(|(c, _)| c)
                    .unwrap_or(what)
                    .to_string();
            } else if let Some((file, after)) = rest.split_once(" line ") {
                let Some((number, what)) = after.split_once(": ") else {
                    continue;
                };
                let Ok(number) = number.parse::<usize>() else {
                    continue;
                };
                if what.starts_with("Applying options for") {
                    applied.blocks.push((PathBuf::from(file), number));
                } else if what.starts_with("matched") {
                    pending_match.push((PathBuf::from(file), number));
                }
            }
        }
        applied.blocks.dedup();
        applied
    }

    /// The first `Match CRITERIA` line of the files read that is not yet
    /// known to have applied.
    fn find_match_line(&self, criteria: &str) -> Option<(PathBuf, usize)> {
        let wanted: Vec<String> = criteria
            .split_whitespace()
            .map(str::to_ascii_lowercase)
            .collect();
        for file in &self.files {
            let Ok(text) = std::fs::read_to_string(file) else {
                continue;
            };
            for (index, line) in text.lines().enumerate() {
                let mut words = line
                    .split(|c: char| c.is_whitespace() || c == '=')
                    .filter(|w| !w.is_empty());
                if !words
                    .next()
                    .is_some_and(|w| w.eq_ignore_ascii_case("match"))
                {
                    continue;
                }
                let found: Vec<String> = words.map(str::to_ascii_lowercase).collect();
                let block = (file.clone(), index + 1);
                if found == wanted && !self.blocks.contains(&block) {
                    return Some(block);
                }
            }
        }
        None
    }

    /// The first `file:line` where `directive` is set in a line that
    /// applied: outside any block, or inside an applied block. Best effort:
    /// an `Include` inside a block is read as if at top level.
    pub fn locate(&self, directive: &str) -> Option<(PathBuf, usize)> {
        for file in &self.files {
            let Ok(text) = std::fs::read_to_string(file) else {
                continue;
            };
            let mut in_block_applied = true;
            for (index, line) in text.lines().enumerate() {
                let number = index + 1;
                let Some(keyword) = config_keyword(line) else {
                    continue;
                };
                if keyword == "host" || keyword == "match" {
                    in_block_applied = self.blocks.iter().any(|(f, n)| f == file && *n == number);
                    continue;
                }
                if in_block_applied && keyword == directive {
                    return Some((file.clone(), number));
                }
            }
        }
        None
    }
}

/// The keyword of an ssh_config line (`Key value` or `Key=value`), lowercased.
fn config_keyword(line: &str) -> Option<String> {
    let line = line.trim_start();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let end = line
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(line.len());
    Some(line[..end].to_ascii_lowercase())
}

/// OpenSSH's `ssh`, found on PATH, then where distributions put it.
/// `BARMAN_WAL_RESTORE_SSH` names another (the tests use it to run without one).
pub fn ssh_program() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("BARMAN_WAL_RESTORE_SSH") {
        let path = PathBuf::from(path);
        return is_executable(&path).then_some(path);
    }
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("ssh")).collect())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(["/usr/bin/ssh", "/usr/local/bin/ssh", "/bin/ssh"].map(PathBuf::from))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Runs `command` to its end within `limit`: its output, or `None` when it
/// did not end in time. A `Match exec` in ssh_config may hang, and a
/// restore_command must not: past the limit the process group (ssh and
/// what it started) is killed.
fn output_within(
    command: &mut Command,
    limit: Duration,
) -> std::io::Result<Option<std::process::Output>> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let pid = child.id() as i32;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let (done, waited) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait());
    });
    let status = match waited.recv_timeout(limit) {
        Ok(status) => status?,
        Err(_) => {
            // SAFETY: kill(2) on the process group made for this child.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
            return Ok(None);
        }
    };
    Ok(Some(std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }))
}

/// What `ssh -G` is given at most: it reads files, and runs `Match exec`.
pub const SSH_G_LIMIT: Duration = Duration::from_secs(10);

/// Runs `ssh -vvv -G` for `query` (or with `-F /dev/null` for the
/// defaults): the resolution and where it came from.
pub fn ssh_g(program: &Path, query: &Query, defaults: bool) -> Result<(Resolved, Applied), Error> {
    let mut command = Command::new(program);
    command.arg("-G").arg("-vvv");
    if defaults {
        command.args(["-F", "/dev/null"]);
    } else if let Some(file) = &query.config_file {
        command.arg("-F").arg(file);
    }
    if let Some(user) = &query.user {
        command.arg("-l").arg(user);
    }
    if let Some(port) = query.port {
        command.arg("-p").arg(port.to_string());
    }
    if let Some(file) = &query.user_known_hosts {
        let mut option = std::ffi::OsString::from("UserKnownHostsFile=");
        option.push(file);
        command.arg("-o").arg(option);
    }
    // `--` keeps a host starting with '-' a host name, never an option.
    command.arg("--").arg(&query.host);
    command.stdin(Stdio::null());
    let output = output_within(&mut command, SSH_G_LIMIT)
        .map_err(|e| {
            let message = format!(
                "cannot run {} -G to read ssh_config: {e}",
                program.display()
            );
            Error::io(message, e)
        })?
        .ok_or_else(|| {
            Error::invalid_input(format!(
                "{} -G did not resolve ssh_config for {} within {} s (a Match exec that hangs?)",
                program.display(),
                query.host,
                SSH_G_LIMIT.as_secs()
            ))
        })?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        // OpenSSH's own complaint (a bad directive, a bad owner) is the useful part.
        let why = stderr
            .lines()
            .filter(|l| !l.starts_with("debug") && !l.starts_with("OpenSSH_"))
            .filter(|l| !l.starts_with("Pseudo-terminal"))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(Error::invalid_input(format!(
            "OpenSSH refuses the ssh_config for {}: {}",
            query.host,
            if why.is_empty() {
                "ssh -G failed".into()
            } else {
                why
            }
        )));
    }
    Ok((
        Resolved::parse(&String::from_utf8_lossy(&output.stdout)),
        Applied::parse(&stderr),
    ))
}

/// What we do with each directive `ssh -G` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    /// Read into the target and acted upon.
    Honoured,
    /// Changes nothing of where we connect, who we are or what we trust
    /// (forwarding, terminals, logging, other authentication methods that
    /// would only fail loudly), or was already applied by `ssh -G` itself
    /// (canonicalization).
    Harmless,
    /// Anything else: refused when it differs from OpenSSH's default.
    RefusedUnlessDefault,
}

/// Directives read into [`super::target::SshTarget`].
pub const HONOURED: &[&str] = &[
    "host",
    "hostname",
    "port",
    "user",
    "identityfile",
    "identitiesonly",
    "identityagent",
    "certificatefile",
    "userknownhostsfile",
    "globalknownhostsfile",
    "hostkeyalias",
    "stricthostkeychecking",
    "hashknownhosts",
    "connecttimeout",
    "serveraliveinterval",
    "serveralivecountmax",
    "addressfamily",
    "bindaddress",
    "hostkeyalgorithms",
    "ciphers",
    "kexalgorithms",
    "macs",
    "proxyjump",
    "proxycommand",
    // Set by RHEL's crypto-policies in the system file: honoured, not refused.
    "requiredrsasize",
    "casignaturealgorithms",
];

/// Directives that cannot move the connection, the identity or the trust.
pub const HARMLESS: &[&str] = &[
    "addkeystoagent",
    "batchmode",
    "canonicalizefallbacklocal",
    "canonicalizehostname",
    "canonicalizemaxdots",
    "canonicalizepermittedcnames",
    "canonicaldomains",
    "channeltimeout",
    "clearallforwardings",
    "compression",
    "connectionattempts",
    // A fresh connection, checked as strictly as any, replaces sharing one.
    "controlmaster",
    "controlpath",
    "controlpersist",
    "dynamicforward",
    "enableescapecommandline",
    "enablesshkeysign",
    "escapechar",
    "exitonforwardfailure",
    "fingerprinthash",
    "forkafterauthentication",
    "forwardagent",
    "forwardx11",
    "forwardx11timeout",
    "forwardx11trusted",
    "gatewayports",
    "gssapiauthentication",
    "gssapidelegatecredentials",
    "gssapikeyexchange",
    "gssapikexalgorithms",
    "gssapirenewalforcesrekey",
    "gssapitrustdns",
    "gssapiclientidentity",
    "gssapiserveridentity",
    "hostbasedacceptedalgorithms",
    "ipqos",
    "kbdinteractiveauthentication",
    "kbdinteractivedevices",
    "localcommand",
    "localforward",
    "loglevel",
    "logverbose",
    "numberofpasswordprompts",
    "obscurekeystroketiming",
    "passwordauthentication",
    "permitlocalcommand",
    "permitremoteopen",
    "preferredauthentications",
    "pubkeyacceptedalgorithms",
    "rekeylimit",
    "remoteforward",
    "requesttty",
    "sendenv",
    "sessiontype",
    "setenv",
    "stdinnull",
    "streamlocalbindmask",
    "streamlocalbindunlink",
    "syslogfacility",
    "tag",
    "tcpkeepalive",
    "tunnel",
    "tunneldevice",
    "updatehostkeys",
    "visualhostkey",
    "xauthlocation",
];

pub fn handling(key: &str) -> Handling {
    if HONOURED.contains(&key) {
        Handling::Honoured
    } else if HARMLESS.contains(&key) {
        Handling::Harmless
    } else {
        Handling::RefusedUnlessDefault
    }
}

/// The first directive that would change where we connect, who we are or
/// what we trust and that we do not implement, as one error line.
pub fn refusal(resolved: &Resolved, defaults: &Resolved, applied: &Applied) -> Option<Error> {
    let defaults = defaults.grouped();
    for (key, values) in resolved.grouped() {
        if handling(key) != Handling::RefusedUnlessDefault {
            continue;
        }
        if defaults.get(key) == Some(&values) {
            continue;
        }
        let location = match applied.locate(key) {
            Some((file, line)) => format!("{}:{line}", file.display()),
            None => "ssh_config (see `ssh -G`)".to_string(),
        };
        return Some(Error::new(
            ErrorKind::ConfigRefused,
            format!(
                "{location}: {} {} is not supported by barman-wal-restore (it would change where \
             we connect, who we are or what we trust); remove it for this host, nothing was run",
                directive_name(key),
                values.join(" ")
            ),
        ));
    }
    None
}

/// OpenSSH's spelling of the directives a refusal names most.
fn directive_name(key: &str) -> String {
    const NAMES: &[&str] = &[
        "CheckHostIP",
        "HostbasedAuthentication",
        "KnownHostsCommand",
        "NoHostAuthenticationForLocalhost",
        "PKCS11Provider",
        "ProxyUseFdpass",
        "PubkeyAuthentication",
        "RemoteCommand",
        "RevokedHostKeys",
        "SecurityKeyProvider",
        "VerifyHostKeyDNS",
        "BindInterface",
    ];
    NAMES
        .iter()
        .find(|n| n.eq_ignore_ascii_case(key))
        .map(|n| n.to_string())
        .unwrap_or_else(|| key.to_string())
}

/// The values OpenSSH substitutes for `%` tokens (ssh_config(5), TOKENS).
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    /// %d: the local user's home.
    pub home: String,
    /// %u: the local user name; %i: its uid.
    pub local_user: String,
    pub uid: u32,
    /// %l: this host's name; %L: up to the first dot.
    pub local_host: String,
    /// %h: the remote host name (after HostName).
    pub host: String,
    /// %n: the host as given on the command line.
    pub original_host: String,
    pub port: u16,
    /// %r: the remote user.
    pub remote_user: String,
    /// %k: HostKeyAlias, else the original host.
    pub host_key_alias: String,
}

impl Tokens {
    /// `%C`: OpenSSH 9.2's connection hash, SHA-1 of `%l%h%p%r` in hex.
    pub fn connection_hash(&self) -> String {
        use sha1::{Digest, Sha1};
        let digest = Sha1::digest(
            format!(
                "{}{}{}{}",
                self.local_host, self.host, self.port, self.remote_user
            )
            .as_bytes(),
        );
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Expands `%` tokens and a leading `~`, as OpenSSH does for
    /// IdentityFile and CertificateFile (which `ssh -G` prints unexpanded).
    /// An unknown token is an error, as it is to OpenSSH.
    pub fn expand_path(&self, raw: &str) -> Result<String, String> {
        let raw = match raw.strip_prefix("~/") {
            Some(rest) => format!("{}/{rest}", self.home),
            None if raw == "~" => self.home.clone(),
            None => raw.to_string(),
        };
        self.expand(&raw, "%CdhiLlnprku")
    }

    /// ProxyCommand and ProxyJump accept %%, %h, %n, %p and %r.
    pub fn expand_proxy(&self, raw: &str) -> Result<String, String> {
        self.expand(raw, "hnpr")
    }

    fn expand(&self, raw: &str, allowed: &str) -> Result<String, String> {
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            let Some(token) = chars.next() else {
                return Err(format!("'{raw}' ends with a lone %"));
            };
            if token != '%' && !allowed.contains(token) {
                return Err(format!("unknown token %{token} in '{raw}'"));
            }
            match token {
                '%' => out.push('%'),
                'C' => out.push_str(&self.connection_hash()),
                'd' => out.push_str(&self.home),
                'h' => out.push_str(&self.host),
                'i' => out.push_str(&self.uid.to_string()),
                'L' => out.push_str(self.local_host.split('.').next().unwrap_or("")),
                'l' => out.push_str(&self.local_host),
                'n' => out.push_str(&self.original_host),
                'p' => out.push_str(&self.port.to_string()),
                'r' => out.push_str(&self.remote_user),
                'u' => out.push_str(&self.local_user),
                'k' => out.push_str(&self.host_key_alias),
                _ => unreachable!("checked against the allowed tokens"),
            }
        }
        Ok(out)
    }
}

/// This machine's host name, as `%l` uses it.
pub fn local_host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The invoking user's name, uid and home from the password database, as
/// OpenSSH uses them (not `$HOME`, which PostgreSQL's environment may not set
/// usefully).
pub fn local_account() -> (String, u32, Option<PathBuf>) {
    // SAFETY: getpwuid_r writes into our buffers only.
    unsafe {
        let uid = libc::geteuid();
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16384];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
        if rc != 0 || result.is_null() {
            return (
                std::env::var("USER").unwrap_or_default(),
                uid,
                std::env::var_os("HOME").map(PathBuf::from),
            );
        }
        let text = |p: *const libc::c_char| {
            (!p.is_null()).then(|| {
                std::ffi::OsStr::from_encoded_bytes_unchecked(
                    std::ffi::CStr::from_ptr(p).to_bytes(),
                )
                .to_os_string()
            })
        };
        let name = text(pwd.pw_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        (name, uid, text(pwd.pw_dir).map(PathBuf::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applied_blocks_locate_the_directive() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c");
        std::fs::write(
            &file,
            "Host other\n  PKCS11Provider /a.so\nHost barman\n  Port 2\nMatch all\n  \
             PKCS11Provider /b.so\n",
        )
        .unwrap();
        let f = file.display();
        let stderr = format!(
            "debug1: Reading configuration data {f}\n\
             debug1: {f} line 3: Applying options for barman\n\
             debug2: checking match for 'all' host barman originally barman\n\
             debug3: {f} line 5: matched 'all'\n\
             debug2: match found\n"
        );
        let applied = Applied::parse(&stderr);
        assert_eq!(applied.blocks, [(file.clone(), 3), (file.clone(), 5)]);
        assert_eq!(applied.locate("pkcs11provider"), Some((file.clone(), 6)));
        assert_eq!(applied.locate("port"), Some((file, 4)));
    }

    #[test]
    fn a_match_that_did_not_apply_is_not_located() {
        let stderr = "debug1: Reading configuration data /x\n\
             debug2: checking match for 'host a' host b originally b\n\
             debug3: /x line 1: matched 'host \"a\"'\n\
             debug2: checking match for 'user c' host b originally b\n\
             debug2: match not found\n";
        assert!(Applied::parse(stderr).blocks.is_empty());
    }
}
