//! End-to-end tests through a minimal russh client.

use std::sync::Arc;
use std::time::Duration;

use russh::client;
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::ChannelMsg;

use super::*;

/// Trusts exactly one host key.
struct TrustOne(PublicKey);

impl client::Handler for TrustOne {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(
            matches!(key, PublicKeyOrCertificate::PublicKey { key, .. } if key.key_data() == self.0.key_data()),
        )
    }
}

#[derive(Debug, Default)]
struct Output {
    stdout: Vec<u8>,
    stderr: String,
    /// `None`: the channel ended without an exit status (connection lost).
    status: Option<u32>,
}

fn config(count: usize, compression: StoredCompression) -> EmbeddedConfig {
    EmbeddedConfig {
        archive: ArchiveSpec {
            first_segment: "000000010000000000000010".to_string(),
            segment_count: count,
            segment_size: 1 << 20,
            compression,
            ..ArchiveSpec::default()
        },
        ..EmbeddedConfig::default()
    }
}

async fn connect(barman: &EmbeddedBarman) -> Result<client::Handle<TrustOne>, russh::Error> {
    let config = Arc::new(client::Config::default());
    let mut handle = client::connect(
        config,
        barman.address(),
        TrustOne(barman.host_public_key().clone()),
    )
    .await?;
    let key = russh::keys::load_secret_key(barman.client_key_path(), None)?;
    let auth = handle
        .authenticate_publickey("postgres", PrivateKeyWithHashAlg::new(Arc::new(key), None))
        .await?;
    if !auth.success() {
        return Err(russh::Error::NotAuthenticated);
    }
    Ok(handle)
}

