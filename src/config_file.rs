//! Settings from outside the command line: `/etc/barman-wal-restore.conf`
//! (TOML, keys named like the long options) and one environment variable
//! per option, so a fleet can turn on `--async` or a timeout without
//! editing every `restore_command` line (nor those `barman restore`
//! writes).
//!
//! Precedence: command line > environment > file > defaults. The layers
//! are resolved into one argument vector (file and environment settings as
//! `--long=value`, then the command line as given) and parsed once by the
//! CLI definition itself, so a value from the file is checked exactly as on
//! the command line, and turned into a [`crate::config::Config`] once. The
//! `--async` worker receives that resolved config from the call that
//! started it ([`crate::handoff`]) and reads no layer itself: it runs with
//! the settings of that call, even if the file changes. The same vector,
//! with `--config-file=none`, is its command line, as a label for `ps`.
//!
//! Every option of [`RestoreArgs`] with a long name is a setting, but for
//! the hidden worker flags and the actions (`--help`, `--version`, `--test`,
//! `--show-config`): `test = true` in a fleet's file would stop every
//! standby fetching. New options become settings without a line here.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};

use crate::cli::{RestoreArgs, EXCLUSIVE_GROUPS};

/// The file read when neither `--config-file` nor its variable names one.
pub const DEFAULT_PATH: &str = "/etc/barman-wal-restore.conf";

/// The prefix of the settings' environment variables:
/// `BARMAN_WAL_RESTORE_OPT_PARALLEL=8` is `--parallel 8`. Its own
/// namespace, so that no other variable of ours (the bench's
/// `BARMAN_WAL_RESTORE_STATS`) can ever be read as an option, and a
/// misspelt one is refused instead of ignored.
pub const ENV_PREFIX: &str = "BARMAN_WAL_RESTORE_OPT_";

/// `--config-file none`: read no file (tests, or one standby opting out of
/// the fleet's file).
pub const NO_FILE: &str = "none";

/// Ids of options that are not settings (besides hidden ones).
const ACTIONS: [&str; 4] = ["help", "version", "test", "show_config"];

/// Where an effective setting comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    CommandLine,
    Environment(String),
    File(PathBuf, usize),
    Default,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::CommandLine => write!(f, "command line"),
            Origin::Environment(var) => write!(f, "environment ({var})"),
            Origin::File(path, line) => write!(f, "{}:{line}", path.display()),
            Origin::Default => write!(f, "default"),
        }
    }
}

/// A bad file, variable or value: one line, naming where. A usage error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the program does once its settings are known.
#[derive(Debug)]
pub enum Resolution {
    Run(Box<RestoreArgs>),
    /// `--show-config`: the text to print.
    Show(String),
}

/// One setting from the file or the environment.
#[derive(Debug, Clone)]
struct Setting {
    /// Flags: whether it is on. Others: the values, in order.
    values: Vec<String>,
    flag_on: bool,
    origin: Origin,
}

impl Setting {
    /// A flag turned on, or an option given a value (`log-level` beside
    /// the `quiet` and `verbose` flags of its group).
    fn is_set(&self) -> bool {
        self.flag_on || !self.values.is_empty()
    }
}

/// The effective command line, once resolved: the `--async` worker's
/// label.
static EFFECTIVE: OnceLock<Vec<OsString>> = OnceLock::new();

/// The `--async` worker's command line after its flag (without the program
/// name), shown by `ps` and never parsed: the call's settings from every
/// layer, and `--config-file=none` since the worker reads no file. Before
/// [`resolve_process`] ran (library use), this process's own arguments.
pub fn worker_args() -> Vec<OsString> {
    match EFFECTIVE.get() {
        Some(argv) => {
            let mut argv = argv.clone();
            argv.push(format!("--config-file={NO_FILE}").into());
            argv
        }
        None => std::env::args_os().skip(1).collect(),
    }
}

