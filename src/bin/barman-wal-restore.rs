//! `barman-wal-restore`: PostgreSQL's restore_command. Parses the command
//! line and hands it to the library; everything else lives there.

use barman_wal_restore::{cli::RestoreArgs, exit, restore, shutdown, worker};
use clap::Parser;

fn main() {
    let mut args = RestoreArgs::parse();
    if args.async_worker {
        worker::detach(&mut args);
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
            eprintln!("ERROR: cannot start the async runtime: {e}");
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
