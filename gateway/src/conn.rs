//! One client connection: the WebSocket upgrade, the Engine.IO/Socket.IO session on top, and
//! the two halves of its I/O.
//!
//! - The reader reads into the shard's scratch buffer and keeps only an unfinished frame in a
//!   buffer of its own, so an idle connection holds no read buffer. Each complete packet is
//!   handled at once, without awaiting: requests go out as shard messages and answers come
//!   back through the shard's inbox.
//! - Queued frames are written by the shard's sender (send.rs): everything queued for a
//!   connection in one send, all connections of a turn in one io_uring submission. The
//!   session finishes only what the sender could not (a full socket). The queue is bounded in
//!   bytes; a client that does not keep up is disconnected ("slow consumer") instead of
//!   growing memory.
//! - Pings, pong deadlines and the connect deadline are checked on the shard's tick
//!   ([`Conn::tick`]), not by a timer per connection.

pub use crate::engine::Tick;
use crate::engine::{Due, Engine, PacketQueue, Polled, Sid, Transport};
use crate::events::{self, ClientError, Code, Command, EventError};
use crate::outbox::Outbox;
use crate::recovery::{Event, Recovery};
use bytes::{Bytes, BytesMut};
use corecast_shard_router::Subscriptions;
use corecast_storage::{GroupEvent, GroupId, MessageId, UserId};
use corecast_wire::packet::{self, EioPacket, SioKind};
use corecast_wire::ws::{self, Decoder, Message, Role};
use corecast_wire::Close;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// A connection, unique within its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// WebSocket open, waiting for the Socket.IO CONNECT.
    AwaitingConnect,
    /// Authenticated; joining the user's rooms. CONNECT is answered when all have answered.
    Subscribing,
    Connected,
    Closing,
}

/// The server's Engine.IO ping, as a complete WebSocket frame.
static PING_FRAME: [u8; 3] = [0x81, 0x01, b'2'];

/// The clock skew allowed on a token's `exp`, as at CONNECT (auth.rs).
const TOKEN_LEEWAY_MS: u64 = 5_000;

/// How long a closing connection may take to flush before its socket is dropped.
const CLOSE_GRACE_MS: u64 = 2_000;

pub struct Conn {
    pub id: ConnId,
    /// The Engine.IO session id's random part (see [`Conn::sid`]).
    sid_salt: u64,
    /// Transport, upgrade and heartbeat (sans-IO, see engine.rs).
    engine: RefCell<Engine>,
    user: Cell<Option<UserId>>,
    state: Cell<ConnState>,
    was_connected: Cell<bool>,
    /// Its rooms as the shard sees them, and the CONNECT barrier (sans-IO, shard-router).
    pub subs: RefCell<Subscriptions<GroupId>>,
    out: RefCell<PacketQueue>,
    /// A write the shard's sender could not finish (socket full, partial, failed) and the
    /// session finishes: the bytes and how many have gone. Nothing else is written before it.
    writing: RefCell<Option<(Bytes, usize)>>,
    /// The socket, for the shard's sender; -1 once the session is over.
    fd: Cell<i32>,
    /// Listed for the shard's sender's next batch (see send.rs).
    due: Cell<bool>,
    /// The task that carries the session: the WebSocket session's writer and close-overdue
    /// check, or on long-polling the GET waiting for packets.
    waker: RefCell<Option<Waker>>,
    /// An upgrade probe's WebSocket task (see `Session`), while one is open.
    probe_waker: RefCell<Option<Waker>>,
    /// The probe must end (it timed out).
    probe_abort: Cell<bool>,
    /// The shard has forgotten this connection (`Outbox::closed`): tasks still holding it
    /// end.
    gone: Cell<bool>,
    /// Frames are queued for the shard's next paced flush (see `Fanout::deliver`, fanout.rs).
    pub paced: Cell<bool>,
    /// Set once the connection is closing: nothing more is queued after the close frame.
    closing: Cell<bool>,
    /// When closing started; the shard's tick declares the
    /// close overdue after [`CLOSE_GRACE`].
    closing_since: Cell<Option<Tick>>,
    close_overdue: Cell<bool>,
    connect_deadline: Cell<Option<Tick>>,
    /// When the session's token expires (milliseconds since the epoch; 0 before CONNECT): the
    /// shard's tick closes the session then, unless `refreshToken` moved it.
    token_exp_ms: Cell<u64>,
    /// Its place among the connections waiting to log in (see admission.rs), until CONNECT.
    ticket: Cell<Option<crate::admission::Ticket>>,
    /// Binary attachments still to skip after a refused binary packet.
    skip_binary: Cell<u32>,
    /// The client keeps recovery offsets (its handshake said so: `recovery::takes_offsets`).
    takes_offsets: Cell<bool>,
    /// Connection state recovery (recovery.rs), from CONNECT on, for a client that keeps
    /// offsets while recovery is on.
    recovery: RefCell<Option<Recovery>>,
}

impl Conn {
    pub fn new(id: ConnId, transport: Transport, now: Tick, shard: &impl Outbox) -> Conn {
        let cfg = &shard.config().server;
        Conn {
            id,
            sid_salt: fastrand::u64(..),
            engine: RefCell::new(Engine::new(transport, now, &shard.timing())),
            user: Cell::new(None),
            state: Cell::new(ConnState::AwaitingConnect),
            was_connected: Cell::new(false),
            subs: RefCell::new(Subscriptions::default()),
            out: RefCell::new(PacketQueue::default()),
            writing: RefCell::new(None),
            fd: Cell::new(-1),
            due: Cell::new(false),
            waker: RefCell::new(None),
            probe_waker: RefCell::new(None),
            probe_abort: Cell::new(false),
            gone: Cell::new(false),
            paced: Cell::new(false),
            closing: Cell::new(false),
            closing_since: Cell::new(None),
            close_overdue: Cell::new(false),
            connect_deadline: Cell::new(Some(now.after(cfg.connect_timeout_ms))),
            token_exp_ms: Cell::new(0),
            ticket: Cell::new(None),
            skip_binary: Cell::new(0),
            takes_offsets: Cell::new(false),
            recovery: RefCell::new(None),
        }
    }

    pub fn set_takes_offsets(&self, yes: bool) {
        self.takes_offsets.set(yes);
    }

