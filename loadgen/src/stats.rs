//! What the event loops count, and how counts from threads and processes are merged.
//!
//! Each event-loop thread owns its [`ThreadStats`] (no sharing, no atomics on the
//! per-delivery path) and hands it over twice: a small [`Interval`] every second for the
//! progress line and the timeline, and everything at the end as a [`RawReport`], which
//! is also what a child process writes for its parent to merge.

use std::collections::BTreeMap;

use anyhow::Context;
use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;

/// Latency histograms hold microseconds, from 1 µs to 10 minutes, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("invariant: valid histogram bounds")
}

/// Records `us`, saturating at the histogram's top instead of failing.
pub fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.max(1));
}

/// Senders per group at most: each member connection keeps one number per sender of its
/// group, so a large room sends from its first few members only.
pub const MAX_SENDERS_PER_GROUP: usize = 32;

/// The messages one member connection received from its group.
///
/// Lost and duplicated are told by the group's sequence (one sending thread numbers a
/// group's messages): missing ranges are kept as holes, so that a late arrival is told
/// apart from a duplicate without a bitmap per connection. Messages sent at the same time
/// from different connections have no order relative to each other, so arriving after a
/// later sequence number is not a fault. What is (the gateway's guarantee): a message whose
/// server-assigned id is not greater than the previous one this member got from the group
/// (every member sees a group's messages in id order), or one that comes before an earlier
/// message of the same sender (one connection's messages keep their send order). A
/// duplicate is counted as duplicated only.
#[derive(Debug, Default, Clone)]
pub struct Track {
    next: u64,
    holes: Vec<(u64, u64)>,
    last_id: Option<u64>,
    /// Per sender index: 1 + the group sequence of the last message received from it.
    last_by_sender: Vec<u64>,
    pub unique: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
}

impl Track {
    /// One delivery: the group sequence `seq` and sender index `sender` from the loadgen's
    /// text header, and the message id the server assigned.
    pub fn on_delivery(&mut self, seq: u64, sender: usize, id: u64) {
        if !self.on_seq(seq) {
            return;
        }
        let mut bad = self.last_id.is_some_and(|last| id <= last);
        self.last_id = Some(id);
        if self.last_by_sender.len() <= sender {
            self.last_by_sender.resize(sender + 1, 0);
        }
        let last = &mut self.last_by_sender[sender];
        bad |= *last > seq;
        *last = seq + 1;
        self.out_of_order += u64::from(bad);
    }

    /// Lost/duplicated accounting; false for a duplicate.
    fn on_seq(&mut self, seq: u64) -> bool {
        if seq == self.next {
            self.next += 1;
        } else if seq > self.next {
            self.holes.push((self.next, seq));
            self.next = seq + 1;
        } else if let Some(i) = self.holes.iter().position(|&(a, b)| a <= seq && seq < b) {
            let (a, b) = self.holes[i];
            self.holes.swap_remove(i);
            if a < seq {
                self.holes.push((a, seq));
            }
            if seq + 1 < b {
                self.holes.push((seq + 1, b));
            }
        } else {
            self.duplicated += 1;
            return false;
        }
        self.unique += 1;
        true
    }
}

/// Per group, summed over processes: messages sent into it, member connections that were
/// ready when sending began, and what those members received.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct GroupTally {
    pub sent: u64,
    pub receivers: u64,
    pub unique: u64,
    pub duplicated: u64,
    /// Deliveries out of id order, or out of their sender's order.
    pub out_of_order: u64,
}

/// `--scenario recovery-storm`: what the clients that dropped and came back got. Summed over
/// threads (and processes); every count is of clients except where it says messages.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct RecoveryTally {
    /// Clients that had a session when they dropped it, and reconnected with its pid and
    /// offset (a client whose first connect failed is not one of them).
    pub clients: u64,
    /// Of which the CONNECT was answered again.
    pub back: u64,
    /// Answered with the pid they sent (the session recovered).
    pub recovered: u64,
    /// Answered with a new pid (a fresh session: nothing replayed).
    pub fresh: u64,
    /// Got every message sent to their group while they were away.
    pub complete: u64,
    /// Missed messages the server acknowledged (stored) while the clients were away.
    pub stored: u64,
    /// Messages: missed ones expected over all clients, never received, received twice (or
    /// out of their group's order).
    pub missed_expected: u64,
    pub missed_lost: u64,
    pub missed_duplicated: u64,
    pub clients_with_loss: u64,
    pub clients_with_duplicates: u64,
}

