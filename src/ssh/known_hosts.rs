//! Host key checking against OpenSSH known_hosts files.
//!
//! Lines are parsed by `ssh-key`'s known_hosts parser. The matching is ours
//! because russh's `check_known_hosts_path` reads one file and knows neither
//! wildcards, negations nor `@revoked`: OpenSSH's rules for those are a few
//! lines (a host pattern list with `*`/`?`, `!` negation, hashed `|1|` names
//! keyed with HMAC-SHA1), written here against its documentation.

use std::io::Write;
use std::path::{Path, PathBuf};

use hmac::{Hmac, KeyInit, Mac};
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::known_hosts::{Entry, HostPatterns, Marker};
use russh::keys::ssh_key::public::KeyData;
use russh::keys::ssh_key::{Algorithm, Certificate, HashAlg};
use russh::keys::PublicKey;
use sha1::Sha1;
use wildmatch::WildMatch;

/// What the known_hosts files say of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyVerdict {
    Known,
    /// No entry names this host with a key of this type.
    Unknown,
    /// An entry names this host with another key of the same type.
    Changed {
        file: PathBuf,
        line: usize,
    },
    /// The key is marked `@revoked`.
    Revoked {
        file: PathBuf,
        line: usize,
    },
}

/// The name OpenSSH looks up: `host` on port 22, `[host]:port` otherwise.
pub fn lookup_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

fn patterns_match(patterns: &HostPatterns, name: &str) -> bool {
    match patterns {
        HostPatterns::HashedName { salt, hash } => Hmac::<Sha1>::new_from_slice(salt)
            .map(|mac| mac.chain_update(name.as_bytes()).verify_slice(hash).is_ok())
            .unwrap_or(false),
        HostPatterns::Patterns(list) => {
            let mut matched = false;
            for pattern in list {
                if let Some(negated) = pattern.strip_prefix('!') {
                    if WildMatch::new(&negated.to_ascii_lowercase()).matches(name) {
                        return false;
                    }
                } else if WildMatch::new(&pattern.to_ascii_lowercase()).matches(name) {
                    matched = true;
                }
            }
            matched
        }
    }
}

/// One parsed known_hosts line, with where it is.
struct Line {
    file: PathBuf,
    number: usize,
    entry: Entry,
}

/// Every line of `files` that parses; a line that does not is skipped, as
/// OpenSSH does, and so is a file that cannot be read.
fn lines(files: &[PathBuf]) -> Vec<Line> {
    let mut out = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Ok(entry) = line.parse::<Entry>() {
                out.push(Line {
                    file: file.clone(),
                    number: index + 1,
                    entry,
                });
            }
        }
    }
    out
}

/// A `@revoked` line for this key, whatever host it names (OpenSSH's rule).
fn revoked(lines: &[Line], key: &KeyData) -> Option<HostKeyVerdict> {
    lines
        .iter()
        .find(|l| {
            l.entry.marker() == Some(&Marker::Revoked) && l.entry.public_key().key_data() == key
        })
        .map(|l| HostKeyVerdict::Revoked {
            file: l.file.clone(),
            line: l.number,
        })
}

/// Checks `key` for `host:port` against every file, as OpenSSH does: a
/// revoked key is refused outright; a matching entry makes the key known;
/// an entry with another key of the same type means the key changed.
pub fn verify(host: &str, port: u16, key: &PublicKey, files: &[PathBuf]) -> HostKeyVerdict {
    let name = lookup_name(&host.to_ascii_lowercase(), port);
    let lines = lines(files);
    if let Some(verdict) = revoked(&lines, key.key_data()) {
        return verdict;
    }
    let mut known = false;
    let mut changed = None;
    for line in lines.iter().filter(|l| l.entry.marker().is_none()) {
        if !patterns_match(line.entry.host_patterns(), &name) {
            continue;
        }
        if line.entry.public_key().key_data() == key.key_data() {
            known = true;
        } else if line.entry.public_key().algorithm() == key.algorithm() && changed.is_none() {
            changed = Some(HostKeyVerdict::Changed {
                file: line.file.clone(),
                line: line.number,
            });
        }
    }
    if known {
        HostKeyVerdict::Known
    } else {
        changed.unwrap_or(HostKeyVerdict::Unknown)
    }
}

