//! The settings file and the settings variables, under the
//! command line. Checked through `--show-config` (what a DBA reads) and
//! through calls against the embedded Barman (what PostgreSQL gets).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use embedded_barman::StoredCompression;

const PREFIX: &str = "BARMAN_WAL_RESTORE_OPT_";

/// Writes a settings file (mode 0600) in `dir`.
fn settings_file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("barman-wal-restore.conf");
    fs::write(&path, text).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Runs the binary with `args` and exactly the settings variables `env`
/// (none of the runner's), bounded.
fn run(args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, _) in std::env::vars() {
        if name.starts_with(PREFIX) {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    let child = command.spawn().expect("the binary starts");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = rx
        .recv_timeout(CALL_TIMEOUT)
        .expect("the call ends in time")
        .unwrap();
    Outcome {
        code: output.status.code().unwrap_or(-1),
        signaled: None,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: Duration::ZERO,
        command: BIN.to_string(),
    }
}

/// `--show-config`'s lines as key -> (value, origin).
fn shown(out: &Outcome) -> BTreeMap<String, (String, String)> {
    out.assert_code(0);
    out.stdout
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (setting, origin) = l.split_once("  # ").expect("a commented line");
            let (key, value) = setting.split_once(" = ").expect("key = value");
            (key.to_string(), (value.to_string(), origin.to_string()))
        })
        .collect()
}

fn assert_setting(
    settings: &BTreeMap<String, (String, String)>,
    key: &str,
    value: &str,
    origin: &str,
) {
    let (v, o) = settings
        .get(key)
        .unwrap_or_else(|| panic!("{key} not shown: {settings:?}"));
    assert_eq!(
        (v.as_str(), o.as_str()),
        (value, origin),
        "{key}: {settings:?}"
    );
}

/// The single ERROR line, which must name `needles`, and status 2.
fn assert_usage_error(out: &Outcome, needles: &[&str]) {
    assert_eq!(out.code, 2, "stderr: {}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {}", out.stderr);
    assert!(lines[0].starts_with("ERROR: "), "{}", out.stderr);
    for needle in needles {
        assert!(lines[0].contains(needle), "{needle:?} in {}", out.stderr);
    }
}

#[test]
fn command_line_over_environment_over_file_over_default() {
    let work = Work::new();
    let file = settings_file(
        work.path(),
        "# a fleet's settings\n\
         parallel = 8\n\
         io-timeout = 7\n\
         sleep = 4\n\
         spool-dir = \"/srv/spool\"\n",
    );
    let file_arg = file.to_str().unwrap();
    let env = [
        ("BARMAN_WAL_RESTORE_OPT_PARALLEL", "5"),
        ("BARMAN_WAL_RESTORE_OPT_IO_TIMEOUT", "6"),
        // Ours, but not a setting: must neither apply nor be refused.
        ("BARMAN_WAL_RESTORE_STATS", "/dev/null"),
    ];
    let settings = shown(&run(
        &["--config-file", file_arg, "--show-config", "-p", "3"],
        &env,
    ));
    assert_setting(&settings, "parallel", "3", "command line");
    assert_setting(
        &settings,
        "io-timeout",
        "6",
        "environment (BARMAN_WAL_RESTORE_OPT_IO_TIMEOUT)",
    );
    assert_setting(&settings, "sleep", "4", &format!("{file_arg}:4"));
    assert_setting(
        &settings,
        "spool-dir",
        "\"/srv/spool\"",
        &format!("{file_arg}:5"),
    );
    assert_setting(&settings, "async-idle", "60", "default");

    // The environment may name the file too; the command line still wins.
    let env_file = [("BARMAN_WAL_RESTORE_OPT_CONFIG_FILE", file_arg)];
    let settings = shown(&run(&["--show-config"], &env_file));
    assert_setting(&settings, "parallel", "8", &format!("{file_arg}:2"));
    let settings = shown(&run(&["--show-config", "--config-file", "none"], &env_file));
    assert_setting(&settings, "parallel", "0", "default");
}

