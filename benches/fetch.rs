//! Fetch throughput over one session to the embedded Barman: 16 segments of
//! 16 MiB (zstd stored, sent as stored and decoded here) with 1, 4, 8 and 16
//! transfers in flight on the same session. Files land in a temp directory
//! under /dev/shm when it exists, so fsync costs little and the figure is
//! the transport's and decoder's.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use barman_wal_restore::client::Fetcher;
use barman_wal_restore::config::{Compression, Server, Transfer};
use barman_wal_restore::spool::Spool;
use barman_wal_restore::ssh::{ConnectOptions, Session, SessionStats, SshTarget};
use barman_wal_restore::wal::WalName;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use embedded_barman::{ArchiveSpec, EmbeddedBarman, EmbeddedConfig, StoredCompression};

const SEGMENTS: usize = 16;

fn fetch(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let barman = EmbeddedBarman::start_in_background(EmbeddedConfig {
        archive: ArchiveSpec {
            segment_count: SEGMENTS,
            compression: StoredCompression::Zstd,
            ..ArchiveSpec::default()
        },
        ..EmbeddedConfig::default()
    })
    .expect("embedded barman");
    let target = Arc::new(
        SshTarget::resolve(&ConnectOptions {
            host: "127.0.0.1".into(),
            user: Some("barman".into()),
            port: Some(barman.port()),
            identities: vec![barman.client_key_path().to_path_buf()],
            known_hosts: Some(barman.known_hosts_path().to_path_buf()),
            ssh_config: Some(PathBuf::from("/dev/null")),
            connect_timeout: Some(Duration::from_secs(10)),
            io_timeout: Duration::from_secs(60),
        })
        .expect("target"),
    );
    let names: Vec<WalName> = barman
        .archive()
        .segments()
        .iter()
        .map(|n| WalName::parse(n).expect("name"))
        .collect();
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };

    let mut group = c.benchmark_group("fetch 16 x 16 MiB, one session");
    group.throughput(Throughput::Bytes((SEGMENTS as u64) << 24));
    group.sample_size(10);
    for window in [1usize, 4, 8, 16] {
        group.bench_function(format!("{window} in flight"), |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let session =
                        Session::connect(target.clone(), Arc::new(SessionStats::default()))
                            .await
                            .expect("connect");
                    let fetcher = Arc::new(Fetcher::new(
                        Arc::new(session),
                        Server::new("angus", None).expect("server"),
                        Transfer {
                            parallel: window,
                            compression: Compression::KeepCompression,
                            auto_keep: true,
                            partial: false,
                            verify: true,
                            direct_read: false,
                            connect_timeout: Some(Duration::from_secs(10)),
                            io_timeout: Duration::from_secs(60),
                        },
                    ));
                    let dir = tempfile::Builder::new()
                        .prefix("fetch-bench")
                        .tempdir_in(&base)
                        .expect("dir");
                    let spool = Spool::open(&dir.path().join("spool")).expect("spool");
                    let results = fetcher.prefetch(names.clone(), &spool, window).await;
                    assert!(results.iter().all(|r| r.is_ok()));
                    fetcher.session().close().await;
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, fetch);
criterion_main!(benches);
