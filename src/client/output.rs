//! The one reader of a remote command's whole output (a peek answer, a
//! listing, `show-server`, `--test`): bounded, because whatever answers is
//! not trusted to stop. Each caller says how much is enough and what more
//! means; file transfers stream instead (see [`super::Fetcher`]).

use std::time::Duration;

use crate::error::Error;
use crate::ssh::{ExecChannel, RemoteExit};

/// What to do with output past the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beyond<'a> {
    /// Read on to the end, keep only the first bytes (a command whose
    /// status matters more than its chatter).
    Drop,
    /// Stop: the answer cannot be what was asked for (`what` names the
    /// command in the failure).
    Refuse(&'a str),
}

/// A finished command's stdout (at most about the cap) and how it ended.
#[derive(Debug)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub exit: RemoteExit,
}

/// Reads `exec` to its end: at most about `cap` bytes of stdout are kept,
/// `beyond` says what happens to more; with `within`, the whole read must
/// end in that time (the idle timer alone lets a trickle go on forever).
/// The channel is closed either way.
pub async fn read(
    mut exec: ExecChannel,
    cap: usize,
    beyond: Beyond<'_>,
    within: Option<(Duration, &str)>,
) -> Result<Output, Error> {
    let mut stdout = Vec::new();
    let reading = async {
        while let Some(chunk) = exec.next_stdout().await? {
            match beyond {
                Beyond::Drop if stdout.len() < cap => stdout.extend_from_slice(&chunk),
                Beyond::Drop => {}
                Beyond::Refuse(what) => {
                    stdout.extend_from_slice(&chunk);
                    if stdout.len() > cap {
                        return Err(Error::bad_payload(format!(
                            "{what} answered more than {cap} bytes"
                        )));
                    }
                }
            }
        }
        Ok::<(), Error>(())
    };
    let read = match within {
        Some((bound, what)) => tokio::time::timeout(bound, reading)
            .await
            .unwrap_or_else(|_| {
                Err(Error::connection(format!(
                    "{what} did not end within {} s (--io-timeout)",
                    bound.as_secs()
                )))
            }),
        None => reading.await,
    };
    match read {
        Ok(()) => Ok(Output {
            stdout,
            exit: exec.finish().await,
        }),
        Err(failure) => {
            exec.abandon().await;
            Err(failure)
        }
    }
}
