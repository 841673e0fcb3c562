//! `barman-wal-restore`: PostgreSQL's restore_command. Resolves its settings
//! once (the command line over the environment over the settings file) and
//! hands them to the library; everything else lives there. Started as a
//! spool's `--async` worker, it gets its settings from the call that started
//! it instead.

use std::future::Future;

use barman_wal_restore::config::{Config, OnFailure, Request};
use barman_wal_restore::config_file::{self, Resolution};
use barman_wal_restore::error::{Error, ErrorKind};
use barman_wal_restore::logging::{self, LogLevel};
use barman_wal_restore::spool::names::WORKER_LOG;
use barman_wal_restore::{exit, handoff, restore, shutdown, worker};

fn main() {
    return_large_blocks_at_once();
    if handoff::started_as_worker() {
        let code = match handoff::read_assignment() {
            Ok(assignment) => {
                let config = &assignment.config;
                logging::to_worker_log(&config.spool.dir.join(WORKER_LOG), config.log_level);
                run_async(worker::run(&assignment))
            }
            Err(e) => {
                logging::to_stderr(LogLevel::Info);
                fail(Error::local(e))
            }
        };
        std::process::exit(code);
    }
    // A bad setting is a usage error, before any connection.
    let args = match config_file::resolve_process() {
        Ok(Resolution::Run(args)) => *args,
        Ok(Resolution::Show(text)) => {
            print!("{text}");
            std::process::exit(exit::SUCCESS);
        }
        Err(e) => {
            logging::to_stderr(LogLevel::Info);
            fail(Error::new(ErrorKind::Usage, e.0))
        }
    };
    logging::to_stderr(args.log_level());
    let request = Request::from_args(&args);
    let config = match Config::from_args(&args) {
        Ok(config) => config,
        Err(failure) => {
            let on_failure = OnFailure::from_args(&args);
            std::process::exit(restore::refused(failure, &on_failure, &request));
        }
    };
    if let Some(code) = restore::serve_from_spool(&config, &request) {
        std::process::exit(code);
    }
    std::process::exit(run_async(restore::run(&config, &request)));
}

/// Runs `work` on a small runtime that leaves as soon as it is done.
fn run_async(work: impl Future<Output = i32>) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => fail(Error::io(format!("cannot start the async runtime: {e}"), e)),
    };
    let code = runtime.block_on(async {
        shutdown::exit_on_signals();
        work.await
    });
    // Leave without waiting for blocking threads: every transfer has ended.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    code
}

/// One ERROR line and the status [`exit`] gives the failure.
fn fail(failure: Error) -> ! {
    tracing::error!("{failure}");
    std::process::exit(failure.exit_code());
}

/// Decoders allocate their windows (2 to 64 MiB) on blocking threads, each
/// with its own malloc arena. glibc raises its mmap threshold after the
/// first such block is freed, so later windows come from the arenas and
/// stay in the process when freed: a call's peak memory grew with every
/// decoder that ran, not with those running at once (xz with 8 MiB
/// dictionaries at `-p 8`: 35.8 MiB peak, 27.3 with the threshold fixed;
/// docs/benchmarks.md). A fixed threshold keeps every block of 256 KiB or
/// more in its own mapping, returned when freed.
fn return_large_blocks_at_once() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}