/// Resolves this process's command line, environment and file; remembers
/// the result for [`worker_args`].
pub fn resolve_process() -> Result<Resolution, ConfigError> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let (resolution, effective) = resolve(&argv, std::env::vars_os())?;
    let _ = EFFECTIVE.set(effective);
    Ok(resolution)
}

/// The option's name in the file and, upper-cased, in the environment.
fn key_of(arg: &Arg) -> Option<&str> {
    arg.get_long()
}

/// The options that are settings.
fn settings(command: &Command) -> impl Iterator<Item = &Arg> {
    command.get_arguments().filter(|arg| {
        !arg.is_positional()
            && !arg.is_hide_set()
            && key_of(arg).is_some()
            && !ACTIONS.contains(&arg.get_id().as_str())
    })
}

fn is_flag(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue)
}

fn is_list(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append)
}

/// The CLI definition with the positionals optional: for `--show-config`
/// alone, and to learn what the command line sets before the layers are
/// stacked under it.
fn relaxed(command: &Command) -> Command {
    let positionals: Vec<String> = command
        .get_positionals()
        .map(|arg| arg.get_id().to_string())
        .collect();
    positionals.into_iter().fold(command.clone(), |cmd, id| {
        cmd.mut_arg(id, |arg| arg.required(false))
    })
}

/// Resolves `argv` (with the program name) against `env` and the file they
/// name. Returns what to do and the effective argument vector without the
/// program name. Command-line errors (and `--help`, `--version`) end the
/// process through clap, as before there was a file.
pub fn resolve(
    argv: &[OsString],
    env: impl Iterator<Item = (OsString, OsString)>,
) -> Result<(Resolution, Vec<OsString>), ConfigError> {
    let command = RestoreArgs::command();
    let loose = relaxed(&command);
    let given = match loose.clone().try_get_matches_from(argv) {
        Ok(matches) => matches,
        // The strict parser says it as users know it (help, usage, version).
        Err(e) => {
            RestoreArgs::parse_from_or_exit(argv);
            e.exit()
        }
    };
    let on_command_line = |id: &str| given.value_source(id) == Some(ValueSource::CommandLine);

    let environment = from_environment(&loose, env)?;
    let file_path: Option<PathBuf> = if on_command_line("config_file") {
        given.get_one::<PathBuf>("config_file").cloned()
    } else {
        environment
            .get("config_file")
            .map(|s| PathBuf::from(&s.values[0]))
    };
    let (file, file_label) = match file_path {
        Some(path) if path.as_os_str() == NO_FILE => (BTreeMap::new(), "none".to_string()),
        Some(path) => (from_file(&loose, &path, true)?, path.display().to_string()),
        None => {
            let path = Path::new(DEFAULT_PATH);
            let settings = from_file(&loose, path, false)?;
            let label = if path.exists() {
                DEFAULT_PATH.to_string()
            } else {
                format!("{DEFAULT_PATH} (absent)")
            };
            (settings, label)
        }
    };

    // Per setting, the highest layer that has it.
    let mut chosen: BTreeMap<String, Option<Setting>> = BTreeMap::new();
    let mut origins: BTreeMap<String, Origin> = BTreeMap::new();
    for arg in settings(&command) {
        let id = arg.get_id().to_string();
        let (setting, origin) = if on_command_line(&id) {
            (None, Origin::CommandLine)
        } else if let Some(s) = environment.get(&id).or_else(|| file.get(&id)) {
            (Some(s.clone()), s.origin.clone())
        } else {
            (None, Origin::Default)
        };
        chosen.insert(id.clone(), setting);
        origins.insert(id, origin);
    }
    // Options that exclude each other are one setting: the highest layer
    // that turns one of them on decides, lower layers' choices are dropped.
    for group in EXCLUSIVE_GROUPS {
        let members: Vec<String> = command
            .get_groups()
            .filter(|g| g.get_id().as_str() == group)
            .flat_map(|g| g.get_args().map(|a| a.to_string()))
            .collect();
        let rank = |id: &String| -> Option<u8> {
            match origins.get(id)? {
                Origin::CommandLine => Some(3),
                Origin::Environment(_) if chosen[id].as_ref()?.is_set() => Some(2),
                Origin::File(..) if chosen[id].as_ref()?.is_set() => Some(1),
                _ => None,
            }
        };
        let ranks: Vec<Option<u8>> = members.iter().map(rank).collect();
        let Some(top) = ranks.iter().flatten().max().copied() else {
            continue;
        };
        for (id, rank) in members.iter().zip(ranks) {
            if rank.is_some_and(|r| r < top) {
                chosen.insert(id.clone(), None);
                origins.insert(id.clone(), Origin::Default);
            }
        }
    }

    let mut effective: Vec<OsString> = Vec::new();
    for arg in settings(&command) {
        let Some(Some(setting)) = chosen.get(arg.get_id().as_str()) else {
            continue;
        };
        let long = key_of(arg).unwrap_or_default();
        if is_flag(arg) {
            if setting.flag_on {
                effective.push(format!("--{long}").into());
            }
        } else {
            effective.extend(
                setting
                    .values
                    .iter()
                    .map(|v| format!("--{long}={v}").into()),
            );
        }
    }
    effective.extend(argv.iter().skip(1).cloned());

    let mut full = vec![argv.first().cloned().unwrap_or_default()];
    full.extend(effective.iter().cloned());
    if given.get_flag("show_config") {
        let matches = loose
            .try_get_matches_from(&full)
            .map_err(|e| ConfigError(one_line(&e)))?;
        let text = show(&command, &matches, &origins, &file_label);
        return Ok((Resolution::Show(text), effective));
    }
    let args = RestoreArgs::parse_from_or_exit(&full);
    Ok((Resolution::Run(Box::new(args)), effective))
}

