//! Fault injection: what can go wrong between a restore_command and a
//! Barman host, switchable while the server runs.
//!
//! Connection-level faults ([`Faults::refuse_auth`], [`Faults::wrong_host_key`],
//! [`Faults::max_sessions`], [`Faults::command_latency`]) apply to everything.
//! Stream faults are [`FaultRule`]s: a [`Target`] choosing which get-wal
//! commands they hit, and a [`StreamFault`] saying what happens. All matching
//! rules combine (e.g. a slow stream that is also truncated).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Everything that can be injected.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Reject every authentication attempt.
    pub refuse_auth: bool,
    /// Present a second host key instead of the one in `known_hosts`
    /// (new connections only).
    pub wrong_host_key: bool,
    /// OpenSSH's `MaxSessions`: refuse a session channel past this many open
    /// at once on one connection. A slot frees when the channel closes.
    pub max_sessions: Option<usize>,
    /// Only `barman` may run (an `authorized_keys` forced command): the
    /// `cat` and `ls` of `--direct-read` are refused.
    pub forced_command: bool,
    /// Delay before each command runs, like Barman's Python start-up on a
    /// real host (docs/benchmarks.md).
    pub command_latency: Duration,
    /// A Barman whose `get-wal` has no `--keep-compression` (Debian 12's
    /// 3.4): the option is a usage error, exit 2.
    pub without_keep_compression: bool,
    pub rules: Vec<FaultRule>,
}

/// Which get-wal commands a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every file transfer (not `--peek`, not `--test`).
    AllTransfers,
    /// The Nth file transfer since start, counting from 1 (not-found ones count).
    NthTransfer(u64),
    /// Transfers of this WAL name.
    Wal(String),
    /// `--peek` commands (the fault then applies to the listing).
    Peeks,
    /// `barman show-server` (what `--direct-read` learns the layout from).
    ShowServer,
}

/// What happens to a targeted command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamFault {
    /// Exit with this status and stderr instead of serving.
    Exit { status: u32, stderr: String },
    /// Reset the TCP connection after this many payload bytes (no exit
    /// status, no EOF). A shorter payload is served normally.
    DropConnectionAfter(u64),
    /// Stop sending after this many payload bytes and keep the connection
    /// open until the client closes the channel or the connection. A shorter
    /// payload is served normally.
    StallAfter(u64),
    /// End the stream after this many bytes, yet exit 0.
    TruncateAt(u64),
    /// Flip the lowest bit of the byte at this offset.
    FlipBitAt(u64),
    /// Send this other file (same delivery mode) instead of the requested one.
    SendOtherFile(String),
    /// Send this many pseudo-random bytes instead, exit 0.
    Garbage(usize),
    /// Send nothing, exit 0.
    Empty,
    /// Sleep this long before each chunk (chunks are [`super::CHUNK_SIZE`]).
    DelayPerChunk(Duration),
    /// Send these bytes instead (a test's hand-made payload: a segment that
    /// ends early, a decompression bomb), exit 0.
    SendBytes(Vec<u8>),
    /// Send the payload `bytes` at a time, `every` apart: always some
    /// progress before an idle timer runs out, never the end in time.
    Trickle { bytes: usize, every: Duration },
    /// After the payload, send it again every this long, forever (until
    /// the client closes): an answer that never ends.
    Endless(Duration),
}

/// One injected fault and the commands it hits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRule {
    pub target: Target,
    pub fault: StreamFault,
    /// How many more times it fires; `None` = forever.
    pub remaining: Option<u32>,
}

impl FaultRule {
    /// A rule that fires on every matching command.
    pub fn always(target: Target, fault: StreamFault) -> FaultRule {
        FaultRule {
            target,
            fault,
            remaining: None,
        }
    }

    /// A rule that fires on the first `times` matching commands only, e.g. a
    /// transient failure that a retry must get past.
    pub fn times(times: u32, target: Target, fault: StreamFault) -> FaultRule {
        FaultRule {
            target,
            fault,
            remaining: Some(times),
        }
    }
}

