//! The Engine.IO v4 session, sans-IO: which transport carries it, the upgrade from long-polling
//! to WebSocket, the heartbeat's deadlines, and the queue of packets waiting for the client.
//! Both transports drive the same session; nothing here reads a clock, a socket or a timer:
//! callers pass `now` and carry out what the methods answer.
//!
//! - **Transport.** A session starts on long-polling (`GET ?transport=polling`) or directly on
//!   WebSocket. A polling session may upgrade once: a WebSocket request with its `sid` opens a
//!   probe (`2probe` / `3probe`), and the client's `5` moves the session onto the WebSocket.
//!   From then on polling requests for it are refused ([`Refusal::BadRequest`]), as is a
//!   second WebSocket.
//! - **Overlap.** A polling session has at most one GET and one POST in progress; a second of
//!   either ends the session, as the reference server does ([`Refusal::Overlap`]).
//! - **Heartbeat.** The server pings every `ping_interval`; a client that does not answer
//!   within `ping_timeout` is gone.
//! - **Queue.** Packets wait in the [`PacketQueue`] as complete WebSocket frames, encoded once and
//!   shared by every recipient. A WebSocket write sends them as they are; a polling answer takes
//!   their payloads, joined by the record separator. So an upgrade neither re-encodes nor loses
//!   what was queued before it.

use bytes::Bytes;
use corecast_wire::packet;
use corecast_wire::ws;
use std::collections::VecDeque;
use std::time::Instant;

/// A point in time as milliseconds since the shard started, in 32 bits to keep connections
/// small. It wraps after 49 days; [`Tick::reached`] compares with wrapping arithmetic, so
/// deadlines up to 24 days ahead stay correct across the wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick(pub(crate) u32);

impl Tick {
    pub fn since(epoch: Instant, now: Instant) -> Tick {
        Tick(now.saturating_duration_since(epoch).as_millis() as u32)
    }

    pub fn after(self, ms: u64) -> Tick {
        Tick(self.0.wrapping_add(ms.min(i32::MAX as u64) as u32))
    }

    /// True once `self` is at or past `deadline`.
    pub fn reached(self, deadline: Tick) -> bool {
        self.0.wrapping_sub(deadline.0) as i32 >= 0
    }
}

/// An Engine.IO session id. It names the node and the shard that own the session, so a
/// request for the session that lands on another shard (SO_REUSEPORT spreads TCP connections;
/// a browser sends its POST on a second connection) is handed to the owner without any shared
/// table, and one that lands on another node (a round-robin load balancer) is forwarded to
/// it (polling.rs). The random salt makes ids unguessable; the connection number makes them
/// unique on the shard. Text form: 16 hex digits of salt, 8 of node, 4 of shard, 8 of
/// connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sid {
    pub salt: u64,
    /// The node's tag ([`node_tag`]); 0 on a node outside a cluster.
    pub node: u32,
    pub shard: u16,
    pub conn: u32,
}

impl Sid {
    pub const LEN: usize = 36;

    pub fn parse(s: &str) -> Option<Sid> {
        if s.len() != Self::LEN || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(Sid {
            salt: u64::from_str_radix(&s[..16], 16).ok()?,
            node: u32::from_str_radix(&s[16..24], 16).ok()?,
            shard: u16::from_str_radix(&s[24..28], 16).ok()?,
            conn: u32::from_str_radix(&s[28..], 16).ok()?,
        })
    }
}

impl std::fmt::Display for Sid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:016x}{:08x}{:04x}{:08x}",
            self.salt, self.node, self.shard, self.conn
        )
    }
}

/// The tag a cluster node's session ids carry: a hash of its node id (FNV-1a), never 0 (the
/// tag of a node outside a cluster).
pub fn node_tag(node_id: &str) -> u32 {
    let hash = node_id.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    hash.max(1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Polling,
    WebSocket,
}

/// A request for an existing session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Get,
    Post,
    /// A WebSocket upgrade request naming the session.
    Upgrade,
}

