//! One event-loop thread: owns its connections (a `mio` poll over edge-triggered
//! non-blocking sockets), connects them, answers pings, sends on its open-loop schedule,
//! and accounts every delivery it receives.
//!
//! A session speaks one transport (`--transport`): a WebSocket, or HTTP long-polling without
//! the upgrade. Everything above the transport (the connect handshake, pings, sends,
//! deliveries, acks) is the same code for both: Engine.IO packets come in through
//! [`Worker::on_eio`] and go out through `Conn::queue`. A polling session holds two
//! keep-alive connections, as a browser does: its main socket carries the handshake and then
//! one long-poll GET after another (one always pending), and a second one carries POSTs, one
//! at a time (the server refuses overlapping POSTs), each with every packet queued since the
//! last one.
//!
//! Frugality rules for the per-delivery path (every microsecond spent here is taken from
//! the server on a shared machine): one read buffer per thread, not per connection; no
//! JSON parse of deliveries (the loadgen finds its own header in the text with one
//! `memmem`); no allocation, no lock, no atomic; one clock read per read batch; everything
//! queued for a socket goes out in one write after the batch.
//! Never blocks except in `poll`.
//!
//! `--scenario recovery-storm` adds, per dropping client, only a [`Recovery`]: the pid of its
//! session, the offset of the last event it got (a few dozen bytes, rewritten in place), and
//! three counters for the messages it missed. The first member of each group is the group's
//! only sender and stays connected throughout, so live traffic and the missed messages flow
//! while everyone else is away.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use corecast_wire::packet::{self, EioPacket, SioKind};
use corecast_wire::ws::{self, Decoder, Message, Role};
use memchr::memmem;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::admin::TokenMinter;
use crate::config::{Config, Transport};
use crate::now_ns;
use crate::polling;
use crate::stats::{self, GroupTally, Interval, ThreadStats, Track, MAX_SENDERS_PER_GROUP};

/// Orders from the main thread.
#[derive(Debug)]
pub enum Cmd {
    /// Open every connection (closing any still open first), starting at `start_ns`.
    Connect { round: usize, start_ns: u64 },
    /// Send on schedule from `start_ns` until `end_ns`; latency is recorded for messages
    /// intended at or after `measure_ns`.
    Send {
        start_ns: u64,
        measure_ns: u64,
        end_ns: u64,
    },
    /// recovery-storm: close every dropping client's connection (keeping its pid and offset).
    Drop,
    /// recovery-storm: send `per_group` messages into each owned group through its sender.
    SendMissed { per_group: u32 },
    /// Send nothing intended at or after `end_ns`.
    EndSend { end_ns: u64 },
    /// Report and exit.
    Stop,
}

/// Reports to the main thread.
pub enum Event {
    Interval(Interval),
    RoundDone {
        attempted: u64,
        ready: u64,
        last_ready_ns: u64,
    },
    /// recovery-storm: the dropping clients are closed.
    Dropped,
    /// recovery-storm: every missed message sent here was answered by its ack.
    MissedStored,
    /// recovery-storm: every client here that came back has all it missed (or gave up at
    /// `--connect-timeout`); when the last one had.
    Recovered {
        last_full_ns: u64,
    },
    Final(Box<Final>),
}

/// Ack ids of missed messages start here (16 digits, the most the gateway takes): live sends'
/// ack ids are nanoseconds since the run's start, far below.
const MISSED_ACK_BASE: u64 = 5_000_000_000_000_000;

/// A dropping client's recovery state (recovery-storm only).
#[derive(Default)]
struct Recovery {
    /// The pid of the CONNECT answer, sent back in the next CONNECT.
    pid: Vec<u8>,
    /// The last argument of the last `newMessage`: the client's position.
    offset: Vec<u8>,
    /// Missed messages: the next index expected, received, received again or out of order.
    next: u32,
    got: u32,
    dup: u32,
    /// Reconnected in the storm and is waiting for its missed messages.
    waiting: bool,
    /// Had a session when the clients dropped: only these are the storm's clients (one whose
    /// first connect failed comes back with no pid, to a fresh session, and is not counted).
    away: bool,
}

pub struct Final {
    pub stats: ThreadStats,
    pub groups: Vec<(u32, GroupTally)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Connecting,
    Upgrading,
    WaitOpen,
    WaitConnect,
    Ready,
    Closed,
}

struct Conn {
    user_idx: u32,
    group: Option<u32>,
    state: State,
    stream: Option<TcpStream>,
    /// Bytes of an incomplete frame (or HTTP head) left from the last read; usually empty.
    rbuf: BytesMut,
    wbuf: BytesMut,
    dec: Decoder,
    started_ns: u64,
    dirty: bool,
    /// Ready when sending began: its group's messages are expected here.
    counted: bool,
    track: Track,
    /// Long-polling sessions only: the rest of the session's client state.
    polling: Option<Box<PollState>>,
    /// recovery-storm: a client that drops and recovers (every member but each group's sender).
    rec: Option<Box<Recovery>>,
}

impl Conn {
    /// Queues one Engine.IO packet for the server on this session's transport: a WebSocket
    /// text frame, or a packet for the next long-polling POST. The caller marks it dirty.
    fn queue(&mut self, pkt: &[u8]) {
        match &mut self.polling {
            None => ws::encode_frame(Role::Client, ws::OP_TEXT, pkt, &mut self.wbuf),
            Some(p) => packet::push_polling_packet(&mut p.outbox, pkt),
        }
    }
}

/// A long-polling session's client state beyond its main socket (the `Conn`'s own stream,
/// which carries the handshake GET and then the long-poll GETs).
#[derive(Default)]
struct PollState {
    sid: String,
    /// The session's long-poll GET, built once when the open packet names the sid.
    get_request: BytesMut,
    /// A GET is written or waits for its answer: once the session is open there always is one.
    get_pending: bool,
    /// The last GET answer said the server closes its connection: the next GET goes on a new one.
    get_closes: bool,
    /// Packets for the next POST, joined by the record separator.
    outbox: Vec<u8>,
    post: PostConn,
}

/// The session's second keep-alive connection, for POSTs.
#[derive(Default)]
struct PostConn {
    stream: Option<TcpStream>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// A POST is written and not yet answered.
    in_flight: bool,
    /// The last answer said the server closes this connection.
    closes: bool,
    /// When the last POST was answered.
    idle_since_ns: u64,
}

/// A group whose messages this thread sends (its first member lives here).
struct OwnedGroup {
    g: u32,
    /// The group's id (`Config::group_id`), made once: it goes into every message.
    gid: String,
    senders: Vec<usize>,
    seq: u64,
}

struct SendPlan {
    start_ns: u64,
    measure_ns: u64,
    end_ns: u64,
    interval_ns: f64,
    i: u64,
}