/// The command a rule is matched against.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Matched<'a> {
    Transfer { ordinal: u64, wal: &'a str },
    Peek,
    ShowServer,
    Other,
}

/// The combined effect of every rule that matched one command.
#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    pub exit: Option<(u32, String)>,
    pub drop_after: Option<u64>,
    pub stall_after: Option<u64>,
    pub truncate_at: Option<u64>,
    pub flip_bit_at: Option<u64>,
    pub other_file: Option<String>,
    pub garbage: Option<usize>,
    pub empty: bool,
    pub delay_per_chunk: Duration,
    pub bytes: Option<Vec<u8>>,
    pub trickle: Option<(usize, Duration)>,
    pub endless: Option<Duration>,
}

impl Plan {
    /// Where the stream must stop early, and why.
    pub fn cut_at(&self) -> Option<u64> {
        [self.drop_after, self.stall_after, self.truncate_at]
            .into_iter()
            .flatten()
            .min()
    }
}

/// A shared, live-editable [`Faults`]: tests flip faults while the server runs.
#[derive(Debug, Clone, Default)]
pub struct FaultsHandle(Arc<Mutex<Faults>>);

impl FaultsHandle {
    pub fn new(faults: Faults) -> FaultsHandle {
        FaultsHandle(Arc::new(Mutex::new(faults)))
    }

    /// Locks the faults for reading or changing them in place. Keep the
    /// guard to one statement: the server locks it too, never hold it across
    /// an `.await`.
    pub fn lock(&self) -> MutexGuard<'_, Faults> {
        // A panic in a test holding the lock must not wedge the server.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces all faults.
    pub fn set(&self, faults: Faults) {
        *self.lock() = faults;
    }

    /// Adds one stream-fault rule.
    pub fn push_rule(&self, rule: FaultRule) {
        self.lock().rules.push(rule);
    }

    /// Removes every fault.
    pub fn clear(&self) {
        self.set(Faults::default());
    }

    pub fn snapshot(&self) -> Faults {
        self.lock().clone()
    }

    /// Consumes the rules matching a command and combines them.
    pub(crate) fn plan_for(&self, command: Matched<'_>) -> Plan {
        let mut faults = self.lock();
        let mut plan = Plan::default();
        for rule in faults.rules.iter_mut() {
            let hit = match (&rule.target, command) {
                (Target::AllTransfers, Matched::Transfer { .. }) => true,
                (Target::NthTransfer(n), Matched::Transfer { ordinal, .. }) => *n == ordinal,
                (Target::Wal(name), Matched::Transfer { wal, .. }) => name == wal,
                (Target::Peeks, Matched::Peek) => true,
                (Target::ShowServer, Matched::ShowServer) => true,
                _ => false,
            };
            if !hit || rule.remaining == Some(0) {
                continue;
            }
            if let Some(left) = rule.remaining.as_mut() {
                *left -= 1;
            }
            match &rule.fault {
                StreamFault::Exit { status, stderr } => plan.exit = Some((*status, stderr.clone())),
                StreamFault::DropConnectionAfter(k) => plan.drop_after = Some(*k),
                StreamFault::StallAfter(k) => plan.stall_after = Some(*k),
                StreamFault::TruncateAt(k) => plan.truncate_at = Some(*k),
                StreamFault::FlipBitAt(k) => plan.flip_bit_at = Some(*k),
                StreamFault::SendOtherFile(name) => plan.other_file = Some(name.clone()),
                StreamFault::Garbage(len) => plan.garbage = Some(*len),
                StreamFault::Empty => plan.empty = true,
                StreamFault::DelayPerChunk(d) => plan.delay_per_chunk = *d,
                StreamFault::SendBytes(bytes) => plan.bytes = Some(bytes.clone()),
                StreamFault::Trickle { bytes, every } => plan.trickle = Some((*bytes, *every)),
                StreamFault::Endless(every) => plan.endless = Some(*every),
            }
        }
        faults.rules.retain(|rule| rule.remaining != Some(0));
        plan
    }
}
