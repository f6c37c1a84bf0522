//! Per-shard counters, summed when `/metrics` asks.
//!
//! Each shard writes only its own [`ShardStats`] (relaxed atomics on a cache line nobody else
//! writes, so as cheap as plain cells); the internal listener reads them all and renders
//! Prometheus text.

use crate::events::Code;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets: from 10 µs, so that the hops of
/// a message that crosses threads in microseconds are told apart.
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The hops of a client's message from its sender's socket to its recipients' sockets, each
/// timed on its own (`corecast_hop_latency_seconds{hop}`; docs/operations.md). A hop that
/// crosses to another thread includes that thread's wake-up and its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// The sender's connection shard parsed the event -> the sender's rate-limit owner (the
    /// user's presence shard) admitted it. Absent with the per-user limit off.
    Limiter,
    /// Admitted (or parsed, with the limit off) -> the group's owner shard took it up
    /// (including a wait for the room's members to load).
    Owner,
    /// The owner handed it to the store -> the store committed it (queue, pacing wait, commit
    /// and fsync), on the store's thread.
    Store,
    /// Committed -> the owner shard read the store's answer.
    StoreReply,
    /// The answer read -> broadcast to the subscriber shards: waits only while an earlier
    /// message of the group is still being stored (messages go out in id order).
    Order,
    /// Broadcast -> a subscriber shard queued the frames on its connections.
    Fanout,
    /// The first frame of a send batch queued -> the batch handed to the kernel (one
    /// observation per batch of socket writes, not per message).
    Socket,
    /// Parsed on the sender's shard -> queued on the recipients' connections of a shard
    /// (one observation per subscriber shard).
    Total,
}

impl Hop {
    pub const ALL: [Hop; 8] = [
        Hop::Limiter,
        Hop::Owner,
        Hop::Store,
        Hop::StoreReply,
        Hop::Order,
        Hop::Fanout,
        Hop::Socket,
        Hop::Total,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Hop::Limiter => "limiter",
            Hop::Owner => "owner",
            Hop::Store => "store",
            Hop::StoreReply => "store_reply",
            Hop::Order => "order",
            Hop::Fanout => "fanout",
            Hop::Socket => "socket",
            Hop::Total => "total",
        }
    }
}

/// A Prometheus histogram with fixed buckets.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(d.as_nanos() as u64, Relaxed);
    }
}

/// One shard's counters.
#[derive(Default)]
pub struct ShardStats {
    pub connections: AtomicI64,
    pub connections_total: AtomicU64,
    pub messages_in: AtomicU64,
    pub events_in: AtomicU64,
    pub deliveries: AtomicU64,
    pub writes: AtomicU64,
    pub slow_disconnects: AtomicU64,
    /// Connections not yet logged in that were closed to admit newer ones (admission.rs).
    pub admission_evictions: AtomicU64,
    /// Connections refused because their address had too many waiting to log in.
    pub admission_refusals: AtomicU64,
    pub errors: [AtomicU64; Code::ALL.len()],
    pub overflow_depth: AtomicI64,
    /// Rooms held by this shard as the owner of their group (loaded or loading).
    pub rooms: AtomicI64,
    /// Logged-in connections whose groups were loaded, and the store requests that loaded
    /// them (merged, see `corecast_shard_router::Loads`).
    pub group_loads: AtomicU64,
    pub group_load_requests: AtomicU64,
    /// Connection state recovery: CONNECTs recovered, refused (a fresh session instead), and
    /// the messages replayed to the recovered ones.
    pub recoveries: AtomicU64,
    pub recoveries_refused: AtomicU64,
    pub recovered_messages: AtomicU64,
    pub delivery_latency: Histogram,
    pub store_latency: Histogram,
    pub hops: [Histogram; Hop::ALL.len()],
}

impl ShardStats {
    pub fn error(&self, code: Code) {
        self.errors[code.index()].fetch_add(1, Relaxed);
    }

    pub fn hop(&self, hop: Hop, d: Duration) {
        self.hops[hop as usize].observe(d);
    }
}

/// Resident memory of this process in bytes.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
    pages * page
}

fn counter(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    shards: &[&ShardStats],
    pick: fn(&ShardStats) -> &Histogram,
) {
    counter(out, name, help, "histogram");
    series(out, name, None, shards.iter().map(|s| pick(s)));
}

/// A histogram of one part (not per shard), with its HELP and TYPE lines.
pub fn one_histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    counter(out, name, help, "histogram");
    series(out, name, None, std::iter::once(h));
}

/// One series of a histogram, summed over the shards' parts, with one label or none.
fn series<'a>(
    out: &mut String,
    name: &str,
    label: Option<(&str, &str)>,
    parts: impl Iterator<Item = &'a Histogram> + Clone,
) {
    let (open, only) = match label {
        Some((k, v)) => (format!("{k}=\"{v}\","), format!("{{{k}=\"{v}\"}}")),
        None => (String::new(), String::new()),
    };
    let mut cumulative = 0;
    for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
        cumulative += parts
            .clone()
            .map(|h| h.buckets[i].load(Relaxed))
            .sum::<u64>();
        let _ = writeln!(out, "{name}_bucket{{{open}le=\"{bound}\"}} {cumulative}");
    }
    let count: u64 = parts.clone().map(|h| h.count.load(Relaxed)).sum();
    let sum: u64 = parts.map(|h| h.sum_nanos.load(Relaxed)).sum();
    let _ = writeln!(out, "{name}_bucket{{{open}le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum{only} {}", sum as f64 / 1e9);
    let _ = writeln!(out, "{name}_count{only} {count}");
}