/// Why a request for an existing session is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The request does not fit the session's transport (answered 400, code 3); the session
    /// goes on.
    BadRequest,
    /// A second GET or POST while one is in progress: answered 400 and the session ends.
    Overlap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upgrade {
    None,
    /// A WebSocket probe is open; it must send `5` before the deadline.
    Probing {
        deadline: Tick,
    },
    Done,
}

/// What the heartbeat asks for on a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    Nothing,
    /// Queue a ping.
    Ping,
    /// No pong in time: the client is gone.
    PingTimeout,
    /// The upgrade probe did not finish in time: close the probe (the session goes on).
    ProbeTimeout,
}

/// The heartbeat and upgrade timings, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub ping_interval_ms: u64,
    pub ping_timeout_ms: u64,
    pub upgrade_timeout_ms: u64,
}

/// One Engine.IO session's transport, upgrade and heartbeat state.
#[derive(Debug, Clone)]
pub struct Engine {
    transport: Transport,
    upgrade: Upgrade,
    next_ping: Tick,
    pong_deadline: Option<Tick>,
    get_open: bool,
    post_open: bool,
}

impl Engine {
    pub fn new(transport: Transport, now: Tick, t: &Timing) -> Engine {
        Engine {
            transport,
            upgrade: Upgrade::None,
            next_ping: now.after(t.ping_interval_ms),
            pong_deadline: None,
            get_open: false,
            post_open: false,
        }
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    pub fn is_probing(&self) -> bool {
        matches!(self.upgrade, Upgrade::Probing { .. })
    }

    /// A request for this session begins. `Ok` means serve it (and call [`Engine::end`]
    /// when a GET or POST is answered).
    pub fn begin(&mut self, req: Request, now: Tick, t: &Timing) -> Result<(), Refusal> {
        if self.transport != Transport::Polling {
            return Err(Refusal::BadRequest);
        }
        match req {
            Request::Get if self.get_open => Err(Refusal::Overlap),
            Request::Get => {
                self.get_open = true;
                Ok(())
            }
            Request::Post if self.post_open => Err(Refusal::Overlap),
            Request::Post => {
                self.post_open = true;
                Ok(())
            }
            Request::Upgrade => match self.upgrade {
                Upgrade::None => {
                    self.upgrade = Upgrade::Probing {
                        deadline: now.after(t.upgrade_timeout_ms),
                    };
                    Ok(())
                }
                Upgrade::Probing { .. } | Upgrade::Done => Err(Refusal::BadRequest),
            },
        }
    }

    /// A GET was answered or a POST taken in.
    pub fn end(&mut self, req: Request) {
        match req {
            Request::Get => self.get_open = false,
            Request::Post => self.post_open = false,
            Request::Upgrade => {}
        }
    }

    /// Whether a GET is waiting for packets.
    pub fn get_open(&self) -> bool {
        self.get_open
    }

    /// The probe sent `5`: the session moves onto the WebSocket. False if no probe was open.
    pub fn upgraded(&mut self) -> bool {
        if !self.is_probing() {
            return false;
        }
        self.upgrade = Upgrade::Done;
        self.transport = Transport::WebSocket;
        true
    }

    /// The probe went away before `5`; the session stays on polling and may probe again.
    pub fn probe_ended(&mut self) {
        if self.is_probing() {
            self.upgrade = Upgrade::None;
        }
    }

    pub fn on_pong(&mut self) {
        self.pong_deadline = None;
    }

    /// What the heartbeat and the upgrade deadline ask for at `now`. A `Ping` is counted as
    /// sent: the caller queues it.
    pub fn tick(&mut self, now: Tick, t: &Timing) -> Due {
        if let Upgrade::Probing { deadline } = self.upgrade {
            if now.reached(deadline) {
                self.upgrade = Upgrade::None;
                return Due::ProbeTimeout;
            }
        }
        match self.pong_deadline {
            Some(d) if now.reached(d) => Due::PingTimeout,
            Some(_) => Due::Nothing,
            None if now.reached(self.next_ping) => {
                self.pong_deadline = Some(now.after(t.ping_timeout_ms));
                self.next_ping = now.after(t.ping_interval_ms);
                Due::Ping
            }
            None => Due::Nothing,
        }
    }
}

/// What a polling answer takes from the queue.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Polled {
    /// Engine.IO packets joined by the record separator.
    pub payload: Vec<u8>,
    /// The session's close was among them (sent as the close packet `1`): nothing follows.
    pub closed: bool,
}

