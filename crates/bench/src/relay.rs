//! A WAN in front of the target, on 127.0.0.1: `--rtt` and `--bandwidth`.
//!
//! This kernel has no `netem`, so the bench carries its own stand-in: a TCP
//! relay that holds every chunk for half the round trip in each direction
//! (order kept) and paces each direction to the given rate, like a link's
//! serialisation delay. All connections share the link: one rate per
//! direction, as a WAN link is shared (a client that opens a connection per
//! file gets no more bandwidth for it). What it does not model: loss,
//! reordering, jitter, TCP slow start and congestion control across the
//! real path (the relay's two loopback legs ramp up at loopback speed), and
//! fair queueing between connections (they are served in the order their
//! bytes reach the relay).
//! Hand-written because it is a few dozen lines over tokio, and a proxy
//! crate would not shape.

use std::io;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// What the link between the standby and the Barman host looks like.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkShape {
    pub round_trip: Duration,
    /// Bits per second in each direction; `None` leaves the rate alone.
    pub bits_per_second: Option<u64>,
}

impl LinkShape {
    /// Neither a delay nor a rate: no relay needed.
    pub fn is_loopback(&self) -> bool {
        self.round_trip.is_zero() && self.bits_per_second.is_none()
    }

    fn one_way(&self) -> Duration {
        self.round_trip / 2
    }

    /// How long `bytes` occupy the link at the shaped rate.
    fn serialisation(&self, bytes: usize) -> Duration {
        match self.bits_per_second {
            Some(bps) if bps > 0 => Duration::from_secs_f64(bytes as f64 * 8.0 / bps as f64),
            _ => Duration::ZERO,
        }
    }
}

const CHUNK: usize = 64 << 10;

/// How many chunks one direction of one connection may have in flight:
/// twice the link's bandwidth-delay product (the path plus a router queue
/// of the same size), at most 8 MiB (about Linux's TCP window ceiling), at
/// least 256 KiB. Past it the sender waits, as it would on the real path.
fn in_flight_chunks(shape: &LinkShape) -> usize {
    let bdp = match shape.bits_per_second {
        Some(bps) => (bps as f64 / 8.0 * shape.round_trip.as_secs_f64()) as usize,
        None => usize::MAX / 4,
    };
    (2 * bdp / CHUNK).clamp(4, 128)
}

/// When the link is next free in one direction, shared by every
/// connection's bytes going that way.
type LinkClock = std::sync::Arc<std::sync::Mutex<Instant>>;