impl RecoveryTally {
    pub fn add(&mut self, o: &RecoveryTally) {
        self.clients += o.clients;
        self.back += o.back;
        self.recovered += o.recovered;
        self.fresh += o.fresh;
        self.complete += o.complete;
        self.stored += o.stored;
        self.missed_expected += o.missed_expected;
        self.missed_lost += o.missed_lost;
        self.missed_duplicated += o.missed_duplicated;
        self.clients_with_loss += o.clients_with_loss;
        self.clients_with_duplicates += o.clients_with_duplicates;
    }
}

/// One second of one thread's work (`sec` counts from the run's start).
#[derive(Debug)]
pub struct Interval {
    pub sec: u32,
    pub sent: u64,
    pub delivered: u64,
    pub errors: u64,
    pub latency: Histogram<u64>,
}

/// One second of the whole run, for the progress line, the JSON and the SVG.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Second {
    pub t: u32,
    pub sent: u64,
    pub delivered: u64,
    pub errors: u64,
    pub p99_ms: f64,
    #[serde(skip)]
    pub latency: Option<Histogram<u64>>,
}

impl Second {
    pub fn new(t: u32) -> Second {
        Second {
            t,
            sent: 0,
            delivered: 0,
            errors: 0,
            p99_ms: 0.0,
            latency: Some(new_histogram()),
        }
    }

    pub fn add(&mut self, iv: &Interval) {
        self.sent += iv.sent;
        self.delivered += iv.delivered;
        self.errors += iv.errors;
        if let Some(h) = &mut self.latency {
            let _ = h.add(&iv.latency);
            self.p99_ms = h.value_at_quantile(0.99) as f64 / 1000.0;
        }
    }
}

/// Everything a thread counted that is not per-second.
pub struct ThreadStats {
    /// End-to-end latency of deliveries of messages intended after the warm-up.
    pub latency: Histogram<u64>,
    /// Intended send time to ack.
    pub ack: Histogram<u64>,
    /// TCP connect start to Socket.IO CONNECT accepted, per connect round.
    pub handshake: Vec<Histogram<u64>>,
    pub errors: BTreeMap<String, u64>,
    /// Deliveries (all, warm-up included) and deliveries in the measured window.
    pub delivered: u64,
    pub delivered_measured: u64,
    pub sent: u64,
    pub sent_measured: u64,
    pub acks_ok: u64,
    /// recovery-storm: the clients that came back, and each one's time from its reconnect
    /// to its last missed message.
    pub recovery: RecoveryTally,
    pub recover: Histogram<u64>,
    // The current second.
    pub iv_sec: u32,
    pub iv_sent: u64,
    pub iv_delivered: u64,
    pub iv_errors: u64,
    pub iv_latency: Histogram<u64>,
}

impl Default for ThreadStats {
    fn default() -> Self {
        Self::new()
    }
}

impl ThreadStats {
    pub fn new() -> ThreadStats {
        ThreadStats {
            latency: new_histogram(),
            ack: new_histogram(),
            handshake: vec![new_histogram()],
            errors: BTreeMap::new(),
            delivered: 0,
            delivered_measured: 0,
            sent: 0,
            sent_measured: 0,
            acks_ok: 0,
            recovery: RecoveryTally::default(),
            recover: new_histogram(),
            iv_sec: 0,
            iv_sent: 0,
            iv_delivered: 0,
            iv_errors: 0,
            iv_latency: new_histogram(),
        }
    }

    pub fn error(&mut self, code: &str) {
        self.iv_errors += 1;
        match self.errors.get_mut(code) {
            Some(n) => *n += 1,
            None => {
                self.errors.insert(code.to_string(), 1);
            }
        }
    }

    /// Closes the current second if `sec` is past it, returning it for the main thread.
    pub fn roll(&mut self, sec: u32) -> Option<Interval> {
        if sec <= self.iv_sec {
            return None;
        }
        let iv = Interval {
            sec: self.iv_sec,
            sent: std::mem::take(&mut self.iv_sent),
            delivered: std::mem::take(&mut self.iv_delivered),
            errors: std::mem::take(&mut self.iv_errors),
            latency: std::mem::replace(&mut self.iv_latency, new_histogram()),
        };
        self.iv_sec = sec;
        Some(iv)
    }
}