/// Renders every shard's counters, plus queue depths given as (shard, inbox depth).
pub fn render(shards: &[&ShardStats], inbox_depths: &[usize], store_queue: usize) -> String {
    let mut out = String::with_capacity(4096);
    let sum = |f: fn(&ShardStats) -> u64| shards.iter().map(|s| f(s)).sum::<u64>();
    for (name, help, f) in [
        (
            "corecast_connections",
            "Open Socket.IO connections.",
            (|s| s.connections.load(Relaxed)) as fn(&ShardStats) -> i64,
        ),
        (
            "corecast_rooms",
            "Rooms held in memory by each shard, as the owner of their group (loaded or loading).",
            |s| s.rooms.load(Relaxed),
        ),
    ] {
        counter(&mut out, name, help, "gauge");
        for (i, s) in shards.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", f(s));
        }
    }
    for (name, help, f) in [
        (
            "corecast_connections_total",
            "Connections accepted.",
            (|s: &ShardStats| s.connections_total.load(Relaxed)) as fn(&ShardStats) -> u64,
        ),
        (
            "corecast_messages_in_total",
            "Messages accepted from clients (sendMessage).",
            |s| s.messages_in.load(Relaxed),
        ),
        (
            "corecast_events_in_total",
            "Socket.IO events received from clients.",
            |s| s.events_in.load(Relaxed),
        ),
        (
            "corecast_deliveries_total",
            "Frames queued to client connections (newMessage, userOnline, messageRead).",
            |s| s.deliveries.load(Relaxed),
        ),
        (
            "corecast_socket_writes_total",
            "Socket writes (each carries everything queued for one connection).",
            |s| s.writes.load(Relaxed),
        ),
        (
            "corecast_slow_disconnects_total",
            "Clients disconnected because their outbound queue was full.",
            |s| s.slow_disconnects.load(Relaxed),
        ),
        (
            "corecast_recoveries_total",
            "Reconnecting clients whose session was recovered (connection state recovery).",
            |s| s.recoveries.load(Relaxed),
        ),
        (
            "corecast_recoveries_refused_total",
            "Reconnecting clients given a fresh session instead: a pid not theirs, past the window or the event limit, or a failed read.",
            |s| s.recoveries_refused.load(Relaxed),
        ),
        (
            "corecast_recovered_messages_total",
            "Events (messages and read receipts) replayed from the store to recovered clients.",
            |s| s.recovered_messages.load(Relaxed),
        ),
        (
            "corecast_admission_evictions_total",
            "Connections not yet logged in, closed to admit newer ones (the pending cap was reached).",
            |s| s.admission_evictions.load(Relaxed),
        ),
        (
            "corecast_admission_refusals_total",
            "Connections refused because their address had too many waiting to log in.",
            |s| s.admission_refusals.load(Relaxed),
        ),
        (
            "corecast_group_loads_total",
            "Logged-in connections whose group memberships were loaded from the store.",
            |s| s.group_loads.load(Relaxed),
        ),
        (
            "corecast_group_load_requests_total",
            "Store requests that loaded them: the loads of connects at once are merged into one.",
            |s| s.group_load_requests.load(Relaxed),
        ),
    ] {
        counter(&mut out, name, help, "counter");
        let _ = writeln!(out, "{name} {}", sum(f));
    }
    counter(
        &mut out,
        "corecast_errors_total",
        "Errors reported to clients, by code.",
        "counter",
    );
    for code in Code::ALL {
        let n: u64 = shards
            .iter()
            .map(|s| s.errors[code.index()].load(Relaxed))
            .sum();
        let _ = writeln!(
            out,
            "corecast_errors_total{{code=\"{}\"}} {n}",
            code.as_str()
        );
    }
    counter(
        &mut out,
        "corecast_shard_queue_depth",
        "Messages waiting in each shard's inbox and overflow.",
        "gauge",
    );
    for (i, s) in shards.iter().enumerate() {
        let depth =
            inbox_depths.get(i).copied().unwrap_or(0) as i64 + s.overflow_depth.load(Relaxed);
        let _ = writeln!(out, "corecast_shard_queue_depth{{shard=\"{i}\"}} {depth}");
    }
    counter(
        &mut out,
        "corecast_store_queue_depth",
        "Requests waiting for the store.",
        "gauge",
    );
    let _ = writeln!(out, "corecast_store_queue_depth {store_queue}");
    histogram(&mut out, "corecast_delivery_latency_seconds", "From the store's acceptance of a message to its frame being queued on a recipient's connection.", shards, |s| &s.delivery_latency);
    histogram(
        &mut out,
        "corecast_store_latency_seconds",
        "From submitting a message to the store to its durable acceptance.",
        shards,
        |s| &s.store_latency,
    );
    counter(
        &mut out,
        "corecast_hop_latency_seconds",
        "Each hop of a client's message, from its sender's socket to its recipients' (docs/operations.md).",
        "histogram",
    );
    for hop in Hop::ALL {
        let parts = shards.iter().map(move |s| &s.hops[hop as usize]);
        series(
            &mut out,
            "corecast_hop_latency_seconds",
            Some(("hop", hop.as_str())),
            parts,
        );
    }
    counter(
        &mut out,
        "corecast_resident_memory_bytes",
        "Resident memory of the gateway process.",
        "gauge",
    );
    let _ = writeln!(out, "corecast_resident_memory_bytes {}", rss_bytes());
    counter(
        &mut out,
        "corecast_store_memory_bytes",
        "Of which the embedded store (SQLite's page caches, at most 64 MiB per connection, and statements).",
        "gauge",
    );
    let _ = writeln!(
        out,
        "corecast_store_memory_bytes {}",
        corecast_storage::embedded::memory_used()
    );
    out
}
