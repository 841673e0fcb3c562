//! Real-stack trials: ssh_config and host keys as OpenSSH reads them, against real
//! sshds started for each trial (`stack.sh sshd-start`): ProxyJump (one hop, a chain of two, a
//! target only the jump host may reach), ProxyCommand `ssh -W`, hosts known only by their ECDSA
//! or RSA key, host certificates (trusted, expired), a user certificate, a Match block that must
//! not weaken host key checking, and a directive we refuse. Every fetch is compared byte for byte
//! with what PostgreSQL archived; every refusal runs no remote command (a `log-all` account logs
//! each one).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use libtest_mimic::Failed;

use crate::checks::compare_file;
use crate::common::{Outcome, BIN};
use crate::run::{fail, run, ExpectCode, TestResult};
use crate::sshd::Sshd;
use crate::stack::{Stack, CALL_TIMEOUT, DEST, SERVER};
use crate::Named;

/// Our binary with `-F CONFIG` and nothing else of the SSH side: ssh_config says it all.
fn ours_f(st: &Stack, config: &Path, host: &str, wal: &str, cwd: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(cwd)
        .env("HOME", &st.home)
        .env_remove("SSH_AUTH_SOCK");
    c.arg("-F")
        .arg(config)
        .args(["-c", &st.config("zstd"), host, SERVER, wal, DEST]);
    c
}

fn write(path: &Path, text: &str) -> TestResult {
    fs::write(path, text).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(|e| fail(format!("{}: {e}", path.display())))
}

fn keygen(args: &[&str]) -> TestResult {
    run(
        Command::new("ssh-keygen").arg("-q").args(args),
        Duration::from_secs(60),
    )?
    .expect_code(0)
}

fn read(path: &Path) -> Result<String, Failed> {
    fs::read_to_string(path).map_err(|e| fail(format!("{}: {e}", path.display())))
}

/// The stack's host key (every sshd of the stack has it), as a known_hosts key field.
fn stack_host_key(st: &Stack) -> Result<String, Failed> {
    let text = read(&st.dir.join("sshd/ssh_host_ed25519_key.pub"))?;
    Ok(text
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" "))
}

/// The `Host *` part every trial's ssh_config ends with: the stack's client key, its own
/// known_hosts, strict checking.
fn common(st: &Stack, known_hosts: &Path) -> String {
    format!(
        "Host *\n  User barman\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  \
         GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n  BatchMode yes\n  \
         ConnectTimeout 10\n",
        st.get("SSH_KEY"),
        known_hosts.display()
    )
}

fn fetch_is_identical(st: &Stack, config: &Path, host: &str, work: &Path) -> TestResult {
    let seg = st.list("WAL_SEGMENTS")[3].clone();
    let out = run(&mut ours_f(st, config, host, &seg, work), CALL_TIMEOUT)?;
    out.expect_code(0)?;
    compare_file(&work.join(DEST), &st.orig().join(&seg))
}

fn expect_refused(out: &Outcome, code: i32, says: &[&str]) -> TestResult {
    out.expect_code(code)?;
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("ERROR"))
        .collect();
    if errors.len() != 1 || !says.iter().all(|s| errors[0].contains(s)) {
        return Err(fail(format!(
            "expected one ERROR line saying {says:?}:\n{}",
            out.describe()
        )));
    }
    Ok(())
}

/// OpenSSH itself, on the same config: the oracle of what must succeed or fail.
fn openssh(config: &Path, host: &str) -> Result<Outcome, Failed> {
    run(
        Command::new("/usr/bin/ssh")
            .arg("-F")
            .arg(config)
            .args([host, "true"])
            .stdin(Stdio::null()),
        CALL_TIMEOUT,
    )
}

/// A jump host: tcp forwarding allowed (the stack's sshds refuse it otherwise).
const JUMP: &[&str] = &["Match User barman", "  AllowTcpForwarding yes"];