const MAX_MESSAGE: usize = 1 << 20;
const READ_CHUNK: usize = 64 * 1024;
/// Largest long-polling answer taken: the servers bound theirs by `maxPayload` (1 MB), and a
/// GET answer that waited behind a stall can carry more (corecast hands over everything queued).
const MAX_POLL_BODY: usize = 64 << 20;
/// A POST connection idle longer than this is replaced by a new one rather than reused: the
/// Node.js server closes idle keep-alive connections after 5 s (its `keepAliveTimeout`), and a
/// POST written into a connection the server is closing would be lost. Browsers retry such a
/// request; the loadgen avoids the race instead, so that a lost POST is always an error.
const POST_REUSE_IDLE_NS: u64 = 2_000_000_000;

/// The socket of session `i`: its main one (the WebSocket, or polling's GET connection) or
/// polling's POST connection. A mio token carries both.
const MAIN: usize = 0;
const POST: usize = 1;

fn token(i: usize, leg: usize) -> Token {
    Token(i << 1 | leg)
}

pub struct Worker {
    cfg: Arc<Config>,
    minter: Arc<TokenMinter>,
    t0_ns: u64,
    poll: Poll,
    conns: Vec<Conn>,
    owned: Vec<OwnedGroup>,
    stats: ThreadStats,
    scratch: BytesMut,
    dirty: Vec<usize>,
    pkt: Vec<u8>,
    json: Vec<u8>,
    text_finder: memmem::Finder<'static>,
    /// The `Host` header of HTTP requests, per target address.
    hosts: Vec<String>,
    // Connect round state.
    round: Option<usize>,
    round_start_ns: u64,
    next_connect: usize,
    inflight: usize,
    attempted: u64,
    ready: u64,
    last_ready_ns: u64,
    send: Option<SendPlan>,
    /// recovery-storm: the text of missed messages, their acks still to come, clients back
    /// and still waiting for missed ones, and when the last one got all.
    missed_finder: memmem::Finder<'static>,
    missed_acks_pending: u64,
    missed_waiting: usize,
    awaiting_recovery: bool,
    last_full_ns: u64,
    tx: Sender<Event>,
}

impl Worker {
    pub fn new(
        id: usize,
        cfg: Arc<Config>,
        minter: Arc<TokenMinter>,
        t0_ns: u64,
        tx: Sender<Event>,
    ) -> io::Result<Worker> {
        let me = cfg.args.proc_index;
        let mut conns = Vec::new();
        let mut owned: Vec<OwnedGroup> = Vec::new();
        for u in 0..cfg.args.conns {
            if cfg.proc_of(u) != me || cfg.thread_of(u) != id {
                continue;
            }
            let group = cfg.group_of(u);
            // Each group is sent to by the thread that holds its first member, from those of
            // its members that live on that thread (at most MAX_SENDERS_PER_GROUP): one
            // sender schedule and one sequence per group, so receivers can tell lost from
            // duplicated, and each message names its sender so that receivers can check
            // that sender's order.
            if let Some(g) = group {
                let first = g * cfg.group_size;
                if cfg.proc_of(first) == me && cfg.thread_of(first) == id {
                    match owned.last_mut() {
                        Some(og) if og.g == g => {
                            // A storm sends from the first member only, which stays connected.
                            if og.senders.len() < MAX_SENDERS_PER_GROUP && !cfg.storm() {
                                og.senders.push(conns.len());
                            }
                        }
                        _ => owned.push(OwnedGroup {
                            g,
                            gid: cfg.group_id(g),
                            senders: vec![conns.len()],
                            seq: 0,
                        }),
                    }
                }
            }
            let sends = owned
                .last()
                .is_some_and(|og| og.senders.last() == Some(&conns.len()));
            let rec = (cfg.storm() && group.is_some() && !sends).then(Box::default);
            conns.push(Conn {
                rec,
                user_idx: u,
                group,
                state: State::Idle,
                stream: None,
                rbuf: BytesMut::new(),
                wbuf: BytesMut::new(),
                dec: Decoder::new(Role::Client, MAX_MESSAGE),
                started_ns: 0,
                dirty: false,
                counted: false,
                track: Track::default(),
                polling: None,
            });
        }
        let hosts = cfg.args.target.iter().map(|t| t.to_string()).collect();
        Ok(Worker {
            cfg,
            minter,
            t0_ns,
            poll: Poll::new()?,
            conns,
            owned,
            stats: ThreadStats::new(),
            scratch: BytesMut::with_capacity(READ_CHUNK * 2),
            dirty: Vec::new(),
            pkt: Vec::with_capacity(256),
            json: Vec::with_capacity(256),
            text_finder: memmem::Finder::new(b"\"text\":\"cc:"),
            hosts,
            round: None,
            round_start_ns: 0,
            next_connect: 0,
            inflight: 0,
            attempted: 0,
            ready: 0,
            last_ready_ns: 0,
            send: None,
            missed_finder: memmem::Finder::new(b"\"text\":\"cm:"),
            missed_acks_pending: 0,
            missed_waiting: 0,
            awaiting_recovery: false,
            last_full_ns: 0,
            tx,
        })
    }