#[test]
fn a_repeated_option_on_the_command_line_still_wins() {
    let work = Work::new();
    let file = settings_file(work.path(), "parallel = 8\n");
    let settings = shown(&run(
        &[
            "--config-file",
            file.to_str().unwrap(),
            "-p",
            "3",
            "--show-config",
            "h",
            "s",
            "w",
            "d",
            "-p",
            "4",
        ],
        &[],
    ));
    assert_setting(&settings, "parallel", "4", "command line");
}

#[test]
fn a_flag_the_file_turns_on_the_environment_can_turn_off() {
    let work = Work::new();
    let file = settings_file(work.path(), "async = true\ndirect-read = true\n");
    let file_arg = file.to_str().unwrap();
    let settings = shown(&run(
        &["--config-file", file_arg, "--show-config"],
        &[("BARMAN_WAL_RESTORE_OPT_ASYNC", "false")],
    ));
    assert_setting(
        &settings,
        "async",
        "false",
        "environment (BARMAN_WAL_RESTORE_OPT_ASYNC)",
    );
    assert_setting(&settings, "direct-read", "true", &format!("{file_arg}:2"));
}

#[test]
fn a_higher_layer_choosing_another_compression_overrides_the_files() {
    let work = Work::new();
    let file = settings_file(work.path(), "gzip = true\n");
    let file_arg = file.to_str().unwrap();
    let settings = shown(&run(&["--config-file", file_arg, "--show-config"], &[]));
    assert_setting(&settings, "gzip", "true", &format!("{file_arg}:1"));
    for (args, env) in [
        (vec!["-j"], vec![]),
        (vec![], vec![("BARMAN_WAL_RESTORE_OPT_BZIP2", "true")]),
    ] {
        let mut argv = vec!["--config-file", file_arg, "--show-config"];
        argv.extend(args);
        let settings = shown(&run(&argv, &env));
        assert_setting(&settings, "gzip", "false", "default");
        assert_eq!(settings["bzip2"].0, "true");
    }
}

#[test]
fn a_list_on_the_command_line_replaces_the_files() {
    let work = Work::new();
    let file = settings_file(work.path(), "identity = [\"/k/a\", \"/k/b\"]\n");
    let file_arg = file.to_str().unwrap();
    let settings = shown(&run(&["--config-file", file_arg, "--show-config"], &[]));
    assert_setting(
        &settings,
        "identity",
        "[\"/k/a\", \"/k/b\"]",
        &format!("{file_arg}:1"),
    );
    let settings = shown(&run(
        &["--config-file", file_arg, "--show-config", "-i", "/k/c"],
        &[],
    ));
    assert_setting(&settings, "identity", "[\"/k/c\"]", "command line");
}

#[test]
fn show_config_needs_no_positionals_and_its_output_is_a_valid_file() {
    let work = Work::new();
    let out = run(&["--config-file", "none", "--show-config"], &[]);
    let settings = shown(&out);
    assert_setting(&settings, "on-failure", "\"auto\"", "default");
    // What it prints, pasted into the file, is read back as the same.
    let file = settings_file(work.path(), &out.stdout);
    let again = shown(&run(
        &["--config-file", file.to_str().unwrap(), "--show-config"],
        &[],
    ));
    for (key, (value, _)) in &settings {
        assert_eq!(&again[key].0, value, "{key}");
    }
    assert!(again.values().all(|(_, origin)| origin != "default"));
}

#[test]
fn an_unknown_key_is_a_usage_error_naming_file_and_line() {
    let barman = server(spec(StoredCompression::None, 2));
    let work = Work::new();
    let file = settings_file(work.path(), "parallel = 2\n\nparalel = 8\n");
    let out = Call::new(&barman, &work)
        .env("BARMAN_WAL_RESTORE_OPT_CONFIG_FILE", file.to_str().unwrap())
        .run(FIRST, &work.dest());
    assert_usage_error(
        &out,
        &[&format!("{}:3", file.display()), "unknown key 'paralel'"],
    );
    assert!(!work.dest().exists());
    assert_eq!(barman.stats().connections, 0, "refused before connecting");

    // An action is not a setting: a fleet's `test = true` would stop
    // every standby fetching.
    let file = settings_file(work.path(), "test = true\n");
    let out = run(
        &["--config-file", file.to_str().unwrap(), "h", "s", "w", "d"],
        &[],
    );
    assert_usage_error(&out, &[":1:", "unknown key 'test'"]);
}

