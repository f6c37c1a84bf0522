//! The final report: built once from merged results, printed as a table, written as JSON.
//! Also samples the server process (RSS, CPU time) from /proc at the phase boundaries.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::Config;
use crate::stats::{Merged, Percentiles, Second};

/// RSS and CPU time of the server process at named moments of the run, and its `/metrics`
/// at the start and end of the send phase (for the hop breakdown).
#[derive(Debug, Default)]
pub struct ServerSample {
    pid: Option<u32>,
    marks: BTreeMap<&'static str, (u64, f64)>,
    /// The internal listener and its token, when the server's metrics are to be read.
    metrics_from: Option<(std::net::SocketAddr, String)>,
    metrics: BTreeMap<&'static str, String>,
}

impl ServerSample {
    pub fn new(pid: Option<u32>) -> ServerSample {
        ServerSample {
            pid,
            ..ServerSample::default()
        }
    }

    /// Also reads `GET /metrics` from `admin` at `send_start` and `send_end`.
    pub fn with_metrics(mut self, admin: std::net::SocketAddr, token: &str) -> ServerSample {
        self.metrics_from = Some((admin, token.to_string()));
        self
    }

    pub fn mark(&mut self, at: &'static str) {
        if let (Some((addr, token)), "send_start" | "send_end") = (&self.metrics_from, at) {
            if let Ok((200, text)) = crate::admin::get(*addr, token, "/metrics") {
                self.metrics.insert(at, text);
            }
        }
        let Some(pid) = self.pid else { return };
        if let (Some(rss), Some(cpu)) = (rss_kib(pid), cpu_s(pid)) {
            self.marks.insert(at, (rss, cpu));
        }
    }

    fn get(&self, at: &str) -> Option<(u64, f64)> {
        self.marks.get(at).copied()
    }
}

/// VmRSS of a process, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime of a process, seconds.
pub fn cpu_s(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields resume after its closing parenthesis.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks as f64 / hz)
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub label: String,
    pub scenario: crate::config::Scenario,
    pub target: String,
    pub command: String,
    pub machine: Machine,
    pub config: RunConfig,
    pub connect: Vec<ConnectSummary>,
    pub send: Option<SendSummary>,
    /// recovery-storm only (the send summary's latency is then the live traffic's during the
    /// storm, at the connections that stayed).
    pub recovery: Option<RecoverySummary>,
    pub errors: BTreeMap<String, u64>,
    pub errors_total: u64,
    pub server: Option<ServerSummary>,
    /// Where a message waited inside the server, per hop (corecast only; see breakdown.rs).
    pub breakdown: Option<Vec<crate::breakdown::HopSummary>>,
    pub loadgen: LoadgenSummary,
    pub timeline: Vec<Second>,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub kernel: String,
    pub cpu: String,
}