impl RestoreArgs {
    /// Parses, or ends the process as clap does (status 2 for a usage
    /// error, 0 for `--help`).
    fn parse_from_or_exit(argv: &[OsString]) -> RestoreArgs {
        let mut command = RestoreArgs::command();
        match command
            .try_get_matches_from_mut(argv)
            .and_then(|mut m| RestoreArgs::from_arg_matches_mut(&mut m))
        {
            Ok(args) => args,
            Err(e) => e.format(&mut command).exit(),
        }
    }
}

/// clap's message on one line (with its possible values, without its
/// "error: " and its pointer to --help).
fn one_line(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let message: Vec<&str> = rendered
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect();
    let message = message.join(" ");
    message
        .strip_prefix("error: ")
        .unwrap_or(&message)
        .to_string()
}

/// Checks `values` for `arg` with the CLI's own value parser.
fn check(loose: &Command, arg: &Arg, values: &[String]) -> Result<(), String> {
    check_all(loose, values.iter().map(|value| (arg, value.as_str())))
}

/// Checks many values at once: one parse (a copy of the CLI definition
/// costs about 20 us, and a spool hit pays this on every call).
fn check_all<'a>(
    loose: &Command,
    values: impl Iterator<Item = (&'a Arg, &'a str)>,
) -> Result<(), String> {
    let probe = std::iter::once("barman-wal-restore".to_string())
        .chain(values.map(|(arg, value)| format!("--{}={value}", key_of(arg).unwrap_or_default())));
    loose
        .clone()
        .try_get_matches_from(probe)
        .map(drop)
        .map_err(|e| one_line(&e))
}

fn settings_by_key(loose: &Command) -> BTreeMap<String, Arg> {
    settings(loose)
        .filter_map(|arg| Some((key_of(arg)?.to_string(), arg.clone())))
        .collect()
}