#[test]
fn a_bad_value_is_a_usage_error_naming_file_and_line() {
    let work = Work::new();
    for (text, needles) in [
        (
            "io-timeout = \"soon\"\n",
            vec![":1:", "'soon'", "--io-timeout"],
        ),
        (
            "\nasync = \"yes\"\n",
            vec![":2:", "'async' must be true or false"],
        ),
        (
            "on-failure = \"never\"\n",
            vec![":1:", "'never'", "not-available"],
        ),
        ("parallel = 1.5\n", vec![":1:", "'parallel' must be"]),
        ("\n\nport = \n", vec![":3:"]),
    ] {
        let file = settings_file(work.path(), text);
        let out = run(
            &["--config-file", file.to_str().unwrap(), "h", "s", "w", "d"],
            &[],
        );
        let mut needles = needles.clone();
        let path = file.display().to_string();
        needles.push(&path);
        assert_usage_error(&out, &needles);
    }
}

#[test]
fn a_bad_or_misspelt_variable_is_a_usage_error() {
    let out = run(
        &["--config-file", "none", "h", "s", "w", "d"],
        &[("BARMAN_WAL_RESTORE_OPT_PARALLEL", "many")],
    );
    assert_usage_error(&out, &["BARMAN_WAL_RESTORE_OPT_PARALLEL", "'many'"]);
    let out = run(
        &["--config-file", "none", "h", "s", "w", "d"],
        &[("BARMAN_WAL_RESTORE_OPT_PARALEL", "2")],
    );
    assert_usage_error(&out, &["BARMAN_WAL_RESTORE_OPT_PARALEL", "no such setting"]);
}

#[test]
fn a_missing_named_file_is_an_error_and_a_writable_one_is_refused() {
    let work = Work::new();
    let missing = work.path().join("nowhere.conf");
    let out = run(
        &[
            "--config-file",
            missing.to_str().unwrap(),
            "h",
            "s",
            "w",
            "d",
        ],
        &[],
    );
    assert_usage_error(&out, &[missing.to_str().unwrap()]);

    let file = settings_file(work.path(), "parallel = 2\n");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o666)).unwrap();
    let out = run(
        &["--config-file", file.to_str().unwrap(), "--show-config"],
        &[],
    );
    assert_usage_error(
        &out,
        &[file.to_str().unwrap(), "writable by group or others"],
    );
}

#[test]
fn the_default_file_may_be_absent() {
    if Path::new("/etc/barman-wal-restore.conf").exists() {
        eprintln!("skipped: this machine has /etc/barman-wal-restore.conf");
        return;
    }
    let settings = shown(&run(&["--show-config"], &[]));
    assert_setting(&settings, "parallel", "0", "default");
}

/// `async = true` and `parallel = 3` in the file reach the worker as
/// arguments, and the worker reads no file: one changed (here broken)
/// after the call does not change the worker.
#[test]
fn settings_from_the_file_reach_the_async_worker() {
    let count = 6;
    let barman = server(spec(StoredCompression::Zstd, count));
    let archive = barman.archive();
    let work = Work::new();
    let file = settings_file(
        work.path(),
        "async = true\nparallel = 3\nasync-idle = 30\nverbose = true\n",
    );
    let call =
        Call::new(&barman, &work).env("BARMAN_WAL_RESTORE_OPT_CONFIG_FILE", file.to_str().unwrap());
    let first = call.run(&seg(0), &work.dest());
    first.assert_code(0);
    first.assert_says("delivered by the --async worker");
    assert_delivered(archive, &work.dest(), &seg(0));
    fs::write(&file, "no-such-setting = 1\n").unwrap();

    for n in 1..=3 {
        let ready = wait_until(Duration::from_secs(20), || work.spool.join(seg(n)).exists());
        assert!(ready, "{} never arrived", seg(n));
    }
    let pids = worker_pids(&work);
    assert_eq!(pids.len(), 1, "one worker");
    let cmdline = fs::read(format!("/proc/{}/cmdline", pids[0])).unwrap();
    let argv: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    for expected in [
        "--async",
        "--parallel=3",
        "--async-idle=30",
        "--config-file=none",
    ] {
        assert!(argv.iter().any(|a| a == expected), "{expected} in {argv:?}");
    }

    let removed = wait_until(Duration::from_secs(10), || {
        fs::remove_dir_all(&work.spool).is_ok() || !work.spool.exists()
    });
    assert!(removed);
    let gone = wait_until(Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{}", pids[0])).exists()
            || fs::read_to_string(format!("/proc/{}/stat", pids[0])).is_ok_and(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
    });
    assert!(gone, "the worker outlived its spool");
}

