//! Writes the man page and the bash, zsh and fish completions of
//! `barman-wal-restore`, generated from its CLI definition so that they
//! cannot drift from `--help`:
//!
//! ```sh
//! cargo run --example gen-docs -- OUTDIR
//! # OUTDIR/barman-wal-restore.1, OUTDIR/completions/{barman-wal-restore.bash,_barman-wal-restore,barman-wal-restore.fish}
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use barman_wal_restore::cli::RestoreArgs;
use clap::CommandFactory;
use clap_complete::Shell;

/// The sections clap does not know, in roff. Exit statuses are the
/// contract with PostgreSQL, so they come first.
const EXTRA_SECTIONS: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
The complete, verified file is at WAL_DEST.
.TP
\fB1\fR
Barman does not have the file (also every missing .history), or its copy is damaged. PostgreSQL reads it as "not available".
.TP
\fB2\fR
Connection, authentication, host key or transport failure, after bounded retries and \-\-sleep; or a usage error, as argparse exits.
.TP
\fB3\fR
Local problem: WAL_DEST is a directory or unwritable, unusable spool, invalid WAL or server name, an ssh_config that cannot be honoured.
.TP
\fB1..125\fR
Any other status of the remote command, clamped: a remote 127 or 255 becomes 1.
.TP
\fB130\fR, \fB143\fR
Interrupted by SIGINT or SIGTERM; temp files removed.
.TP
\fB255\fR
Only with \-\-on\-failure: recovery deliberately stopped rather than ended early (an archive recovery whose failure is not Barman's confirmed "not found"). PostgreSQL stops with a FATAL error; starting it again resumes recovery.
.SH FILES
.TP
\fI/etc/barman\-wal\-restore.conf\fR
Settings (TOML), keys named like the long options (\fBparallel = 8\fR, \fBasync = true\fR, \fBspool\-dir = "/var/tmp/walrestore"\fR); \-\-config\-file names another, \fBnone\fR reads none. Under the environment and the command line. An unknown key, a bad value or a file writable by group or others is an error naming the file and line (status 2), before any connection. \-\-show\-config prints the effective settings and where each comes from.
.TP
\fI/var/tmp/walrestore\fR
The default spool directory (\-\-spool\-dir): created 0700; refused if it is a symlink, owned by another user or writable by others. \fI.bwr\-owner\fR records whose spool it is; \fI.bwr\-worker.log\fR is the \-\-async worker's log (each line with the time and pid), rotated to \fI.bwr\-worker.log.1\fR at 1 MiB.
.TP
\fI~/.ssh/config\fR, \fI/etc/ssh/ssh_config\fR
Resolved by OpenSSH itself (ssh \-G); a directive that is not honoured stops the call. \-F replaces both.
.TP
\fI~/.ssh/known_hosts\fR, \fI/etc/ssh/ssh_known_hosts\fR
Host keys, as ssh_config's UserKnownHostsFile and GlobalKnownHostsFile name them.
.TP
\fIglobal/pg_control\fR (in the working directory)
When restore_command runs in a data directory, every delivery is checked against its system identifier and WAL segment size.
.TP
\fI.bwr\-head\-notice\fR (in the working directory)
In standby mode (\fIstandby.signal\fR), its modification time is when the standby last said, as INFO, that it waits at the archive's head: once a minute at most, whatever the number of calls. An empty file; removing it is harmless.
.SH ENVIRONMENT
.TP
\fBBARMAN_WAL_RESTORE_OPT_\fR\fIOPTION\fR
One per option: the long option in capitals, \fB_\fR for \fB\-\fR (\fBBARMAN_WAL_RESTORE_OPT_PARALLEL=8\fR, \fBBARMAN_WAL_RESTORE_OPT_ASYNC=true\fR, \fBBARMAN_WAL_RESTORE_OPT_CONFIG_FILE=none\fR). Over the settings file, under the command line. A misspelt one is an error.
.TP
\fBSSH_AUTH_SOCK\fR
The ssh\-agent, unless ssh_config's IdentityAgent names another.
.TP
\fBPATH\fR
Where \fBssh\fR is found, to resolve ssh_config (ssh \-G).
.TP
\fBBARMAN_WAL_RESTORE_STATS\fR, \fBBARMAN_WAL_RESTORE_WORKER_STATS\fR
For barman\-wal\-bench: files to which a call and the \-\-async worker append their connection counts and peak memory.
.TP
\fBBARMAN_WAL_RESTORE_TEST_HEAD_NOTICE_SECS\fR, \fBBARMAN_WAL_RESTORE_TEST_WORKER_LOG_BYTES\fR
For tests only: the interval of the standby's notice at the archive's head (60 s), and the size at which the worker's log is rotated (1 MiB).
.SH EXAMPLES
In postgresql.conf of the standby (Barman host "barman", Barman server "angus"):
.PP
.nf
restore_command = '/usr/bin/barman\-wal\-restore \-U barman \-p 8 \-s 10 barman angus %f %p'
.fi
.PP
Check the connection and the configuration first, as the postgres user:
.PP
.nf
barman\-wal\-restore \-\-test barman angus DUMMY DUMMY
.fi
.PP
A long recovery from the archive, with the spool kept ahead of replay:
.PP
.nf
restore_command = 'barman\-wal\-restore \-p 8 \-\-async barman angus %f %p'
.fi
.SH "SEE ALSO"
\fBbarman\fR(1), \fBssh_config\fR(5), \fBbarman\-wal\-bench\fR \-\-help
"#;

fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, bytes)
}

fn main() -> std::io::Result<()> {
    let out = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .unwrap_or_else(|| "target/docs".into()),
    );
    generate(&out)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// The man page as `OUT/barman-wal-restore.1`, the completions under
/// `OUT/completions/`.
pub fn generate(out: &Path) -> std::io::Result<()> {
    let command = RestoreArgs::command();
    let name = command.get_name().to_string();

    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut page)?;
    page.write_all(EXTRA_SECTIONS.as_bytes())?;
    write(&out.join(format!("{name}.1")), &page)?;

    for (shell, file) in [
        (Shell::Bash, format!("{name}.bash")),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut command.clone(), &name, &mut script);
        write(&out.join("completions").join(file), &script)?;
    }
    Ok(())
}