fn proxy_jump(st: &Stack) -> TestResult {
    let work = st.workdir("proxy_jump")?;
    let jump = Sshd::start(st, "jump", JUMP)?;
    // The target refuses our own address (we bind 127.0.0.2); the jump host connects from
    // 127.0.0.1: only through the jump is it reachable.
    let target = Sshd::start(st, "behind", &["DenyUsers barman@127.0.0.2"])?;
    let kh = PathBuf::from(st.get("KNOWN_HOSTS"));
    let config = work.join("ssh_config");
    write(
        &config,
        &format!(
            "Host barman-behind\n  HostName 127.0.0.1\n  Port {}\n  ProxyJump jump\n\
             Host barman-direct\n  HostName 127.0.0.1\n  Port {}\n\
             Host jump\n  HostName 127.0.0.1\n  Port {}\n\
             Host *\n  BindAddress 127.0.0.2\n{}",
            target.port,
            target.port,
            jump.port,
            common(st, &kh)
        ),
    )?;
    fetch_is_identical(st, &config, "barman-behind", &work)?;
    // Without the jump: refused by the target, as OpenSSH is.
    let seg = st.list("WAL_SEGMENTS")[4].clone();
    let out = run(
        &mut ours_f(st, &config, "barman-direct", &seg, &work),
        CALL_TIMEOUT,
    )?;
    expect_refused(&out, 2, &["Permission denied"])?;
    if openssh(&config, "barman-direct")?.code == 0 {
        return Err(fail(
            "OpenSSH reached the target directly: the trial proves nothing",
        ));
    }
    if openssh(&config, "barman-behind")?.code != 0 {
        return Err(fail("OpenSSH cannot reach the target through the jump"));
    }
    Ok(())
}

fn proxy_jump_chain(st: &Stack) -> TestResult {
    let work = st.workdir("proxy_jump_chain")?;
    let first = Sshd::start(st, "jump1", JUMP)?;
    let second = Sshd::start(st, "jump2", JUMP)?;
    // Only the second hop may connect: it is the one that opens the last TCP connection, and
    // like every hop it comes from 127.0.0.1; we bind 127.0.0.2.
    let target = Sshd::start(st, "behind2", &["DenyUsers barman@127.0.0.2"])?;
    let kh = PathBuf::from(st.get("KNOWN_HOSTS"));
    let config = work.join("ssh_config");
    write(
        &config,
        &format!(
            "Host barman-behind\n  HostName 127.0.0.1\n  Port {}\n  ProxyJump j1,j2\n\
             Host j1\n  HostName 127.0.0.1\n  Port {}\n\
             Host j2\n  HostName 127.0.0.1\n  Port {}\n\
             Host *\n  BindAddress 127.0.0.2\n{}",
            target.port,
            first.port,
            second.port,
            common(st, &kh)
        ),
    )?;
    fetch_is_identical(st, &config, "barman-behind", &work)?;
    // Each hop's host key is checked: the second hop unknown -> refused.
    let kh2 = work.join("known_hosts-without-j2");
    let key = stack_host_key(st)?;
    write(
        &kh2,
        &format!(
            "[127.0.0.1]:{} {key}\n[127.0.0.1]:{} {key}\n",
            first.port, target.port
        ),
    )?;
    let config2 = work.join("ssh_config-2");
    write(
        &config2,
        &read(&config)?.replace(st.get("KNOWN_HOSTS"), &kh2.to_string_lossy()),
    )?;
    let seg = st.list("WAL_SEGMENTS")[4].clone();
    let out = run(
        &mut ours_f(st, &config2, "barman-behind", &seg, &work),
        CALL_TIMEOUT,
    )?;
    expect_refused(
        &out,
        2,
        &["not known", &format!("127.0.0.1:{}", second.port)],
    )
}

fn proxy_command(st: &Stack) -> TestResult {
    let work = st.workdir("proxy_command")?;
    let jump = Sshd::start(st, "pcjump", JUMP)?;
    let target = Sshd::start(st, "pcbehind", &["DenyUsers barman@127.0.0.2"])?;
    let kh = PathBuf::from(st.get("KNOWN_HOSTS"));
    let config = work.join("ssh_config");
    write(
        &config,
        &format!(
            "Host barman-behind\n  HostName 127.0.0.1\n  Port {}\n  \
             ProxyCommand /usr/bin/ssh -F {} -W %h:%p jump\n\
             Host jump\n  HostName 127.0.0.1\n  Port {}\n\
             Host *\n  BindAddress 127.0.0.2\n{}",
            target.port,
            config.display(),
            jump.port,
            common(st, &kh)
        ),
    )?;
    fetch_is_identical(st, &config, "barman-behind", &work)
}