    /// A connect-time subscription's answer: the room's settled id, which a recovering
    /// CONNECT reads the store up to.
    pub fn subscribed_at(&self, group: &GroupId, settled: MessageId) {
        if let Some(replay) = self
            .recovery
            .borrow_mut()
            .as_mut()
            .and_then(|r| r.replay.as_mut())
        {
            replay.settled.push((group.clone(), settled));
        }
    }

    /// Every connect-time subscription answered: the store reads a recovering CONNECT needs,
    /// as (group, after, up to), each group whose settled id is past the position, and the
    /// attempt they belong to. Empty when it needs none (or is not recovering).
    pub fn replay_plan(&self) -> (u32, Vec<(GroupId, MessageId, MessageId)>) {
        let mut rec = self.recovery.borrow_mut();
        let Some(r) = rec.as_mut() else {
            return (0, Vec::new());
        };
        let Some(replay) = r.replay.as_ref() else {
            return (0, Vec::new());
        };
        let attempt = replay.attempt;
        let plan: Vec<_> = replay
            .settled
            .iter()
            .map(|(g, upto)| (g.clone(), r.after(g), *upto))
            .filter(|(_, after, upto)| after < upto)
            .collect();
        let replay = r.replay.as_mut().expect("invariant: checked above");
        replay.reads_left = plan.len();
        replay.missed = Some(Vec::new());
        (attempt, plan)
    }

    /// One store read of the replay answered. True when it was the last: the CONNECT can be
    /// answered. More than `max_events` missed, more than half the outbound queue's bound
    /// (`max_bytes`) of them (they are queued at once), or a failed read, gives recovery up.
    pub fn replayed<E: std::fmt::Display>(
        &self,
        attempt: u32,
        result: Result<Vec<GroupEvent>, E>,
        max_events: usize,
        max_bytes: usize,
    ) -> bool {
        let mut rec = self.recovery.borrow_mut();
        let Some(replay) = rec.as_mut().and_then(|r| r.replay.as_mut()) else {
            return false;
        };
        if replay.attempt != attempt || replay.missed.is_none() && replay.reads_left == 0 {
            return false; // an earlier CONNECT's read, or one before this one's plan
        }
        replay.reads_left = replay.reads_left.saturating_sub(1);
        // A message's frame is about the text (escaped), its attachments and 200 bytes of
        // the rest; a receipt's, its group id and 150 bytes.
        let bytes = |e: &GroupEvent| match e {
            GroupEvent::Message(m) => {
                2 * m.text.len()
                    + m.attachments
                        .iter()
                        .map(|a| a.url.len() + 32)
                        .sum::<usize>()
                    + 200
            }
            GroupEvent::Read(r) => 2 * r.group.as_str().len() + 150,
        };
        let size = result
            .as_ref()
            .map_or(0, |msgs| msgs.iter().map(bytes).sum::<usize>());
        match (result, replay.missed.as_mut()) {
            (Ok(msgs), Some(missed))
                if missed.len() + msgs.len() <= max_events
                    && replay.missed_bytes + size <= max_bytes / 2 =>
            {
                replay.missed_bytes += size;
                missed.extend(msgs)
            }
            (Ok(_), Some(_)) => replay.missed = None,
            (Err(e), _) => {
                tracing::warn!(conn = self.id.0, error = %e, "recovery read failed: a fresh session");
                replay.missed = None;
            }
            (Ok(_), None) => {}
        }
        replay.reads_left == 0
    }

    /// `frame`, an event of `group`, for this connection: with its offset if it keeps one,
    /// held back while a recovering CONNECT waits, or `None` for a message it already has.
    pub fn frame_for(
        &self,
        shard: &impl Outbox,
        group: &GroupId,
        event: Event,
        frame: &Bytes,
    ) -> Option<Bytes> {
        let mut rec = self.recovery.borrow_mut();
        let Some(r) = rec.as_mut() else {
            return Some(frame.clone());
        };
        if let Some(replay) = r.replay.as_mut() {
            replay.held_bytes += frame.len();
            if replay.held_bytes > shard.config().server.outbound_queue_bytes {
                drop(rec);
                self.abort(shard, Close::SlowConsumer);
                return None;
            }
            replay.held.push((group.clone(), event, frame.clone()));
            return None;
        }
        r.frame_for(group, event, frame)
    }

    /// The Engine.IO/Socket.IO session id: random, names the shard, unique per connection.
    pub fn sid(&self, shard: &impl Outbox) -> Sid {
        Sid {
            salt: self.sid_salt,
            node: shard.node_tag(),
            shard: shard.shard_id().0,
            conn: self.id.0 as u32,
        }
    }

    /// Whether `sid` names this connection (its salt, not just its number).
    pub fn has_sid(&self, sid: &Sid) -> bool {
        sid.salt == self.sid_salt && sid.conn == self.id.0 as u32
    }

    /// The Engine.IO open packet. A long-polling session may upgrade to WebSocket (when that
    /// transport is on); a WebSocket session has nothing to upgrade to.
    pub fn open_packet(&self, shard: &impl Outbox) -> Vec<u8> {
        let cfg = &shard.config().server;
        let upgrades: &[&str] = if self.transport() == Transport::Polling && cfg.websocket_enabled()
        {
            &["websocket"]
        } else {
            &[]
        };
        let mut open = Vec::new();
        packet::write_open(
            &mut open,
            &self.sid(shard).to_string(),
            upgrades,
            cfg.ping_interval_ms,
            cfg.ping_timeout_ms,
            cfg.max_payload,
        );
        open
    }

    pub fn transport(&self) -> Transport {
        self.engine.borrow().transport()
    }

