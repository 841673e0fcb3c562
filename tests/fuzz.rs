//! Property-based fuzzing of everything that parses untrusted bytes: WAL
//! names (from PostgreSQL or a hostile caller), peek answers and every
//! decoder (from the network). The property: no panic, no unbounded output,
//! and the decoders' round trip holds.
//!
//! A bounded run is part of the suite (`PROPTEST_CASES`, default 256 per
//! property); a longer run: `PROPTEST_CASES=100000 cargo test --release --test fuzz`.

use std::io::{Cursor, Read, Seek, SeekFrom, Write};

use barman_wal_restore::client::command::parse_peek;
use barman_wal_restore::decode::{decode_stream, DecodeError, MAX_DECODED};
use barman_wal_restore::validate;
use barman_wal_restore::wal::{WalKind, WalName};
use embedded_barman::StoredCompression;
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        ..ProptestConfig::default()
    }
}

/// A segment-like payload: a valid long page header, then arbitrary bytes.
fn segment_like(tail: &[u8]) -> Vec<u8> {
    let mut data = validate::long_page_header(0xD110, 1, 3 << 20, 42, 1 << 20).to_vec();
    data.extend_from_slice(tail);
    data
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn wal_name_parser_never_panics_and_accepts_only_safe_names(s in ".{0,64}") {
        if let Ok(wal) = WalName::parse(&s) {
            prop_assert!(!wal.as_str().contains('/'));
            prop_assert!(!wal.as_str().contains(".."));
            prop_assert!(wal.as_str().bytes().all(|b| b.is_ascii_hexdigit() || b == b'.' || b.is_ascii_lowercase()));
            prop_assert_eq!(WalName::parse(wal.as_str()).ok(), Some(wal.clone()));
        }
    }

    #[test]
    fn wal_names_from_parts_round_trip(tli in 1u32.., log in any::<u32>(), seg in 0u32..256) {
        let wal = WalName::segment(tli, log, seg);
        let parsed = WalName::parse(wal.as_str()).unwrap();
        prop_assert_eq!(parsed.position(), (log, seg));
        prop_assert_eq!(parsed.timeline(), tli);
        if let Some(next) = parsed.next_segment(16 << 20) {
            prop_assert!(next.cmp_position(&parsed).is_gt());
        }
    }

    #[test]
    fn peek_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(names) = parse_peek(&bytes) {
            for name in names {
                prop_assert!(WalName::parse(name.as_str()).is_ok());
            }
        }
    }

    #[test]
    fn decoders_survive_garbage_after_any_magic(
        magic in 0usize..7,
        tail in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        let magics: [&[u8]; 7] = [
            &[0x1f, 0x8b, 0x08],
            b"BZh9",
            &[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00],
            &[0x28, 0xb5, 0x2f, 0xfd],
            &[0x04, 0x22, 0x4d, 0x18],
            &[0xff, 0x06, 0x00, 0x00, 0x73, 0x4e, 0x61, 0x50, 0x70, 0x59],
            &[0x10, 0xd1],
        ];
        let mut payload = magics[magic].to_vec();
        payload.extend_from_slice(&tail);
        let out = tempfile::tempfile().unwrap();
        match decode_stream(Cursor::new(payload), out, WalKind::Segment) {
            Ok(decoded) => prop_assert!(decoded.bytes_out <= MAX_DECODED),
            Err(DecodeError::Corrupt { .. } | DecodeError::UnknownFormat(_)) => {}
            Err(DecodeError::Write(e)) => prop_assert!(false, "write error {e}"),
        }
    }

    #[test]
    fn every_format_round_trips_and_damage_is_caught(
        tail in proptest::collection::vec(any::<u8>(), 0..20_000),
        format in 0usize..7,
        cut in any::<prop::sample::Index>(),
    ) {
        let raw = segment_like(&tail);
        let stored = StoredCompression::REAL[format].compress(&raw).unwrap();
        let mut out = tempfile::tempfile().unwrap();
        let decoded = decode_stream(Cursor::new(stored.clone()), out.try_clone().unwrap(), WalKind::Segment).unwrap();
        prop_assert_eq!(decoded.bytes_out, raw.len() as u64);
        out.seek(SeekFrom::Start(0)).unwrap();
        let mut back = Vec::new();
        out.read_to_end(&mut back).unwrap();
        prop_assert!(back == raw);

        // A truncated compressed stream must never decode to the full file.
        if StoredCompression::REAL[format] != StoredCompression::None && stored.len() > 1 {
            let at = cut.index(stored.len() - 1);
            let mut sink = tempfile::tempfile().unwrap();
            sink.write_all(b"").unwrap();
            if let Ok(partial) = decode_stream(Cursor::new(stored[..at].to_vec()), sink, WalKind::Segment) {
                prop_assert!(partial.bytes_out < raw.len() as u64);
            }
        }
    }

    #[test]
    fn header_validation_never_panics(head in proptest::collection::vec(any::<u8>(), 0..80), size in any::<u64>()) {
        let wal = WalName::parse("000000010000000000000003").unwrap();
        let _ = validate::check(&wal, size, &head);
    }
}
