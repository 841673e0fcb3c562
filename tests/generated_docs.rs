//! The man page and the shell completions that `scripts/gen-docs.rs`
//! generates from the CLI definition: the page renders with `man -l` and
//! has the sections a DBA looks for; each completion script loads in its
//! shell and completes our options. Under CI a missing `man`, `zsh` or
//! `fish` fails the test (scripts/install-test-deps.sh installs them).

#[allow(dead_code)]
#[path = "../scripts/gen-docs.rs"]
mod gen_docs;

use std::path::Path;
use std::process::Command;

fn have(program: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    let ci = matches!(
        std::env::var("CI").as_deref(),
        Ok("true" | "TRUE" | "True" | "1" | "yes")
    );
    assert!(
        found || !ci,
        "{program} is missing (CI): scripts/install-test-deps.sh installs it"
    );
    if !found {
        eprintln!("SKIPPED: {program} is not installed");
    }
    found
}

/// Runs `program`; it must succeed and, for a completion script, say
/// nothing on stderr (fish reports a broken script there and goes on).
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .env("MANWIDTH", "100")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && (program == "man" || stderr.trim().is_empty()),
        "{program} {args:?}: {}\n{stdout}\n{stderr}",
        out.status,
    );
    stdout
}

fn generated() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    gen_docs::generate(dir.path()).unwrap();
    dir
}

#[test]
fn the_man_page_renders_with_the_sections_a_dba_looks_for() {
    let dir = generated();
    let page = dir.path().join("barman-wal-restore.1");
    if !have("man") {
        return;
    }
    let text = run("man", &["-P", "cat", "-l", page.to_str().unwrap()]);
    for section in [
        "NAME",
        "SYNOPSIS",
        "OPTIONS",
        "EXIT STATUS",
        "FILES",
        "ENVIRONMENT",
        "EXAMPLES",
    ] {
        assert!(
            text.lines().any(|l| l.trim() == section),
            "no {section} in:\n{text}"
        );
    }
    for must in [
        "--parallel",
        "--on-failure",
        "255",
        "restore_command",
        "pg_control",
    ] {
        assert!(text.contains(must), "no {must} in:\n{text}");
    }
}

fn completes(shell: &str, script: &Path, probe: &str) -> String {
    run(
        shell,
        &["-c", &probe.replace("SCRIPT", script.to_str().unwrap())],
    )
}

#[test]
fn each_completion_script_loads_in_its_shell() {
    let dir = generated();
    let completions = dir.path().join("completions");
    if have("bash") {
        let out = completes(
            "bash",
            &completions.join("barman-wal-restore.bash"),
            "source SCRIPT && complete -p barman-wal-restore",
        );
        assert!(out.contains("barman-wal-restore"), "{out}");
    }
    if have("zsh") {
        // Loads as an autoload function and defines the completion.
        let out = completes(
            "zsh",
            &completions.join("_barman-wal-restore"),
            "autoload -Uz compinit && compinit -u -D && source SCRIPT && whence -w _barman-wal-restore",
        );
        assert!(out.contains("function"), "{out}");
    }
    if have("fish") {
        let out = completes(
            "fish",
            &completions.join("barman-wal-restore.fish"),
            "source SCRIPT; complete -C 'barman-wal-restore --on-f'",
        );
        assert!(out.contains("--on-failure"), "{out}");
    }
}