/// What a queued frame costs beyond its bytes: its slot in the queue and, for a frame of its
/// own, the allocation around it. Measured before this was charged: 2-byte pongs queued by a
/// client that never read cost about 66 bytes each, so a cap counted in payload bytes held 30
/// times its size.
pub const FRAME_OVERHEAD: usize = 64;

fn cost(frame: &Bytes) -> usize {
    frame.len() + FRAME_OVERHEAD
}

/// Frames waiting for the client, bounded by the caller's limit on what they cost in memory
/// (bytes plus [`FRAME_OVERHEAD`] each). A pong to the client's WebSocket ping waits in a slot
/// of its own: a newer ping replaces an unsent pong (RFC 6455 §5.5.3 allows answering only the
/// latest), so pings alone can never fill the queue.
#[derive(Debug, Default)]
pub struct PacketQueue {
    frames: VecDeque<Bytes>,
    pong: Option<Bytes>,
    /// What is queued and not yet written costs (a taken WebSocket batch counts its bytes
    /// until [`PacketQueue::wrote`]).
    bytes: usize,
}

impl PacketQueue {
    /// Queues a frame; false (and nothing queued) if that would pass `limit`.
    pub fn push(&mut self, frame: Bytes, limit: usize) -> bool {
        if self.bytes + cost(&frame) > limit {
            return false;
        }
        self.bytes += cost(&frame);
        self.frames.push_back(frame);
        true
    }

    /// Queues the pong to the latest ping, replacing one not yet sent. False if over `limit`.
    pub fn set_pong(&mut self, frame: Bytes, limit: usize) -> bool {
        let old = self.pong.as_ref().map_or(0, cost);
        if self.bytes - old + cost(&frame) > limit {
            return false;
        }
        self.bytes = self.bytes - old + cost(&frame);
        self.pong = Some(frame);
        true
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty() && self.pong.is_none()
    }

    /// What is queued costs, as charged against the limit.
    pub fn cost(&self) -> usize {
        self.bytes
    }

    /// Drops everything queued.
    pub fn clear(&mut self) {
        self.frames.clear();
        self.pong = None;
        self.bytes = 0;
    }

    /// An idle queue gives its memory back.
    pub fn shrink_if_idle(&mut self) {
        if self.frames.is_empty() && self.frames.capacity() > 0 {
            self.frames = VecDeque::new();
        }
    }

    /// Everything queued, as one buffer for one WebSocket write (one frame as is, several
    /// copied into one buffer that lives only until it is written). Counted until
    /// [`PacketQueue::wrote`].
    pub fn take_ws(&mut self) -> Option<Bytes> {
        if let Some(p) = self.pong.take() {
            self.frames.push_back(p);
        }
        // The frames' overhead is freed now; their bytes when written.
        self.bytes = self
            .bytes
            .saturating_sub(self.frames.len() * FRAME_OVERHEAD);
        match self.frames.len() {
            0 => None,
            1 => self.frames.pop_front(),
            _ => {
                let total = self.frames.iter().map(Bytes::len).sum();
                let mut batch = Vec::with_capacity(total);
                for f in self.frames.drain(..) {
                    batch.extend_from_slice(&f);
                }
                Some(Bytes::from(batch))
            }
        }
    }

    /// `len` bytes taken by [`PacketQueue::take_ws`] are written.
    pub fn wrote(&mut self, len: usize) {
        self.bytes = self.bytes.saturating_sub(len);
    }

