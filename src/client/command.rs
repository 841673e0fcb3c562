//! The remote `barman` commands: how they are spelled, and what their
//! answers mean.
//!
//! The command line travels as one string to the remote user's shell, so every
//! argument that comes from the user is quoted here, and the names that can be
//! checked (server, WAL) are checked before anything is sent.

use crate::exit::Failure;
use crate::ssh::RemoteExit;
use crate::wal::WalName;

/// How the server should send the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transfer {
    /// The server decompresses and sends raw WAL (Barman's default).
    #[default]
    Decompressed,
    /// The server sends the stored bytes; we decode them as they arrive.
    KeepCompression,
    /// The server recompresses with gzip (`-z`, deprecated upstream).
    Gzip,
    /// The server recompresses with bzip2 (`-j`, deprecated upstream).
    Bzip2,
}

/// What identifies the archive on the Barman host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BarmanServer {
    name: String,
    config: Option<String>,
}

impl BarmanServer {
    /// Checks SERVER_NAME and `--config` before they can reach a shell.
    ///
    /// Barman server names are configuration section names: letters, digits
    /// and a little punctuation. We refuse anything else outright (a quote, a
    /// `;` or a newline in a server name is an attack or a typo, never a
    /// server), and quote the result anyway. A config path may hold any
    /// printable character; it is quoted, and control characters are refused
    /// because no honest path has them.
    pub fn new(name: &str, config: Option<&str>) -> Result<BarmanServer, Failure> {
        let name_ok = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-+@:".contains(&b));
        if !name_ok {
            return Err(Failure::Local(format!(
                "invalid SERVER_NAME {:?}: a Barman server name has only letters, digits and ._-+@:",
                name
            )));
        }
        if let Some(config) = config {
            if config.is_empty() || config.chars().any(char::is_control) {
                return Err(Failure::Local(format!(
                    "invalid --config {:?}: a path without control characters is expected",
                    config
                )));
            }
        }
        Ok(BarmanServer {
            name: name.to_string(),
            config: config.map(str::to_string),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> Option<&str> {
        self.config.as_deref()
    }

    fn barman_prefix(&self) -> String {
        match &self.config {
            Some(config) => format!("barman --config {} ", shell_quote(config)),
            None => "barman ".to_string(),
        }
    }

    /// `barman get-wal` for one file.
    pub fn get_wal(&self, wal: &WalName, transfer: Transfer, partial: bool) -> String {
        let mut cmd = self.barman_prefix();
        cmd.push_str("get-wal ");
        match transfer {
            Transfer::Decompressed => {}
            Transfer::KeepCompression => cmd.push_str("--keep-compression "),
            Transfer::Gzip => cmd.push_str("--gzip "),
            Transfer::Bzip2 => cmd.push_str("--bzip2 "),
        }
        if partial {
            cmd.push_str("--partial ");
        }
        self.push_positionals(&mut cmd, wal);
        cmd
    }

    /// `barman get-wal --peek N`: the list of up to N files starting at `wal`.
    pub fn peek(&self, wal: &WalName, count: usize) -> String {
        let mut cmd = self.barman_prefix();
        cmd.push_str(&format!(
            "get-wal --peek {} ",
            shell_quote(&count.to_string())
        ));
        self.push_positionals(&mut cmd, wal);
        cmd
    }

    /// `barman get-wal --test`: the connectivity check of `--test`.
    pub fn test(&self, wal: &str) -> String {
        let mut cmd = self.barman_prefix();
        cmd.push_str("get-wal --test ");
        cmd.push_str(&shell_quote(&self.name));
        cmd.push(' ');
        cmd.push_str(&shell_quote(wal));
        cmd
    }

    fn push_positionals(&self, cmd: &mut String, wal: &WalName) {
        cmd.push_str(&shell_quote(&self.name));
        cmd.push(' ');
        cmd.push_str(&shell_quote(wal.as_str()));
    }
}

/// Quotes a word for a POSIX shell: inside single quotes nothing is special
/// but the single quote itself, which is closed, escaped and reopened.
pub fn shell_quote(word: &str) -> String {
    let mut quoted = String::with_capacity(word.len() + 2);
    quoted.push('\'');
    for c in word.chars() {
        if c == '\'' {
            quoted.push_str("'\\''");
        } else {
            quoted.push(c);
        }
    }
    quoted.push('\'');
    quoted
}

/// Parses the answer of `get-wal --peek`: one WAL name per line. A line that
/// is not a WAL name means the answer is not what we asked for (a login
/// banner on stdout, say): we refuse it rather than guess.
pub fn parse_peek(stdout: &[u8]) -> Result<Vec<WalName>, String> {
    let text = std::str::from_utf8(stdout).map_err(|_| "peek answer is not text".to_string())?;
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| WalName::parse(line).map_err(|e| format!("unexpected peek line: {e}")))
        .collect()
}

impl RemoteExit {
    /// The remote stderr as lines, Barman's `ERROR: ` prefix removed (ours
    /// is added when the failure is printed).
    pub fn stderr_lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.stderr)
            .lines()
            .map(|l| {
                let l = l.trim_end();
                l.strip_prefix("ERROR: ").unwrap_or(l).to_string()
            })
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Turns a non-zero ending into the failure it means.
    pub fn into_failure(self, what: &str) -> Failure {
        let lines = self.stderr_lines();
        let said = lines.join(" / ");
        match (self.status, &self.signal) {
            (Some(1), _) if said.contains("not found") => Failure::NotFound(said),
            (Some(status), _) => Failure::Remote {
                status: i32::try_from(status).unwrap_or(i32::MAX),
                message: if said.is_empty() {
                    format!("remote '{what}' exited with status {status}")
                } else {
                    format!("remote '{what}' exited with status {status}: {said}")
                },
            },
            (None, Some(signal)) => Failure::Remote {
                status: 1,
                message: format!("remote '{what}' was killed by signal {signal}"),
            },
            (None, None) => Failure::Connection(format!(
                "the connection ended before remote '{what}' reported its exit status"
            )),
        }
    }

    /// Whether Barman rejected an option it does not know (an older Barman
    /// asked for `--keep-compression`): argparse's usage error, status 2.
    pub fn is_usage_error(&self) -> bool {
        self.status == Some(2)
            && String::from_utf8_lossy(&self.stderr).contains("unrecognized arguments")
    }
}

pub fn show_server_command(server: &BarmanServer) -> String {
    match server.config() {
        Some(config) => format!(
            "barman --config {} show-server {}",
            shell_quote(config),
            shell_quote(server.name())
        ),
        None => format!("barman show-server {}", shell_quote(server.name())),
    }
}

pub fn cat_command(path: &str) -> String {
    format!("cat -- {}", shell_quote(path))
}

pub fn list_command(dir: &str) -> String {
    format!("ls -1 -- {}", shell_quote(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal(s: &str) -> WalName {
        WalName::parse(s).unwrap()
    }

    #[test]
    fn commands_are_spelled_like_the_original() {
        let server = BarmanServer::new("angus", None).unwrap();
        let w = wal("000000010000000000000002");
        assert_eq!(
            server.get_wal(&w, Transfer::Decompressed, false),
            "barman get-wal 'angus' '000000010000000000000002'"
        );
        assert_eq!(
            server.get_wal(&w, Transfer::KeepCompression, true),
            "barman get-wal --keep-compression --partial 'angus' '000000010000000000000002'"
        );
        assert_eq!(
            server.peek(&w, 8),
            "barman get-wal --peek '8' 'angus' '000000010000000000000002'"
        );
        let with_config = BarmanServer::new("angus", Some("/etc/it's barman.conf")).unwrap();
        assert_eq!(
            with_config.test("DUMMY"),
            "barman --config '/etc/it'\\''s barman.conf' get-wal --test 'angus' 'DUMMY'"
        );
    }

    #[test]
    fn hostile_names_are_refused_and_configs_are_inert() {
        for bad in ["", "a'b", "a;b", "$(id)", "a b", "a\nb", "`x`", "a\"b"] {
            assert!(BarmanServer::new(bad, None).is_err(), "{bad:?}");
        }
        assert!(BarmanServer::new("angus", Some("a\nb")).is_err());
        let hostile = "x'; touch /tmp/pwned; echo '$(id)";
        let server = BarmanServer::new("angus", Some(hostile)).unwrap();
        let cmd = server.test("DUMMY");
        let words = shell_words::split(&cmd).unwrap();
        assert_eq!(words[0..3], ["barman", "--config", hostile]);
        assert_eq!(words.len(), 7);
    }

    #[test]
    fn peek_answers_parse_or_are_refused() {
        let list = parse_peek(b"000000010000000000000002\n000000010000000000000003\n").unwrap();
        assert_eq!(list.len(), 2);
        assert!(parse_peek(b"").unwrap().is_empty());
        assert!(parse_peek(b"Welcome to barman\n").is_err());
        assert!(parse_peek(b"../etc/passwd\n").is_err());
    }

    #[test]
    fn exits_are_interpreted() {
        let not_found = RemoteExit {
            status: Some(1),
            signal: None,
            stderr: b"ERROR: WAL file 'X' not found in server 'angus'\n".to_vec(),
        };
        assert!(matches!(
            not_found.into_failure("get-wal"),
            Failure::NotFound(_)
        ));
        let missing_barman = RemoteExit {
            status: Some(127),
            signal: None,
            stderr: b"sh: 1: barman: not found\n".to_vec(),
        };
        assert_eq!(missing_barman.into_failure("get-wal").exit_code(), 1);
        let vanished = RemoteExit::default();
        assert_eq!(vanished.into_failure("get-wal").exit_code(), 2);
    }
}