/// An sshd with ed25519, ECDSA and RSA host keys, known by one of them only: we must ask for
/// that one, as OpenSSH does.
fn known_only_by(st: &Stack, kind: &str) -> TestResult {
    let work = st.workdir(&format!("known_only_by_{kind}"))?;
    let ecdsa = work.join("host_ecdsa");
    let rsa = work.join("host_rsa");
    keygen(&["-t", "ecdsa", "-N", "", "-f", &ecdsa.to_string_lossy()])?;
    keygen(&[
        "-t",
        "rsa",
        "-b",
        "3072",
        "-N",
        "",
        "-f",
        &rsa.to_string_lossy(),
    ])?;
    let sshd = Sshd::start(
        st,
        &format!("only{kind}"),
        &[
            &format!("HostKey {}", ecdsa.display()),
            &format!("HostKey {}", rsa.display()),
        ],
    )?;
    let known = if kind == "ecdsa" { &ecdsa } else { &rsa };
    let public = read(Path::new(&format!("{}.pub", known.display())))?;
    let kh = work.join("known_hosts");
    let fields: Vec<&str> = public.split_whitespace().take(2).collect();
    write(
        &kh,
        &format!("[127.0.0.1]:{} {}\n", sshd.port, fields.join(" ")),
    )?;
    let config = work.join("ssh_config");
    write(
        &config,
        &format!(
            "Host barman\n  HostName 127.0.0.1\n  Port {}\n{}",
            sshd.port,
            common(st, &kh)
        ),
    )?;
    fetch_is_identical(st, &config, "barman", &work)?;
    if kind == "rsa" {
        // The RSA host key has 3072 bits: a RequiredRSASize above refuses it, as OpenSSH does.
        let strict = work.join("ssh_config-4096");
        write(
            &strict,
            &format!("RequiredRSASize 4096\n{}", read(&config)?),
        )?;
        let seg = st.list("WAL_SEGMENTS")[4].clone();
        let out = run(
            &mut ours_f(st, &strict, "barman", &seg, &work),
            CALL_TIMEOUT,
        )?;
        expect_refused(&out, 2, &["below RequiredRSASize 4096"])?;
        if openssh(&strict, "barman")?.code == 0 {
            return Err(fail(
                "OpenSSH accepted the 3072-bit host key with RequiredRSASize 4096",
            ));
        }
    }
    Ok(())
}

/// `@cert-authority` in known_hosts and an sshd presenting a host certificate: trusted while
/// valid; expired -> refused (as by OpenSSH), and nothing run.
fn host_certificate(st: &Stack) -> TestResult {
    let work = st.workdir("host_certificate")?;
    let ca = work.join("host_ca");
    keygen(&["-t", "ed25519", "-N", "", "-f", &ca.to_string_lossy()])?;
    let mut sshds = Vec::new();
    for (name, validity) in [("valid", "-5m:+1h"), ("expired", "20200101:20200102")] {
        let public = work.join(format!("host-{name}.pub"));
        fs::copy(st.dir.join("sshd/ssh_host_ed25519_key.pub"), &public)
            .map_err(|e| fail(e.to_string()))?;
        keygen(&[
            "-s",
            &ca.to_string_lossy(),
            "-I",
            &format!("stack-{name}"),
            "-h",
            "-n",
            "127.0.0.1",
            "-V",
            validity,
            &public.to_string_lossy(),
        ])?;
        let cert = work.join(format!("host-{name}-cert.pub"));
        sshds.push(Sshd::start(
            st,
            &format!("cert{name}"),
            &[&format!("HostCertificate {}", cert.display())],
        )?);
    }
    let kh = work.join("known_hosts");
    let ca_public = read(&work.join("host_ca.pub"))?;
    let ca_fields: Vec<&str> = ca_public.split_whitespace().take(2).collect();
    write(
        &kh,
        &format!(
            "@cert-authority 127.0.0.1,[127.0.0.1]:* {}\n",
            ca_fields.join(" ")
        ),
    )?;
    let forced = st.forced_key("hostcert", "log-all", "root")?;
    let config = work.join("ssh_config");
    write(
        &config,
        &format!(
            "Host valid\n  HostName 127.0.0.1\n  Port {}\n\
             Host expired\n  HostName 127.0.0.1\n  Port {}\n  IdentityFile {}\n{}",
            sshds[0].port,
            sshds[1].port,
            forced.key.display(),
            common(st, &kh)
        ),
    )?;
    fetch_is_identical(st, &config, "valid", &work)?;
    let seg = st.list("WAL_SEGMENTS")[4].clone();
    let out = run(
        &mut ours_f(st, &config, "expired", &seg, &work),
        CALL_TIMEOUT,
    )?;
    expect_refused(&out, 2, &["not valid now"])?;
    if !forced.commands().is_empty() {
        return Err(fail(forced.describe()));
    }
    if openssh(&config, "expired")?.code == 0 {
        return Err(fail("OpenSSH accepted the expired host certificate"));
    }
    Ok(())
}

