//! The remote commands (`barman`, and `cat` and `ls` for `--direct-read`):
//! how they are spelled, and what their answers and exit statuses mean (the
//! SSH layer only carries them).
//!
//! The command line travels as one string to the remote user's shell, so every
//! argument that comes from the user is quoted here; the names that can be
//! checked (server, WAL) were checked before (see [`crate::config::Server`]).

use crate::config::{Compression, Server};
use crate::error::{Error, ErrorKind};
use crate::ssh::RemoteExit;
use crate::wal::WalName;

/// One word of a remote command line.
enum Word<'a> {
    /// Spelled here: nothing to quote.
    Plain(&'a str),
    /// From the user, the archive or a number: quoted for the shell.
    Quoted(&'a str),
}

/// Spells `words` as one command line for the remote shell.
fn line(words: &[Word]) -> String {
    let spelled: Vec<String> = words
        .iter()
        .map(|word| match word {
            Word::Plain(w) => (*w).to_string(),
            Word::Quoted(w) => shell_quote(w),
        })
        .collect();
    spelled.join(" ")
}

/// The one builder of a `barman` command line: `barman [--config CONFIG]
/// SUBCOMMAND... SERVER_NAME [ARGUMENT]`.
fn barman<'a>(
    server: &'a Server,
    subcommand: impl IntoIterator<Item = Word<'a>>,
    argument: Option<&'a str>,
) -> String {
    let mut words = vec![Word::Plain("barman")];
    if let Some(config) = server.config() {
        words.extend([Word::Plain("--config"), Word::Quoted(config)]);
    }
    words.extend(subcommand);
    words.push(Word::Quoted(server.name()));
    words.extend(argument.map(Word::Quoted));
    line(&words)
}

impl Server {
    /// `barman get-wal` for one file.
    pub fn get_wal(&self, wal: &WalName, compression: Compression, partial: bool) -> String {
        let mut subcommand = vec![Word::Plain("get-wal")];
        match compression {
            Compression::Decompressed => {}
            Compression::KeepCompression => subcommand.push(Word::Plain("--keep-compression")),
            Compression::Gzip => subcommand.push(Word::Plain("--gzip")),
            Compression::Bzip2 => subcommand.push(Word::Plain("--bzip2")),
        }
        if partial {
            subcommand.push(Word::Plain("--partial"));
        }
        barman(self, subcommand, Some(wal.as_str()))
    }

    /// `barman get-wal --peek N`: the list of up to N files starting at `wal`.
    pub fn peek(&self, wal: &WalName, count: usize) -> String {
        let count = count.to_string();
        let subcommand = [
            Word::Plain("get-wal"),
            Word::Plain("--peek"),
            Word::Quoted(&count),
        ];
        barman(self, subcommand, Some(wal.as_str()))
    }

    /// `barman get-wal --test`: the connectivity check of `--test`.
    pub fn test(&self, wal: &str) -> String {
        let subcommand = [Word::Plain("get-wal"), Word::Plain("--test")];
        barman(self, subcommand, Some(wal))
    }

    /// `barman show-server`: where the archive's directories are, for
    /// `--direct-read`.
    pub fn show_server(&self) -> String {
        barman(self, [Word::Plain("show-server")], None)
    }
}

/// `cat` of a stored file, for `--direct-read`.
pub fn cat(path: &str) -> String {
    line(&[Word::Plain("cat"), Word::Plain("--"), Word::Quoted(path)])
}

/// `ls` of an archive directory, for `--direct-read`'s peek.
pub fn list(dir: &str) -> String {
    line(&[
        Word::Plain("ls"),
        Word::Plain("-1"),
        Word::Plain("--"),
        Word::Quoted(dir),
    ])
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

/// What a finished `barman` command's ending means. Barman's stderr is read
/// here, where it arrives, and only here: the failure carries its kind.
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
    pub fn into_failure(self, what: &str) -> Error {
        let lines = self.stderr_lines();
        let said = lines.join(" / ");
        match (self.status, &self.signal) {
            // Barman's own "not found" (status 1 and its words): the one
            // confirmed miss.
            (Some(1), _) if said.contains("not found") => Error::not_found(said),
            (Some(status), _) => Error::new(
                ErrorKind::RemoteStatus(i32::try_from(status).unwrap_or(i32::MAX)),
                if said.is_empty() {
                    format!("remote '{what}' exited with status {status}")
                } else {
                    format!("remote '{what}' exited with status {status}: {said}")
                },
            ),
            (None, Some(signal)) => Error::new(
                ErrorKind::RemoteSignal,
                format!("remote '{what}' was killed by signal {signal}"),
            ),
            (None, None) => Error::connection(format!(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn wal(s: &str) -> WalName {
        WalName::parse(s).unwrap()
    }

    #[test]
    fn commands_are_spelled_like_the_original() {
        let server = Server::new("angus", None).unwrap();
        let w = wal("000000010000000000000002");
        assert_eq!(
            server.get_wal(&w, Compression::Decompressed, false),
            "barman get-wal 'angus' '000000010000000000000002'"
        );
        assert_eq!(
            server.get_wal(&w, Compression::KeepCompression, true),
            "barman get-wal --keep-compression --partial 'angus' '000000010000000000000002'"
        );
        assert_eq!(
            server.peek(&w, 8),
            "barman get-wal --peek '8' 'angus' '000000010000000000000002'"
        );
        let with_config = Server::new("angus", Some("/etc/it's barman.conf")).unwrap();
        assert_eq!(
            with_config.test("DUMMY"),
            "barman --config '/etc/it'\\''s barman.conf' get-wal --test 'angus' 'DUMMY'"
        );
    }

    #[test]
    fn direct_read_commands_are_quoted_like_barmans() {
        let server = Server::new("angus", None).unwrap();
        assert_eq!(server.show_server(), "barman show-server 'angus'");
        let with_config = Server::new("angus", Some("/etc/b.conf")).unwrap();
        assert_eq!(
            with_config.show_server(),
            "barman --config '/etc/b.conf' show-server 'angus'"
        );
        assert_eq!(cat("/w/it's"), "cat -- '/w/it'\\''s'");
        assert_eq!(list("/w/00"), "ls -1 -- '/w/00'");
    }

    #[test]
    fn hostile_names_are_refused_and_configs_are_inert() {
        for bad in ["", "a'b", "a;b", "$(id)", "a b", "a\nb", "`x`", "a\"b"] {
            assert!(Server::new(bad, None).is_err(), "{bad:?}");
        }
        assert!(Server::new("angus", Some("a\nb")).is_err());
        let hostile = "x'; touch /tmp/pwned; echo '$(id)";
        let server = Server::new("angus", Some(hostile)).unwrap();
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
        assert_eq!(
            not_found.into_failure("get-wal").kind(),
            ErrorKind::NotFound
        );
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