/// What a host certificate is worth, checked as OpenSSH's
/// `check_host_cert` does: signed by a `@cert-authority` key whose patterns
/// name this host, not revoked (neither the CA nor the certified key), a
/// host certificate, within its validity, naming `host` among its
/// principals, with no critical option.
pub fn verify_certificate(
    host: &str,
    port: u16,
    cert: &Certificate,
    files: &[PathBuf],
    now: u64,
    ca_algorithms: &[String],
) -> Result<(), String> {
    let name = lookup_name(&host.to_ascii_lowercase(), port);
    let lines = lines(files);
    for key in [cert.signature_key(), cert.public_key()] {
        if let Some(HostKeyVerdict::Revoked { file, line }) = revoked(&lines, key) {
            return Err(format!(
                "its key or CA is marked @revoked in {}:{line}",
                file.display()
            ));
        }
    }
    let authority = lines.iter().find(|l| {
        l.entry.marker() == Some(&Marker::CertAuthority)
            && l.entry.public_key().key_data() == cert.signature_key()
            && patterns_match(l.entry.host_patterns(), &name)
    });
    let Some(authority) = authority else {
        let any_ca = lines
            .iter()
            .any(|l| l.entry.marker() == Some(&Marker::CertAuthority));
        return Err(if any_ca {
            format!(
                "its certificate is signed by {}, which no @cert-authority line trusts for {name}",
                cert.signature_key().fingerprint(Default::default())
            )
        } else {
            "it presented a host certificate and no @cert-authority line trusts its CA".into()
        });
    };
    let signed_with = cert.signature().algorithm();
    if !ca_algorithms.is_empty() && !ca_algorithms.iter().any(|a| a == signed_with.as_str()) {
        return Err(format!(
            "its certificate is signed with {signed_with}, not among CASignatureAlgorithms"
        ));
    }
    if cert.cert_type() != CertType::Host {
        return Err("its certificate is not a host certificate".into());
    }
    let ca = authority.entry.public_key().fingerprint(HashAlg::Sha256);
    if cert.validate_at(now, [&ca]).is_err() {
        return Err(if now < cert.valid_after() || now >= cert.valid_before() {
            format!(
                "its certificate is not valid now (valid from {} to {} in Unix time)",
                cert.valid_after(),
                cert.valid_before()
            )
        } else {
            "its certificate's signature does not verify".into()
        });
    }
    // OpenSSH compares the lowercased host name with each principal as
    // written. An empty list is refused, as current OpenSSH refuses it
    // (older releases read it as "any host").
    let host_only = host.to_ascii_lowercase();
    if cert.valid_principals().is_empty() {
        return Err("its certificate names no principal".into());
    }
    if !cert.valid_principals().contains(&host_only) {
        return Err(format!(
            "its certificate does not name {host_only} among its principals ({})",
            cert.valid_principals().join(",")
        ));
    }
    if !cert.critical_options().is_empty() {
        return Err("its certificate carries critical options we do not know".into());
    }
    Ok(())
}

/// The key algorithms known_hosts holds for `host:port` (plain keys and
/// `@cert-authority` lines), so they can be asked for first: a host known
/// only by its ECDSA or RSA key is then accepted, as by OpenSSH.
pub fn known_algorithms(host: &str, port: u16, files: &[PathBuf]) -> (Vec<Algorithm>, bool) {
    let name = lookup_name(&host.to_ascii_lowercase(), port);
    let mut algorithms = Vec::new();
    let mut has_authority = false;
    for line in lines(files) {
        if !patterns_match(line.entry.host_patterns(), &name) {
            continue;
        }
        match line.entry.marker() {
            None => {
                let algorithm = line.entry.public_key().algorithm();
                if !algorithms.contains(&algorithm) {
                    algorithms.push(algorithm);
                }
            }
            Some(Marker::CertAuthority) => has_authority = true,
            Some(_) => {}
        }
    }
    (algorithms, has_authority)
}

/// Appends `host:port key` to a known_hosts file (`accept-new`), hashed
/// when `HashKnownHosts` says so.
pub fn learn(
    host: &str,
    port: u16,
    key: &PublicKey,
    file: &Path,
    hash: bool,
) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let encoded = key
        .to_openssh()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let name = lookup_name(host, port);
    let name = if hash { hashed_name(&name) } else { name };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)?;
    writeln!(f, "{name} {}", encoded.trim())
}

