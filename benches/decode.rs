//! Decode throughput per stored format, on a 16 MiB segment that looks like
//! real WAL (the embedded Barman's generator: page headers, record-like,
//! compresses about 6x with zstd). Output goes to /dev/null so the figure
//! is the decoder's, not the disk's.
//!
//! Compare with the command-line tools on the same bytes, e.g.
//! `zstd -d -c FILE > /dev/null`, `gzip -d -c FILE > /dev/null` (see
//! README, "Benchmarks").

use std::fs::File;
use std::io::Cursor;

use barman_wal_restore::decode::decode_stream;
use barman_wal_restore::wal::WalKind;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use embedded_barman::walgen::{segment_bytes, SegmentId};
use embedded_barman::StoredCompression;

fn decode(c: &mut Criterion) {
    let raw = segment_bytes(SegmentId {
        system_identifier: 7_312_345_678_901_234_567,
        timeline: 1,
        segment_number: 3,
        segment_size: 16 << 20,
    });
    let mut group = c.benchmark_group("decode 16 MiB segment");
    group.throughput(Throughput::Bytes(raw.len() as u64));
    group.sample_size(10);
    for format in StoredCompression::REAL {
        let stored = format.compress(&raw).expect("compress");
        group.bench_function(format!("{format:?}"), |b| {
            b.iter(|| {
                let sink = File::create("/dev/null").expect("/dev/null");
                let decoded =
                    decode_stream(Cursor::new(&stored), sink, WalKind::Segment).expect("decode");
                assert_eq!(decoded.bytes_out, raw.len() as u64);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
