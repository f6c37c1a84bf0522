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

use crate::events::{self, ClientError, Code, Command};
use crate::http::{self, Upgrade};
use crate::shard::{Origin, Shard};
use bytes::{Bytes, BytesMut};
use corecast_storage::{GroupId, UserId};
use corecast_wire::packet::{self, EioPacket, SioKind};
use corecast_wire::ws::{self, Decoder, Message, Role};
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use simd_json::prelude::*;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

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

/// A connection's membership in one room, as its shard sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubState {
    /// Subscribe sent to the room's owner, no answer yet.
    Pending,
    /// In the room: deliveries reach it.
    Active,
}

/// The server's Engine.IO ping, as a complete WebSocket frame.
static PING_FRAME: [u8; 3] = [0x81, 0x01, b'2'];

/// How long a closing connection may take to flush before its socket is dropped.
const CLOSE_GRACE_MS: u64 = 2_000;

/// A point in time as milliseconds since the shard started, in 32 bits to keep connections
/// small. It wraps after 49 days; [`Tick::reached`] compares with wrapping arithmetic, so
/// deadlines up to 24 days ahead stay correct across the wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick(u32);

impl Tick {
    pub fn now(shard: &Shard) -> Tick {
        Tick::since(shard.epoch, Instant::now())
    }

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

pub struct Conn {
    pub id: ConnId,
    /// The Engine.IO session id's random part (see [`Conn::sid`]).
    sid_salt: u64,
    user: Cell<Option<UserId>>,
    state: Cell<ConnState>,
    was_connected: Cell<bool>,
    groups: RefCell<Vec<(GroupId, SubState)>>,
    /// Connect-time subscriptions not yet answered (plus one while they are being sent).
    pub pending_subs: Cell<u32>,
    out: RefCell<VecDeque<Bytes>>,
    out_bytes: Cell<usize>,
    /// A write the shard's sender could not finish (socket full, partial, failed) and the
    /// session finishes: the bytes and how many have gone. Nothing else is written before it.
    writing: RefCell<Option<(Bytes, usize)>>,
    /// The socket, for the shard's sender; -1 once the session is over.
    fd: Cell<i32>,
    /// Listed for the shard's sender's next batch (see send.rs).
    due: Cell<bool>,
    /// The session task's waker: its writer and its close-overdue check both wait on it.
    waker: RefCell<Option<Waker>>,
    /// Frames are queued for the shard's next paced flush (see `Shard::deliver`).
    pub paced: Cell<bool>,
    /// Set once the connection is closing: nothing more is queued after the close frame.
    closing: Cell<bool>,
    /// When closing started; the shard's tick declares the
    /// close overdue after [`CLOSE_GRACE`].
    closing_since: Cell<Option<Tick>>,
    close_overdue: Cell<bool>,
    next_ping: Cell<Tick>,
    pong_deadline: Cell<Option<Tick>>,
    connect_deadline: Cell<Option<Tick>>,
    /// Binary attachments still to skip after a refused binary packet.
    skip_binary: Cell<u32>,
}

impl Conn {
    fn new(id: ConnId, now: Tick, shard: &Shard) -> Conn {
        let cfg = &shard.config().server;
        Conn {
            id,
            sid_salt: fastrand::u64(..),
            user: Cell::new(None),
            state: Cell::new(ConnState::AwaitingConnect),
            was_connected: Cell::new(false),
            groups: RefCell::new(Vec::new()),
            pending_subs: Cell::new(0),
            out: RefCell::new(VecDeque::new()),
            out_bytes: Cell::new(0),
            writing: RefCell::new(None),
            fd: Cell::new(-1),
            due: Cell::new(false),
            waker: RefCell::new(None),
            paced: Cell::new(false),
            closing: Cell::new(false),
            closing_since: Cell::new(None),
            close_overdue: Cell::new(false),
            next_ping: Cell::new(now.after(cfg.ping_interval_ms)),
            pong_deadline: Cell::new(None),
            connect_deadline: Cell::new(Some(now.after(cfg.connect_timeout_ms))),
            skip_binary: Cell::new(0),
        }
    }

    /// The Engine.IO/Socket.IO session id: random, and unique per shard and connection.
    fn sid(&self, shard: &Shard) -> String {
        format!(
            "{:016x}{:04x}{:08x}",
            self.sid_salt, shard.id.0, self.id.0 as u32
        )
    }