/// A client key sshd knows only through `TrustedUserCAKeys`: the certificate is what logs in.
fn user_certificate(st: &Stack) -> TestResult {
    let work = st.workdir("user_certificate")?;
    let ca = work.join("user_ca");
    let key = work.join("id_user");
    keygen(&["-t", "ed25519", "-N", "", "-f", &ca.to_string_lossy()])?;
    keygen(&["-t", "ed25519", "-N", "", "-f", &key.to_string_lossy()])?;
    keygen(&[
        "-s",
        &ca.to_string_lossy(),
        "-I",
        "barman-user",
        "-n",
        "barman",
        "-V",
        "-5m:+1h",
        &work.join("id_user.pub").to_string_lossy(),
    ])?;
    // Under another name, so only CertificateFile finds it.
    fs::rename(work.join("id_user-cert.pub"), work.join("barman.crt"))
        .map_err(|e| fail(e.to_string()))?;
    let sshd = Sshd::start(
        st,
        "usercert",
        &[&format!(
            "TrustedUserCAKeys {}",
            work.join("user_ca.pub").display()
        )],
    )?;
    // No `Host *` with the stack's own key here: the certificate alone must log in.
    let host = |name: &str, certificate: &str| {
        format!(
            "Host {name}\n  HostName 127.0.0.1\n  Port {}\n  User barman\n  IdentityFile {}\n  \
             {certificate}IdentitiesOnly yes\n  UserKnownHostsFile {}\n  \
             GlobalKnownHostsFile /dev/null\n  BatchMode yes\n",
            sshd.port,
            key.display(),
            st.get("KNOWN_HOSTS")
        )
    };
    let config = work.join("ssh_config");
    let certificate = format!("CertificateFile {}\n  ", work.join("barman.crt").display());
    write(
        &config,
        &format!(
            "{}{}",
            host("barman", &certificate),
            host("barman-nocert", "")
        ),
    )?;
    fetch_is_identical(st, &config, "barman", &work)?;
    let seg = st.list("WAL_SEGMENTS")[4].clone();
    let out = run(
        &mut ours_f(st, &config, "barman-nocert", &seg, &work),
        CALL_TIMEOUT,
    )?;
    expect_refused(&out, 2, &["Permission denied"])
}