    pub fn run(mut self, rx: Receiver<Cmd>) {
        let mut events = Events::with_capacity(1024);
        let mut last_timeout_scan = 0u64;
        loop {
            match rx.try_recv() {
                Ok(Cmd::Connect { round, start_ns }) => self.begin_round(round, start_ns),
                Ok(Cmd::Send {
                    start_ns,
                    measure_ns,
                    end_ns,
                }) => self.begin_send(start_ns, measure_ns, end_ns),
                Ok(Cmd::Drop) => self.drop_clients(),
                Ok(Cmd::SendMissed { per_group }) => self.send_missed(per_group),
                Ok(Cmd::EndSend { end_ns }) => {
                    if let Some(p) = &mut self.send {
                        p.end_ns = p.end_ns.min(end_ns);
                    }
                }
                Ok(Cmd::Stop) | Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {}
            }
            let now = now_ns();
            if self.round.is_some() {
                self.start_connects(now);
                if now - last_timeout_scan > 100_000_000 {
                    last_timeout_scan = now;
                    self.expire_handshakes(now);
                }
                self.check_round_done();
            }
            if self.awaiting_recovery
                && (self.missed_waiting == 0
                    || now.saturating_sub(self.round_start_ns)
                        > self.cfg.connect_timeout.as_nanos() as u64)
            {
                self.awaiting_recovery = false;
                let _ = self.tx.send(Event::Recovered {
                    last_full_ns: self.last_full_ns.max(self.round_start_ns),
                });
            }
            self.send_due(now);
            self.flush_dirty();

            let timeout = self.poll_timeout(now);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.stats.error("poll");
                }
                continue;
            }
            let now = now_ns();
            for ev in events.iter() {
                let (i, leg) = (ev.token().0 >> 1, ev.token().0 & 1);
                if ev.is_writable() || ev.is_error() {
                    self.on_writable(i, leg, now);
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.on_readable(i, leg, now);
                }
            }
            self.flush_dirty();
            // Optional coalescing: let more arrivals queue up so that one wake-up handles
            // many (a context switch per delivery dominates the loadgen's CPU at moderate
            // rates). Adds up to this much to measured latency; 0 by default.
            if self.cfg.args.coalesce_us > 0 && !events.is_empty() {
                std::thread::sleep(Duration::from_micros(self.cfg.args.coalesce_us));
            }
            let sec = ((now.saturating_sub(self.t0_ns)) / 1_000_000_000) as u32;
            if let Some(iv) = self.stats.roll(sec) {
                let _ = self.tx.send(Event::Interval(iv));
            }
        }
        self.finish();
    }

    fn poll_timeout(&self, now: u64) -> Duration {
        if self.round.is_some() {
            return Duration::from_millis(1);
        }
        if let Some(p) = self
            .send
            .as_ref()
            .filter(|p| p.interval_ns.is_finite() && !self.owned.is_empty())
        {
            let due = p.start_ns + (p.i as f64 * p.interval_ns) as u64;
            if due < p.end_ns {
                return Duration::from_nanos(due.saturating_sub(now).min(1_000_000));
            }
        }
        Duration::from_millis(20)
    }

    fn finish(mut self) {
        let sec = ((now_ns().saturating_sub(self.t0_ns)) / 1_000_000_000) as u32 + 1;
        if let Some(iv) = self.stats.roll(sec) {
            let _ = self.tx.send(Event::Interval(iv));
        }
        let mut groups: std::collections::BTreeMap<u32, GroupTally> = Default::default();
        for og in &self.owned {
            groups.entry(og.g).or_default().sent += og.seq;
        }
        for c in &self.conns {
            if let (Some(g), true) = (c.group, c.counted) {
                let t = groups.entry(g).or_default();
                t.receivers += 1;
                t.unique += c.track.unique;
                t.duplicated += c.track.duplicated;
                t.out_of_order += c.track.out_of_order;
            }
        }
        let missed = u64::from(self.cfg.args.missed);
        for c in &self.conns {
            let Some(r) = c.rec.as_deref().filter(|r| r.away) else {
                continue;
            };
            let t = &mut self.stats.recovery;
            t.clients += 1;
            t.missed_expected += missed;
            let lost = missed.saturating_sub(u64::from(r.got));
            t.missed_lost += lost;
            t.missed_duplicated += u64::from(r.dup);
            t.clients_with_loss += u64::from(lost > 0);
            t.clients_with_duplicates += u64::from(r.dup > 0);
            t.complete += u64::from(lost == 0);
        }
        let fin = Final {
            stats: std::mem::take(&mut self.stats),
            groups: groups.into_iter().collect(),
        };
        let _ = self.tx.send(Event::Final(Box::new(fin)));
    }

    // ---- connecting ----

    fn begin_round(&mut self, round: usize, start_ns: u64) {
        let storm = self.cfg.storm() && round > 0;
        for i in 0..self.conns.len() {
            if storm && self.conns[i].rec.is_none() {
                continue; // a sender: stays connected
            }
            self.close(i);
            self.conns[i].state = State::Idle;
        }
        if storm {
            // Live latency is measured from here on: during the storm.
            if let Some(p) = &mut self.send {
                p.measure_ns = start_ns;
            }
            self.missed_waiting = 0;
            self.last_full_ns = start_ns;
        }
        while self.stats.handshake.len() <= round {
            self.stats.handshake.push(stats::new_histogram());
        }
        self.round = Some(round);
        self.round_start_ns = start_ns;
        self.next_connect = 0;
        self.inflight = 0;
        self.attempted = 0;
        self.ready = 0;
        self.last_ready_ns = start_ns;
    }

    fn start_connects(&mut self, now: u64) {
        let rate = self.cfg.args.connect_rate
            / (self.cfg.nr_threads as f64 * f64::from(self.cfg.args.procs));
        let allowed = if rate > 0.0 {
            ((now.saturating_sub(self.round_start_ns)) as f64 / 1e9 * rate) as usize + 1
        } else {
            usize::MAX
        };
        while self.next_connect < self.conns.len()
            && self.inflight < self.cfg.args.max_inflight
            && self.next_connect < allowed
        {
            let i = self.next_connect;
            self.next_connect += 1;
            if self.round.unwrap_or(0) > 0 && self.cfg.storm() && self.conns[i].rec.is_none() {
                continue; // a storm's sender, still connected
            }
            self.attempted += 1;
            match self.open_socket(i) {
                Ok(()) => {
                    self.inflight += 1;
                    self.conns[i].started_ns = now;
                    self.conns[i].state = State::Connecting;
                }
                Err(e) => {
                    self.stats.error(&format!("connect:{}", io_code(&e)));
                    self.conns[i].state = State::Closed;
                }
            }
        }
    }

    fn open_socket(&mut self, i: usize) -> io::Result<()> {
        let mut stream = self.connect_socket(self.conns[i].user_idx)?;
        self.poll.registry().register(
            &mut stream,
            token(i, MAIN),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let c = &mut self.conns[i];
        c.stream = Some(stream);
        c.rbuf = BytesMut::new();
        c.wbuf = BytesMut::new();
        c.dec = Decoder::new(Role::Client, MAX_MESSAGE);
        c.polling = (self.cfg.args.transport == Transport::Polling).then(Box::default);
        Ok(())
    }

    /// A non-blocking TCP connection to the target, from user `user_idx`'s source address.
    fn connect_socket(&self, user_idx: u32) -> io::Result<TcpStream> {
        use socket2::{Domain, Socket, Type};
        let src = self.cfg.src_addrs[user_idx as usize % self.cfg.src_addrs.len()];
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        sock.set_nonblocking(true)?;
        sock.set_tcp_nodelay(true)?;
        // Let connect() pick the port, so that ports are unique per (source, destination)
        // rather than per source address: more than 28,000 connections per source.
        let one: libc::c_int = 1;
        // SAFETY: a valid socket and a c_int option value of the right size.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        sock.bind(&SocketAddr::V4(SocketAddrV4::new(src, 0)).into())?;
        let target = self.cfg.args.target[self.cfg.target_of(user_idx)];
        match sock.connect(&target.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        Ok(TcpStream::from_std(std::net::TcpStream::from(sock)))
    }

    fn expire_handshakes(&mut self, now: u64) {
        let limit = self.cfg.connect_timeout.as_nanos() as u64;
        for i in 0..self.next_connect {
            let c = &self.conns[i];
            if matches!(
                c.state,
                State::Connecting | State::Upgrading | State::WaitOpen | State::WaitConnect
            ) && now - c.started_ns > limit
            {
                self.fail(i, "handshake_timeout");
            }
        }
    }

    fn check_round_done(&mut self) {
        if self.next_connect == self.conns.len() && self.inflight == 0 {
            if self.cfg.storm() && self.round.unwrap_or(0) > 0 {
                self.awaiting_recovery = true;
            }
            self.round = None;
            let _ = self.tx.send(Event::RoundDone {
                attempted: self.attempted,
                ready: self.ready,
                last_ready_ns: self.last_ready_ns,
            });
        }
    }

    /// A connection failed during its handshake or later: count, close.
    fn fail(&mut self, i: usize, code: &str) {
        self.stats.error(code);
        if matches!(
            self.conns[i].state,
            State::Connecting | State::Upgrading | State::WaitOpen | State::WaitConnect
        ) {
            self.inflight -= 1;
        }
        self.close(i);
    }

    fn close(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        if let Some(mut p) = c.polling.take() {
            if let Some(mut s) = p.post.stream.take() {
                let _ = self.poll.registry().deregister(&mut s);
            }
        }
        c.state = State::Closed;
        c.rbuf = BytesMut::new();
        c.wbuf = BytesMut::new();
    }

    fn on_writable(&mut self, i: usize, leg: usize, now: u64) {
        let Some(c) = self.conns.get_mut(i) else {
            return;
        };
        if leg == MAIN && c.state == State::Connecting {
            let Some(s) = &c.stream else { return };
            match s.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => {
                    let code = format!("connect:{}", io_code(&e));
                    return self.fail(i, &code);
                }
            }
            match s.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return, // not yet
                Err(e) => {
                    let code = format!("connect:{}", io_code(&e));
                    return self.fail(i, &code);
                }
            }
            if c.polling.is_some() {
                let host = &self.hosts[self.cfg.target_of(c.user_idx)];
                polling::write_handshake(&mut c.wbuf, &self.cfg.args.path, host);
                c.state = State::WaitOpen;
                return self.flush(i);
            }
            let key = ws_key(c.user_idx ^ now as u32);
            let req = format!(
                "GET {}?EIO=4&transport=websocket HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
                self.cfg.args.path, self.hosts[self.cfg.target_of(c.user_idx)]
            );
            c.wbuf.extend_from_slice(req.as_bytes());
            c.state = State::Upgrading;
        }
        // Polling's other sockets are written before their connect completes: a send then
        // would block, and this (edge-triggered) writable event is the moment to try again.
        self.flush(i);
    }

    // ---- reading ----

    fn on_readable(&mut self, i: usize, leg: usize, now: u64) {
        let Some(c) = self.conns.get_mut(i) else {
            return;
        };
        if leg == MAIN && c.state == State::Connecting {
            return; // writable tells us first
        }
        let (stream, rbuf) = match (leg, c.polling.as_deref_mut()) {
            (MAIN, _) => (&c.stream, &mut c.rbuf),
            (_, Some(p)) => (&p.post.stream, &mut p.post.rbuf),
            (_, None) => return,
        };
        let Some(stream) = stream else { return };
        let fd = stream.as_raw_fd();
        let buf = &mut self.scratch;
        buf.clear();
        if !rbuf.is_empty() {
            buf.extend_from_slice(rbuf);
            *rbuf = BytesMut::new();
        }
        let (eof, err) = read_available(fd, buf);
        let mut scratch = std::mem::take(&mut self.scratch);
        let polling = self.conns[i].polling.is_some();
        match (leg, polling) {
            (MAIN, false) => self.process(i, &mut scratch, now),
            (MAIN, true) => self.process_get(i, &mut scratch, now),
            _ => self.process_post(i, &mut scratch, now),
        }
        if !scratch.is_empty() {
            let c = &mut self.conns[i];
            match (leg, c.polling.as_deref_mut()) {
                (MAIN, _) if c.stream.is_some() => c.rbuf = BytesMut::from(&scratch[..]),
                (POST, Some(p)) if p.post.stream.is_some() => {
                    p.post.rbuf = BytesMut::from(&scratch[..])
                }
                _ => {}
            }
        }
        scratch.clear();
        self.scratch = scratch;
        match (leg, polling) {
            (MAIN, false) => {
                if let Some(e) = err {
                    if self.conns[i].stream.is_some() {
                        self.fail(i, &format!("io:{}", io_code(&e)));
                    }
                } else if eof && self.conns[i].stream.is_some() {
                    self.fail(i, "closed_by_server");
                }
            }
            (MAIN, true) => self.get_conn_ended(i, eof, err),
            _ => self.post_conn_ended(i, eof, err),
        }
    }

    fn process(&mut self, i: usize, buf: &mut BytesMut, now: u64) {
        if self.conns[i].state == State::Upgrading {
            let Some(end) = memmem::find(buf, b"\r\n\r\n") else {
                if buf.len() > 16 * 1024 {
                    self.fail(i, "http_head_too_big");
                }
                return;
            };
            let head = buf.split_to(end + 4);
            let ok = head.starts_with(b"HTTP/1.1 101");
            if !ok {
                let code = head
                    .get(9..12)
                    .map(|c| String::from_utf8_lossy(c).into_owned());
                self.fail(i, &format!("http_{}", code.unwrap_or_default()));
                buf.clear();
                return;
            }
            self.conns[i].state = State::WaitOpen;
        }
        loop {
            let c = &mut self.conns[i];
            if c.stream.is_none() {
                buf.clear();
                return;
            }
            match c.dec.decode(buf) {
                Ok(Some(msg)) => self.on_message(i, msg, now),
                Ok(None) => return,
                Err(e) => {
                    let code = format!("ws_{}", e.close_code());
                    self.fail(i, &code);
                    buf.clear();
                    return;
                }
            }
        }
    }

    fn on_message(&mut self, i: usize, msg: Message, now: u64) {
        let text = match msg {
            Message::Text(t) => t,
            Message::Ping(p) => {
                let c = &mut self.conns[i];
                ws::encode_frame(Role::Client, ws::OP_PONG, &p, &mut c.wbuf);
                self.mark_dirty(i);
                return;
            }
            Message::Close(_) => return self.fail(i, "closed_by_server"),
            Message::Binary(_) | Message::Pong(_) => return,
        };
        self.on_eio(i, &text, now);
    }

    /// One Engine.IO packet from the server, on either transport.
    fn on_eio(&mut self, i: usize, text: &[u8], now: u64) {
        let eio = match packet::parse_eio(text) {
            Ok(p) => p,
            Err(_) => return self.stats.error("bad_eio_packet"),
        };
        match eio {
            EioPacket::Ping(_) => {
                self.conns[i].queue(packet::PONG);
                self.mark_dirty(i);
            }
            EioPacket::Open(json) => {
                let c = &mut self.conns[i];
                if c.state != State::WaitOpen {
                    return self.stats.error("unexpected_open");
                }
                if let Some(p) = c.polling.as_deref_mut() {
                    let Some(sid) = polling::open_sid(json) else {
                        return self.fail(i, "open_without_sid");
                    };
                    p.sid = sid.to_owned();
                    let host = &self.hosts[self.cfg.target_of(c.user_idx)];
                    polling::write_get(&mut p.get_request, &self.cfg.args.path, host, sid);
                }
                let mut auth = self.minter.auth_json(self.cfg.user_id(c.user_idx));
                if let Some(r) = c.rec.as_deref().filter(|r| !r.pid.is_empty()) {
                    // `{"token":"…","pid":"…","offset":"…"}`: neither has characters to escape
                    // (base 36, dots and dashes), as socket.io-client sends them back.
                    auth.pop();
                    auth.extend_from_slice(b",\"pid\":\"");
                    auth.extend_from_slice(&r.pid);
                    if !r.offset.is_empty() {
                        auth.extend_from_slice(b"\",\"offset\":\"");
                        auth.extend_from_slice(&r.offset);
                    }
                    auth.extend_from_slice(b"\"}");
                }
                self.pkt.clear();
                packet::write_connect_request(&mut self.pkt, Some(&auth));
                c.queue(&self.pkt);
                c.state = State::WaitConnect;
                self.mark_dirty(i);
            }
            EioPacket::Close => self.fail(i, "closed_by_server"),
            EioPacket::Message(m) => self.on_sio(i, m, now),
            EioPacket::Pong(_) | EioPacket::Upgrade | EioPacket::Noop => {}
        }
    }

    // ---- long-polling ----

    /// Answers on a polling session's main socket: the handshake's, then each long-poll GET's.
    /// Each answer's packets are handled in order, then the next GET is written.
    fn process_get(&mut self, i: usize, buf: &mut BytesMut, now: u64) {
        loop {
            let r = match polling::parse_response(buf, MAX_POLL_BODY) {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(e) => {
                    self.fail(i, e.code());
                    buf.clear();
                    return;
                }
            };
            if r.status != 200 {
                self.fail(i, &format!("http_{}", r.status));
                buf.clear();
                return;
            }
            if let Some(p) = self.conns[i].polling.as_deref_mut() {
                p.get_pending = false;
                p.get_closes = r.close;
            }
            let mut gone = false;
            for pkt in packet::polling_packets(&buf[r.body.clone()]) {
                self.on_eio(i, pkt, now);
                if self.conns[i].stream.is_none() {
                    gone = true;
                    break;
                }
            }
            if gone {
                buf.clear();
                return;
            }
            buf.advance(r.body.end);
            self.next_get(i);
        }
    }

    /// Writes the session's next long-poll GET unless one is pending (or there is no session).
    fn next_get(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let Some(p) = c.polling.as_deref_mut() else {
            return;
        };
        if p.get_pending || p.sid.is_empty() || c.state == State::Closed {
            return;
        }
        c.wbuf.extend_from_slice(&p.get_request);
        p.get_pending = true;
        self.mark_dirty(i);
    }

    /// After a read on a polling session's main socket: the server's end of it.
    fn get_conn_ended(&mut self, i: usize, eof: bool, err: Option<io::Error>) {
        let c = &mut self.conns[i];
        let Some(p) = c.polling.as_deref_mut() else {
            return;
        };
        if c.stream.is_none() {
            return;
        }
        if std::mem::take(&mut p.get_closes) {
            // The server said so in its last answer: the next GET (written, not yet sent)
            // goes on a new connection, as a browser's would.
            if let Some(mut s) = c.stream.take() {
                let _ = self.poll.registry().deregister(&mut s);
            }
            let user_idx = c.user_idx;
            let stream = self.connect_socket(user_idx).and_then(|mut s| {
                self.poll.registry().register(
                    &mut s,
                    token(i, MAIN),
                    Interest::READABLE | Interest::WRITABLE,
                )?;
                Ok(s)
            });
            match stream {
                Ok(s) => {
                    let c = &mut self.conns[i];
                    c.stream = Some(s);
                    c.rbuf = BytesMut::new();
                }
                Err(e) => self.fail(i, &format!("connect:{}", io_code(&e))),
            }
        } else if let Some(e) = err {
            self.fail(i, &format!("io:{}", io_code(&e)));
        } else if eof {
            self.fail(i, "closed_by_server");
        }
    }

    /// Answers on a polling session's POST connection (`ok`); the next POST may go.
    fn process_post(&mut self, i: usize, buf: &mut BytesMut, now: u64) {
        loop {
            let r = match polling::parse_response(buf, MAX_POLL_BODY) {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(e) => {
                    self.fail(i, &format!("post_{}", e.code()));
                    buf.clear();
                    return;
                }
            };
            if r.status != 200 {
                self.fail(i, &format!("post_http_{}", r.status));
                buf.clear();
                return;
            }
            buf.advance(r.body.end);
            let c = &mut self.conns[i];
            let Some(p) = c.polling.as_deref_mut() else {
                buf.clear();
                return;
            };
            if !p.post.in_flight {
                self.fail(i, "post_unexpected_answer");
                buf.clear();
                return;
            }
            p.post.in_flight = false;
            p.post.closes = r.close;
            p.post.idle_since_ns = now;
            if !p.outbox.is_empty() {
                self.mark_dirty(i); // flush starts the next POST
            }
        }
    }

    /// After a read on a polling session's POST connection: a connection the server closed
    /// (idle, or as its last answer said) is dropped, and the next POST opens a new one. One
    /// that closes under an unanswered POST lost it.
    fn post_conn_ended(&mut self, i: usize, eof: bool, err: Option<io::Error>) {
        let Some(p) = self.conns[i].polling.as_deref_mut() else {
            return;
        };
        if p.post.stream.is_none() || !(eof || err.is_some() || p.post.closes) {
            return;
        }
        if let Some(mut s) = p.post.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        p.post.closes = false;
        p.post.rbuf = BytesMut::new();
        p.post.wbuf = BytesMut::new();
        if p.post.in_flight {
            let code = match err {
                Some(e) => format!("post_io:{}", io_code(&e)),
                None => "post_closed_by_server".to_string(),
            };
            self.fail(i, &code);
        }
    }

    /// Starts a POST with every packet queued for the server, unless one is in flight: on
    /// the session's POST connection, or a new one when it has none or it sat idle too long.
    fn start_post(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let Some(p) = c.polling.as_deref_mut() else {
            return;
        };
        if p.outbox.is_empty() || p.post.in_flight || p.sid.is_empty() {
            return;
        }
        let now = now_ns();
        if p.post.stream.is_some() && now.saturating_sub(p.post.idle_since_ns) > POST_REUSE_IDLE_NS
        {
            if let Some(mut s) = p.post.stream.take() {
                let _ = self.poll.registry().deregister(&mut s);
            }
        }
        if p.post.stream.is_none() {
            let user_idx = c.user_idx;
            let opened = self.connect_socket(user_idx).and_then(|mut s| {
                self.poll.registry().register(
                    &mut s,
                    token(i, POST),
                    Interest::READABLE | Interest::WRITABLE,
                )?;
                Ok(s)
            });
            match opened {
                Ok(s) => {
                    if let Some(p) = self.conns[i].polling.as_deref_mut() {
                        p.post.stream = Some(s);
                        p.post.rbuf = BytesMut::new();
                        p.post.wbuf = BytesMut::new();
                    }
                }
                Err(e) => return self.fail(i, &format!("connect:{}", io_code(&e))),
            }
        }
        let host = &self.hosts[self.cfg.target_of(self.conns[i].user_idx)];
        let Some(p) = self.conns[i].polling.as_deref_mut() else {
            return;
        };
        polling::write_post(
            &mut p.post.wbuf,
            &self.cfg.args.path,
            host,
            &p.sid,
            &p.outbox,
        );
        p.outbox.clear();
        p.post.in_flight = true;
    }

    fn on_sio(&mut self, i: usize, m: &[u8], now: u64) {
        let p = match packet::parse_sio(m) {
            Ok(p) => p,
            Err(_) => return self.stats.error("bad_sio_packet"),
        };
        let data = &m[p.data.clone()];
        match p.kind {
            SioKind::Event if data.starts_with(b"[\"newMessage\",") => {
                self.on_delivery(i, data, now)
            }
            SioKind::Event if data.starts_with(b"[\"error\",") => {
                let code = json_str_field(data, b"\"code\":\"").unwrap_or("unknown");
                self.stats.error(&format!("event:{code}"));
            }
            SioKind::Event => {}
            SioKind::Ack if p.ack_id.is_some_and(|a| a >= MISSED_ACK_BASE) => {
                let ok = memmem::find(data, b"\"ok\":true").is_some();
                self.on_missed_ack(ok, data);
            }
            SioKind::Ack => {
                if memmem::find(data, b"\"ok\":true").is_some() {
                    self.stats.acks_ok += 1;
                    let intended = self.t0_ns + p.ack_id.unwrap_or(0) / 1000 * 1000;
                    stats::record(&mut self.stats.ack, now.saturating_sub(intended) / 1000);
                } else {
                    let code = json_str_field(data, b"\"code\":\"").unwrap_or("unknown");
                    self.stats.error(&format!("ack:{code}"));
                }
            }
            SioKind::Connect => {
                let c = &mut self.conns[i];
                if c.state == State::WaitConnect {
                    c.state = State::Ready;
                    self.inflight -= 1;
                    self.ready += 1;
                    self.last_ready_ns = now;
                    let r = self.round.unwrap_or(0);
                    stats::record(&mut self.stats.handshake[r], (now - c.started_ns) / 1000);
                    if c.rec.is_some() {
                        self.on_connect_answer(i, data);
                    }
                }
            }
            SioKind::ConnectError => {
                let msg = json_str_field(data, b"\"message\":\"").unwrap_or("unknown");
                let code: String = msg.chars().take(40).collect();
                self.fail(i, &format!("connect_error:{code}"));
            }
            SioKind::Disconnect => self.fail(i, "disconnected_by_server"),
            SioKind::BinaryEvent | SioKind::BinaryAck => {}
        }
    }

    /// `["newMessage",{"id":"<id>",...,"text":"cc:<group>:<seq>:<intended ns>:<sender>:...",...}]`
    fn on_delivery(&mut self, i: usize, data: &[u8], now: u64) {
        if let Some(r) = self.conns[i].rec.as_deref_mut() {
            if let Some(offset) = last_string_arg(data) {
                r.offset.clear();
                r.offset.extend_from_slice(offset);
            }
        }
        let Some(id) = message_id(data) else {
            return self.stats.error("delivery_without_id");
        };
        let Some(at) = self.text_finder.find(data) else {
            if self.cfg.storm() {
                if let Some(at) = self.missed_finder.find(data) {
                    let mut rest = &data[at + self.missed_finder.needle().len()..];
                    if let (Some(g), Some(k)) = (take_num(&mut rest), take_num(&mut rest)) {
                        return self.on_missed(i, g, k, now);
                    }
                }
            }
            return self.stats.error("delivery_without_loadgen_text");
        };
        let mut rest = &data[at + self.text_finder.needle().len()..];
        let (Some(g), Some(seq), Some(sent_ns), Some(sender)) = (
            take_num(&mut rest),
            take_num(&mut rest),
            take_num(&mut rest),
            take_num(&mut rest),
        ) else {
            return self.stats.error("delivery_bad_text");
        };
        if sender >= MAX_SENDERS_PER_GROUP as u64 {
            return self.stats.error("delivery_bad_text");
        }
        let c = &mut self.conns[i];
        if c.group != Some(g as u32) {
            return self.stats.error("delivery_wrong_group");
        }
        c.track.on_delivery(seq, sender as usize, id);
        let st = &mut self.stats;
        st.delivered += 1;
        st.iv_delivered += 1;
        let send = self.send.as_ref();
        // A storm's live latency is that of connections that stayed (a dropping client gets
        // what was sent while it was away late, by design).
        let live = c.rec.is_none();
        if live && send.is_some_and(|p| sent_ns >= p.measure_ns && sent_ns < p.end_ns) {
            let us = now.saturating_sub(sent_ns) / 1000;
            stats::record(&mut st.latency, us);
            stats::record(&mut st.iv_latency, us);
            st.delivered_measured += 1;
        }
    }

    // ---- recovery storm ----

    /// The CONNECT answer of a dropping client: the session's pid, and in the storm whether it
    /// is the one the client sent (recovered) or a new one (fresh: nothing will be replayed).
    fn on_connect_answer(&mut self, i: usize, data: &[u8]) {
        let storm_round = self.round.unwrap_or(0) > 0;
        let pid = json_str_field(data, b"\"pid\":\"").unwrap_or("").as_bytes();
        let missed = self.cfg.args.missed;
        let Some(r) = self.conns[i].rec.as_deref_mut() else {
            return;
        };
        if storm_round && r.away {
            let t = &mut self.stats.recovery;
            t.back += 1;
            if !pid.is_empty() && pid == r.pid.as_slice() {
                t.recovered += 1;
                if r.got < missed {
                    r.waiting = true;
                    self.missed_waiting += 1;
                } else {
                    stats::record(&mut self.stats.recover, 1);
                }
            } else {
                t.fresh += 1;
            }
        }
        if pid.is_empty() {
            self.stats.error("connect_without_pid");
        }
        r.pid.clear();
        r.pid.extend_from_slice(pid);
    }

    /// Missed message `k` of group `g`, received by connection `i`.
    fn on_missed(&mut self, i: usize, g: u64, k: u64, now: u64) {
        let missed = self.cfg.args.missed;
        let c = &mut self.conns[i];
        if c.group != Some(g as u32) {
            return self.stats.error("delivery_wrong_group");
        }
        self.stats.delivered += 1;
        self.stats.iv_delivered += 1;
        let Some(r) = c.rec.as_deref_mut() else {
            return; // the sender's own copy
        };
        let k = k.min(u64::from(u32::MAX)) as u32;
        // One connection sent them in index order, so they arrive in it (a group's order):
        // an index below the next expected is a duplicate, or out of order.
        if k < r.next || k >= missed {
            r.dup += 1;
            return;
        }
        r.next = k + 1;
        r.got += 1;
        if r.got == missed && r.waiting {
            r.waiting = false;
            self.missed_waiting -= 1;
            self.last_full_ns = self.last_full_ns.max(now);
            stats::record(&mut self.stats.recover, (now - c.started_ns) / 1000);
        }
    }

    fn drop_clients(&mut self) {
        for i in 0..self.conns.len() {
            let c = &mut self.conns[i];
            if let Some(r) = c.rec.as_deref_mut() {
                r.away = c.state == State::Ready;
                self.close(i);
            }
        }
        let _ = self.tx.send(Event::Dropped);
    }

    /// Sends `per_group` messages into each owned group through its (only) sender, each with
    /// an ack: the missed messages are stored once every ack is back.
    fn send_missed(&mut self, per_group: u32) {
        use std::io::Write;
        for og in &self.owned {
            let sender = og.senders[0];
            let c = &mut self.conns[sender];
            if c.state != State::Ready {
                self.stats.error("missed_sender_not_ready");
                continue;
            }
            let uid = self.cfg.user_id(c.user_idx);
            for k in 0..per_group {
                self.json.clear();
                let _ = write!(self.json, r#"{{"groupId":"{}","text":""#, og.gid);
                let text_from = self.json.len();
                let _ = write!(self.json, "cm:{}:{k}:", og.g);
                let header_len = self.json.len() - text_from;
                for _ in header_len..self.cfg.args.msg_size {
                    self.json.push(b'x');
                }
                let _ = write!(
                    self.json,
                    r#"","attachments":[],"clientMsgId":"lgm-{uid}-{}-{k}"}}"#,
                    self.t0_ns
                );
                self.pkt.clear();
                let ack = MISSED_ACK_BASE + u64::from(k);
                packet::write_event(&mut self.pkt, Some(ack), "sendMessage", &[&self.json]);
                c.queue(&self.pkt);
                self.missed_acks_pending += 1;
            }
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(sender);
            }
        }
        if self.missed_acks_pending == 0 {
            let _ = self.tx.send(Event::MissedStored);
        }
    }

    fn on_missed_ack(&mut self, ok: bool, data: &[u8]) {
        if ok {
            self.stats.recovery.stored += 1;
        } else {
            let code = json_str_field(data, b"\"code\":\"").unwrap_or("unknown");
            self.stats.error(&format!("missed_ack:{code}"));
        }
        self.missed_acks_pending = self.missed_acks_pending.saturating_sub(1);
        if self.missed_acks_pending == 0 {
            let _ = self.tx.send(Event::MissedStored);
        }
    }

    // ---- sending ----

    fn begin_send(&mut self, start_ns: u64, measure_ns: u64, end_ns: u64) {
        for c in &mut self.conns {
            c.counted = c.state == State::Ready;
        }
        let groups_here = self.owned.len() as f64;
        let rate = self.cfg.args.rate * groups_here / f64::from(self.cfg.nr_groups.max(1));
        self.send = Some(SendPlan {
            start_ns,
            measure_ns,
            end_ns,
            interval_ns: if rate > 0.0 {
                1e9 / rate
            } else {
                f64::INFINITY
            },
            i: 0,
        });
    }

    fn send_due(&mut self, now: u64) {
        let Some(p) = &mut self.send else { return };
        if self.owned.is_empty() || !p.interval_ns.is_finite() {
            return;
        }
        loop {
            let intended = p.start_ns + (p.i as f64 * p.interval_ns) as u64;
            if intended > now || intended >= p.end_ns {
                return;
            }
            let n = self.owned.len() as u64;
            let og = &mut self.owned[(p.i % n) as usize];
            let k = ((p.i / n) % og.senders.len() as u64) as usize;
            let sender = og.senders[k];
            p.i += 1;
            let c = &mut self.conns[sender];
            if c.state != State::Ready {
                self.stats.error("send_skipped_sender_not_ready");
                continue;
            }
            let seq = og.seq;
            og.seq += 1;
            self.json.clear();
            let uid = self.cfg.user_id(c.user_idx);
            use std::io::Write;
            let _ = write!(self.json, r#"{{"groupId":"{}","text":""#, og.gid);
            let text_from = self.json.len();
            let _ = write!(self.json, "cc:{}:{seq}:{intended}:{k}:", og.g);
            let header_len = self.json.len() - text_from;
            for _ in header_len..self.cfg.args.msg_size {
                self.json.push(b'x');
            }
            let _ = write!(
                self.json,
                r#"","attachments":[],"clientMsgId":"lg-{uid}-{}-{seq}"}}"#,
                self.t0_ns
            );
            self.pkt.clear();
            let ack = self
                .cfg
                .args
                .ack
                .then(|| ((intended - self.t0_ns) / 1000) * 1000 + seq % 1000);
            packet::write_event(&mut self.pkt, ack, "sendMessage", &[&self.json]);
            c.queue(&self.pkt);
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(sender);
            }
            self.stats.sent += 1;
            self.stats.iv_sent += 1;
            if intended >= p.measure_ns {
                self.stats.sent_measured += 1;
            }
        }
    }

    // ---- writing ----

    fn mark_dirty(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(i);
        }
    }

    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &i in &dirty {
            self.conns[i].dirty = false;
            self.flush(i);
        }
        dirty.clear();
        self.dirty = dirty;
    }

    /// Writes everything queued for session `i`'s socket in one `send` when the socket takes
    /// it; the rest waits for the next writable event. A polling session first starts a POST
    /// if it has packets and none is in flight, then writes both of its sockets.
    fn flush(&mut self, i: usize) {
        if self.conns[i].polling.is_some() {
            self.start_post(i);
        }
        let c = &mut self.conns[i];
        let Some(s) = &c.stream else { return };
        if let Err(e) = send_queued(s.as_raw_fd(), &mut c.wbuf) {
            return self.fail(i, &format!("io:{}", io_code(&e)));
        }
        if let Some(p) = c.polling.as_deref_mut() {
            if let Some(s) = &p.post.stream {
                if let Err(e) = send_queued(s.as_raw_fd(), &mut p.post.wbuf) {
                    self.fail(i, &format!("post_io:{}", io_code(&e)));
                }
            }
        }
    }
}

