//! The remote command line: split as `sh -c` would, then parsed the way
//! Barman's argparse parser reads `barman [-c C] get-wal [options] SERVER WAL`.
//!
//! Failures carry the exit status and stderr the real host would produce, so
//! the server only has to send them.

/// A parsed `barman ... get-wal ...` command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GetWal {
    /// `-c/--config` before the subcommand.
    pub config: Option<String>,
    pub test: bool,
    pub peek: Option<u32>,
    pub gzip: bool,
    pub bzip2: bool,
    pub keep_compression: bool,
    pub partial: bool,
    pub server: String,
    pub wal: String,
}

/// What the remote side answers without running get-wal: a usage error, a
/// shell error, a missing command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u32,
    pub stderr: String,
}

impl Refusal {
    fn usage(message: &str) -> Refusal {
        Refusal {
            status: 2,
            stderr: format!(
                "usage: barman get-wal [-h] [-o OUTPUT_DIRECTORY] [-P] [-z | -j | --keep-compression] \
                 [-t] [-p N] server_name wal_name\nbarman get-wal: error: {message}\n"
            ),
        }
    }

    fn barman_usage(message: &str) -> Refusal {
        Refusal {
            status: 2,
            stderr: format!("usage: barman [-h] [-v] [-c CONFIG] [--color {{never,always,auto}}] [-q] [-d] [-f {{json,console}}] ...\nbarman: error: {message}\n"),
        }
    }
}

/// Whether an exec string contains shell syntax that `sh -c` would act on
/// outside quotes (`;`, `|`, `&`, redirections, substitutions, newlines):
/// a correctly quoting client never sends any.
pub fn has_unquoted_shell_syntax(command: &str) -> bool {
    #[derive(PartialEq)]
    enum Quote {
        None,
        Single,
        Double,
    }
    let mut state = Quote::None;
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        match state {
            Quote::Single => {
                if c == '\'' {
                    state = Quote::None;
                }
            }
            Quote::Double => match c {
                '"' => state = Quote::None,
                '\\' => {
                    chars.next();
                }
                '$' | '`' => return true,
                _ => {}
            },
            Quote::None => match c {
                '\'' => state = Quote::Single,
                '"' => state = Quote::Double,
                '\\' => {
                    chars.next();
                }
                ';' | '&' | '|' | '<' | '>' | '(' | ')' | '$' | '`' | '\n' => return true,
                _ => {}
            },
        }
    }
    false
}

/// The other commands a direct-reading client sends (`--direct-read`):
/// `barman [--config C] show-server SERVER`, `cat -- PATH`, `ls -1 -- DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectCommand {
    ShowServer {
        config: Option<String>,
        server: String,
    },
    Cat(String),
    List(String),
}

/// Recognises a direct-read command; `None` for anything else (get-wal
/// and every refusal stay with [`parse`]).
pub fn parse_direct(command: &str) -> Option<DirectCommand> {
    let words = shell_words::split(command).ok()?;
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["cat", "--", path] => Some(DirectCommand::Cat(path.to_string())),
        ["ls", "-1", "--", dir] => Some(DirectCommand::List(dir.to_string())),
        ["barman", "show-server", server] => Some(DirectCommand::ShowServer {
            config: None,
            server: server.to_string(),
        }),
        ["barman", "--config" | "-c", config, "show-server", server] => {
            Some(DirectCommand::ShowServer {
                config: Some(config.to_string()),
                server: server.to_string(),
            })
        }
        _ => None,
    }
}

/// Splits and parses an exec string.
pub fn parse(command: &str) -> Result<GetWal, Refusal> {
    let words = shell_words::split(command).map_err(|_| Refusal {
        status: 2,
        stderr: "sh: 1: Syntax error: Unterminated quoted string\n".to_string(),
    })?;
    let Some((program, args)) = words.split_first() else {
        // An empty command runs a login shell that exits at once.
        return Err(Refusal {
            status: 0,
            stderr: String::new(),
        });
    };
    if program != "barman" {
        return Err(Refusal {
            status: 127,
            stderr: format!("sh: 1: {program}: not found\n"),
        });
    }
    let mut get_wal = GetWal::default();
    let mut rest = args.iter();
    // Global options, up to the subcommand.
    loop {
        let Some(arg) = rest.next() else {
            return Err(Refusal::barman_usage(
                "the following arguments are required: command",
            ));
        };
        match arg.as_str() {
            "-c" | "--config" => {
                let value = rest.next().ok_or_else(|| {
                    Refusal::barman_usage("argument -c/--config: expected one argument")
                })?;
                get_wal.config = Some(value.clone());
            }
            "-q" | "--quiet" | "-d" | "--debug" => {}
            "get-wal" => break,
            other => {
                if let Some(value) = other.strip_prefix("--config=") {
                    get_wal.config = Some(value.to_string());
                } else if let Some(value) = other.strip_prefix("-c").filter(|v| !v.is_empty()) {
                    get_wal.config = Some(value.to_string());
                } else if other.starts_with('-') {
                    return Err(Refusal::barman_usage(&format!(
                        "unrecognized arguments: {other}"
                    )));
                } else {
                    return Err(Refusal::barman_usage(&format!(
                        "argument command: invalid choice: '{other}'"
                    )));
                }
            }
        }
    }
    parse_get_wal(rest.as_slice(), get_wal)
}

fn parse_peek(value: &str) -> Result<u32, Refusal> {
    match value.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(Refusal::usage(&format!(
            "argument -p/--peek: '{value}' is not a positive integer"
        ))),
    }
}

