//! `barman-wal-restore`: PostgreSQL's restore_command. Parses the command
//! line (under it, the environment and the settings file) and hands it to
//! the library; everything else lives there.

use barman_wal_restore::config_file::{self, Resolution};
use barman_wal_restore::logging::{self, LogLevel};
use barman_wal_restore::spool::names::WORKER_LOG;
use barman_wal_restore::{exit, restore, shutdown, worker};

fn main() {
    // The command line over the environment over the settings file; a bad
    // setting is a usage error, before any connection.
    let mut args = match config_file::resolve_process() {
        Ok(Resolution::Run(args)) => *args,
        Ok(Resolution::Show(text)) => {
            print!("{text}");
            std::process::exit(exit::SUCCESS);
        }
        Err(e) => {
            logging::to_stderr(LogLevel::Info);
            tracing::error!("{e}");
            std::process::exit(exit::CONNECTION);
        }
    };
    if args.async_worker {
        worker::detach(&mut args);
        logging::to_worker_log(&args.spool_dir.join(WORKER_LOG), args.log_level());
    } else {
        logging::to_stderr(args.log_level());
    }
    if !args.async_worker {
        if let Some(code) = restore::serve_from_spool(&args) {
            std::process::exit(code);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            std::process::exit(exit::LOCAL);
        }
    };
    let code = runtime.block_on(async {
        shutdown::exit_on_signals();
        if args.async_worker {
            worker::run(&args).await
        } else {
            restore::run(&args).await
        }
    });
    // Leave without waiting for blocking threads: every transfer has ended.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    std::process::exit(code);
}