/// The first finding: a `Match` block after `Host` whose condition does not hold must
/// not lend its `StrictHostKeyChecking no` to the host; an unknown host key is refused, as by
/// OpenSSH, and no command runs.
fn match_block_does_not_weaken_host_keys(st: &Stack) -> TestResult {
    let work = st.workdir("match_block")?;
    let forced = st.forced_key("matchblock", "log-all", "root")?;
    let kh = work.join("known_hosts-empty");
    write(&kh, "")?;
    let config = work.join("ssh_config");
    write(
        &config,
        &format!(
            "Host barman\n  HostName 127.0.0.1\n  Port {}\n  User barman\n  IdentityFile {}\n  \
             UserKnownHostsFile {}\n  GlobalKnownHostsFile /dev/null\n  BatchMode yes\n\
             Match host *.lab.example\n  StrictHostKeyChecking no\n\
             Match host staging-*\n  Port 1\n",
            st.get("SSH_PORT"),
            forced.key.display(),
            kh.display()
        ),
    )?;
    let seg = st.list("WAL_SEGMENTS")[3].clone();
    let out = run(
        &mut ours_f(st, &config, "barman", &seg, &work),
        CALL_TIMEOUT,
    )?;
    expect_refused(&out, 2, &["not known"])?;
    if !forced.commands().is_empty() {
        return Err(fail(forced.describe()));
    }
    if openssh(&config, "barman")?.code == 0 {
        return Err(fail(
            "OpenSSH accepted the unknown host: the trial proves nothing",
        ));
    }
    // The same Match applying (the host is in *.lab.example) does weaken it, for OpenSSH
    // and for us alike: the key is then recorded and the fetch goes on.
    let config2 = work.join("ssh_config-lab");
    write(
        &config2,
        &read(&config)?.replace("Match host *.lab.example", "Match originalhost barman"),
    )?;
    fetch_is_identical(st, &config2, "barman", &work)?;
    if !read(&kh)?.contains(&stack_host_key(st)?) {
        return Err(fail("StrictHostKeyChecking no did not record the new key"));
    }
    Ok(())
}

/// A directive we do not implement stops the call before any connection: one ERROR line naming
/// it with its file and line, exit 2, no command run.
fn refused_directive_runs_nothing(st: &Stack) -> TestResult {
    let work = st.workdir("refused_directive")?;
    let forced = st.forced_key("refused", "log-all", "root")?;
    let kh = PathBuf::from(st.get("KNOWN_HOSTS"));
    let config = work.join("ssh_config");
    write(
        &config,
        &format!(
            "Host barman\n  HostName 127.0.0.1\n  Port {}\n  IdentityFile {}\n  \
             PKCS11Provider /usr/lib/x86_64-linux-gnu/opensc-pkcs11.so\n{}",
            st.get("SSH_PORT"),
            forced.key.display(),
            common(st, &kh)
        ),
    )?;
    let seg = st.list("WAL_SEGMENTS")[3].clone();
    let out = run(
        &mut ours_f(st, &config, "barman", &seg, &work),
        CALL_TIMEOUT,
    )?;
    expect_refused(
        &out,
        2,
        &["PKCS11Provider", &format!("{}:5", config.display())],
    )?;
    if !forced.commands().is_empty() {
        return Err(fail(forced.describe()));
    }
    if work.join(DEST).exists() {
        return Err(fail("a refused call left a file at WAL_DEST"));
    }
    Ok(())
}

/// `--test` prints the resolved target, as `ssh -G` names its fields, and the host key.
fn test_prints_the_target(st: &Stack) -> TestResult {
    let work = st.workdir("test_prints_target")?;
    let jump = Sshd::start(st, "tjump", JUMP)?;
    let kh = PathBuf::from(st.get("KNOWN_HOSTS"));
    let config = work.join("ssh_config");
    write(
        &config,
        &format!(
            "Host barman\n  HostName 127.0.0.1\n  Port {}\n  ProxyJump jump\nHost jump\n  \
             HostName 127.0.0.1\n  Port {}\n{}",
            st.get("SSH_PORT"),
            jump.port,
            common(st, &kh)
        ),
    )?;
    let mut c = ours_f(st, &config, "barman", "DUMMY", &work);
    c.arg("--test");
    let out = run(&mut c, CALL_TIMEOUT)?;
    out.expect_code(0)?;
    let fingerprint = run(
        Command::new("ssh-keygen")
            .arg("-lf")
            .arg(st.dir.join("sshd/ssh_host_ed25519_key.pub")),
        CALL_TIMEOUT,
    )?;
    let fingerprint = fingerprint
        .stdout
        .split_whitespace()
        .nth(1)
        .unwrap_or("?")
        .to_string();
    for want in [
        "hostname 127.0.0.1".to_string(),
        format!("port {}", st.get("SSH_PORT")),
        "user barman".to_string(),
        format!("proxy ProxyJump barman@127.0.0.1:{}", jump.port),
        format!("userknownhostsfile {}", st.get("KNOWN_HOSTS")),
        format!("server host key {fingerprint}"),
    ] {
        if !out.stderr.contains(&want) {
            return Err(fail(format!(
                "--test does not say '{want}':\n{}",
                out.describe()
            )));
        }
    }
    Ok(())
}

