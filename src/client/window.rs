//! The prefetch window.

/// How many names to ask `get-wal --peek` for: a few windows' worth, so the
/// next misses find their names in the spool's copy of the answer and
/// start prefetching without a peek of their own.
pub fn peek_size(parallel: usize) -> usize {
    (parallel * 4).clamp(parallel, 256)
}