/// Serializes a histogram as base64 of hdrhistogram's V2 format.
mod hist_b64 {
    use super::*;

    pub fn encode(h: &Histogram<u64>) -> String {
        let mut buf = Vec::new();
        V2Serializer::new()
            .serialize(h, &mut buf)
            .expect("invariant: serializing into a Vec cannot fail");
        base64::engine::general_purpose::STANDARD.encode(buf)
    }

    pub fn decode(s: &str) -> anyhow::Result<Histogram<u64>> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(s)?;
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut &bytes[..])
            .context("decoding a histogram")?;
        Ok(h)
    }
}

/// Mergeable results of one process: what a child writes for its parent, and what the
/// final report is computed from.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct RawReport {
    pub latency: String,
    pub ack: String,
    pub handshake: Vec<String>,
    pub errors: BTreeMap<String, u64>,
    pub groups: BTreeMap<u32, GroupTally>,
    pub delivered: u64,
    pub delivered_measured: u64,
    pub sent: u64,
    pub sent_measured: u64,
    pub acks_ok: u64,
    /// Connections attempted and ready, per connect round, and each round's seconds.
    pub connect_rounds: Vec<ConnectRound>,
    pub timeline: Vec<Second>,
    /// The loadgen's own CPU time (user + system) during the send phase, seconds.
    pub loadgen_cpu_s: f64,
    /// Of which in user space (the rest is the kernel's TCP work on our sockets).
    #[serde(default)]
    pub loadgen_user_s: f64,
    pub send_wall_s: f64,
    #[serde(default)]
    pub recovery: RecoveryTally,
    /// recovery-storm: reconnect to last missed message, per client (a histogram, base64).
    #[serde(default)]
    pub recover: String,
    /// recovery-storm: from the reconnect round's start until every client had all it missed.
    #[serde(default)]
    pub storm_s: f64,
}

#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct ConnectRound {
    pub attempted: u64,
    pub ready: u64,
    pub seconds: f64,
}

/// Histograms and tallies in their working form, merged from threads or processes.
pub struct Merged {
    pub latency: Histogram<u64>,
    pub ack: Histogram<u64>,
    pub handshake: Vec<Histogram<u64>>,
    pub recover: Histogram<u64>,
    pub raw: RawReport,
}

impl Default for Merged {
    fn default() -> Self {
        Self::new()
    }
}

impl Merged {
    pub fn new() -> Merged {
        Merged {
            latency: new_histogram(),
            ack: new_histogram(),
            handshake: Vec::new(),
            recover: new_histogram(),
            raw: RawReport::default(),
        }
    }

    pub fn add_thread(&mut self, t: &ThreadStats) {
        let _ = self.latency.add(&t.latency);
        let _ = self.ack.add(&t.ack);
        let _ = self.recover.add(&t.recover);
        self.raw.recovery.add(&t.recovery);
        add_handshakes(&mut self.handshake, t.handshake.iter());
        for (k, v) in &t.errors {
            *self.raw.errors.entry(k.clone()).or_default() += v;
        }
        self.raw.delivered += t.delivered;
        self.raw.delivered_measured += t.delivered_measured;
        self.raw.sent += t.sent;
        self.raw.sent_measured += t.sent_measured;
        self.raw.acks_ok += t.acks_ok;
    }

    pub fn add_group(&mut self, g: u32, tally: &GroupTally) {
        let e = self.raw.groups.entry(g).or_default();
        e.sent += tally.sent;
        e.receivers += tally.receivers;
        e.unique += tally.unique;
        e.duplicated += tally.duplicated;
        e.out_of_order += tally.out_of_order;
    }

    /// Into the serializable form (a child's output).
    pub fn into_raw(mut self) -> RawReport {
        self.raw.latency = hist_b64::encode(&self.latency);
        self.raw.ack = hist_b64::encode(&self.ack);
        self.raw.handshake = self.handshake.iter().map(hist_b64::encode).collect();
        self.raw.recover = hist_b64::encode(&self.recover);
        self.raw
    }

