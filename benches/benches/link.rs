//! The bridge ↔ pipeline transport: the shared-memory ring (`aic_sfu_bridge::shm`, eventfd
//! wake-ups) against a Unix-domain `SOCK_SEQPACKET` socket pair, in the same run, between two
//! threads, with messages the size of one link frame (a 20 ms frame of 16 kHz PCM + header,
//! 656 bytes).
//!
//! * `link_throughput/*`: messages/s, a producer thread streaming `BATCH` messages to the bench
//!   thread (back-pressure: the producer sleeps when the ring / socket buffer is full).
//! * `link_round_trip/*`: one message to an echo thread and back, both sides blocking (so it
//!   includes waking a sleeping thread, as the real link does at 50 frames/s); one-way latency
//!   is half the reported time.

use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use aic_sfu_bridge::shm::{RingReceiver, RingSender, Wake, ring_pair};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

const MSG: usize = 656;
const BATCH: u64 = 20_000;
const WAIT: Duration = Duration::from_secs(5);

fn ring_send(tx: &mut RingSender, m: &[u8]) {
    while !tx.try_send(m).unwrap() {
        tx.wait_space(WAIT, None).unwrap();
    }
}

fn ring_recv(rx: &mut RingReceiver, buf: &mut Vec<u8>) {
    while !rx.try_recv(buf).unwrap() {
        assert_ne!(
            rx.wait_data(WAIT, None).unwrap(),
            Wake::Timeout,
            "ring stalled"
        );
    }
}

fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap()
}

fn uds_send(s: &OwnedFd, m: &[u8]) {
    rustix::net::send(s, m, SendFlags::NOSIGNAL).unwrap();
}

fn uds_recv(s: &OwnedFd, buf: &mut [u8]) -> usize {
    rustix::net::recv(s, buf, RecvFlags::empty()).unwrap().0
}

fn bench_throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("link_throughput");
    g.throughput(Throughput::Elements(BATCH));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(4));

    // Ring: a producer thread sends BATCH messages per request.
    {
        let (mut tx, mut rx) = ring_pair(2048, 64).unwrap();
        let (go, go_rx) = mpsc::channel::<u64>();
        let producer = thread::spawn(move || {
            let m = [7u8; MSG];
            while let Ok(n) = go_rx.recv() {
                for _ in 0..n {
                    ring_send(&mut tx, &m);
                }
            }
        });
        let mut buf = Vec::with_capacity(2048);
        g.bench_function("shm_ring", |b| {
            b.iter_custom(|iters| {
                let t0 = Instant::now();
                for _ in 0..iters {
                    go.send(BATCH).unwrap();
                    for _ in 0..BATCH {
                        ring_recv(&mut rx, &mut buf);
                    }
                }
                t0.elapsed()
            })
        });
        drop(go);
        producer.join().unwrap();
        assert_eq!(buf.len(), MSG);
    }

    // Unix SOCK_SEQPACKET pair: the same.
    {
        let (a, b) = seqpacket_pair();
        let (go, go_rx) = mpsc::channel::<u64>();
        let producer = thread::spawn(move || {
            let m = [7u8; MSG];
            while let Ok(n) = go_rx.recv() {
                for _ in 0..n {
                    uds_send(&a, &m);
                }
            }
        });
        let mut buf = [0u8; 2048];
        g.bench_function("unix_seqpacket", |bch| {
            bch.iter_custom(|iters| {
                let t0 = Instant::now();
                for _ in 0..iters {
                    go.send(BATCH).unwrap();
                    for _ in 0..BATCH {
                        assert_eq!(uds_recv(&b, &mut buf), MSG);
                    }
                }
                t0.elapsed()
            })
        });
        drop(go);
        producer.join().unwrap();
    }
    g.finish();
}

fn bench_round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("link_round_trip");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(4));

    {
        let (mut tx, mut echo_rx) = ring_pair(2048, 64).unwrap();
        let (mut echo_tx, mut rx) = ring_pair(2048, 64).unwrap();
        let echo = thread::spawn(move || {
            let mut buf = Vec::with_capacity(2048);
            loop {
                ring_recv(&mut echo_rx, &mut buf);
                if buf.is_empty() {
                    return; // stop
                }
                ring_send(&mut echo_tx, &buf);
            }
        });
        let m = [3u8; MSG];
        let mut buf = Vec::with_capacity(2048);
        g.bench_function("shm_ring", |b| {
            b.iter(|| {
                ring_send(&mut tx, &m);
                ring_recv(&mut rx, &mut buf);
            })
        });
        ring_send(&mut tx, &[]);
        echo.join().unwrap();
    }

    {
        let (a, b) = seqpacket_pair();
        let echo = thread::spawn(move || {
            let mut buf = [0u8; 2048];
            loop {
                let n = uds_recv(&b, &mut buf);
                if n == 0 {
                    return;
                }
                uds_send(&b, &buf[..n]);
            }
        });
        let m = [3u8; MSG];
        let mut buf = [0u8; 2048];
        g.bench_function("unix_seqpacket", |bch| {
            bch.iter(|| {
                uds_send(&a, &m);
                assert_eq!(uds_recv(&a, &mut buf), MSG);
            })
        });
        drop(a); // the echo thread reads 0 and ends
        echo.join().unwrap();
    }
    g.finish();
}

criterion_group!(benches, bench_throughput, bench_round_trip);
criterion_main!(benches);