/// The settings variables of `env`, by option id. A variable with our
/// prefix that names no setting is refused.
fn from_environment(
    loose: &Command,
    env: impl Iterator<Item = (OsString, OsString)>,
) -> Result<BTreeMap<String, Setting>, ConfigError> {
    let by_key = settings_by_key(loose);
    let mut found = BTreeMap::new();
    for (name, value) in env {
        let Some(suffix) = name.to_str().and_then(|name| name.strip_prefix(ENV_PREFIX)) else {
            continue;
        };
        let var = format!("{ENV_PREFIX}{suffix}");
        let key = suffix.to_ascii_lowercase().replace('_', "-");
        let arg = by_key
            .get(&key)
            .filter(|_| suffix == suffix.to_ascii_uppercase())
            .ok_or_else(|| ConfigError(format!("environment variable {var}: no such setting")))?;
        let value = value
            .to_str()
            .ok_or_else(|| ConfigError(format!("environment variable {var}: not UTF-8")))?
            .to_string();
        let origin = Origin::Environment(var.clone());
        let setting = if is_flag(arg) {
            let on = match value.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => {
                    return Err(ConfigError(format!(
                        "environment variable {var}: '{value}' is not a boolean (true or false)"
                    )))
                }
            };
            Setting {
                values: Vec::new(),
                flag_on: on,
                origin,
            }
        } else {
            check(loose, arg, std::slice::from_ref(&value))
                .map_err(|e| ConfigError(format!("environment variable {var}: {e}")))?;
            Setting {
                values: vec![value],
                flag_on: false,
                origin,
            }
        };
        found.insert(arg.get_id().to_string(), setting);
    }
    Ok(found)
}

/// The settings of the file at `path`, by option id. A missing file is no
/// settings unless `required`.
fn from_file(
    loose: &Command,
    path: &Path,
    required: bool,
) -> Result<BTreeMap<String, Setting>, ConfigError> {
    let fail = |line: Option<usize>, what: String| {
        ConfigError(match line {
            Some(line) => format!("{}:{line}: {what}", path.display()),
            None => format!("{}: {what}", path.display()),
        })
    };
    let text = match read_trusted(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            return Ok(BTreeMap::new())
        }
        Err(e) => return Err(fail(None, e.to_string())),
    };
    let line_of = |offset: usize| 1 + text[..offset.min(text.len())].matches('\n').count();
    let table = toml::de::DeTable::parse(&text).map_err(|e| {
        fail(
            e.span().map(|s| line_of(s.start)),
            e.message().trim().replace('\n', " "),
        )
    })?;
    let by_key = settings_by_key(loose);
    let mut found = BTreeMap::new();
    // Values to check, with their lines: all at once, one by one only to
    // find the bad one.
    let mut pending: Vec<(Arg, Vec<String>, usize)> = Vec::new();
    for (key, value) in table.get_ref() {
        let line = line_of(key.span().start);
        let key = key.get_ref().as_ref();
        let Some(arg) = by_key.get(key).filter(|arg| arg.get_id() != "config_file") else {
            let hint = if ACTIONS.iter().any(|a| a.replace('_', "-") == key) {
                " (an action, not a setting)"
            } else {
                ""
            };
            return Err(fail(Some(line), format!("unknown key '{key}'{hint}")));
        };
        let origin = Origin::File(path.to_path_buf(), line);
        let bad = |expected: &str| fail(Some(line), format!("'{key}' must be {expected}"));
        use toml::de::DeValue;
        let scalar = |value: &DeValue| -> Option<String> {
            match value {
                DeValue::String(s) => Some(s.to_string()),
                DeValue::Integer(i) if i.radix() == 10 => Some(i.as_str().replace('_', "")),
                _ => None,
            }
        };
        let setting = if is_flag(arg) {
            let on = value
                .get_ref()
                .as_bool()
                .ok_or_else(|| bad("true or false"))?;
            Setting {
                values: Vec::new(),
                flag_on: on,
                origin,
            }
        } else {
            let values = match value.get_ref() {
                DeValue::Array(items) if is_list(arg) => items
                    .iter()
                    .map(|item| scalar(item.get_ref()))
                    .collect::<Option<Vec<String>>>()
                    .ok_or_else(|| bad("a list of strings"))?,
                other => vec![scalar(other).ok_or_else(|| {
                    bad(if is_list(arg) {
                        "a string or a list of strings"
                    } else {
                        "a string or an integer"
                    })
                })?],
            };
            pending.push((arg.clone(), values.clone(), line));
            Setting {
                values,
                flag_on: false,
                origin,
            }
        };
        found.insert(arg.get_id().to_string(), setting);
    }
    let all = pending
        .iter()
        .flat_map(|(arg, values, _)| values.iter().map(move |v| (arg, v.as_str())));
    if check_all(loose, all).is_err() {
        for (arg, values, line) in &pending {
            check(loose, arg, values).map_err(|e| fail(Some(*line), e))?;
        }
    }
    Ok(found)
}