/// An ssh-agent (`IdentityAgent SOCKET`) holding the stack's key: used when allowed; with
/// `IdentitiesOnly yes` and an IdentityFile that is another key, not offered (as by OpenSSH),
/// so the call is refused.
fn identity_agent_and_identities_only(st: &Stack) -> TestResult {
    let work = st.workdir("identity_agent")?;
    let socket = work.join("agent.sock");
    let agent = run(
        Command::new("ssh-agent").arg("-a").arg(&socket).arg("-s"),
        Duration::from_secs(30),
    )?;
    agent.expect_code(0)?;
    let pid: i32 = agent
        .stdout
        .split("SSH_AGENT_PID=")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| fail(format!("ssh-agent said {:?}", agent.stdout)))?;
    let result = (|| {
        run(
            Command::new("ssh-add")
                .arg(st.get("SSH_KEY"))
                .env("SSH_AUTH_SOCK", &socket),
            Duration::from_secs(30),
        )?
        .expect_code(0)?;
        let other = work.join("id_other");
        keygen(&["-t", "ed25519", "-N", "", "-f", &other.to_string_lossy()])?;
        let host = |name: &str, only: &str| {
            format!(
                "Host {name}\n  HostName 127.0.0.1\n  Port {}\n  User barman\n  \
                 IdentityAgent {}\n  IdentityFile {}\n  IdentitiesOnly {only}\n  \
                 UserKnownHostsFile {}\n  GlobalKnownHostsFile /dev/null\n  BatchMode yes\n",
                st.get("SSH_PORT"),
                socket.display(),
                other.display(),
                st.get("KNOWN_HOSTS")
            )
        };
        let config = work.join("ssh_config");
        write(
            &config,
            &format!("{}{}", host("agent", "no"), host("only", "yes")),
        )?;
        fetch_is_identical(st, &config, "agent", &work)?;
        let seg = st.list("WAL_SEGMENTS")[4].clone();
        let out = run(&mut ours_f(st, &config, "only", &seg, &work), CALL_TIMEOUT)?;
        expect_refused(&out, 2, &["Permission denied"])?;
        if openssh(&config, "only")?.code == 0 {
            return Err(fail(
                "OpenSSH logged in with IdentitiesOnly: the trial proves nothing",
            ));
        }
        Ok(())
    })();
    // SAFETY: kill(2) on the agent this trial started.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    result
}

fn host_known_only_by_ecdsa(st: &Stack) -> TestResult {
    known_only_by(st, "ecdsa")
}

fn host_known_only_by_rsa(st: &Stack) -> TestResult {
    known_only_by(st, "rsa")
}

pub fn trials() -> Vec<Named> {
    vec![
        Named::new(
            "ssh_config::proxy_jump_to_a_host_only_the_jump_reaches",
            proxy_jump,
        ),
        Named::new("ssh_config::proxy_jump_chain_of_two", proxy_jump_chain),
        Named::new("ssh_config::proxy_command_ssh_w", proxy_command),
        Named::new(
            "ssh_config::host_known_only_by_ecdsa",
            host_known_only_by_ecdsa,
        ),
        Named::new("ssh_config::host_known_only_by_rsa", host_known_only_by_rsa),
        Named::new(
            "ssh_config::host_certificate_trusted_then_expired",
            host_certificate,
        ),
        Named::new(
            "ssh_config::user_certificate_from_certificatefile",
            user_certificate,
        ),
        Named::new(
            "ssh_config::match_block_does_not_weaken_host_keys",
            match_block_does_not_weaken_host_keys,
        ),
        Named::new(
            "ssh_config::refused_directive_runs_nothing",
            refused_directive_runs_nothing,
        ),
        Named::new(
            "ssh_config::test_prints_the_resolved_target",
            test_prints_the_target,
        ),
        Named::new(
            "ssh_config::identity_agent_and_identities_only",
            identity_agent_and_identities_only,
        ),
    ]
}