impl Machine {
    pub fn probe() -> Machine {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_default();
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel,
            cpu,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct RunConfig {
    pub transport: crate::config::Transport,
    pub conns: u32,
    pub group_size: u32,
    pub groups: u32,
    /// Members per group who never connect (each message leaves that many notices).
    pub offline_members: u32,
    pub rate: f64,
    pub msg_size: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub connect_rate: f64,
    pub threads: usize,
    pub procs: u32,
    pub src_addrs: usize,
    pub ack: bool,
}

#[derive(Debug, Serialize)]
pub struct ConnectSummary {
    pub round: usize,
    pub attempted: u64,
    pub ready: u64,
    pub failed: u64,
    pub seconds: f64,
    pub per_s: f64,
    pub handshake: Percentiles,
}

#[derive(Debug, Serialize)]
pub struct SendSummary {
    pub target_rate: f64,
    pub sent: u64,
    pub sent_per_s: f64,
    /// Deliveries of messages intended in the measured window, per second.
    pub deliveries_per_s: f64,
    /// Every delivery, warm-up included.
    pub deliveries: u64,
    pub expected: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Deliveries out of id order, or out of their sender's send order.
    pub out_of_order: u64,
    pub latency: Percentiles,
    pub ack: Percentiles,
    pub acks_ok: u64,
    /// (percentile, ms) points of the latency distribution.
    pub latency_curve: Vec<(f64, f64)>,
}

#[derive(Debug, Serialize)]
pub struct RecoverySummary {
    /// Missed messages sent into each group while its clients were away.
    pub missed_per_group: u32,
    #[serde(flatten)]
    pub tally: crate::stats::RecoveryTally,
    /// From the reconnect round's start until every client had every message it missed.
    pub all_recovered_s: f64,
    /// Per client: its reconnect's start to its last missed message.
    pub per_client: Percentiles,
    /// Server CPU seconds from the reconnect round's start to the last client's recovery.
    pub server_cpu_s: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct ServerSummary {
    pub pid: u32,
    pub rss_start_kib: Option<u64>,
    pub rss_connected_kib: Option<u64>,
    pub rss_end_kib: Option<u64>,
    /// (RSS with every connection open - RSS before) / ready connections.
    pub rss_per_conn_bytes: Option<f64>,
    pub cpu_s_send: Option<f64>,
    pub cpu_us_per_delivery: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct LoadgenSummary {
    pub cpu_s_send: f64,
    pub cpu_us_per_delivery: Option<f64>,
    /// User-space share of the above (the rest is kernel TCP work for our sockets).
    pub user_us_per_delivery: Option<f64>,
    pub cpu_ms_per_100k_deliveries: Option<f64>,
}

impl Report {
    pub fn build(cfg: &Config, m: &Merged, server: &ServerSample, secs: f64) -> Report {
        let server_sample = server;
        let raw = &m.raw;
        let connect = raw
            .connect_rounds
            .iter()
            .enumerate()
            .map(|(round, c)| ConnectSummary {
                round,
                attempted: c.attempted,
                ready: c.ready,
                failed: c.attempted - c.ready.min(c.attempted),
                seconds: c.seconds,
                per_s: c.ready as f64 / c.seconds.max(1e-9),
                handshake: m.handshake.get(round).map_or_else(
                    || Percentiles::of(&crate::stats::new_histogram()),
                    Percentiles::of,
                ),
            })
            .collect();
        let send = cfg.sends().then(|| {
            let expected: u64 = raw.groups.values().map(|t| t.sent * t.receivers).sum();
            let unique: u64 = raw.groups.values().map(|t| t.unique).sum();
            let curve = (0..=200)
                .map(|i| {
                    let x = f64::from(i) * 0.025; // 0 .. 5 nines
                    let q = 1.0 - 10f64.powf(-x);
                    (q * 100.0, m.latency.value_at_quantile(q) as f64 / 1000.0)
                })
                .collect();
            SendSummary {
                target_rate: cfg.args.rate,
                sent: raw.sent,
                sent_per_s: raw.sent_measured as f64 / secs,
                deliveries_per_s: raw.delivered_measured as f64 / secs,
                deliveries: raw.delivered,
                expected,
                lost: expected.saturating_sub(unique),
                duplicated: raw.groups.values().map(|t| t.duplicated).sum(),
                out_of_order: raw.groups.values().map(|t| t.out_of_order).sum(),
                latency: Percentiles::of(&m.latency),
                ack: Percentiles::of(&m.ack),
                acks_ok: raw.acks_ok,
                latency_curve: curve,
            }
        });
        let recovery = cfg.storm().then(|| RecoverySummary {
            missed_per_group: cfg.args.missed,
            tally: raw.recovery.clone(),
            all_recovered_s: raw.storm_s,
            per_client: Percentiles::of(&m.recover),
            server_cpu_s: match (server.get("storm_start"), server.get("storm_end")) {
                (Some(a), Some(b)) => Some(b.1 - a.1),
                _ => None,
            },
        });
        // RSS is sampled once everyone connected: the first round of a recovery storm.
        let rounds = &raw.connect_rounds;
        let ready = if cfg.storm() {
            rounds.first()
        } else {
            rounds.last()
        }
        .map_or(0, |c| c.ready);
        let server = cfg.args.server_pid.map(|pid| {
            let start = server.get("start");
            let connected = server.get("connected");
            let cpu = match (server.get("send_start"), server.get("send_end")) {
                (Some(a), Some(b)) => Some(b.1 - a.1),
                _ => None,
            };
            ServerSummary {
                pid,
                rss_start_kib: start.map(|s| s.0),
                rss_connected_kib: connected.map(|s| s.0),
                rss_end_kib: server.get("end").or(server.get("send_end")).map(|s| s.0),
                rss_per_conn_bytes: match (start, connected) {
                    (Some(a), Some(b)) if ready > 0 => {
                        Some((b.0 as f64 - a.0 as f64) * 1024.0 / ready as f64)
                    }
                    _ => None,
                },
                cpu_s_send: cpu,
                cpu_us_per_delivery: cpu
                    .filter(|_| raw.delivered > 0)
                    .map(|c| c * 1e6 / raw.delivered as f64),
            }
        });
        let per_delivery =
            (raw.delivered > 0).then(|| raw.loadgen_cpu_s * 1e6 / raw.delivered as f64);
        Report {
            label: cfg.args.label.clone(),
            scenario: cfg.args.scenario,
            target: cfg
                .args
                .target
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(","),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            machine: Machine::probe(),
            config: RunConfig {
                transport: cfg.args.transport,
                conns: cfg.args.conns,
                group_size: cfg.group_size,
                groups: cfg.nr_groups,
                offline_members: cfg.args.offline_members,
                rate: cfg.args.rate,
                msg_size: cfg.args.msg_size,
                duration_s: cfg.args.duration,
                warmup_s: cfg.args.warmup,
                connect_rate: cfg.args.connect_rate,
                threads: cfg.nr_threads,
                procs: cfg.args.procs,
                src_addrs: cfg.src_addrs.len(),
                ack: cfg.args.ack,
            },
            connect,
            send,
            recovery,
            errors_total: raw.errors.values().sum(),
            errors: raw.errors.clone(),
            server,
            breakdown: match (
                server_sample.metrics.get("send_start"),
                server_sample.metrics.get("send_end"),
            ) {
                (Some(a), Some(b)) => crate::breakdown::between(a, b),
                _ => None,
            },
            loadgen: LoadgenSummary {
                cpu_s_send: raw.loadgen_cpu_s,
                cpu_us_per_delivery: per_delivery,
                user_us_per_delivery: (raw.delivered > 0)
                    .then(|| raw.loadgen_user_s * 1e6 / raw.delivered as f64),
                cpu_ms_per_100k_deliveries: per_delivery.map(|us| us * 100.0),
            },
            timeline: raw.timeline.clone(),
        }
    }

    /// The readable summary printed at the end of a run.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let c = &self.config;
        let _ = writeln!(
            s,
            "== {} · {:?} · {:?} · {} conns, {} groups of {}{}, {} threads x {} procs ==",
            self.label,
            self.scenario,
            c.transport,
            c.conns,
            c.groups,
            c.group_size,
            match c.offline_members {
                0 => String::new(),
                n => format!(" (+{n} offline)"),
            },
            c.threads,
            c.procs
        );
        for r in &self.connect {
            let h = &r.handshake;
            let _ = writeln!(
                s,
                "connect round {}: {}/{} ready, {} failed, {:.2}s, {:.0} conn/s | handshake ms p50 {:.2} p99 {:.2} max {:.2}",
                r.round, r.ready, r.attempted, r.failed, r.seconds, r.per_s, h.p50_ms, h.p99_ms, h.max_ms
            );
        }
        if let Some(x) = &self.send {
            let l = &x.latency;
            let _ = writeln!(
                s,
                "sent {} ({:.0}/s, target {:.0}/s) | deliveries {:.0}/s ({} total)",
                x.sent, x.sent_per_s, x.target_rate, x.deliveries_per_s, x.deliveries
            );
            let _ = writeln!(
                s,
                "expected {} | lost {} | duplicated {} | out of order {} | acks ok {}",
                x.expected, x.lost, x.duplicated, x.out_of_order, x.acks_ok
            );
            let _ = writeln!(s, "latency ms    p50      p90      p99    p99.9      max");
            let _ = writeln!(
                s,
                "  delivery {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
            );
            let a = &x.ack;
            let _ = writeln!(
                s,
                "  ack      {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                a.p50_ms, a.p90_ms, a.p99_ms, a.p999_ms, a.max_ms
            );
        }
        if let Some(r) = &self.recovery {
            let t = &r.tally;
            let p = &r.per_client;
            let _ = writeln!(
                s,
                "recovery: {} clients dropped, {} back: {} recovered, {} fresh | {} missed per group, {} stored",
                t.clients, t.back, t.recovered, t.fresh, r.missed_per_group, t.stored
            );
            let _ = writeln!(
                s,
                "  missed messages: {} expected, {} lost ({} clients), {} duplicated ({} clients); {} clients complete",
                t.missed_expected,
                t.missed_lost,
                t.clients_with_loss,
                t.missed_duplicated,
                t.clients_with_duplicates,
                t.complete
            );
            let _ = writeln!(
                s,
                "  all recovered {:.2}s after the reconnect round's start | per client reconnect → all missed ms p50 {:.2} p99 {:.2} max {:.2} | server CPU {}",
                r.all_recovered_s,
                p.p50_ms,
                p.p99_ms,
                p.max_ms,
                r.server_cpu_s.map_or("-".into(), |c| format!("{c:.2}s"))
            );
        }
        if let Some(sv) = &self.server {
            let _ = writeln!(
                s,
                "server pid {}: RSS KiB start {:?} connected {:?} end {:?} | {} | CPU {}",
                sv.pid,
                sv.rss_start_kib,
                sv.rss_connected_kib,
                sv.rss_end_kib,
                sv.rss_per_conn_bytes
                    .map_or("-".into(), |b| format!("{:.0} B/conn", b)),
                sv.cpu_us_per_delivery
                    .map_or("-".into(), |u| format!("{:.2} µs/delivery", u))
            );
        }
        if let Some(hops) = &self.breakdown {
            let _ = writeln!(
                s,
                "inside the server, per hop (µs; p50/p99 are bucket bounds)   count     mean   p50 <=   p99 <="
            );
            let bound = |b: Option<f64>| b.map_or("-".into(), |v| format!("{v}"));
            for h in hops.iter().filter(|h| h.count > 0) {
                let _ = writeln!(
                    s,
                    "  {:<58} {:>7} {:>8.1} {:>8} {:>8}",
                    h.hop,
                    h.count,
                    h.mean_us,
                    bound(h.p50_le_us),
                    bound(h.p99_le_us)
                );
            }
        }
        let _ = writeln!(
            s,
            "loadgen CPU {:.2}s during sends | {} ({} in user space)",
            self.loadgen.cpu_s_send,
            self.loadgen
                .cpu_us_per_delivery
                .map_or("-".into(), |u| format!("{:.2} µs/delivery", u)),
            self.loadgen
                .user_us_per_delivery
                .map_or("-".into(), |u| format!("{:.2} µs", u))
        );
        let _ = write!(s, "errors {}", self.errors_total);
        for (k, v) in &self.errors {
            let _ = write!(s, " | {k}: {v}");
        }
        s
    }
}
