//! Measures the store's write path: `AppendMessage` throughput and latency (p50, p99, max)
//! with many requests in flight, through the same non-blocking `StoreHandle::submit` the
//! gateway uses.
//!
//!   cargo run --release -p corecast-storage --example write_bench -- scylla 127.0.0.1:9042
//!   cargo run --release -p corecast-storage --example write_bench -- embedded /tmp/cc-bench
//!
//! Environment: `BENCH_MESSAGES` (default 50000), `BENCH_IN_FLIGHT` (default 256),
//! `BENCH_GROUPS` (default 100), `BENCH_NOTIFY` (offline members noticed per message, default 2).
//! The ScyllaDB run uses a fresh keyspace `cc_bench_<random>` and drops nothing (inspect it).

use corecast_storage::*;
use hdrhistogram::Histogram;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let kind = args.get(1).map(String::as_str).unwrap_or("scylla");
    let target = args.get(2).cloned();
    let config = match kind {
        "embedded" => {
            Backend::embedded(target.unwrap_or_else(|| "/tmp/corecast-write-bench".into()))
        }
        _ => Backend::Scylla {
            nodes: vec![target.unwrap_or_else(|| "127.0.0.1:9042".into())],
            keyspace: format!("cc_bench_{:08x}", fastrand::u32(..)),
            replication: "'class': 'SimpleStrategy', 'replication_factor': 1".into(),
            consistency: "LOCAL_QUORUM".into(),
            local_dc: None,
            migrate: true,
        },
    };
    let total = env("BENCH_MESSAGES", 50_000);
    let in_flight = env("BENCH_IN_FLIGHT", 256);
    let groups = env("BENCH_GROUPS", 100);
    let notify = env("BENCH_NOTIFY", 2);

    let store = open(&config).expect("open the store");
    let deadline = Instant::now() + Duration::from_secs(120);
    while let Err(e) = store.blocking().ping() {
        assert!(Instant::now() < deadline, "store not ready: {e}");
        std::thread::sleep(Duration::from_millis(200));
    }

    let (tx, rx) = mpsc::channel::<(Instant, Result<Appended, Error>)>();
    let mut ids = IdGenerator::new(1);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut errors = 0u64;
    let mut sent = 0u64;
    let mut done = 0u64;
    let warmup = total / 10;
    let mut measured_from = None;
    let started = Instant::now();
    while done < total {
        while sent < total && sent - done < in_flight {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64;
            let g = sent % groups;
            let message = NewMessage {
                id: ids.next(now_ms),
                group: GroupId::new(g.to_string()),
                sender: UserId(sent % 1000),
                text: "a typical chat message of about sixty bytes, give or take".into(),
                attachments: vec![],
                timestamp: now_ms,
                client_msg_id: Some(format!("c{sent}")),
            };
            let notify = (0..notify).map(|i| UserId(10_000 + i)).collect();
            let tx = tx.clone();
            let t0 = Instant::now();
            store.submit(Request::AppendMessage {
                message,
                notify,
                reply: Box::new(move |r| {
                    let _ = tx.send((t0, r));
                }),
            });
            sent += 1;
        }
        let (t0, r) = rx.recv().expect("replies");
        done += 1;
        if done == warmup {
            measured_from = Some((Instant::now(), done));
        }
        match r {
            Ok(_) if done > warmup => {
                hist.record(t0.elapsed().as_micros() as u64)
                    .expect("in range");
            }
            Ok(_) => {}
            Err(e) => {
                errors += 1;
                if errors < 5 {
                    eprintln!("error: {e}");
                }
            }
        }
    }
    let (from, base) = measured_from.unwrap_or((started, 0));
    let secs = from.elapsed().as_secs_f64();
    println!(
        "backend={} messages={} in_flight={} groups={} notify={} errors={}",
        store.backend(),
        total,
        in_flight,
        groups,
        notify,
        errors
    );
    println!(
        "throughput={:.0} msg/s  p50={:.2} ms  p99={:.2} ms  p99.9={:.2} ms  max={:.2} ms  (after {} warm-up)",
        (done - base) as f64 / secs,
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        hist.value_at_quantile(0.999) as f64 / 1000.0,
        hist.max() as f64 / 1000.0,
        warmup
    );
}
