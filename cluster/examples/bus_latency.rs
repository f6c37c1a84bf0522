//! One bus hop, measured: node B publishes at a fixed rate (open loop) on channels node A is
//! subscribed to, through a real Redis; A records publish-to-handler latency (both nodes in
//! this process, so one clock) in an HDR histogram, and Redis's own CPU time per message
//! (`INFO cpu` before and after: its main thread's user and system time).
//!
//! cargo run --release -p corecast-cluster --example bus_latency -- \
//!     redis://127.0.0.1:6390 [rate per second, default 5000] [seconds, default 10] [channels, default 100]

use bytes::Bytes;
use corecast_cluster::{Bus, BusConfig, BusEvent, Handler};
use hdrhistogram::Histogram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let rate: u64 = args.next().map_or(5_000, |a| a.parse().expect("rate"));
    let secs: u64 = args.next().map_or(10, |a| a.parse().expect("seconds"));
    let channels: usize = args.next().map_or(100, |a| a.parse().expect("channels"));

    let t0 = Instant::now();
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3).unwrap()));
    let (up_tx, up_rx) = crossbeam_channel::unbounded();
    let h = hist.clone();
    let on_a: Handler = Arc::new(move |e| match e {
        BusEvent::Message { payload, .. } => {
            let sent = u64::from_le_bytes(payload[..8].try_into().unwrap());
            let now = t0.elapsed().as_nanos() as u64;
            let _ = h.lock().unwrap().record(now.saturating_sub(sent) / 1_000);
        }
        BusEvent::Up { .. } => {
            let _ = up_tx.send(());
        }
        BusEvent::Down { epoch } => eprintln!("bus down (epoch {epoch}) at {:?}", t0.elapsed()),
    });
    let a = Bus::start(BusConfig::new(url.as_str()), on_a).expect("bus a");
    let b = Bus::start(BusConfig::new(url.as_str()), Arc::new(|_| {})).expect("bus b");
    up_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("bus a up");
    let names: Vec<String> = (0..channels).map(|i| format!("bench:g:{i}")).collect();
    let (sub_tx, sub_rx) = crossbeam_channel::unbounded();
    for n in &names {
        let tx = sub_tx.clone();
        a.handle()
            .subscribe(n.clone(), Box::new(move |r| tx.send(r).unwrap()));
    }
    for _ in &names {
        sub_rx.recv().unwrap().expect("subscribed");
    }
    let hb = b.handle();
    let cpu_before = redis_cpu_secs(&hb);
    let total = rate * secs;
    let start = Instant::now();
    let mut body = vec![0u8; 200]; // about a chat message frame
    for i in 0..total {
        let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
        // Sleep to the send time (no spinning: the machine has two cores, one is Redis's).
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let t = t0.elapsed().as_nanos() as u64;
        body[..8].copy_from_slice(&t.to_le_bytes());
        hb.publish(
            names[i as usize % channels].clone(),
            Bytes::copy_from_slice(&body),
            None,
        );
    }
    // The tail: until everything arrived, or two seconds without progress.
    let mut last = (0, Instant::now());
    while hist.lock().unwrap().len() < total && last.1.elapsed() < Duration::from_secs(2) {
        let n = hist.lock().unwrap().len();
        if n != last.0 {
            last = (n, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let redis_us = (redis_cpu_secs(&hb) - cpu_before) * 1e6 / total.max(1) as f64;
    let h = hist.lock().unwrap();
    println!("redis CPU per message: {redis_us:.1} µs (one subscriber)");
    println!(
        "rate {rate}/s for {secs} s over {channels} channels: received {} of {total}; latency µs p50 {} p90 {} p99 {} p99.9 {} max {}",
        h.len(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    );
}

/// Redis's CPU time so far (`used_cpu_sys` + `used_cpu_user` of `INFO cpu`), in seconds.
fn redis_cpu_secs(bus: &corecast_cluster::BusHandle) -> f64 {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let mut info = redis::cmd("INFO");
    info.arg("cpu");
    bus.command(info, Box::new(move |r| drop(tx.send(r))));
    let text = match rx
        .recv_timeout(Duration::from_secs(5))
        .expect("INFO answered")
    {
        Ok(redis::Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
        Ok(redis::Value::VerbatimString { text, .. }) => text,
        other => panic!("INFO cpu: {other:?}"),
    };
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| *k == "used_cpu_sys" || *k == "used_cpu_user")
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum()
}