/// Sends `wbuf` until it is empty or the socket would block (then the caller's next
/// writable event sends the rest).
fn send_queued(fd: std::os::fd::RawFd, wbuf: &mut BytesMut) -> io::Result<()> {
    while !wbuf.is_empty() {
        // SAFETY: sends from an initialized buffer of the given length.
        let n = unsafe { libc::send(fd, wbuf.as_ptr().cast(), wbuf.len(), libc::MSG_NOSIGNAL) };
        if n >= 0 {
            wbuf.advance(n as usize);
            continue;
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => return Ok(()),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(e),
        }
    }
    // Give back a buffer that grew under a burst.
    if wbuf.capacity() > 64 * 1024 {
        *wbuf = BytesMut::new();
    }
    Ok(())
}

/// Reads everything the socket has into `buf`: whether it reached the end of the stream, and
/// the error it stopped at, if any.
fn read_available(fd: std::os::fd::RawFd, buf: &mut BytesMut) -> (bool, Option<io::Error>) {
    loop {
        buf.reserve(READ_CHUNK);
        let spare = buf.spare_capacity_mut();
        let want = spare.len();
        // SAFETY: recv writes at most `want` bytes into the spare capacity, and we only
        // extend the length by what it reports written.
        let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), want, 0) };
        if n > 0 {
            unsafe { buf.set_len(buf.len() + n as usize) };
            if (n as usize) < want {
                return (false, None); // drained: edge-triggered epoll reports the next arrival
            }
        } else if n == 0 {
            return (true, None);
        } else {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => return (false, None),
                io::ErrorKind::Interrupted => continue,
                _ => return (false, Some(e)),
            }
        }
    }
}

