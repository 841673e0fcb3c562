//! The ssh_config corpus (fixtures/ssh-config/README.md): for each case, the
//! fields we use, as written by hand, as OpenSSH's `ssh -G` resolves them,
//! and as barman-wal-restore resolved them into its target, are equal; and
//! every refusal stops the resolution with one line naming the directive.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use barman_wal_restore::ssh::config::{local_account, local_host_name, Resolved};
use barman_wal_restore::ssh::target::{ConnectOptions, HostKeyPolicy, Proxy, SshTarget};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/ssh-config");

fn have_ssh() -> bool {
    Command::new("ssh")
        .arg("-V")
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The cases copied to a temporary directory, `@DIR@` replaced.
fn corpus() -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    copy_tree(Path::new(CORPUS), dir.path(), dir.path(), &mut cases);
    cases.sort();
    (dir, cases)
}

fn copy_tree(from: &Path, to: &Path, root: &Path, cases: &mut Vec<PathBuf>) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest, root, cases);
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let (user, _, _) = local_account();
        let text = text
            .replace("@DIR@", &root.display().to_string())
            .replace("@LOCALUSER@", &user)
            .replace("@LOCALHOST@", &local_host_name());
        std::fs::write(&dest, text).unwrap();
        // OpenSSH refuses a user config others may write.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600)).unwrap();
        if from == Path::new(CORPUS) && dest.extension().is_some_and(|e| e == "conf") {
            cases.push(dest);
        }
    }
}

struct Case {
    file: PathBuf,
    host: String,
    user: Option<String>,
    port: Option<u16>,
    expect: Vec<(String, String)>,
    ours: Vec<(String, String)>,
    refuse: Option<(String, Option<String>)>,
}