/// `|1|salt|hmac`, OpenSSH's hashed host name.
fn hashed_name(name: &str) -> String {
    use russh::keys::ssh_key::encoding::base64::{Base64, Encoding};
    let salt: [u8; 20] = rand::random();
    let mac = Hmac::<Sha1>::new_from_slice(&salt)
        .expect("HMAC takes any key length")
        .chain_update(name.as_bytes())
        .finalize()
        .into_bytes();
    format!(
        "|1|{}|{}",
        Base64::encode_string(&salt),
        Base64::encode_string(&mac)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDQ7eDBrxwMXw9r5qhFOwL5RgRs79nSM44FmULrbUy9V";
    const KEY_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMuEkSub/W13Ck6QLF6PHRPJR344x+VjVlUZEFeGd4+B";

    fn key(text: &str) -> PublicKey {
        PublicKey::from_openssh(text).unwrap()
    }

    fn hashed(name: &str) -> String {
        use base64_lite::encode;
        let salt = [7u8; 20];
        let mac = Hmac::<Sha1>::new_from_slice(&salt)
            .unwrap()
            .chain_update(name.as_bytes());
        format!(
            "|1|{}|{}",
            encode(&salt),
            encode(&mac.finalize().into_bytes())
        )
    }

    /// Standard base64, just enough to write hashed test entries.
    mod base64_lite {
        pub fn encode(data: &[u8]) -> String {
            const T: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let mut out = String::new();
            for chunk in data.chunks(3) {
                let b = [
                    chunk[0],
                    *chunk.get(1).unwrap_or(&0),
                    *chunk.get(2).unwrap_or(&0),
                ];
                let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
                for i in 0..4 {
                    if i <= chunk.len() {
                        out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                    } else {
                        out.push('=');
                    }
                }
            }
            out
        }
    }

    fn line(hosts: &str, key: &PublicKey) -> String {
        format!("{hosts} {}\n", key.to_openssh().unwrap())
    }

    #[test]
    fn plain_hashed_wildcard_and_port_forms() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(KEY_A);
        let file = dir.path().join("kh");
        let check = |content: String, host: &str, port: u16| {
            std::fs::write(&file, content).unwrap();
            verify(host, port, &k, std::slice::from_ref(&file))
        };
        assert_eq!(
            check(line("barman", &k), "barman", 22),
            HostKeyVerdict::Known
        );
        assert_eq!(
            check(line("barman", &k), "barman", 2222),
            HostKeyVerdict::Unknown
        );
        assert_eq!(
            check(line("[barman]:2222", &k), "barman", 2222),
            HostKeyVerdict::Known
        );
        assert_eq!(
            check(line(&hashed("[barman]:2222"), &k), "barman", 2222),
            HostKeyVerdict::Known
        );
        assert_eq!(
            check(line("*.example.org,barm?n", &k), "barman", 22),
            HostKeyVerdict::Known
        );
        assert_eq!(
            check(line("barm*,!barman", &k), "barman", 22),
            HostKeyVerdict::Unknown
        );
        let other = key(KEY_B);
        assert!(matches!(
            check(line("barman", &other), "barman", 22),
            HostKeyVerdict::Changed { line: 1, .. }
        ));
        assert!(matches!(
            check(
                format!(
                    "@revoked * {}\n{}",
                    k.to_openssh().unwrap(),
                    line("barman", &k)
                ),
                "barman",
                22
            ),
            HostKeyVerdict::Revoked { .. }
        ));
        assert_eq!(
            check(
                format!("garbage line\n{}", line("barman", &k)),
                "barman",
                22
            ),
            HostKeyVerdict::Known
        );
    }

    #[test]
    fn learned_keys_are_known_afterwards() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/kh");
        let k = key(KEY_A);
        learn("127.0.0.1", 2022, &k, &file, false).unwrap();
        assert_eq!(
            verify("127.0.0.1", 2022, &k, &[file]),
            HostKeyVerdict::Known
        );
    }

    const CERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/ssh-certs");
    /// 2030-01-01: inside the fixtures' validity (2020 to 2040).
    const NOW: u64 = 1_893_456_000;

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{CERTS}/{name}"))
            .unwrap()
            .trim()
            .to_string()
    }

    fn cert(name: &str) -> Certificate {
        Certificate::from_openssh(&fixture(name)).unwrap()
    }

    /// known_hosts with `lines`, and the verdict on `cert` for `host` on port 22.
    fn check_cert(lines: &str, name: &str, host: &str) -> Result<(), String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kh");
        std::fs::write(&file, lines).unwrap();
        verify_certificate(host, 22, &cert(name), &[file], NOW, &[])
    }

    #[test]
    fn host_certificates_as_openssh_checks_them() {
        let ca = format!("@cert-authority *.example,10.0.0.5 {}\n", fixture("ca.pub"));
        assert_eq!(
            check_cert(&ca, "host-valid-cert.pub", "barman.example"),
            Ok(())
        );
        assert_eq!(check_cert(&ca, "host-valid-cert.pub", "10.0.0.5"), Ok(()));
        // A principal the certificate does not name.
        let e = check_cert(&ca, "host-valid-cert.pub", "other.example").unwrap_err();
        assert!(e.contains("principals"), "{e}");
        // A host the @cert-authority line does not name.
        let e = check_cert(&ca, "host-valid-cert.pub", "barman.elsewhere").unwrap_err();
        assert!(e.contains("no @cert-authority line trusts"), "{e}");
        let e = check_cert(&ca, "host-expired-cert.pub", "barman.example").unwrap_err();
        assert!(e.contains("not valid now"), "{e}");
        let e = check_cert(&ca, "host-other-ca-cert.pub", "barman.example").unwrap_err();
        assert!(e.contains("no @cert-authority line trusts"), "{e}");
        let e = check_cert(&ca, "user-type-cert.pub", "barman.example").unwrap_err();
        assert!(e.contains("not a host certificate"), "{e}");
        let e = check_cert(&ca, "host-no-principals-cert.pub", "barman.example").unwrap_err();
        assert!(e.contains("no principal"), "{e}");
        // A plain line for the CA key is not a @cert-authority line.
        let plain = format!("* {}\n", fixture("ca.pub"));
        assert!(check_cert(&plain, "host-valid-cert.pub", "barman.example").is_err());
        // CASignatureAlgorithms without the CA's algorithm (ed25519).
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kh");
        std::fs::write(&file, &ca).unwrap();
        let only_rsa = ["rsa-sha2-512".to_string()];
        let e = verify_certificate(
            "barman.example",
            22,
            &cert("host-valid-cert.pub"),
            &[file],
            NOW,
            &only_rsa,
        )
        .unwrap_err();
        assert!(e.contains("CASignatureAlgorithms"), "{e}");
        // @revoked: the CA, or the certified key.
        for revoked in ["ca.pub", "host.pub"] {
            let lines = format!("{ca}@revoked * {}\n", fixture(revoked));
            let e = check_cert(&lines, "host-valid-cert.pub", "barman.example").unwrap_err();
            assert!(e.contains("@revoked"), "{revoked}: {e}");
        }
    }

    #[test]
    fn known_algorithms_list_what_known_hosts_holds_for_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kh");
        let ecdsa = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBEmKSENjQEezOmxkZMy7opKgwFB9nkt5YRrYMjNuG5N87uRgg6CLrbo5wAdT/y6v0mKV0U2w0WZ2YB/++Tpockg=";
        std::fs::write(
            &file,
            format!(
                "[barman]:2222 {ecdsa}\nother {}\n@cert-authority barm* {}\n",
                KEY_A,
                fixture("ca.pub")
            ),
        )
        .unwrap();
        let (algorithms, authority) = known_algorithms("barman", 2222, std::slice::from_ref(&file));
        assert_eq!(
            algorithms,
            [PublicKey::from_openssh(ecdsa).unwrap().algorithm()]
        );
        assert!(!authority, "the CA line names barm*, not [barman]:2222");
        let (algorithms, authority) = known_algorithms("barman", 22, &[file]);
        assert!(algorithms.is_empty());
        assert!(authority);
    }

    #[test]
    fn learning_with_hashknownhosts_writes_a_hashed_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kh");
        let k = key(KEY_A);
        learn("barman", 2222, &k, &file, true).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("|1|") && !text.contains("barman"),
            "{text}"
        );
        assert_eq!(verify("barman", 2222, &k, &[file]), HostKeyVerdict::Known);
    }
}