/// Parses `<digits>:` off the front of `rest`.
fn take_num(rest: &mut &[u8]) -> Option<u64> {
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    if end == 0 || end > 19 || rest[end] != b':' {
        return None;
    }
    let n = rest[..end]
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    *rest = &rest[end + 1..];
    Some(n)
}

/// The message id (a string of digits) of a `["newMessage",{"id":"<id>",...}]` event: both
/// corecast and the baseline put it first; anywhere else, the first `"id":"` key.
fn message_id(data: &[u8]) -> Option<u64> {
    const FIRST: &[u8] = br#"["newMessage",{"id":""#;
    let rest = if data.starts_with(FIRST) {
        &data[FIRST.len()..]
    } else {
        &data[memmem::find(data, br#""id":""#)? + 6..]
    };
    let end = rest.iter().position(|&b| b == b'"')?;
    if end == 0 || end > 20 {
        return None;
    }
    rest[..end].iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then_some(())?;
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The last argument of an event when it is a string without escapes: the offset corecast
/// appends (`42["newMessage",{…},"<offset>"]`, the frame's data from `[`).
fn last_string_arg(data: &[u8]) -> Option<&[u8]> {
    let body = data.strip_suffix(b"\"]")?;
    let open = body.iter().rposition(|&b| b == b'"')?;
    (open >= 2 && body[open - 1] == b',' && body[open - 2] == b'}').then(|| &body[open + 1..])
}

/// The string value after `key` (e.g. `"code":"`), if it has no escapes.
fn json_str_field<'a>(data: &'a [u8], key: &[u8]) -> Option<&'a str> {
    let at = memmem::find(data, key)? + key.len();
    let len = data[at..].iter().position(|&b| b == b'"' || b == b'\\')?;
    std::str::from_utf8(&data[at..at + len]).ok()
}

fn io_code(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused".into(),
        Some(libc::ECONNRESET) => "reset".into(),
        Some(libc::ETIMEDOUT) => "timeout".into(),
        Some(libc::EADDRNOTAVAIL) => "no_local_port".into(),
        Some(libc::EMFILE) | Some(libc::ENFILE) => "too_many_open_files".into(),
        Some(libc::EPIPE) => "broken_pipe".into(),
        _ => format!("{:?}", e.kind()).to_lowercase(),
    }
}