/// Reads the file if no one but its owner (root or us) may change it: it
/// decides which host a standby trusts and what runs there, as OpenSSH's
/// own ssh_config check reasons.
fn read_trusted(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let mut file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != me {
        return Err(std::io::Error::other(format!(
            "refused: owned by uid {}, neither root nor this user",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(std::io::Error::other(format!(
            "refused: writable by group or others (mode {:o})",
            meta.mode() & 0o7777
        )));
    }
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

/// `--show-config`: every setting as a TOML line the file would accept,
/// and where it comes from.
fn show(
    command: &Command,
    matches: &ArgMatches,
    origins: &BTreeMap<String, Origin>,
    file: &str,
) -> String {
    let mut out = format!("# barman-wal-restore settings; file: {file}\n");
    let render = |raw: &OsStr| {
        let raw = raw.to_string_lossy();
        if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
            raw.into_owned()
        } else {
            format!("{raw:?}")
        }
    };
    for arg in settings(command) {
        let id = arg.get_id().as_str();
        let key = key_of(arg).unwrap_or_default();
        let value = if is_flag(arg) {
            Some(matches.get_flag(id).to_string())
        } else {
            matches.get_raw(id).map(|raw| {
                let values: Vec<String> = raw.map(render).collect();
                if is_list(arg) {
                    format!("[{}]", values.join(", "))
                } else {
                    values.join(", ")
                }
            })
        };
        let origin = origins.get(id).cloned().unwrap_or(Origin::Default);
        // Not a key of the file: shown, but commented out.
        let comment = if id == "config_file" { "# " } else { "" };
        match value {
            Some(value) => out.push_str(&format!("{comment}{key} = {value}  # {origin}\n")),
            None => out.push_str(&format!("# {key} is not set  # {origin}\n")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        std::iter::once("barman-wal-restore")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect()
    }

    fn env(vars: &[(&str, &str)]) -> impl Iterator<Item = (OsString, OsString)> {
        vars.iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn other_variables_of_ours_are_not_settings() {
        let (resolution, effective) = resolve(
            &os(&["--config-file", "none", "h", "s", "w", "d"]),
            env(&[("BARMAN_WAL_RESTORE_STATS", "/tmp/x"), ("PARALLEL", "3")]),
        )
        .unwrap();
        let Resolution::Run(args) = resolution else {
            panic!()
        };
        assert_eq!(args.parallel, 0);
        assert_eq!(
            effective,
            os(&["--config-file", "none", "h", "s", "w", "d"])[1..]
        );
    }

    #[test]
    fn a_misspelt_variable_is_refused() {
        let err = resolve(
            &os(&["--config-file", "none", "h", "s", "w", "d"]),
            env(&[("BARMAN_WAL_RESTORE_OPT_PARALEL", "3")]),
        )
        .unwrap_err();
        assert!(err.0.contains("BARMAN_WAL_RESTORE_OPT_PARALEL"), "{err}");
    }
}