    /// Everything queued, as the payload of one long-polling answer: each text frame's
    /// Engine.IO packet, and the close packet for a close frame (after which nothing more is
    /// taken). WebSocket control frames other than close mean nothing to a polling client.
    pub fn take_polling(&mut self) -> Polled {
        let mut out = Polled::default();
        self.pong = None; // WebSocket control frames mean nothing on polling
        while let Some(f) = self.frames.pop_front() {
            self.bytes = self.bytes.saturating_sub(cost(&f));
            for (opcode, payload) in ws::server_frames(&f) {
                match opcode {
                    ws::OP_TEXT => packet::push_polling_packet(&mut out.payload, payload),
                    ws::OP_CLOSE => {
                        packet::push_polling_packet(&mut out.payload, packet::EIO_CLOSE);
                        out.closed = true;
                    }
                    _ => {}
                }
            }
            if out.closed {
                self.clear();
                break;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corecast_wire::ws::Role;

    const T: Timing = Timing {
        ping_interval_ms: 100,
        ping_timeout_ms: 50,
        upgrade_timeout_ms: 30,
    };

    #[test]
    fn ticks_compare_across_the_wrap() {
        let near_wrap = Tick(u32::MAX - 10);
        let deadline = near_wrap.after(100);
        assert!(!near_wrap.reached(deadline));
        assert!(Tick(89).reached(deadline));
        assert!(Tick(5).after(0).reached(Tick(5)));
    }

    #[test]
    fn sids_name_their_shard_and_round_trip() {
        let sid = Sid {
            salt: 0xdead_beef_0123_4567,
            node: node_tag("node-1"),
            shard: 3,
            conn: 42,
        };
        let text = sid.to_string();
        assert_eq!(text.len(), Sid::LEN);
        assert_eq!(Sid::parse(&text), Some(sid));
        assert_eq!(Sid::parse("x"), None);
        assert_eq!(Sid::parse(&text.replace('d', "z")), None);
        assert_eq!(Sid::parse(&format!("{text}0")), None);
    }

    #[test]
    fn heartbeat_pings_every_interval_and_times_out_without_a_pong() {
        let mut e = Engine::new(Transport::WebSocket, Tick(0), &T);
        assert_eq!(e.tick(Tick(99), &T), Due::Nothing);
        assert_eq!(e.tick(Tick(100), &T), Due::Ping);
        assert_eq!(e.tick(Tick(120), &T), Due::Nothing);
        e.on_pong();
        assert_eq!(e.tick(Tick(199), &T), Due::Nothing);
        assert_eq!(e.tick(Tick(200), &T), Due::Ping);
        assert_eq!(e.tick(Tick(249), &T), Due::Nothing);
        assert_eq!(e.tick(Tick(250), &T), Due::PingTimeout);
    }

    #[test]
    fn a_polling_session_has_one_get_and_one_post_at_a_time() {
        let mut e = Engine::new(Transport::Polling, Tick(0), &T);
        assert_eq!(e.begin(Request::Get, Tick(0), &T), Ok(()));
        assert!(e.get_open());
        assert_eq!(e.begin(Request::Post, Tick(0), &T), Ok(()));
        assert_eq!(e.begin(Request::Get, Tick(0), &T), Err(Refusal::Overlap));
        assert_eq!(e.begin(Request::Post, Tick(0), &T), Err(Refusal::Overlap));
        e.end(Request::Get);
        e.end(Request::Post);
        assert_eq!(e.begin(Request::Get, Tick(0), &T), Ok(()));
    }

    #[test]
    fn upgrade_moves_the_session_and_refuses_polling_and_a_second_websocket_after() {
        let mut e = Engine::new(Transport::Polling, Tick(0), &T);
        assert!(!e.upgraded(), "no probe open yet");
        assert_eq!(e.begin(Request::Upgrade, Tick(0), &T), Ok(()));
        assert_eq!(
            e.begin(Request::Upgrade, Tick(1), &T),
            Err(Refusal::BadRequest),
            "one probe at a time"
        );
        // Polling goes on while probing (the noop answers the pending GET).
        assert_eq!(e.begin(Request::Get, Tick(1), &T), Ok(()));
        e.end(Request::Get);
        assert!(e.upgraded());
        assert_eq!(e.transport(), Transport::WebSocket);
        for r in [Request::Get, Request::Post, Request::Upgrade] {
            assert_eq!(e.begin(r, Tick(2), &T), Err(Refusal::BadRequest));
        }
        let mut ws = Engine::new(Transport::WebSocket, Tick(0), &T);
        assert_eq!(
            ws.begin(Request::Get, Tick(0), &T),
            Err(Refusal::BadRequest)
        );
    }

    #[test]
    fn a_probe_that_never_upgrades_times_out_and_may_be_tried_again() {
        let mut e = Engine::new(Transport::Polling, Tick(0), &T);
        e.begin(Request::Upgrade, Tick(10), &T).unwrap();
        assert_eq!(e.tick(Tick(39), &T), Due::Nothing);
        assert_eq!(e.tick(Tick(40), &T), Due::ProbeTimeout);
        assert!(!e.is_probing());
        assert_eq!(e.transport(), Transport::Polling);
        assert_eq!(e.begin(Request::Upgrade, Tick(41), &T), Ok(()));
        e.probe_ended();
        assert!(!e.upgraded());
    }

    #[test]
    fn the_outbox_gives_polling_the_packets_and_websocket_the_frames() {
        let mut o = PacketQueue::default();
        let a = ws::text_frame(Role::Server, b"2");
        let b = ws::text_frame(Role::Server, b"42[\"newMessage\",{}]");
        let tight = 3 * FRAME_OVERHEAD + 40;
        assert!(o.push(a.clone(), tight));
        assert!(o.push(b.clone(), tight));
        assert!(
            !o.push(ws::text_frame(Role::Server, &[b'x'; 80]), tight),
            "over the bound: frames cost their overhead too"
        );
        let p = o.take_polling();
        assert_eq!(p.payload, b"2\x1e42[\"newMessage\",{}]");
        assert!(!p.closed);
        assert!(o.is_empty());
        assert_eq!(o.cost(), 0, "taking gave the cost back");

        let limit = 1000;
        o.push(a.clone(), limit);
        o.push(b.clone(), limit);
        let batch = o.take_ws().unwrap();
        assert_eq!(&batch[..], &[&a[..], &b[..]].concat()[..]);
        assert_eq!(o.cost(), batch.len(), "bytes count until written");
        o.wrote(batch.len());
        assert_eq!(o.cost(), 0);

        o.push(a.clone(), limit);
        o.push(corecast_wire::Close::ClientLeft.frame(Role::Server), limit);
        o.push(b, limit);
        let p = o.take_polling();
        assert_eq!(p.payload, b"2\x1e1");
        assert!(p.closed);
        assert!(o.is_empty(), "nothing follows the close");
    }

    #[test]
    fn pings_are_answered_once_however_many_wait() {
        let mut o = PacketQueue::default();
        let pong = |d: &[u8]| {
            let mut b = bytes::BytesMut::new();
            ws::encode_frame(Role::Server, ws::OP_PONG, d, &mut b);
            b.freeze()
        };
        let limit = 10 * FRAME_OVERHEAD;
        for i in 0..10_000u32 {
            assert!(o.set_pong(pong(&i.to_be_bytes()), limit));
        }
        assert_eq!(
            o.cost(),
            6 + FRAME_OVERHEAD,
            "one pong queued, whatever came"
        );
        let text = ws::text_frame(Role::Server, b"42[\"a\"]");
        o.push(text.clone(), limit);
        let batch = o.take_ws().unwrap();
        let last = pong(&9_999u32.to_be_bytes());
        assert_eq!(&batch[..], &[&text[..], &last[..]].concat()[..]);
    }
}