    /// The session's transport state, for the HTTP and upgrade code (borrowed briefly, never
    /// across an await).
    pub fn engine(&self) -> std::cell::RefMut<'_, Engine> {
        self.engine.borrow_mut()
    }

    pub fn set_ticket(&self, t: crate::admission::Ticket) {
        self.ticket.set(Some(t));
    }

    pub fn take_ticket(&self) -> Option<crate::admission::Ticket> {
        self.ticket.take()
    }

    pub fn is_gone(&self) -> bool {
        self.gone.get()
    }

    pub fn set_gone(&self) {
        self.gone.set(true);
        self.wake();
        if let Some(w) = self.probe_waker.borrow_mut().take() {
            w.wake();
        }
    }

    pub fn user(&self) -> Option<UserId> {
        self.user.get()
    }

    pub fn state(&self) -> ConnState {
        self.state.get()
    }

    pub fn set_state(&self, s: ConnState) {
        self.state.set(s);
    }

    pub fn was_connected(&self) -> bool {
        self.was_connected.get()
    }

    /// The client left the namespace (DISCONNECT) and its rooms were given back: the
    /// Engine.IO session stays, waiting for another CONNECT.
    pub fn reset_socket(&self) {
        self.user.set(None);
        self.state.set(ConnState::AwaitingConnect);
        self.was_connected.set(false);
        self.token_exp_ms.set(0);
        self.subs.borrow_mut().reset();
    }

    /// The groups this connection is in or joining.
    pub fn groups(&self) -> Vec<GroupId> {
        self.subs.borrow().groups().cloned().collect()
    }

    /// Queues a complete frame. A client whose queue would pass the configured bound is
    /// disconnected as a slow consumer.
    pub fn push(&self, shard: &impl Outbox, frame: Bytes) {
        if self.queue(shard, frame) {
            self.schedule(shard);
        }
    }

    /// Lists the connection for the shard's sender's next batch (send.rs); on long-polling,
    /// wakes the GET that waits for packets instead.
    pub fn schedule(&self, shard: &impl Outbox) {
        if self.transport() == Transport::Polling {
            self.wake();
        } else if !self.due.replace(true) {
            shard.schedule_socket_write(self.id);
        }
    }

    /// Queues `frame` without waking the writer: it goes out with the next write, which the
    /// shard's room pacing triggers (see `Fanout::deliver`, fanout.rs). False if nothing was queued.
    pub fn queue(&self, shard: &impl Outbox, frame: Bytes) -> bool {
        if self.closing.get() {
            return false;
        }
        let limit = shard.config().server.outbound_queue_bytes;
        if !self.out.borrow_mut().push(frame, limit) {
            shard
                .stats()
                .slow_disconnects
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(conn = self.id.0, "disconnecting a slow consumer");
            self.abort(shard, Close::SlowConsumer);
            return false;
        }
        true
    }

    pub fn fd(&self) -> i32 {
        self.fd.get()
    }

    pub fn set_due(&self, due: bool) {
        self.due.set(due);
    }

    pub fn is_closing(&self) -> bool {
        self.closing.get()
    }

    pub fn has_unfinished_write(&self) -> bool {
        self.writing.borrow().is_some()
    }

    pub fn set_unfinished_write(&self, buf: Bytes, written: usize) {
        *self.writing.borrow_mut() = Some((buf, written));
    }

    /// Whether the session should stop reading: its queue holds more than half its cap, so a
    /// client that sends requests without reading the answers is slowed down to its own pace
    /// (what it sends waits in its socket, not in our memory).
    pub fn read_paused(&self, shard: &impl Outbox) -> bool {
        self.out.borrow().cost() > shard.config().server.outbound_queue_bytes / 2
    }

    /// `len` queued bytes are written, in one socket write (counted in the shard's stats).
    pub fn wrote(&self, shard: &impl Outbox, len: usize) {
        let was_paused = self.read_paused(shard);
        self.out.borrow_mut().wrote(len);
        if was_paused && !self.read_paused(shard) {
            self.wake(); // the session reads again
        }
        shard
            .stats()
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Everything queued, as one buffer to write in one send (one frame as is, several copied
    /// into one buffer that lives only until it is written: an idle connection keeps none).
    pub fn take_queued(&self) -> Option<Bytes> {
        self.out.borrow_mut().take_ws()
    }

    /// Whether a long-polling GET has something to answer with now.
    pub fn has_queued(&self) -> bool {
        !self.out.borrow().is_empty()
    }

    /// Everything queued, as one long-polling answer's payload (counted as written).
    pub fn take_polled(&self, shard: &impl Outbox) -> Polled {
        let polled = self.out.borrow_mut().take_polling();
        shard
            .stats()
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        polled
    }

    /// The task to wake when the session has something to do (a long-polling GET's).
    pub fn set_waker(&self, w: &std::task::Waker) {
        *self.waker.borrow_mut() = Some(w.clone());
    }

    /// Lets the session run: to finish an unfinished write, or to close.
    pub fn wake(&self) {
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Closes after everything queued so far is written.
    pub fn close(&self, shard: &impl Outbox, why: Close) {
        if self.closing.get() {
            return;
        }
        self.push(shard, why.frame(Role::Server));
        self.closing.set(true);
        self.closing_since.set(Some(shard.tick_now()));
        self.state.set(ConnState::Closing);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Closes now, dropping whatever is still queued.
    fn abort(&self, shard: &impl Outbox, why: Close) {
        self.out.borrow_mut().clear();
        self.closing.set(false);
        self.close(shard, why);
    }

    /// Refuses the Socket.IO CONNECT, then closes: the packet carries the message and, for
    /// programs, `data: { code }` ([`packet::write_connect_refused`]).
    pub fn connect_error(&self, shard: &impl Outbox, code: Code, message: &str) {
        shard.stats().error(code);
        let mut p = Vec::new();
        packet::write_connect_refused(&mut p, message, code.as_str());
        self.push(shard, ws::text_frame(Role::Server, &p));
        self.close(shard, Close::ConnectRefused);
    }

    /// All connect-time subscriptions answered (and a recovery's store reads): accept the
    /// CONNECT. A recovering one keeps its pid and is followed by the messages it missed, then
    /// by what was delivered meanwhile; one whose recovery was given up gets a new pid.
    ///
    /// Returns, for a recovered CONNECT, when the client's position was reached: the shard
    /// then tells it the presence news since (`recovery::PresenceLog`).
    pub fn connected(&self, shard: &impl Outbox) -> Option<i64> {
        self.was_connected.set(true);
        self.connect_deadline.set(None);
        let replay = self.end_replay(shard);
        let mut p = Vec::new();
        let pid = self.recovery.borrow().as_ref().map(|r| {
            let user = self
                .user()
                .expect("invariant: a session with recovery has a user");
            shard.pids().pid(user, r.session)
        });
        packet::write_connect(&mut p, &self.sid(shard).to_string(), pid.as_deref());
        self.push(shard, ws::text_frame(Role::Server, &p));
        let (since, missed, held) = replay?;
        shard
            .stats()
            .recovered_messages
            .fetch_add(missed.len() as u64, std::sync::atomic::Ordering::Relaxed);
        for e in missed {
            let (group, frame) = match &e {
                GroupEvent::Message(m) => (&m.group, events::new_message_frame(m)),
                GroupEvent::Read(r) => (
                    &r.group,
                    events::message_read_frame(&r.group, r.message, r.user),
                ),
            };
            self.write_event(shard, group, Event::Stored(e.id()), &frame);
        }
        for (group, event, frame) in held {
            self.write_event(shard, &group, event, &frame);
        }
        since
    }

    /// Ends a recovering CONNECT's wait: the messages it missed and the deliveries held, or,
    /// if recovery was given up, a fresh session and the deliveries held.
    #[allow(clippy::type_complexity)]
    fn end_replay(
        &self,
        shard: &impl Outbox,
    ) -> Option<(Option<i64>, Vec<GroupEvent>, Vec<(GroupId, Event, Bytes)>)> {
        let mut rec = self.recovery.borrow_mut();
        let r = rec.as_mut()?;
        let replay = r.replay.take()?;
        let (since, missed) = match replay.missed {
            Some(m) => {
                shard
                    .stats()
                    .recoveries
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (Some(replay.since_ms), m)
            }
            None => {
                shard
                    .stats()
                    .recoveries_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                *r = Recovery::fresh(events::now_ms() as u64);
                (None, Vec::new())
            }
        };
        Some((since, missed, replay.held))
    }

    fn write_event(&self, shard: &impl Outbox, group: &GroupId, event: Event, frame: &Bytes) {
        if let Some(f) = self.frame_for(shard, group, event, frame) {
            self.push(shard, f);
        }
    }

    /// Whether a closing long-polling session has had its grace period: nobody fetched the
    /// close, so the shard forgets it now (a WebSocket session ends its own task instead).
    pub fn polling_close_overdue(&self) -> bool {
        self.close_overdue.get() && self.transport() == Transport::Polling
    }

    pub fn tick(&self, shard: &impl Outbox, now: Tick) {
        // An idle connection gives its queue's memory back.
        self.out.borrow_mut().shrink_if_idle();
        if self.closing.get() {
            if self
                .closing_since
                .get()
                .is_some_and(|t| now.reached(t.after(CLOSE_GRACE_MS)))
            {
                self.close_overdue.set(true);
                if let Some(w) = self.waker.borrow_mut().take() {
                    w.wake();
                }
            }
            return;
        }
        let exp = self.token_exp_ms.get();
        if exp > 0 && events::now_ms().max(0) as u64 >= exp + TOKEN_LEEWAY_MS {
            self.close(shard, Close::TokenExpired);
            return;
        }
        if self.connect_deadline.get().is_some_and(|d| now.reached(d)) {
            self.close(shard, Close::ConnectTimeout);
            return;
        }
        let due = self.engine.borrow_mut().tick(now, &shard.timing());
        match due {
            Due::Nothing => {}
            Due::Ping => self.push(shard, Bytes::from_static(&PING_FRAME)),
            Due::PingTimeout => self.close(shard, Close::PingTimeout),
            Due::ProbeTimeout => {
                self.probe_abort.set(true);
                if let Some(w) = self.probe_waker.borrow_mut().take() {
                    w.wake();
                }
            }
        }
    }

    // ---- incoming packets ----

    pub fn on_message(self: &Rc<Self>, shard: &impl Outbox, msg: Message) {
        match msg {
            Message::Text(payload) => self.on_text(shard, payload),
            Message::Binary(_) => {
                if self.skip_binary.get() > 0 {
                    self.skip_binary.set(self.skip_binary.get() - 1);
                } else {
                    let e = ClientError::new(Code::Unsupported, "binary frames are not supported");
                    self.report(shard, None, e);
                }
            }
            Message::Ping(data) => {
                let mut out = BytesMut::new();
                ws::encode_frame(Role::Server, ws::OP_PONG, &data, &mut out);
                let limit = shard.config().server.outbound_queue_bytes;
                if self.closing.get() {
                    return;
                }
                let queued = self.out.borrow_mut().set_pong(out.freeze(), limit);
                if queued {
                    self.schedule(shard);
                } else {
                    self.abort(shard, Close::SlowConsumer);
                }
            }
            Message::Pong(_) => {}
            Message::Close(_) => self.close(shard, Close::ClientLeft),
        }
    }

    /// One Engine.IO packet, from a WebSocket text frame or a long-polling POST.
    pub fn on_text(self: &Rc<Self>, shard: &impl Outbox, mut payload: BytesMut) {
        match packet::parse_eio(&payload) {
            Ok(EioPacket::Pong(_)) => self.engine.borrow_mut().on_pong(),
            Ok(EioPacket::Ping(data)) => {
                let mut p = b"3".to_vec();
                p.extend_from_slice(data);
                self.push(shard, ws::text_frame(Role::Server, &p));
            }
            Ok(EioPacket::Message(_)) => self.on_socket_io(shard, &mut payload[1..]),
            Ok(EioPacket::Close) => {
                self.close(shard, Close::ClientLeft);
                if self.transport() == Transport::Polling {
                    // Nothing more will be fetched: the session ends now, as on the reference
                    // server (a WebSocket ends once its close frame is out).
                    shard.closed(self);
                }
            }
            Ok(EioPacket::Noop) | Ok(EioPacket::Upgrade) => {}
            Ok(EioPacket::Open(_)) | Err(_) => self.close(shard, Close::InvalidEngineIoPacket),
        }
    }

    /// Tells the client about a failure: an ack if it asked for one, else an `error` event.
    fn report(&self, shard: &impl Outbox, ack: Option<u64>, e: ClientError) {
        shard.reply(self, ack, Err(e));
    }

    fn on_socket_io(self: &Rc<Self>, shard: &impl Outbox, msg: &mut [u8]) {
        let p = match packet::parse_sio(msg) {
            Ok(p) => p,
            // As the reference server does: a packet that cannot be decoded ends the
            // connection (an event that decodes but fails validation is answered instead).
            Err(_) => return self.close(shard, Close::InvalidSocketIoPacket),
        };
        let nsp = packet::namespace(msg, &p).to_string();
        if nsp != "/" {
            if p.kind == SioKind::Connect {
                let mut out = Vec::new();
                packet::write_connect_error(&mut out, &nsp, "Invalid namespace");
                shard.stats().error(Code::InvalidPayload);
                self.push(shard, ws::text_frame(Role::Server, &out));
            }
            return;
        }
        match p.kind {
            SioKind::Connect => self.on_connect(shard, &mut msg[p.data.clone()]),
            // The client leaves the namespace; the Engine.IO session stays open (and keeps
            // pinging) as on the reference server, and may CONNECT again.
            SioKind::Disconnect => shard.left_namespace(self),
            SioKind::Event => {
                shard
                    .stats()
                    .events_in
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if !shard.admit_event(self, p.ack_id) {
                    return;
                }
                if self.state() != ConnState::Connected {
                    let e =
                        ClientError::new(Code::Unauthenticated, "send CONNECT with a token first");
                    return self.report(shard, p.ack_id, e);
                }
                match events::parse_event(&mut msg[p.data.clone()], &shard.config().limits) {
                    Ok(cmd) => self.on_command(shard, cmd, p.ack_id),
                    Err(EventError::Rejected(e)) => self.report(shard, p.ack_id, e),
                    Err(EventError::Undecodable(_)) => {
                        self.close(shard, Close::InvalidSocketIoPacket)
                    }
                }
            }
            SioKind::BinaryEvent | SioKind::BinaryAck => {
                self.skip_binary.set(p.attachments);
                if p.kind == SioKind::BinaryEvent && shard.admit_event(self, p.ack_id) {
                    let e = ClientError::new(
                        Code::Unsupported,
                        "binary payloads are not supported; send JSON",
                    );
                    self.report(shard, p.ack_id, e);
                }
            }
            // The server asks for no acks, and CONNECT_ERROR only flows to clients.
            SioKind::Ack | SioKind::ConnectError => {}
        }
    }

    fn on_connect(self: &Rc<Self>, shard: &impl Outbox, data: &mut [u8]) {
        if self.state() != ConnState::AwaitingConnect {
            return;
        }
        let auth = crate::auth::connect_auth(data);
        let Some(token) = auth.token else {
            return self.connect_error(
                shard,
                Code::Unauthenticated,
                "authentication token missing: send { token } in the Socket.IO auth payload",
            );
        };
        match shard.verifier().verify_session(&token) {
            Ok((user, exp_ms)) => {
                self.token_exp_ms.set(exp_ms);
                self.user.set(Some(user));
                self.state.set(ConnState::Subscribing);
                self.begin_session(shard, user, auth.pid.as_deref(), auth.offset.as_deref());
                shard.authenticated(self, user);
            }
            Err(e) => self.connect_error(shard, Code::Unauthenticated, &e.to_string()),
        }
    }

    /// The session's recovery state at CONNECT: none for a client that keeps no offsets (or
    /// with recovery off); a recovery when the `pid` and offset allow one; else a fresh
    /// session with a new pid.
    fn begin_session(
        &self,
        shard: &impl Outbox,
        user: UserId,
        pid: Option<&str>,
        offset: Option<&str>,
    ) {
        let cfg = &shard.config().recovery;
        if !cfg.enabled || !self.takes_offsets.get() {
            *self.recovery.borrow_mut() = None;
            return;
        }
        let now = events::now_ms() as u64;
        let resumed = pid.and_then(|pid| {
            Recovery::resume(
                shard.pids(),
                user,
                pid,
                offset,
                now,
                cfg.max_age_secs.saturating_mul(1000),
            )
        });
        if pid.is_some() && resumed.is_none() {
            shard
                .stats()
                .recoveries_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let r = resumed.unwrap_or_else(|| Recovery::fresh(now));
        *self.recovery.borrow_mut() = Some(r);
    }

    /// `refreshToken`: a valid token for the same user moves the session's expiry.
    fn refresh_token(&self, shard: &impl Outbox, token: &str, ack: Option<u64>) {
        let result = match shard.verifier().verify_session(token) {
            Ok((user, exp_ms)) if Some(user) == self.user() => {
                self.token_exp_ms.set(exp_ms);
                Ok(events::ok_ack_json(&format!(",\"exp\":{}", exp_ms / 1000)))
            }
            Ok(_) => Err(ClientError::new(
                Code::Unauthenticated,
                "the token is for another user: a session keeps its user",
            )),
            Err(e) => Err(ClientError::new(Code::Unauthenticated, e.to_string())),
        };
        shard.reply(self, ack, result);
    }

    fn on_command(self: &Rc<Self>, shard: &impl Outbox, cmd: Command, ack: Option<u64>) {
        match cmd {
            Command::SendMessage { .. } => shard.submit_message(self, cmd, ack),
            Command::JoinGroup { group } => shard.join(self, group, ack),
            Command::RefreshToken { token } => self.refresh_token(shard, &token, ack),
            Command::LeaveGroup { group } => {
                shard.leave(self, &group);
                shard.reply(self, ack, Ok(events::group_ack_json(&group)));
            }
            Command::MarkAsRead { group, message } => shard.mark_read(self, group, message, ack),
            Command::Query { group, query } => shard.query_room(self, group, query, ack),
        }
    }
}

// ---- I/O ----

/// Starts a new WebSocket session on `stream`, whose upgrade request was answered with
/// `response` (written first). `pipelined` holds bytes the client sent after its request
/// without waiting for the 101: they are the session's first frames.
pub fn start_websocket<O: Outbox + 'static>(
    shard: Rc<O>,
    stream: TcpStream,
    response: Vec<u8>,
    pipelined: BytesMut,
    ticket: Option<crate::admission::Ticket>,
    takes_offsets: bool,
) {
    let conn = Rc::new(Conn::new(
        shard.next_conn_id(),
        Transport::WebSocket,
        shard.tick_now(),
        &*shard,
    ));
    conn.set_takes_offsets(takes_offsets);
    conn.fd.set(stream.as_raw_fd());
    conn.push(&*shard, Bytes::from(response));
    conn.push(
        &*shard,
        ws::text_frame(Role::Server, &conn.open_packet(&*shard)),
    );
    shard.register(conn.clone());
    if let Some(t) = ticket {
        shard.transfer_ticket(t, &conn);
    }
    spawn_session(shard, conn, stream, pipelined, None);
}

/// Opens the upgrade probe of long-polling session `conn` on `stream` (its upgrade request
/// already accepted by the session's engine): the 101, then `2probe` / `3probe`, then the
/// client's `5` moves the session onto this socket.
pub fn start_probe<O: Outbox + 'static>(
    shard: Rc<O>,
    conn: Rc<Conn>,
    stream: TcpStream,
    response: Vec<u8>,
    pipelined: BytesMut,
) {
    conn.probe_abort.set(false);
    let mut out = VecDeque::new();
    out.push_back(Bytes::from(response));
    spawn_session(shard, conn, stream, pipelined, Some(Probe { out, pos: 0 }));
}

fn spawn_session<O: Outbox + 'static>(
    shard: Rc<O>,
    conn: Rc<Conn>,
    stream: TcpStream,
    inbuf: BytesMut,
    probe: Option<Probe>,
) {
    glommio::spawn_local(async move {
        let max_payload = shard.config().server.max_payload;
        let logged_in = conn.was_connected();
        let session = Session {
            decoder: Decoder::new(
                Role::Server,
                if logged_in {
                    max_payload
                } else {
                    pre_connect_max(max_payload)
                },
            ),
            logged_in,
            shard: shard.clone(),
            conn: conn.clone(),
            stream,
            fresh: !inbuf.is_empty(),
            inbuf,
            probe,
        };
        let carried_session = session.await;
        if carried_session {
            // The socket closed with the session: the sender must not use its number again.
            conn.fd.set(-1);
            shard.closed(&conn);
        } else {
            // A probe that never upgraded: the session goes on over long-polling.
            conn.engine.borrow_mut().probe_ended();
            *conn.probe_waker.borrow_mut() = None;
        }
    })
    .detach();
}

/// An upgrade probe in progress: what the probe socket still has to write (the 101, `3probe`)
/// before the session is moved onto it.
struct Probe {
    out: VecDeque<Bytes>,
    /// Bytes of the front buffer already written.
    pos: usize,
}

/// A live WebSocket's I/O, as one small hand-written future (an `async fn` pair of reader
/// and writer kept several hundred bytes more state per connection). Each poll:
///
/// 1. ends the session if the ticker declared a close overdue;
/// 2. finishes a write the shard's sender could not (and what was queued meanwhile), until
///    nothing is left for it or the socket is full;
/// 3. reads into the shard's scratch buffer and handles every complete packet at once,
///    keeping only an unfinished frame in a buffer of its own;
///
/// and loops while a step made progress (handling packets may queue frames to write).
///
/// While `probe` is set the socket is an upgrade probe of a long-polling session: it answers
/// `2probe` itself and carries nothing of the session until the client's `5`. Its output is
/// whether it carried the session when it ended (a probe that never upgraded did not).
struct Session<O> {
    shard: Rc<O>,
    conn: Rc<Conn>,
    stream: TcpStream,
    decoder: Decoder,
    /// An unfinished frame; empty, without an allocation, while idle.
    inbuf: BytesMut,
    /// `inbuf` holds bytes pipelined behind the upgrade request, not yet decoded.
    fresh: bool,
    probe: Option<Probe>,
    /// The decoder's bound was raised to `maxPayload` after CONNECT (see [`pre_connect_max`]).
    logged_in: bool,
}

/// The largest message a connection may send before its CONNECT succeeds: the CONNECT packet
/// with a large token fits, and a connection that never logs in cannot make the shard hold
/// `maxPayload` for it.
pub const PRE_CONNECT_MAX_BYTES: usize = 32 * 1024;

/// The bound on a connection's messages before CONNECT.
pub fn pre_connect_max(max_payload: usize) -> usize {
    max_payload.min(PRE_CONNECT_MAX_BYTES)
}

impl<O: Outbox> std::future::Future for Session<O> {
    type Output = bool;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<bool> {
        let this = &mut *self;
        // A client that never stops sending must not keep the shard to itself: after this
        // many turns the session yields (and asks to be polled again).
        let mut budget = 16;
        loop {
            budget -= 1;
            if budget == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if this.probe.is_some() {
                if this.conn.gone.get() || this.conn.probe_abort.get() {
                    return Poll::Ready(false);
                }
            } else if this.conn.close_overdue.get() {
                return Poll::Ready(true);
            }
            let mut progress = false;
            let write = if this.probe.is_some() {
                this.poll_probe_write(cx)
            } else {
                this.poll_write(cx)
            };
            match write {
                Poll::Ready(true) => progress = true,
                Poll::Ready(false) => return Poll::Ready(this.probe.is_none()),
                Poll::Pending => {}
            }
            if this.fresh {
                this.fresh = false;
                this.decode_all();
                progress = true;
            }
            if !this.logged_in && this.conn.was_connected() {
                this.logged_in = true;
                this.decoder
                    .set_max_message(this.shard.config().server.max_payload);
            }
            let paused = this.probe.is_none() && this.conn.read_paused(&*this.shard);
            if (!this.conn.closing.get() || this.probe.is_some()) && !paused {
                match this.poll_read(cx) {
                    Poll::Ready(true) => progress = true,
                    Poll::Ready(false) => return Poll::Ready(this.probe.is_none()),
                    Poll::Pending => {}
                }
            }
            if !progress {
                // Frames queued by other tasks, and the ticker's deadlines, wake us here.
                let slot = if this.probe.is_some() {
                    &this.conn.probe_waker
                } else {
                    &this.conn.waker
                };
                *slot.borrow_mut() = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
    }
}

impl<O: Outbox> Session<O> {
    /// Ready(true): wrote something; Ready(false): the session is over; Pending: nothing to
    /// write or the socket is full.
    ///
    /// The shard's sender writes what is queued (send.rs); the session writes only what the
    /// sender could not finish, and what was queued meanwhile, before the sender has it again.
    fn poll_write(&mut self, cx: &mut std::task::Context<'_>) -> Poll<bool> {
        let conn = &*self.conn;
        let mut wrote = false;
        let idle = |wrote: bool| {
            if wrote {
                Poll::Ready(true)
            } else {
                Poll::Pending
            }
        };
        loop {
            let mut writing = conn.writing.borrow_mut();
            if writing.is_none() {
                if conn.due.get() {
                    // The sender has it; it wakes this task if anything is left to do.
                    return idle(wrote);
                }
                match conn.take_queued() {
                    Some(b) => *writing = Some((b, 0)),
                    None if conn.closing.get() => {
                        let _ = Pin::new(&mut self.stream).poll_close(cx);
                        return Poll::Ready(false);
                    }
                    None => return idle(wrote),
                }
            }
            let (buf, pos) = writing.as_mut().expect("invariant: set just above");
            match Pin::new(&mut self.stream).poll_write(cx, &buf[*pos..]) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    *pos += n;
                    if *pos == buf.len() {
                        let len = buf.len();
                        *writing = None;
                        conn.wrote(&*self.shard, len);
                    }
                    wrote = true;
                }
                Poll::Ready(_) => return Poll::Ready(false),
                Poll::Pending => return idle(wrote),
            }
        }
    }

    /// The probe's own writes (the 101 and `3probe`), straight to its socket.
    fn poll_probe_write(&mut self, cx: &mut std::task::Context<'_>) -> Poll<bool> {
        let probe = self
            .probe
            .as_mut()
            .expect("invariant: called while probing");
        let mut wrote = false;
        while let Some(buf) = probe.out.front() {
            match Pin::new(&mut self.stream).poll_write(cx, &buf[probe.pos..]) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    probe.pos += n;
                    if probe.pos == buf.len() {
                        probe.out.pop_front();
                        probe.pos = 0;
                    }
                    wrote = true;
                }
                Poll::Ready(_) => return Poll::Ready(false),
                Poll::Pending => break,
            }
        }
        if wrote {
            Poll::Ready(true)
        } else {
            Poll::Pending
        }
    }

    /// Ready(true): read and handled something; Ready(false): the peer is gone; Pending:
    /// nothing to read.
    fn poll_read(&mut self, cx: &mut std::task::Context<'_>) -> Poll<bool> {
        {
            let mut scratch = self.shard.scratch();
            match Pin::new(&mut self.stream).poll_read(cx, &mut scratch[..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(false),
                Poll::Ready(Ok(n)) => self.inbuf.extend_from_slice(&scratch[..n]),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.decode_all();
        Poll::Ready(true)
    }

    /// Handles every complete frame in `inbuf`.
    fn decode_all(&mut self) {
        let shard = self.shard.clone();
        let shard = &*shard;
        loop {
            match self.decoder.decode(&mut self.inbuf) {
                Ok(Some(msg)) => {
                    if self.probe.is_some() {
                        if !self.on_probe_message(msg) {
                            // Not a probe: give up the probe (the session stays on polling).
                            self.conn.probe_abort.set(true);
                            break;
                        }
                        continue;
                    }
                    if self.conn.closing.get() {
                        break;
                    }
                    self.conn.on_message(shard, msg);
                }
                Ok(None) => break,
                Err(e) => {
                    if self.probe.is_some() {
                        self.conn.probe_abort.set(true);
                    } else {
                        self.conn.close(shard, Close::WebSocket(e));
                    }
                    break;
                }
            }
        }
        if self.inbuf.is_empty() {
            // Release the buffer: an idle connection keeps none.
            self.inbuf = BytesMut::new();
        }
    }

    /// A frame on an upgrade probe. `2probe` is answered with `3probe` here, and the pending
    /// long-polling GET gets a noop so that the client can pause polling; `5` moves the session
    /// onto this socket. False for anything else, which ends the probe (the reference server
    /// does the same).
    fn on_probe_message(&mut self, msg: Message) -> bool {
        let shard = &*self.shard;
        let conn = &self.conn;
        let probe = self
            .probe
            .as_mut()
            .expect("invariant: called while probing");
        match msg {
            Message::Text(t) if &t[..] == b"2probe" => {
                probe.out.push_back(ws::text_frame(Role::Server, b"3probe"));
                conn.push(shard, ws::text_frame(Role::Server, packet::NOOP));
                true
            }
            Message::Text(t) if &t[..] == b"5" => {
                if !probe.out.is_empty() || !conn.engine.borrow_mut().upgraded() {
                    return false;
                }
                self.probe = None;
                conn.fd.set(self.stream.as_raw_fd());
                *conn.probe_waker.borrow_mut() = None;
                // A GET still waiting ends (with a noop); then what was queued meanwhile goes
                // out on this socket, as the frames it already is.
                conn.wake();
                conn.due.set(false);
                conn.schedule(shard);
                true
            }
            Message::Ping(data) => {
                let mut out = BytesMut::new();
                ws::encode_frame(Role::Server, ws::OP_PONG, &data, &mut out);
                probe.out.push_back(out.freeze());
                true
            }
            Message::Pong(_) => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    //! A connection on a fake shard: what it queues for its socket, and what it asks of its
    //! shard, with no runtime and no socket.
    use super::*;
    use crate::auth::Verifier;
    use crate::config::Config;
    use crate::engine::Timing;
    use crate::metrics::ShardStats;
    use corecast_shard_router::ShardId;
    use corecast_storage::MessageId;
    use std::cell::RefMut;
    use std::time::Instant;

    /// An outbox that records what the connection asks, one line per call.
    struct FakeShard {
        config: Config,
        verifier: Verifier,
        pids: crate::recovery::PidKey,
        stats: ShardStats,
        scratch: RefCell<Vec<u8>>,
        epoch: Instant,
        asked: RefCell<Vec<String>>,
    }

    impl FakeShard {
        fn new() -> FakeShard {
            let config = Config::default();
            FakeShard {
                pids: crate::recovery::PidKey::new(b"test"),
                verifier: Verifier::from_config(&config)
                    .expect("the development secret on loopback"),
                config,
                stats: ShardStats::default(),
                scratch: RefCell::new(vec![0; 1024]),
                epoch: Instant::now(),
                asked: RefCell::new(Vec::new()),
            }
        }

        fn ask(&self, what: String) {
            self.asked.borrow_mut().push(what);
        }

        fn asked(&self) -> Vec<String> {
            self.asked.take()
        }
    }

    impl Outbox for FakeShard {
        fn shard_id(&self) -> ShardId {
            ShardId(3)
        }
        fn node_tag(&self) -> u32 {
            0
        }
        fn config(&self) -> &Config {
            &self.config
        }
        fn tick_now(&self) -> Tick {
            Tick::since(self.epoch, Instant::now())
        }
        fn timing(&self) -> Timing {
            let s = &self.config.server;
            Timing {
                ping_interval_ms: s.ping_interval_ms,
                ping_timeout_ms: s.ping_timeout_ms,
                upgrade_timeout_ms: s.upgrade_timeout_ms,
            }
        }
        fn stats(&self) -> &ShardStats {
            &self.stats
        }
        fn verifier(&self) -> &Verifier {
            &self.verifier
        }
        fn pids(&self) -> &crate::recovery::PidKey {
            &self.pids
        }
        fn scratch(&self) -> RefMut<'_, Vec<u8>> {
            self.scratch.borrow_mut()
        }
        fn schedule_socket_write(&self, conn: ConnId) {
            self.ask(format!("write {}", conn.0));
        }
        fn next_conn_id(&self) -> ConnId {
            ConnId(1)
        }
        fn register(&self, conn: Rc<Conn>) {
            self.ask(format!("register {}", conn.id.0));
        }
        fn transfer_ticket(&self, _: crate::admission::Ticket, conn: &Conn) {
            self.ask(format!("ticket {}", conn.id.0));
        }
        fn authenticated(&self, conn: &Rc<Conn>, user: UserId) {
            self.ask(format!("authenticated {} as {}", conn.id.0, user.0));
        }
        fn left_namespace(&self, conn: &Rc<Conn>) {
            self.ask(format!("left {}", conn.id.0));
        }
        fn closed(&self, conn: &Rc<Conn>) {
            self.ask(format!("closed {}", conn.id.0));
        }
        fn admit_event(&self, _: &Conn, _: Option<u64>) -> bool {
            true
        }
        fn join(&self, _: &Rc<Conn>, group: GroupId, _: Option<u64>) {
            self.ask(format!("join {}", group.as_str()));
        }
        fn leave(&self, _: &Rc<Conn>, group: &GroupId) {
            self.ask(format!("leave {}", group.as_str()));
        }
        fn submit_message(&self, _: &Rc<Conn>, cmd: Command, ack: Option<u64>) {
            let Command::SendMessage { group, .. } = cmd else {
                panic!("not a sendMessage: {cmd:?}");
            };
            self.ask(format!("sendMessage {} ack {ack:?}", group.as_str()));
        }
        fn mark_read(&self, _: &Rc<Conn>, group: GroupId, m: MessageId, _: Option<u64>) {
            self.ask(format!("markAsRead {} {}", group.as_str(), m.0));
        }
        fn query_room(&self, _: &Rc<Conn>, group: GroupId, q: events::Query, _: Option<u64>) {
            self.ask(format!("query {} {q:?}", group.as_str()));
        }
        fn reply(&self, _: &Conn, ack: Option<u64>, result: Result<Vec<u8>, ClientError>) {
            let what = match result {
                Ok(json) => String::from_utf8_lossy(&json).into_owned(),
                Err(e) => e.code.as_str().to_string(),
            };
            self.ask(format!("reply {ack:?} {what}"));
        }
    }

    fn conn(shard: &FakeShard) -> Rc<Conn> {
        Rc::new(Conn::new(
            ConnId(7),
            Transport::WebSocket,
            shard.tick_now(),
            shard,
        ))
    }

    fn text(conn: &Rc<Conn>, shard: &FakeShard, packet: &str) {
        conn.on_text(shard, BytesMut::from(packet.as_bytes()));
    }

    #[test]
    fn an_undecodable_packet_closes_with_its_close() {
        let shard = FakeShard::new();
        for (packet, close) in [
            ("9", Close::InvalidEngineIoPacket),
            ("4abc", Close::InvalidSocketIoPacket),
            ("42{}", Close::InvalidSocketIoPacket),
        ] {
            let c = conn(&shard);
            text(&c, &shard, packet);
            assert_eq!(c.state(), ConnState::Closing, "{packet}");
            assert_eq!(shard.asked(), ["write 7"], "{packet}");
            assert_eq!(c.take_queued(), Some(close.frame(Role::Server)), "{packet}");
        }
    }

    #[test]
    fn an_event_before_connect_is_answered_unauthenticated() {
        let shard = FakeShard::new();
        let c = conn(&shard);
        text(&c, &shard, r#"421["joinGroup",{"groupId":"g"}]"#);
        assert_eq!(shard.asked(), ["reply Some(1) unauthenticated"]);
        assert_eq!(c.state(), ConnState::AwaitingConnect);
    }

    #[test]
    fn a_bad_token_is_refused_then_closed() {
        let shard = FakeShard::new();
        let c = conn(&shard);
        text(&c, &shard, r#"40{"token":"not-a-jwt"}"#);
        assert_eq!(shard.asked(), ["write 7"]);
        let queued = c.take_queued().expect("the refusal");
        let close = Close::ConnectRefused.frame(Role::Server);
        assert!(queued.ends_with(&close), "{queued:?}");
        let frames: Vec<_> = ws::server_frames(&queued).collect();
        assert_eq!(frames.len(), 2, "CONNECT_ERROR, then the close");
        assert_eq!(frames[0].0, ws::OP_TEXT);
        let refusal = String::from_utf8_lossy(frames[0].1);
        assert!(
            refusal.starts_with(r#"44{"message":"authentication token invalid"#)
                && refusal.ends_with(r#","data":{"code":"unauthenticated"}}"#),
            "{refusal}"
        );
    }

    #[test]
    fn a_connected_client_s_events_go_to_the_shard() {
        let shard = FakeShard::new();
        let c = conn(&shard);
        c.set_state(ConnState::Connected);
        text(
            &c,
            &shard,
            r#"425["sendMessage",{"groupId":"g","text":"hi","attachments":[]}]"#,
        );
        text(&c, &shard, r#"42["joinGroup",{"groupId":"h"}]"#);
        text(&c, &shard, r#"426["leaveGroup",{"groupId":"h"}]"#);
        text(&c, &shard, "41");
        assert_eq!(
            shard.asked(),
            [
                "sendMessage g ack Some(5)",
                "join h",
                "leave h",
                r#"reply Some(6) {"ok":true,"groupId":"h"}"#,
                "left 7",
            ]
        );
    }
}