/// A Sec-WebSocket-Key: base64 of 16 bytes (not a secret; only has to be well formed).
fn ws_key(seed: u32) -> String {
    use base64::Engine as _;
    let mut b = [0u8; 16];
    let mut x = u64::from(seed) | 1;
    for chunk in b.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loadgen_text_header_parses() {
        let mut rest: &[u8] = b"12:345:678:xxxx";
        assert_eq!(take_num(&mut rest), Some(12));
        assert_eq!(take_num(&mut rest), Some(345));
        assert_eq!(take_num(&mut rest), Some(678));
        assert_eq!(take_num(&mut rest), None);
    }

    #[test]
    fn message_id_is_found() {
        let d = br#"["newMessage",{"id":"7312345678901234567","senderId":1,"text":"cc:1:2:3:0:"}]"#;
        assert_eq!(message_id(d), Some(7312345678901234567));
        let d = br#"["newMessage",{"senderId":1,"id":"42","text":"x"}]"#;
        assert_eq!(message_id(d), Some(42));
        assert_eq!(message_id(br#"["newMessage",{"id":"4a2"}]"#), None);
        assert_eq!(
            message_id(br#"["newMessage",{"id":"99999999999999999999"}]"#),
            None
        );
        assert_eq!(message_id(br#"["newMessage",{"text":"x"}]"#), None);
    }

    #[test]
    fn offset_is_the_last_string_argument() {
        let d = br#"["newMessage",{"id":"7","text":"a\"b"},"k2f.3-1x"]"#;
        assert_eq!(last_string_arg(d), Some(&b"k2f.3-1x"[..]));
        assert_eq!(
            last_string_arg(br#"["newMessage",{"id":"7","text":"x"}]"#),
            None
        );
        assert_eq!(last_string_arg(br#"["newMessage","x"]"#), None);
    }

    #[test]
    fn error_code_is_found() {
        let data = br#"["error",{"message":"slow down","code":"rate_limited"}]"#;
        assert_eq!(json_str_field(data, b"\"code\":\""), Some("rate_limited"));
    }
}