/// `log-level` and `quiet` are settings like any other; with `verbose`
/// they are one choice (they exclude each other on the command line): a
/// higher layer's choice replaces a lower one's instead of clashing with
/// it, and what the file chooses is what a call prints.
#[test]
fn the_log_level_is_a_setting_and_a_higher_layer_chooses_it() {
    let work = Work::new();
    let file = settings_file(work.path(), "sleep = 0\nlog-level = \"warning\"\n");
    let file_arg = file.to_str().unwrap();
    let settings = shown(&run(&["--config-file", file_arg, "--show-config"], &[]));
    assert_setting(
        &settings,
        "log-level",
        "\"warning\"",
        &format!("{file_arg}:2"),
    );
    assert_setting(&settings, "quiet", "false", "default");
    for (args, env, key) in [
        (vec!["-v"], vec![], "verbose"),
        (vec!["-q"], vec![], "quiet"),
        (
            vec![],
            vec![("BARMAN_WAL_RESTORE_OPT_QUIET", "true")],
            "quiet",
        ),
        (
            vec!["--log-level", "debug"],
            vec![("BARMAN_WAL_RESTORE_OPT_QUIET", "true")],
            "log-level",
        ),
    ] {
        let mut argv = vec!["--config-file", file_arg, "--show-config"];
        argv.extend(&args);
        let settings = shown(&run(&argv, &env));
        let others: Vec<&str> = ["verbose", "quiet"]
            .into_iter()
            .filter(|k| *k != key)
            .collect();
        for other in others {
            assert_setting(&settings, other, "false", "default");
        }
        if key != "log-level" {
            assert_eq!(settings[key].0, "true", "{args:?} {env:?}");
            assert!(
                !settings.contains_key("log-level"),
                "{args:?} {env:?}: the file's log-level is dropped: {settings:?}"
            );
        }
    }
    let bad = settings_file(work.path(), "log-level = \"loud\"\n");
    let out = run(
        &["--config-file", bad.to_str().unwrap(), "h", "s", "w", "d"],
        &[],
    );
    assert_usage_error(&out, &[bad.to_str().unwrap(), ":1", "loud"]);

    // What the file chooses is what a call prints: quiet, a failing call
    // says its ERROR alone; debug, every line has the time and the pid.
    let barman = server(spec(StoredCompression::Gzip, 1));
    let quiet = settings_file(work.path(), "quiet = true\n");
    let call = Call::new(&barman, &work).args(["-p", "2"]).env(
        "BARMAN_WAL_RESTORE_OPT_CONFIG_FILE",
        quiet.to_str().unwrap(),
    );
    let out = call.run(&seg(0), &work.dest());
    out.assert_code(0);
    assert_eq!(out.stderr, "");
    let out = call.run(&seg(5), &work.dest());
    out.assert_code(1);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    out.assert_one_error(&[&seg(5)]);
    let debug = settings_file(work.path(), "log-level = \"debug\"\n");
    let out = Call::new(&barman, &work)
        .env(
            "BARMAN_WAL_RESTORE_OPT_CONFIG_FILE",
            debug.to_str().unwrap(),
        )
        .run(&seg(0), &work.dest());
    out.assert_code(0);
    assert!(
        out.stderr.contains("] DEBUG: ") && out.stderr.lines().all(|l| l.contains("] DEBUG: ")),
        "{}",
        out.stderr
    );
}