async fn exec(handle: &client::Handle<TrustOne>, command: &str) -> Output {
    let mut channel = handle.channel_open_session().await.expect("channel opens");
    channel.exec(true, command).await.expect("exec is sent");
    let mut out = Output::default();
    while let Some(msg) = channel.wait().await {
        match msg {
            ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
            ChannelMsg::ExtendedData { data, ext: 1 } => {
                out.stderr.push_str(&String::from_utf8_lossy(&data))
            }
            ChannelMsg::ExitStatus { exit_status } => out.status = Some(exit_status),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    out
}

#[tokio::test]
async fn serves_peek_and_files_over_ssh() {
    let barman = EmbeddedBarman::start(config(3, StoredCompression::Zstd))
        .await
        .unwrap();
    let archive = barman.archive();
    let first = archive.segments()[0].clone();
    let ssh = connect(&barman).await.unwrap();

    let peek = exec(&ssh, &format!("barman get-wal --peek 3 angus {first}")).await;
    assert_eq!(peek.status, Some(0), "{peek:?}");
    let listed: Vec<String> = String::from_utf8(peek.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(listed, archive.segments());

    let kept = exec(
        &ssh,
        &format!("barman get-wal --keep-compression 'angus' '{first}'"),
    )
    .await;
    assert_eq!(kept.status, Some(0), "{}", kept.stderr);
    assert_eq!(kept.stdout, archive.stored_bytes(&first).unwrap());

    let raw = exec(
        &ssh,
        &format!(
            "barman -c /etc/barman.conf get-wal angus {}",
            archive.segments()[2]
        ),
    )
    .await;
    assert_eq!(
        raw.stdout,
        archive.raw_segment(&archive.segments()[2]).unwrap()
    );

    let gzip = exec(&ssh, &format!("barman get-wal -z angus {first}")).await;
    assert_eq!(
        StoredCompression::Gzip.decompress(&gzip.stdout).unwrap(),
        archive.raw_segment(&first).unwrap()
    );

    let test = exec(&ssh, "barman get-wal --test angus DUMMY").await;
    assert_eq!(
        test.stdout,
        b"Ready to retrieve WAL files from the server angus\n"
    );

    let missing = exec(&ssh, "barman get-wal angus 000000010000000000000099").await;
    assert_eq!(missing.status, Some(1));
    assert_eq!(
        missing.stderr,
        "ERROR: WAL file '000000010000000000000099' not found in server 'angus'\n"
    );
    assert!(missing.stdout.is_empty());

    let hostile = exec(
        &ssh,
        r#"barman get-wal 'angus'"'"'; rm -rf /' 000000010000000000000010"#,
    )
    .await;
    assert_eq!(
        (hostile.status, hostile.stderr.as_str()),
        (Some(1), "ERROR: Unknown server 'angus'; rm -rf /'\n")
    );
    assert_eq!(
        exec(&ssh, "barman get-wal angus nonsense").await.status,
        Some(3)
    );
    assert_eq!(exec(&ssh, "cat /etc/passwd").await.status, Some(127));

    let stats = barman.stats();
    assert_eq!((stats.connections, stats.auth_successes), (1, 1));
    assert_eq!(stats.users, ["postgres"]);
    assert_eq!(stats.commands.len(), 9);
    assert_eq!(stats.channels_opened, 9);
    assert_eq!(stats.transfers, 4, "kept, raw, gzip and missing");
    assert!(
        stats.shell_syntax_commands.is_empty(),
        "{:?}",
        stats.shell_syntax_commands
    );
    barman.shutdown().await;
}

#[tokio::test]
async fn corrupting_faults_change_only_the_payload() {
    let barman = EmbeddedBarman::start(config(2, StoredCompression::Lz4))
        .await
        .unwrap();
    let [first, second] = [0, 1].map(|i| barman.archive().segments()[i].clone());
    let raw = barman.archive().raw_segment(&first).unwrap();
    let ssh = connect(&barman).await.unwrap();
    let get = |name: &str| format!("barman get-wal angus {name}");

    barman.faults().push_rule(FaultRule::times(
        1,
        Target::Wal(first.clone()),
        StreamFault::TruncateAt(1000),
    ));
    let short = exec(&ssh, &get(&first)).await;
    assert_eq!((short.status, short.stdout.len()), (Some(0), 1000));
    assert_eq!(
        exec(&ssh, &get(&first)).await.stdout,
        raw,
        "a `times(1)` rule fires once"
    );

    barman.faults().push_rule(FaultRule::times(
        1,
        Target::AllTransfers,
        StreamFault::FlipBitAt(70_000),
    ));
    let flipped = exec(&ssh, &get(&first)).await.stdout;
    let differing: Vec<usize> = (0..raw.len()).filter(|&i| raw[i] != flipped[i]).collect();
    assert_eq!(differing, [70_000]);

    barman.faults().push_rule(FaultRule::times(
        1,
        Target::AllTransfers,
        StreamFault::SendOtherFile(second.clone()),
    ));
    assert_eq!(
        exec(&ssh, &get(&first)).await.stdout,
        barman.archive().raw_segment(&second).unwrap()
    );

    barman.faults().push_rule(FaultRule::times(
        1,
        Target::AllTransfers,
        StreamFault::Empty,
    ));
    let empty = exec(&ssh, &get(&first)).await;
    assert_eq!((empty.status, empty.stdout.len()), (Some(0), 0));

    barman.faults().push_rule(FaultRule::times(
        1,
        Target::Peeks,
        StreamFault::Exit {
            status: 255,
            stderr: "boom".to_string(),
        },
    ));
    let failed = exec(&ssh, &format!("barman get-wal --peek 2 angus {first}")).await;
    assert_eq!(
        (failed.status, failed.stderr.as_str()),
        (Some(255), "boom\n")
    );

    // The 6th transfer since start (5 above; the peek does not count).
    barman.faults().push_rule(FaultRule::always(
        Target::NthTransfer(6),
        StreamFault::Garbage(10),
    ));
    assert_eq!(exec(&ssh, &get(&first)).await.stdout.len(), 10);
    assert_eq!(exec(&ssh, &get(&first)).await.stdout, raw);
}

#[tokio::test]
async fn connection_faults() {
    let barman = EmbeddedBarman::start(config(1, StoredCompression::None))
        .await
        .unwrap();
    let first = barman.archive().segments()[0].clone();

    // MaxSessions: the second concurrent channel is refused, then a slot frees.
    barman.faults().lock().max_sessions = Some(1);
    let ssh = connect(&barman).await.unwrap();
    let held = ssh.channel_open_session().await.unwrap();
    assert!(ssh.channel_open_session().await.is_err());
    held.close().await.unwrap();
    let mut freed = false;
    for _ in 0..50 {
        if let Ok(channel) = ssh.channel_open_session().await {
            channel.close().await.unwrap();
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(freed, "slot freed after close");
    assert!(barman.stats().channels_refused >= 1);
    barman.faults().lock().max_sessions = None;

    // A dropped connection: some bytes, then no exit status.
    barman.faults().push_rule(FaultRule::times(
        1,
        Target::AllTransfers,
        StreamFault::DropConnectionAfter(100_000),
    ));
    let dropped = exec(&ssh, &format!("barman get-wal angus {first}")).await;
    assert_eq!(dropped.status, None);
    assert!(dropped.stdout.len() <= 100_000);

    // A stall keeps the connection but sends nothing more, and holds up no
    // other channel of the same connection.
    let ssh = Arc::new(connect(&barman).await.unwrap());
    barman.faults().push_rule(FaultRule::times(
        1,
        Target::AllTransfers,
        StreamFault::StallAfter(200_000),
    ));
    let command = format!("barman get-wal angus {first}");
    let transfers_before = barman.stats().transfers;
    let stalled = tokio::spawn({
        let (ssh, command) = (ssh.clone(), command.clone());
        async move { exec(&ssh, &command).await }
    });
    while barman.stats().transfers == transfers_before {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let other = tokio::time::timeout(Duration::from_secs(10), exec(&ssh, &command))
        .await
        .expect("a stalled channel does not block the others");
    assert_eq!(other.stdout.len(), 1 << 20);
    assert!(!stalled.is_finished(), "the stalled channel never ends");
    stalled.abort();

    barman.faults().lock().refuse_auth = true;
    assert!(matches!(
        connect(&barman).await,
        Err(russh::Error::NotAuthenticated)
    ));
    barman.faults().lock().refuse_auth = false;

    barman.faults().lock().wrong_host_key = true;
    assert!(
        connect(&barman).await.is_err(),
        "the client refuses the other host key"
    );
    barman.faults().lock().wrong_host_key = false;
    assert!(connect(&barman).await.is_ok());
}

#[test]
fn background_server_writes_client_files() {
    use std::os::unix::fs::PermissionsExt;
    let barman = EmbeddedBarman::start_in_background(config(1, StoredCompression::Gzip)).unwrap();
    let mode = std::fs::metadata(barman.client_key_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let known_hosts = std::fs::read_to_string(barman.known_hosts_path()).unwrap();
    assert!(known_hosts.starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 AAAA", barman.port())));
    let out = barman.runtime().block_on(async {
        let ssh = connect(&barman).await.unwrap();
        exec(&ssh, "barman get-wal --test angus DUMMY").await
    });
    assert_eq!(out.status, Some(0));
    let dir = barman.dir().to_path_buf();
    drop(barman);
    assert!(!dir.exists(), "temporary directory removed");
}
