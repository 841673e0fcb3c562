//! `barman-wal-bench`: measures restore_command throughput. Parses the
//! command line and hands it to the bench library.

use barman_wal_bench::{self as bench, options::BenchArgs};
use clap::Parser;

fn main() {
    let args = BenchArgs::parse();
    match bench::run(&args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("ERROR: {e}");
            std::process::exit(2);
        }
    }
}