fn parse_get_wal(args: &[String], mut get_wal: GetWal) -> Result<GetWal, Refusal> {
    let mut positionals = Vec::new();
    let mut unknown = Vec::new();
    let mut only_positionals = false;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if only_positionals || arg == "-" || !arg.starts_with('-') {
            positionals.push(arg.clone());
            continue;
        }
        if arg == "--" {
            only_positionals = true;
            continue;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            match name {
                "test" => get_wal.test = true,
                "gzip" => get_wal.gzip = true,
                "bzip2" => get_wal.bzip2 = true,
                "keep-compression" => get_wal.keep_compression = true,
                "partial" => get_wal.partial = true,
                "peek" => {
                    let value = match inline {
                        Some(v) => v,
                        None => iter.next().cloned().ok_or_else(|| {
                            Refusal::usage("argument -p/--peek: expected one argument")
                        })?,
                    };
                    get_wal.peek = Some(parse_peek(&value)?);
                }
                _ => unknown.push(arg.clone()),
            }
            continue;
        }
        // A cluster of short options: -tP, -p3, -zP.
        let cluster: Vec<char> = arg[1..].chars().collect();
        for (i, flag) in cluster.iter().enumerate() {
            match flag {
                't' => get_wal.test = true,
                'z' => get_wal.gzip = true,
                'j' => get_wal.bzip2 = true,
                'P' => get_wal.partial = true,
                'p' => {
                    let attached: String = cluster[i + 1..].iter().collect();
                    let value = if attached.is_empty() {
                        iter.next().cloned().ok_or_else(|| {
                            Refusal::usage("argument -p/--peek: expected one argument")
                        })?
                    } else {
                        attached
                    };
                    get_wal.peek = Some(parse_peek(&value)?);
                    break;
                }
                _ => {
                    unknown.push(arg.clone());
                    break;
                }
            }
        }
    }
    if get_wal.gzip && get_wal.bzip2 {
        return Err(Refusal::usage(
            "argument -j/--bzip2: not allowed with argument -z/--gzip",
        ));
    }
    match positionals.len() {
        0 => {
            return Err(Refusal::usage(
                "the following arguments are required: server_name, wal_name",
            ))
        }
        1 => {
            return Err(Refusal::usage(
                "the following arguments are required: wal_name",
            ))
        }
        2 => {}
        _ => unknown.extend(positionals.drain(2..)),
    }
    if !unknown.is_empty() {
        return Err(Refusal::barman_usage(&format!(
            "unrecognized arguments: {}",
            unknown.join(" ")
        )));
    }
    get_wal.wal = positionals.pop().unwrap_or_default();
    get_wal.server = positionals.pop().unwrap_or_default();
    Ok(get_wal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_options_in_any_order_and_form() {
        let cmd = parse("barman --config '/etc/barman.conf' get-wal --peek '3' --keep-compression 'angus' '000000010000000000000001'")
            .unwrap();
        assert_eq!(cmd.config.as_deref(), Some("/etc/barman.conf"));
        assert_eq!(cmd.peek, Some(3));
        assert!(cmd.keep_compression && !cmd.partial && !cmd.test);
        assert_eq!(
            (cmd.server.as_str(), cmd.wal.as_str()),
            ("angus", "000000010000000000000001")
        );

        let cmd = parse("barman -c/x.conf get-wal angus -Pp2 --gzip X").unwrap();
        assert_eq!(cmd.config.as_deref(), Some("/x.conf"));
        assert!(cmd.partial && cmd.gzip);
        assert_eq!(cmd.peek, Some(2));
        assert_eq!(cmd.wal, "X");

        let cmd = parse("barman get-wal --peek=4 -t -- -odd-server DUMMY").unwrap();
        assert!(cmd.test);
        assert_eq!((cmd.peek, cmd.server.as_str()), (Some(4), "-odd-server"));
    }

    #[test]
    fn usage_errors_exit_2() {
        for bad in [
            "barman get-wal --peek 0 angus X",
            "barman get-wal --peek -1 angus X",
            "barman get-wal --peek",
            "barman get-wal --frobnicate angus X",
            "barman get-wal angus",
            "barman get-wal angus X extra",
            "barman get-wal -z -j angus X",
            "barman get-wal --config c angus X",
            "barman",
            "barman list-server",
            "barman 'get-wal angus X'",
        ] {
            let refusal = parse(bad).unwrap_err();
            assert_eq!(refusal.status, 2, "{bad}: {refusal:?}");
            assert!(refusal.stderr.contains("error:"), "{bad}: {refusal:?}");
        }
    }

    #[test]
    fn hostile_input_stays_inside_one_word() {
        let cmd =
            parse(r#"barman get-wal 'angus'"'"'; rm -rf /' '000000010000000000000001'"#).unwrap();
        assert_eq!(cmd.server, "angus'; rm -rf /");
        assert!(!has_unquoted_shell_syntax(
            r#"barman get-wal 'angus'"'"'; rm -rf /' X"#
        ));
        assert!(has_unquoted_shell_syntax(
            "barman get-wal 'angus'; rm -rf / X"
        ));
        assert!(has_unquoted_shell_syntax("barman get-wal \"$(id)\" X"));
        assert!(has_unquoted_shell_syntax("barman get-wal angus X\nid"));
        assert!(!has_unquoted_shell_syntax("barman get-wal 'a$b|c' X"));
    }

    #[test]
    fn other_programs_are_not_found() {
        let refusal = parse("rm -rf /").unwrap_err();
        assert_eq!(
            (refusal.status, refusal.stderr.as_str()),
            (127, "sh: 1: rm: not found\n")
        );
        assert_eq!(parse("barman get-wal 'angus X").unwrap_err().status, 2);
    }
}