    /// Merges a child's output.
    pub fn add_raw(&mut self, r: RawReport) -> anyhow::Result<()> {
        self.latency.add(hist_b64::decode(&r.latency)?)?;
        self.ack.add(hist_b64::decode(&r.ack)?)?;
        if !r.recover.is_empty() {
            self.recover.add(hist_b64::decode(&r.recover)?)?;
        }
        self.raw.recovery.add(&r.recovery);
        self.raw.storm_s = self.raw.storm_s.max(r.storm_s);
        let hs = r
            .handshake
            .iter()
            .map(|s| hist_b64::decode(s))
            .collect::<anyhow::Result<Vec<_>>>()?;
        add_handshakes(&mut self.handshake, hs.iter());
        for (k, v) in r.errors {
            *self.raw.errors.entry(k).or_default() += v;
        }
        for (g, t) in &r.groups {
            self.add_group(*g, t);
        }
        let m = &mut self.raw;
        m.delivered += r.delivered;
        m.delivered_measured += r.delivered_measured;
        m.sent += r.sent;
        m.sent_measured += r.sent_measured;
        m.acks_ok += r.acks_ok;
        m.loadgen_cpu_s += r.loadgen_cpu_s;
        m.loadgen_user_s += r.loadgen_user_s;
        m.send_wall_s = m.send_wall_s.max(r.send_wall_s);
        for (i, c) in r.connect_rounds.iter().enumerate() {
            if m.connect_rounds.len() <= i {
                m.connect_rounds.push(ConnectRound::default());
            }
            let mc = &mut m.connect_rounds[i];
            mc.attempted += c.attempted;
            mc.ready += c.ready;
            mc.seconds = mc.seconds.max(c.seconds);
        }
        for s in r.timeline {
            match m.timeline.iter_mut().find(|x| x.t == s.t) {
                Some(x) => {
                    x.sent += s.sent;
                    x.delivered += s.delivered;
                    x.errors += s.errors;
                    // Per-second p99 across processes: the worst process's is an upper bound.
                    x.p99_ms = x.p99_ms.max(s.p99_ms);
                }
                None => m.timeline.push(s),
            }
        }
        m.timeline.sort_by_key(|s| s.t);
        Ok(())
    }
}

fn add_handshakes<'a>(
    into: &mut Vec<Histogram<u64>>,
    from: impl Iterator<Item = &'a Histogram<u64>>,
) {
    for (i, h) in from.enumerate() {
        if into.len() <= i {
            into.push(new_histogram());
        }
        let _ = into[i].add(h);
    }
}

/// p50 .. max of a microsecond histogram, in milliseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: h.max() as f64 / 1000.0,
            mean_ms: h.mean() / 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn track_tells_late_from_duplicate() {
        let mut t = Track::default();
        // (sequence, sender, id) in arrival order; sender 1 sent 1 and 2 on its connection
        // while sender 0 sent 3 and 4 on another.
        let arrivals = [
            (0, 0, 1),
            (1, 1, 2),
            (3, 0, 3),
            (4, 0, 4),
            (2, 1, 5),
            (2, 1, 5),
            (4, 0, 4),
            (7, 0, 6),
        ];
        for (seq, sender, id) in arrivals {
            t.on_delivery(seq, sender, id);
        }
        assert_eq!(t.unique, 6);
        assert_eq!(t.duplicated, 2);
        // Sequence 2 after 3 (another sender's) with a greater id: not out of order.
        assert_eq!(t.out_of_order, 0);
        // 5 and 6 never came.
        assert_eq!(t.holes.iter().map(|(a, b)| b - a).sum::<u64>(), 2);
    }

    #[test]
    fn track_counts_id_and_per_sender_order() {
        let mut t = Track::default();
        t.on_delivery(0, 0, 10);
        t.on_delivery(1, 1, 20);
        // An id not greater than the previous one: out of order.
        t.on_delivery(2, 0, 20);
        // Sender 0 goes backwards: 5 then 4 (ids increasing).
        t.on_delivery(5, 0, 30);
        t.on_delivery(4, 0, 40);
        // The next in-order one is fine again.
        t.on_delivery(6, 1, 50);
        assert_eq!(t.out_of_order, 2);
        assert_eq!(t.unique, 6);
        assert_eq!(t.duplicated, 0);
    }
}
