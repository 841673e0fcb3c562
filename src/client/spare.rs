//! Channels opened ahead of the commands that will run on them.
//!
//! Starting a command costs two round trips: the channel open, then the
//! exec request (and the command's start-up) before the first byte. The
//! open needs no command, so it can be taken while something else runs: the
//! prefetches' channels while the peek is answered, the second wave's while
//! the first streams. At 50 ms that is 50 ms a wave.
//!
//! Only channels, never commands, are started early: russh hands a
//! channel's data to a small bounded queue and its session loop waits
//! while that queue is full, so a command started on a channel nobody reads
//! yet would stall every other channel of the session (and, waiting for a
//! decode slot that only those channels can free, deadlock it). An open
//! channel without a command receives nothing.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

use crate::error::Error;
use crate::ssh::{OpenChannel, OpenError, Session};

/// At most this many channels are held open ahead: with the streams that
/// run (at most [`super::MAX_STREAMS`]) and a peek beside them, ten, the
/// default `MaxSessions` of OpenSSH's sshd, is never exceeded. It also
/// covers the second wave of `-p 8` (7 prefetches, 4 streams at once).
pub const MAX_SPARE: usize = 3;

/// Channels open or opening ahead, and how many commands are expected.
#[derive(Default)]
pub struct SpareChannels {
    inner: Mutex<Spares>,
}

#[derive(Default)]
struct Spares {
    /// Opens in flight or done, oldest first.
    opening: VecDeque<JoinHandle<Result<OpenChannel, OpenError>>>,
    /// Commands expected soon that have no channel yet.
    expected: usize,
}

impl Spares {
    fn refill(&mut self, session: &Arc<Session>) {
        while self.opening.len() < self.expected.min(MAX_SPARE) {
            let session = Arc::clone(session);
            self.opening
                .push_back(tokio::spawn(async move { session.open_channel().await }));
        }
    }
}

impl SpareChannels {
    fn lock(&self) -> std::sync::MutexGuard<'_, Spares> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Expects `count` commands soon (replacing what was expected before):
    /// starts opening channels for up to [`MAX_SPARE`] of them. Returns at
    /// once.
    pub fn expect(&self, session: &Arc<Session>, count: usize) {
        let mut spares = self.lock();
        spares.expected = count;
        spares.refill(session);
    }

    /// A channel for the next command: the oldest opened ahead, once its
    /// open is answered, with the next one's open started when more
    /// commands are expected. `None` when none was opened ahead, or the
    /// server refused it: the caller opens its own, with the usual
    /// back-pressure.
    pub async fn take(&self, session: &Arc<Session>) -> Option<Result<OpenChannel, Error>> {
        let next = {
            let mut spares = self.lock();
            spares.expected = spares.expected.saturating_sub(1);
            let next = spares.opening.pop_front();
            spares.refill(session);
            next
        }?;
        match next.await {
            Ok(Ok(channel)) => Some(Ok(channel)),
            Ok(Err(OpenError::Refused)) | Err(_) => None,
            Ok(Err(OpenError::Failed(failure))) => Some(Err(failure)),
        }
    }
}
