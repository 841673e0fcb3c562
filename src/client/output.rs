//! Reading a remote command's whole output, bounded.

use crate::ssh::{ExecChannel, OpenError, RemoteExit, Session};

/// Reads a small answer (show-server, a listing) to its end.
pub(super) async fn read_small_bytes(mut exec: ExecChannel) -> Option<(Option<u32>, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        match exec.next_stdout().await {
            Ok(Some(chunk)) => {
                if out.len() < (16 << 20) {
                    out.extend_from_slice(&chunk);
                }
            }
            Ok(None) => break,
            Err(_) => {
                exec.abandon().await;
                return None;
            }
        }
    }
    let exit = exec.finish().await;
    Some((exit.status, out))
}

pub(super) async fn read_small(exec: ExecChannel) -> Option<String> {
    match read_small_bytes(exec).await? {
        (Some(0), bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        _ => None,
    }
}

/// Runs a command whose output is small (peek, test) and returns its
/// stdout and how it ended.
pub async fn run(session: &Session, command: &str) -> Result<(Vec<u8>, RemoteExit), OpenError> {
    let mut exec = session.exec(command).await?;
    let mut stdout = Vec::new();
    while let Some(chunk) = exec.next_stdout().await.map_err(OpenError::Failed)? {
        // Bounded: a peek answer is a few lines; more is not Barman.
        if stdout.len() < (1 << 20) {
            stdout.extend_from_slice(&chunk);
        }
    }
    Ok((stdout, exec.finish().await))
}