fn substitute(value: &str, dir: &Path) -> String {
    let (user, _, home) = local_account();
    let home = home.unwrap().display().to_string();
    let mut out = value
        .replace("@DIR@", &dir.display().to_string())
        .replace("@LOCALUSER@", &user)
        .replace("@LOCALHOST@", &local_host_name());
    // `~` at the start of each space-separated path.
    out = out
        .split(' ')
        .map(|w| match w.strip_prefix('~') {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("{home}{rest}"),
            _ => w.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ");
    out
}

fn read_case(file: &Path, dir: &Path) -> Case {
    let text = std::fs::read_to_string(file).unwrap();
    let mut case = Case {
        file: file.to_path_buf(),
        host: String::new(),
        user: None,
        port: None,
        expect: Vec::new(),
        ours: Vec::new(),
        refuse: None,
    };
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("#> ") else {
            continue;
        };
        let (what, value) = rest.split_once(' ').unwrap_or((rest, ""));
        match what {
            "host" => case.host = value.to_string(),
            "user" => case.user = Some(value.to_string()),
            "port" => case.port = Some(value.parse().unwrap()),
            "expect" | "ours" => {
                let (field, v) = value.split_once(' ').unwrap_or((value, ""));
                let pair = (field.to_string(), substitute(v, dir));
                if what == "expect" {
                    case.expect.push(pair)
                } else {
                    case.ours.push(pair)
                }
            }
            "refuse" => {
                let (directive, at) = match value.split_once(' ') {
                    Some((d, at)) => (d.to_string(), Some(substitute(at, dir))),
                    None => (value.to_string(), None),
                };
                case.refuse = Some((directive, at));
            }
            other => panic!("{}: unknown #> {other}", file.display()),
        }
    }
    assert!(!case.host.is_empty(), "{}: no #> host", file.display());
    case
}

fn ssh_g(case: &Case, user: &str) -> Resolved {
    let mut c = Command::new("ssh");
    c.arg("-G").arg("-F").arg(&case.file).args(["-l", user]);
    if let Some(port) = case.port {
        c.args(["-p", &port.to_string()]);
    }
    let out = c
        .arg("--")
        .arg(&case.host)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: ssh -G failed: {}",
        case.file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Resolved::parse(&String::from_utf8_lossy(&out.stdout))
}

/// The identity and certificate files OpenSSH would load, `%` tokens and
/// `~` expanded: `ssh -vvv` prints them once "connected" to `true`.
fn ssh_loaded_files(case: &Case, user: &str) -> (Vec<String>, Vec<String>) {
    let mut c = Command::new("ssh");
    c.args(["-vvv", "-F"]).arg(&case.file).args([
        "-l",
        user,
        "-o",
        "ProxyCommand=true",
        "-o",
        "ProxyJump=none",
        "-o",
        "BatchMode=yes",
    ]);
    if let Some(port) = case.port {
        c.args(["-p", &port.to_string()]);
    }
    let out = c
        .arg("--")
        .arg(&case.host)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Each identity is followed by the `-cert` OpenSSH looks for beside it.
    let pick = |prefix: &str| {
        let mut files: Vec<String> = Vec::new();
        for path in stderr
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .filter_map(|l| l.rsplit_once(" type ").map(|(path, _)| path.to_string()))
        {
            if files
                .last()
                .is_some_and(|last| path == format!("{last}-cert"))
            {
                continue;
            }
            files.push(path);
        }
        files
    };
    (
        pick("debug1: identity file "),
        pick("debug1: certificate file "),
    )
}

fn paths(list: &[PathBuf]) -> String {
    list.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn hops(proxy: &Proxy) -> Vec<String> {
    match proxy {
        Proxy::Jump(hop) => {
            let mut before = hops(&hop.proxy);
            before.push(hop.display());
            before
        }
        _ => Vec::new(),
    }
}

fn ours(target: &SshTarget, field: &str) -> String {
    match field {
        "hostname" => target.host_name.clone(),
        "port" => target.port.to_string(),
        "user" => target.user.clone(),
        "stricthostkeychecking" => match target.host_key_policy {
            HostKeyPolicy::Strict => "strict",
            HostKeyPolicy::AcceptNew => "accept-new",
            HostKeyPolicy::AcceptAny => "no",
        }
        .to_string(),
        "identityfile" => paths(&target.identities),
        "certificatefile" => paths(&target.certificates),
        "userknownhostsfile" => paths(&target.user_known_hosts),
        "globalknownhostsfile" => paths(&target.global_known_hosts),
        "hostkeyalias" => target.host_key_alias.clone().unwrap_or_default(),
        "connecttimeout" => target.connect_timeout.as_secs().to_string(),
        "serveraliveinterval" => target
            .server_alive_interval
            .map(|d| d.as_secs().to_string())
            .unwrap_or_default(),
        "serveralivecountmax" => target.server_alive_count_max.to_string(),
        "identitiesonly" => if target.identities_only { "yes" } else { "no" }.to_string(),
        "proxycommand" => match &target.proxy {
            Proxy::Command(c) => c.clone(),
            _ => String::new(),
        },
        "jumps" => hops(&target.proxy).join(","),
        "addressfamily" => format!("{:?}", target.address_family).to_ascii_lowercase(),
        "bindaddress" => target.bind_address.clone().unwrap_or_default(),
        "hashknownhosts" => if target.hash_known_hosts { "yes" } else { "no" }.to_string(),
        "requiredrsasize" => target.required_rsa_size.to_string(),
        "casignaturealgorithms" => target.ca_signature_algorithms.join(","),
        other => panic!("unknown field {other}"),
    }
}

/// OpenSSH's value of a field, in the form the expectation is written.
fn theirs(resolved: &Resolved, loaded: &(Vec<String>, Vec<String>), field: &str) -> Option<String> {
    Some(match field {
        "stricthostkeychecking" => match resolved.first(field)? {
            "true" | "ask" => "strict",
            "accept-new" => "accept-new",
            _ => "no",
        }
        .to_string(),
        "identityfile" => loaded.0.join(" "),
        "certificatefile" => loaded.1.join(" "),
        "connecttimeout" => resolved
            .first(field)
            .map(|v| if v == "none" { "10" } else { v })?
            .to_string(),
        "identitiesonly" | "hashknownhosts" => {
            if resolved.first(field)? == "yes" {
                "yes".into()
            } else {
                "no".into()
            }
        }
        "proxycommand" | "hostkeyalias" | "bindaddress" => {
            resolved.first(field).unwrap_or("").to_string()
        }
        _ => resolved.first(field)?.to_string(),
    })
}

#[test]
fn corpus_matches_openssh() {
    if !have_ssh() {
        assert!(
            std::env::var("CI").is_err(),
            "OpenSSH's ssh is needed for the corpus"
        );
        eprintln!("SKIPPED: no OpenSSH `ssh` to compare with");
        return;
    }
    let (dir, files) = corpus();
    assert!(files.len() >= 40, "only {} cases", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let case = read_case(file, dir.path());
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let opts = ConnectOptions {
            host: case.host.clone(),
            user: case.user.clone(),
            port: case.port,
            ssh_config: Some(case.file.clone()),
            io_timeout: Duration::from_secs(60),
            ..Default::default()
        };
        let resolved = SshTarget::resolve(&opts);
        if let Some((directive, at)) = &case.refuse {
            match resolved {
                Ok(_) => failures.push(format!(
                    "{name}: resolved, expected a refusal of {directive}"
                )),
                Err(e) => {
                    let message = e.message();
                    let named = message.contains(directive.as_str())
                        && at.as_ref().is_none_or(|at| message.contains(at.as_str()));
                    if !named || message.contains('\n') || e.exit_code() == 0 {
                        failures.push(format!(
                            "{name}: refusal should name {directive} {at:?} on one line: {message}"
                        ));
                    }
                }
            }
            continue;
        }
        let target = match resolved {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{name}: refused: {e}"));
                continue;
            }
        };
        let oracle = ssh_g(&case, &target.user);
        let loaded = ssh_loaded_files(&case, &target.user);
        for (field, want) in &case.expect {
            // OpenSSH prints these unexpanded: ours are checked by `#> ours`.
            let raw_only = field == "proxyjump" || field == "proxycommand";
            let got = if raw_only {
                want.clone()
            } else {
                ours(&target, field)
            };
            if &got != want {
                failures.push(format!("{name}: ours {field} = '{got}', expected '{want}'"));
            }
            match theirs(&oracle, &loaded, field) {
                Some(t) if &t == want => {}
                other => failures.push(format!(
                    "{name}: ssh -G {field} = {other:?}, expected '{want}'"
                )),
            }
        }
        for (field, want) in &case.ours {
            let got = ours(&target, field);
            if &got != want {
                failures.push(format!("{name}: ours {field} = '{got}', expected '{want}'"));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Without -F, OpenSSH reads the user's file and the system's: whatever
/// this machine has, our resolution is OpenSSH's.
#[test]
fn without_f_the_user_and_system_files_are_openssh_s() {
    if !have_ssh() {
        eprintln!("SKIPPED: no OpenSSH `ssh` to compare with");
        return;
    }
    let host = "corpus-no-such-host.invalid";
    let target = match SshTarget::resolve(&ConnectOptions {
        host: host.into(),
        user: Some("barman".into()),
        io_timeout: Duration::from_secs(60),
        ..Default::default()
    }) {
        Ok(t) => t,
        // This machine's own config may hold what we refuse: then the
        // refusal names it, which is right too.
        Err(e) => {
            assert!(e.message().contains("not supported"), "{e}");
            return;
        }
    };
    let out = Command::new("ssh")
        .args(["-G", "-l", "barman", host])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let r = Resolved::parse(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(target.host_name, r.first("hostname").unwrap());
    assert_eq!(target.port.to_string(), r.first("port").unwrap());
    assert_eq!(
        paths(&target.user_known_hosts),
        r.first("userknownhostsfile").unwrap()
    );
    assert_eq!(
        paths(&target.global_known_hosts),
        r.first("globalknownhostsfile").unwrap()
    );
}