/// A running relay. Stops (and closes every relayed connection) when
/// dropped.
pub struct Relay {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Listens on 127.0.0.1:`port` (0: a free port) and relays every
    /// connection to `target`, shaped.
    pub fn start(target: SocketAddr, shape: LinkShape, port: u16) -> io::Result<Relay> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bench-relay")
            .enable_all()
            .build()?;
        let listener = runtime.block_on(TcpListener::bind(("127.0.0.1", port)))?;
        let address = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("bench-relay".into())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        _ = stopped => {}
                        _ = accept_loop(listener, target, shape) => {}
                    }
                });
                // Relayed connections die with the runtime.
                runtime.shutdown_background();
            })?;
        Ok(Relay {
            address,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, shape: LinkShape) {
    let clock = || LinkClock::new(std::sync::Mutex::new(Instant::now()));
    let (upstream, downstream) = (clock(), clock());
    while let Ok((client, _)) = listener.accept().await {
        let (upstream, downstream) = (upstream.clone(), downstream.clone());
        tokio::spawn(async move {
            // A target that refuses is the client's to see: it gets EOF.
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::join!(
                shaped_pipe(client_read, server_write, shape, upstream),
                shaped_pipe(server_read, client_write, shape, downstream)
            );
        });
    }
}

/// One direction of one connection: chunks leave the link in order, each
/// once the link (shared with the other connections) has serialised what
/// was sent before it at the shaped rate, and arrive half a round trip
/// later.
async fn shaped_pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shape: LinkShape,
    link: LinkClock,
) {
    let (tx, mut rx) = mpsc::channel::<(Bytes, Instant)>(in_flight_chunks(&shape));
    let reader = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let sent_at = {
                let mut free_at = link.lock().unwrap_or_else(|e| e.into_inner());
                *free_at = (*free_at).max(Instant::now()) + shape.serialisation(n);
                *free_at
            };
            let arrives_at = sent_at + shape.one_way();
            if tx
                .send((Bytes::copy_from_slice(&buf[..n]), arrives_at))
                .await
                .is_err()
            {
                break;
            }
        }
        // Dropping tx ends the writer once what is in flight has arrived.
    };
    let writer = async move {
        while let Some((chunk, arrives_at)) = rx.recv().await {
            tokio::time::sleep_until(arrives_at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// known_hosts lines trusting, at the relay's `[127.0.0.1]:PORT`, the keys
/// `known_hosts` holds for `lookup` (OpenSSH's name for the target: `host`,
/// or `[host]:port` off port 22). Only plain entries can be re-keyed: a
/// hashed one does not say which host it is for.
pub fn rekey_known_hosts(known_hosts: &str, lookup: &str, relay_port: u16) -> Vec<String> {
    known_hosts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let hosts = fields.next()?;
            if hosts.starts_with('#') || hosts.starts_with('@') {
                return None;
            }
            let (key_type, key) = (fields.next()?, fields.next()?);
            hosts
                .split(',')
                .any(|h| h == lookup)
                .then(|| format!("[127.0.0.1]:{relay_port} {key_type} {key}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// An echo server on 127.0.0.1, for `connections` connections at once.
    fn echo_server(connections: usize) -> (SocketAddr, std::thread::JoinHandle<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            let echoes: Vec<_> = (0..connections)
                .map(|_| {
                    let (mut conn, _) = listener.accept().unwrap();
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 1 << 16];
                        loop {
                            match conn.read(&mut buf) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => conn.write_all(&buf[..n]).unwrap(),
                            }
                        }
                    })
                })
                .collect();
            for echo in echoes {
                echo.join().unwrap();
            }
        });
        (address, thread)
    }

    /// Sends `payload` on `connections` connections at once through a
    /// relay to an echo server; what came back on each, and how long the
    /// slowest took.
    fn round_trips_through(
        shape: LinkShape,
        payload: &[u8],
        connections: usize,
    ) -> (Vec<Vec<u8>>, Duration) {
        let (target, server) = echo_server(connections);
        let relay = Relay::start(target, shape, 0).unwrap();
        let started = std::time::Instant::now();
        let clients: Vec<_> = (0..connections)
            .map(|_| {
                let mut conn = std::net::TcpStream::connect(relay.address()).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                let mut writer = conn.try_clone().unwrap();
                let to_send = payload.to_vec();
                std::thread::spawn(move || {
                    let sending = std::thread::spawn(move || {
                        writer.write_all(&to_send).unwrap();
                        writer.shutdown(std::net::Shutdown::Write).unwrap();
                    });
                    let mut echoed = Vec::new();
                    conn.read_to_end(&mut echoed).unwrap();
                    sending.join().unwrap();
                    echoed
                })
            })
            .collect();
        let echoed = clients.into_iter().map(|c| c.join().unwrap()).collect();
        let elapsed = started.elapsed();
        server.join().unwrap();
        (echoed, elapsed)
    }

    fn round_trip_through(shape: LinkShape, payload: &[u8]) -> (Vec<u8>, Duration) {
        let (mut echoed, elapsed) = round_trips_through(shape, payload, 1);
        (echoed.remove(0), elapsed)
    }

    #[test]
    fn connections_share_the_link_rate() {
        // Two connections of 512 KiB each: 1 MiB crosses the one 80 Mbit/s
        // link in >= 104 ms, not 52 ms each side by side.
        let payload = vec![9u8; 512 << 10];
        let shape = LinkShape {
            round_trip: Duration::ZERO,
            bits_per_second: Some(80_000_000),
        };
        let (echoed, elapsed) = round_trips_through(shape, &payload, 2);
        assert!(echoed.iter().all(|e| *e == payload));
        assert!(elapsed >= Duration::from_millis(104), "{elapsed:?}");
    }

    #[test]
    fn bytes_come_back_whole_and_in_order_after_at_least_the_round_trip() {
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let shape = LinkShape {
            round_trip: Duration::from_millis(40),
            bits_per_second: None,
        };
        let (echoed, elapsed) = round_trip_through(shape, &payload);
        assert!(echoed == payload, "bytes changed on the way");
        // There (half a round trip) and back (the other half).
        assert!(elapsed >= Duration::from_millis(40), "{elapsed:?}");
    }

    #[test]
    fn known_hosts_entries_of_the_target_are_rekeyed_to_the_relay() {
        let file = "# comment\n\
                    [barman]:2222,10.0.0.9 ssh-ed25519 AAAAkey1 comment\n\
                    barman ssh-rsa AAAAkey2\n\
                    @revoked [barman]:2222 ssh-ed25519 AAAAold\n\
                    |1|abc=|def= ssh-ed25519 AAAAhashed\n";
        assert_eq!(
            rekey_known_hosts(file, "[barman]:2222", 7000),
            ["[127.0.0.1]:7000 ssh-ed25519 AAAAkey1"]
        );
        assert_eq!(
            rekey_known_hosts(file, "barman", 7000),
            ["[127.0.0.1]:7000 ssh-rsa AAAAkey2"]
        );
        assert!(rekey_known_hosts(file, "other", 7000).is_empty());
    }

    #[test]
    fn the_rate_bounds_how_fast_bytes_cross() {
        // 1 MiB at 80 Mbit/s takes >= 104 ms to cross (the way back
        // overlaps it).
        let payload = vec![7u8; 1 << 20];
        let shape = LinkShape {
            round_trip: Duration::ZERO,
            bits_per_second: Some(80_000_000),
        };
        let (echoed, elapsed) = round_trip_through(shape, &payload);
        assert_eq!(echoed.len(), payload.len());
        assert!(elapsed >= Duration::from_millis(104), "{elapsed:?}");
    }
}