    fn open_frame(&self, shard: &Shard) -> Bytes {
        let cfg = &shard.config().server;
        let mut open = Vec::new();
        packet::write_open(
            &mut open,
            &self.sid(shard),
            cfg.ping_interval_ms,
            cfg.ping_timeout_ms,
            cfg.max_payload,
        );
        ws::text_frame(Role::Server, &open)
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

    pub fn sub_state(&self, group: &GroupId) -> Option<SubState> {
        self.groups
            .borrow()
            .iter()
            .find(|(g, _)| g == group)
            .map(|(_, s)| *s)
    }

    pub fn set_sub_state(&self, group: &GroupId, state: Option<SubState>) {
        let mut groups = self.groups.borrow_mut();
        let pos = groups.iter().position(|(g, _)| g == group);
        match (pos, state) {
            (Some(i), Some(s)) => groups[i].1 = s,
            (Some(i), None) => {
                groups.swap_remove(i);
            }
            (None, Some(s)) => groups.push((group.clone(), s)),
            (None, None) => {}
        }
    }

    /// The groups this connection is in or joining.
    pub fn groups(&self) -> Vec<GroupId> {
        self.groups
            .borrow()
            .iter()
            .map(|(g, _)| g.clone())
            .collect()
    }

    /// Queues a complete frame. A client whose queue would pass the configured bound is
    /// disconnected as a slow consumer.
    pub fn push(&self, shard: &Shard, frame: Bytes) {
        if self.queue(shard, frame) {
            self.schedule(shard);
        }
    }

    /// Lists the connection for the shard's sender's next batch (send.rs).
    pub fn schedule(&self, shard: &Shard) {
        if !self.due.replace(true) {
            shard.due.borrow_mut().add(self.id);
        }
    }

    /// Queues `frame` without waking the writer: it goes out with the next write, which the
    /// shard's room pacing triggers (see `Shard::deliver`). False if nothing was queued.
    pub fn queue(&self, shard: &Shard, frame: Bytes) -> bool {
        if self.closing.get() {
            return false;
        }
        let limit = shard.config().server.outbound_queue_bytes;
        if self.out_bytes.get() + frame.len() > limit {
            shard
                .stats
                .slow_disconnects
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(conn = self.id.0, "disconnecting a slow consumer");
            self.abort(shard, 1008, "slow consumer: outbound queue full");
            return false;
        }
        self.out_bytes.set(self.out_bytes.get() + frame.len());
        self.out.borrow_mut().push_back(frame);
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

    /// `len` queued bytes are written, in one socket write (counted in the shard's stats).
    pub fn wrote(&self, shard: &Shard, len: usize) {
        self.out_bytes.set(self.out_bytes.get().saturating_sub(len));
        shard
            .stats
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Everything queued, as one buffer to write in one send (one frame as is, several copied
    /// into one buffer that lives only until it is written: an idle connection keeps none).
    pub fn take_queued(&self) -> Option<Bytes> {
        let mut q = self.out.borrow_mut();
        match q.len() {
            0 => None,
            1 => q.pop_front(),
            _ => {
                let total = q.iter().map(Bytes::len).sum();
                let mut batch = Vec::with_capacity(total);
                for f in q.drain(..) {
                    batch.extend_from_slice(&f);
                }
                Some(Bytes::from(batch))
            }
        }
    }

    /// Lets the session run: to finish an unfinished write, or to close.
    pub fn wake(&self) {
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Closes after everything queued so far is written.
    pub fn close(&self, shard: &Shard, code: u16, reason: &str) {
        if self.closing.get() {
            return;
        }
        self.push(shard, ws::close_frame(Role::Server, code, reason));
        self.closing.set(true);
        self.closing_since.set(Some(Tick::now(shard)));
        self.state.set(ConnState::Closing);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Closes now, dropping whatever is still queued.
    fn abort(&self, shard: &Shard, code: u16, reason: &str) {
        self.out.borrow_mut().clear();
        self.out_bytes.set(0);
        self.closing.set(false);
        self.close(shard, code, reason);
    }

    /// Refuses the Socket.IO CONNECT, then closes. The packet carries the message and, as
    /// Socket.IO servers do for middleware errors, `data: { code }` for programs:
    /// `44{"message":"…","data":{"code":"unauthenticated"}}`.
    pub fn connect_error(&self, shard: &Shard, code: Code, message: &str) {
        shard.stats.error(code);
        let mut p = b"44{\"message\":".to_vec();
        packet::write_json_str(&mut p, message);
        p.extend_from_slice(b",\"data\":{\"code\":\"");
        p.extend_from_slice(code.as_str().as_bytes());
        p.extend_from_slice(b"\"}}");
        self.push(shard, ws::text_frame(Role::Server, &p));
        self.close(shard, 1008, "connect refused");
    }

    /// All connect-time subscriptions answered: accept the CONNECT.
    pub fn connected(&self, shard: &Shard) {
        self.was_connected.set(true);
        self.connect_deadline.set(None);
        let mut p = Vec::new();
        packet::write_connect(&mut p, &self.sid(shard));
        self.push(shard, ws::text_frame(Role::Server, &p));
    }

    pub fn tick(&self, shard: &Shard, now: Tick) {
        {
            // An idle connection gives its queue's memory back.
            let mut out = self.out.borrow_mut();
            if out.is_empty() && out.capacity() > 0 {
                *out = VecDeque::new();
            }
        }
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
        if self.connect_deadline.get().is_some_and(|d| now.reached(d)) {
            self.close(shard, 1008, "connect timeout: no Socket.IO CONNECT in time");
            return;
        }
        match self.pong_deadline.get() {
            Some(d) if now.reached(d) => self.close(shard, 1008, "ping timeout: no pong in time"),
            Some(_) => {}
            None if now.reached(self.next_ping.get()) => {
                let cfg = &shard.config().server;
                self.push(shard, Bytes::from_static(&PING_FRAME));
                self.pong_deadline.set(Some(now.after(cfg.ping_timeout_ms)));
                self.next_ping.set(now.after(cfg.ping_interval_ms));
            }
            None => {}
        }
    }

    // ---- incoming packets ----

    fn on_message(self: &Rc<Self>, shard: &Shard, msg: Message) {
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
                self.push(shard, out.freeze());
            }
            Message::Pong(_) => {}
            Message::Close(_) => self.close(shard, 1000, ""),
        }
    }

    fn on_text(self: &Rc<Self>, shard: &Shard, mut payload: BytesMut) {
        match packet::parse_eio(&payload) {
            Ok(EioPacket::Pong(_)) => self.pong_deadline.set(None),
            Ok(EioPacket::Ping(data)) => {
                let mut p = b"3".to_vec();
                p.extend_from_slice(data);
                self.push(shard, ws::text_frame(Role::Server, &p));
            }
            Ok(EioPacket::Message(_)) => self.on_socket_io(shard, &mut payload[1..]),
            Ok(EioPacket::Close) => self.close(shard, 1000, ""),
            Ok(EioPacket::Noop) | Ok(EioPacket::Upgrade) => {}
            Ok(EioPacket::Open(_)) | Err(_) => {
                self.close(shard, 1002, "protocol error: invalid Engine.IO packet")
            }
        }
    }

    /// Tells the client about a failure: an ack if it asked for one, else an `error` event.
    fn report(&self, shard: &Shard, ack: Option<u64>, e: ClientError) {
        shard.reply(
            &Origin {
                shard: shard.id,
                conn: self.id,
                ack,
            },
            Err(e),
        );
    }

    fn on_socket_io(self: &Rc<Self>, shard: &Shard, msg: &mut [u8]) {
        let p = match packet::parse_sio(msg) {
            Ok(p) => p,
            Err(e) => {
                if self.state() == ConnState::AwaitingConnect {
                    return self.close(shard, 1002, "protocol error: invalid Socket.IO packet");
                }
                let e = ClientError::new(
                    Code::InvalidPayload,
                    format!("malformed Socket.IO packet: {e}"),
                );
                // An event whose JSON is broken still names its ack id up front: answer it
                // there, so a client waiting for that ack is not left hanging.
                return self.report(shard, salvage_ack_id(msg), e);
            }
        };
        let nsp = packet::namespace(msg, &p).to_string();
        if nsp != "/" {
            if p.kind == SioKind::Connect {
                let mut out = Vec::new();
                packet::write_connect_error(&mut out, &nsp, "Invalid namespace");
                shard.stats.error(Code::InvalidPayload);
                self.push(shard, ws::text_frame(Role::Server, &out));
            }
            return;
        }
        match p.kind {
            SioKind::Connect => self.on_connect(shard, &mut msg[p.data.clone()]),
            SioKind::Disconnect => self.close(shard, 1000, ""),
            SioKind::Event => {
                shard
                    .stats
                    .events_in
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if self.state() != ConnState::Connected {
                    let e =
                        ClientError::new(Code::Unauthenticated, "send CONNECT with a token first");
                    return self.report(shard, p.ack_id, e);
                }
                match events::parse_event(&mut msg[p.data.clone()], &shard.config().limits) {
                    Ok(cmd) => self.on_command(shard, cmd, p.ack_id),
                    Err(e) => self.report(shard, p.ack_id, e),
                }
            }
            SioKind::BinaryEvent | SioKind::BinaryAck => {
                self.skip_binary.set(p.attachments);
                if p.kind == SioKind::BinaryEvent {
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

    fn on_connect(self: &Rc<Self>, shard: &Shard, data: &mut [u8]) {
        if self.state() != ConnState::AwaitingConnect {
            return;
        }
        let token = if data.is_empty() {
            None
        } else {
            match simd_json::to_borrowed_value(data) {
                Ok(v) => v.get("token").and_then(|t| t.as_str()).map(str::to_string),
                Err(_) => None,
            }
        };
        let Some(token) = token else {
            return self.connect_error(
                shard,
                Code::Unauthenticated,
                "authentication token missing: send { token } in the Socket.IO auth payload",
            );
        };
        match shard.shared.verifier.verify(&token) {
            Ok(user) => {
                self.user.set(Some(user));
                self.state.set(ConnState::Subscribing);
                shard.authenticated(self, user);
            }
            Err(e) => self.connect_error(shard, Code::Unauthenticated, &e.to_string()),
        }
    }

    fn on_command(self: &Rc<Self>, shard: &Shard, cmd: Command, ack: Option<u64>) {
        match cmd {
            Command::SendMessage { .. } => shard.send_message(self, cmd, ack),
            Command::JoinGroup { group } => shard.join(self, group, ack),
            Command::LeaveGroup { group } => {
                shard.leave(self, &group);
                let origin = Origin {
                    shard: shard.id,
                    conn: self.id,
                    ack,
                };
                shard.reply(&origin, Ok(events::group_ack_json(&group)));
            }
            Command::MarkAsRead { group, message } => shard.mark_read(self, group, message, ack),
        }
    }
}

/// The ack id of an EVENT packet whose data could not be parsed (`2[/nsp,]<digits>[...`).
fn salvage_ack_id(msg: &[u8]) -> Option<u64> {
    let rest = msg.strip_prefix(b"2")?;
    let rest = if rest.first() == Some(&b'/') {
        let comma = rest.iter().position(|&b| b == b',')?;
        &rest[comma + 1..]
    } else {
        rest
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > packet::MAX_ACK_ID_DIGITS || rest.get(digits) != Some(&b'[') {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

// ---- I/O ----

type Stream = RefCell<TcpStream>;

/// Reads whatever is available into `into`, through the shard's scratch buffer. The scratch
/// buffer is borrowed only inside one poll, never across an await.
async fn read_some(shard: &Shard, stream: &Stream, into: &mut BytesMut) -> std::io::Result<usize> {
    poll_fn(|cx| {
        let mut scratch = shard.scratch.borrow_mut();
        let mut s = stream.borrow_mut();
        match Pin::new(&mut *s).poll_read(cx, &mut scratch[..]) {
            Poll::Ready(Ok(n)) => {
                into.extend_from_slice(&scratch[..n]);
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    })
    .await
}

async fn write_all(stream: &Stream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_write(cx, data)).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        data = &data[n..];
    }
    Ok(())
}

/// Serves one accepted TCP connection: the upgrade here, then the session in a task of its own
/// whose future holds only what a live connection needs.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    // TCP_NODELAY comes from the listening socket (server.rs).
    let stream = RefCell::new(stream);
    let handshake_timeout = Duration::from_millis(shard.config().server.connect_timeout_ms);
    let upgrade = futures_lite::future::or(read_upgrade(&shard, &stream), async {
        glommio::timer::sleep(handshake_timeout).await;
        None
    })
    .await;
    let Some(response) = upgrade else { return };
    let conn = Rc::new(Conn::new(shard.next_conn_id(), Tick::now(&shard), &shard));
    conn.fd.set(stream.borrow().as_raw_fd());
    conn.push(&shard, Bytes::from(response));
    conn.push(&shard, conn.open_frame(&shard));
    shard.register_conn(conn.clone());
    glommio::spawn_local(async move {
        let session = Session {
            decoder: Decoder::new(Role::Server, shard.config().server.max_payload),
            shard: shard.clone(),
            conn: conn.clone(),
            stream: stream.into_inner(),
            inbuf: BytesMut::new(),
        };
        session.await;
        // The socket closed with the session: the sender must not use its number again.
        conn.fd.set(-1);
        shard.conn_closed(&conn);
    })
    .detach();
}

/// Reads the HTTP upgrade request and answers it; returns the 101 response to send first.
async fn read_upgrade(shard: &Shard, stream: &Stream) -> Option<Vec<u8>> {
    let cfg = &shard.config().server;
    let mut buf = BytesMut::new();
    loop {
        match read_some(shard, stream, &mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        match http::parse(&buf, &cfg.path, &cfg.allowed_origins) {
            None => continue,
            Some(Upgrade::Accept { response }) => return Some(response),
            Some(Upgrade::Refuse { response, status }) => {
                tracing::debug!(status, "upgrade refused");
                let _ = write_all(stream, &response).await;
                return None;
            }
        }
    }
}

/// A live connection's I/O, as one small hand-written future (an `async fn` pair of reader
/// and writer kept several hundred bytes more state per connection). Each poll:
///
/// 1. ends the session if the ticker declared a close overdue;
/// 2. finishes a write the shard's sender could not (and what was queued meanwhile), until
///    nothing is left for it or the socket is full;
/// 3. reads into the shard's scratch buffer and handles every complete packet at once,
///    keeping only an unfinished frame in a buffer of its own;
///
/// and loops while a step made progress (handling packets may queue frames to write).
struct Session {
    shard: Rc<Shard>,
    conn: Rc<Conn>,
    stream: TcpStream,
    decoder: Decoder,
    /// An unfinished frame; empty, without an allocation, while idle.
    inbuf: BytesMut,
}

impl std::future::Future for Session {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
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
            if this.conn.close_overdue.get() {
                return Poll::Ready(());
            }
            let mut progress = false;
            match this.poll_write(cx) {
                Poll::Ready(true) => progress = true,
                Poll::Ready(false) => return Poll::Ready(()),
                Poll::Pending => {}
            }
            if !this.conn.closing.get() {
                match this.poll_read(cx) {
                    Poll::Ready(true) => progress = true,
                    Poll::Ready(false) => return Poll::Ready(()),
                    Poll::Pending => {}
                }
            }
            if !progress {
                // Frames queued by other tasks, and the ticker's close deadline, wake us here.
                *this.conn.waker.borrow_mut() = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
    }
}

impl Session {
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
                        conn.wrote(&self.shard, len);
                    }
                    wrote = true;
                }
                Poll::Ready(_) => return Poll::Ready(false),
                Poll::Pending => return idle(wrote),
            }
        }
    }

    /// Ready(true): read and handled something; Ready(false): the peer is gone; Pending:
    /// nothing to read.
    fn poll_read(&mut self, cx: &mut std::task::Context<'_>) -> Poll<bool> {
        let shard = &*self.shard;
        {
            let mut scratch = shard.scratch.borrow_mut();
            match Pin::new(&mut self.stream).poll_read(cx, &mut scratch[..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(false),
                Poll::Ready(Ok(n)) => self.inbuf.extend_from_slice(&scratch[..n]),
                Poll::Pending => return Poll::Pending,
            }
        }
        loop {
            match self.decoder.decode(&mut self.inbuf) {
                Ok(Some(msg)) => {
                    if self.conn.closing.get() {
                        break;
                    }
                    self.conn.on_message(shard, msg);
                }
                Ok(None) => break,
                Err(e) => {
                    self.conn.close(shard, e.close_code(), &e.to_string());
                    break;
                }
            }
        }
        if self.inbuf.is_empty() {
            // Release the buffer: an idle connection keeps none.
            self.inbuf = BytesMut::new();
        }
        Poll::Ready(true)
    }
}

#[cfg(test)]
mod tests {
    use super::{salvage_ack_id, Tick};

    #[test]
    fn ticks_compare_across_the_wrap() {
        let near_wrap = Tick(u32::MAX - 10);
        let deadline = near_wrap.after(100);
        assert!(!near_wrap.reached(deadline));
        assert!(Tick(89).reached(deadline));
        assert!(Tick(5).after(0).reached(Tick(5)));
    }

    #[test]
    fn salvages_the_ack_id_of_a_broken_event() {
        assert_eq!(salvage_ack_id(br#"25["sendMessage",{"text":"#), Some(5));
        assert_eq!(salvage_ack_id(br#"2/x,17["a""#), Some(17));
        assert_eq!(salvage_ack_id(br#"2["a""#), None);
        assert_eq!(salvage_ack_id(br#"25{"#), None);
        assert_eq!(salvage_ack_id(br#"35["#), None);
    }
}
