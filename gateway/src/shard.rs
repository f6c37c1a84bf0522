//! A shard: one glommio executor pinned to one core, owning
//! - the connections it accepted ([`Conn`]), per group which of them are in the room
//!   (`fanout`, see [`crate::fanout`]: deliveries to a shard are written to these, paced for
//!   large rooms), per user which of them are theirs (`by_user`: membership changes look users
//!   up there), and each one's event budget (`event_limiter`: every client event is charged to
//!   it before it is parsed);
//! - the rooms of the groups it owns ([`Room`], see [`corecast_shard_router::owner_of_group`]):
//!   a sans-IO state machine ([`corecast_shard_router::room`]) that decides who may use the
//!   room, where its frames go and in what order; this file only carries out its
//!   [`Effect`]s (sends between shards, store requests, replies, deliveries). Only groups that
//!   exist get a room (`unknown_groups` remembers those that do not), and idle rooms are
//!   forgotten on the tick, so what clients name cannot make rooms pile up;
//! - the debounced presence of the users it owns ([`Presence`]), and a replica of who is
//!   connected anywhere;
//! - in cluster mode ([`crate::cluster`]), for the rooms it owns on this node: their
//!   subscriptions to their group's bus channel and what came from it (`bus_rooms`, the gap
//!   fill after a lost bus), the events it forwarded to their group's owner node (`forwards`),
//!   and a replica of the live nodes (`nodes`), over which a group's owner node is decided.
//!
//! Three kinds of "send" meet here, named apart: [`Shard::send_to_shard`] (a [`ShardMsg`] to
//! another shard's inbox), writing to a socket (`Conn::push`, see [`crate::fanout`] and
//! send.rs), and a client's `sendMessage` ([`Shard::send_message`], then
//! `room_send_message` on the group's owner).
//!
//! Shards talk only through [`ShardMsg`]s in each other's bounded inboxes. All state here is
//! thread-local (`Rc`, `RefCell`, `Cell`); no `RefCell` borrow is ever held across an `.await`,
//! and nothing here blocks the reactor: the store is reached through its non-blocking handle
//! and answers into this shard's inbox.

use crate::config::Config;
use crate::conn::{Conn, ConnId, ConnState};
use crate::events::{self, ClientError, Code};
use crate::fanout::Fanout;
use crate::metrics::{Hop, ShardStats};
use crate::recovery::Event;
use bytes::Bytes;
use corecast_shard_router::presence::Announce;
use corecast_shard_router::room::{Carrier, Effect, Load, Loaded, Outcome, Send as RoomSend};
use corecast_shard_router::subs::{Left, Reason as SubReason};
use corecast_shard_router::{
    owner_of_group, owner_of_user, Inbox, InboxHandle, Loads, Presence, Rate, RateLimiter, Recent,
    ShardId,
};
use corecast_storage::{
    Appended, Attachment, Error as StoreError, Group, GroupEvent, GroupId, IdGenerator,
    MembershipChange, MessageId, NewMessage, Request, StoreHandle, UserId,
};
use corecast_wire::packet::{ack_frame, event_frame};
use corecast_wire::ws::Role;
use corecast_wire::Close;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

/// Read-only state shared by every shard and the internal listener.
pub struct Shared {
    pub config: Config,
    /// The address the public listener is bound to (the configured port may be 0).
    pub public_addr: std::net::SocketAddr,
    pub verifier: crate::auth::Verifier,
    /// Signs and checks the session ids of connection state recovery.
    pub pids: crate::recovery::PidKey,
    pub store: StoreHandle,
    pub inboxes: Vec<InboxHandle<ShardMsg>>,
    pub stats: Vec<Arc<ShardStats>>,
    /// Set when a drain begins (SIGTERM or the admin API): `/readyz` answers 503 from then on.
    pub draining: std::sync::atomic::AtomicBool,
    /// Serves an HTTP connection another shard handed over (`polling::adopt`): a function
    /// the server passes in, so that the shard does not depend on the HTTP transport.
    pub adopt_http: fn(Rc<Shard>, glommio::net::TcpStream, bytes::BytesMut),
    /// The way to the other nodes, in cluster mode (see [`crate::cluster`]).
    pub cluster: Option<crate::cluster::ClusterHandle>,
}

impl Shared {
    pub fn nr_shards(&self) -> usize {
        self.inboxes.len()
    }

    /// Sends from a thread that may block (the internal listener, the store's threads): waits
    /// for room in a full inbox instead of failing.
    pub fn send_blocking(&self, to: ShardId, msg: ShardMsg) {
        send_blocking(&self.inboxes, to, msg);
    }
}

/// [`Shared::send_blocking`] with the inboxes alone (the cluster bus's thread starts before
/// `Shared` exists).
pub fn send_blocking(inboxes: &[InboxHandle<ShardMsg>], to: ShardId, mut msg: ShardMsg) {
    let mut backoff = 50;
    loop {
        match inboxes[to.index()].try_send(msg) {
            Ok(()) => return,
            Err(m) => {
                msg = m;
                std::thread::sleep(std::time::Duration::from_micros(backoff));
                backoff = (backoff * 2).min(5_000);
            }
        }
    }
}

/// Where an answer goes: a connection on a shard, and the ack id it asked for (if any).
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    pub shard: ShardId,
    pub conn: ConnId,
    pub ack: Option<u64>,
}

/// Where the answer to a `sendMessage` or `markAsRead` goes: a connection of this node, or,
/// in cluster mode, one of the node that forwarded it to this one (the group's owner node).
#[derive(Debug, Clone)]
pub enum SendOrigin {
    Local(Origin),
    Remote(RemoteOrigin),
}

/// A connection on another node, for the answer to an event it forwarded here.
#[derive(Debug, Clone)]
pub struct RemoteOrigin {
    /// The node, whose bus channel the answer is published on.
    pub node: Arc<str>,
    /// The message's group: the answer goes through its owner shard there, after the group's
    /// deliveries, so that the sender sees its `newMessage` before its ack, as on one node.
    pub group: GroupId,
    pub shard: ShardId,
    pub conn: ConnId,
    pub ack: Option<u64>,
}

/// When a client's message passed each hop on its way (see [`Hop`]): instants of the process's
/// monotonic clock, comparable across shards and threads. Filled in as the message goes.
#[derive(Debug, Clone, Copy)]
pub struct Trace {
    /// The sender's connection shard parsed the event.
    pub ingress: Instant,
    /// The sender's rate-limit owner admitted it (`None` with the limit off).
    pub admitted: Option<Instant>,
    /// The group's owner handed it to the store.
    pub submitted: Option<Instant>,
    /// The store committed it (stamped on the store's thread).
    pub committed: Option<Instant>,
    /// The owner read the store's answer.
    pub answered: Option<Instant>,
}

impl Trace {
    pub(crate) fn new(ingress: Instant) -> Trace {
        Trace {
            ingress,
            admitted: None,
            submitted: None,
            committed: None,
            answered: None,
        }
    }
}

/// Every message between shards (and from the store's threads, the admin listener and the
/// ticker into a shard). `Send + 'static`; payloads are encoded once into `Bytes`.
///
/// Grouped by where they go: a group's owner shard (its [`Room`]), a connection's shard, a
/// user's presence owner, every shard. Between two shards messages arrive in the order they
/// were sent (see [`Shard::flush`]); the membership barrier relies on it.
pub enum ShardMsg {
    // ---- to a group's owner shard ----
    /// A connection asks to join the group's room; answered with [`ShardMsg::SubscribeResult`].
    Subscribe {
        group: GroupId,
        /// The connection's user: only members may subscribe.
        user: UserId,
        /// The connection, its shard (whose count goes up) and its ack.
        origin: Origin,
        reason: SubReason,
    },
    /// A connection on `shard` left the room (it left, was evicted, or closed): one count back.
    Unsubscribe { group: GroupId, shard: ShardId },
    /// A client's `sendMessage`. Goes first to the sender's presence owner, which holds the
    /// user's rate limit across all their connections (`admitted: false`), then to the group's
    /// owner (`admitted: true`). With the limit off it goes straight to the group's owner.
    SendMessage {
        group: GroupId,
        /// The sender.
        user: UserId,
        text: String,
        attachments: Vec<Attachment>,
        /// The client's idempotency key: a resend with the same one is merged or deduplicated.
        client_msg_id: Option<String>,
        /// Where the ack (or `error` event) goes: a connection here, or on the node that
        /// forwarded it (cluster mode).
        origin: SendOrigin,
        /// Whether the sender's rate limit has passed it.
        admitted: bool,
        /// When it passed each hop so far.
        trace: Trace,
    },
    /// A client's `markAsRead`.
    MarkRead {
        group: GroupId,
        message: MessageId,
        /// The reader.
        user: UserId,
        /// A connection here, or on the node that forwarded it (cluster mode).
        origin: SendOrigin,
    },
    /// A client's `getMessages` or `getOnline`.
    Query {
        group: GroupId,
        /// Who asks (must be a member).
        user: UserId,
        query: events::Query,
        origin: Origin,
    },
    /// From the admin API, after the store holds the change: the room updates its members and
    /// has every shard apply it; `done` gets one `()` once all have.
    MembersChanged {
        group: GroupId,
        change: MembershipChange,
        done: std::sync::mpsc::Sender<()>,
    },
    /// A shard finished applying an Enroll/Evict (sent after its Subscribes/Unsubscribes, so
    /// they are counted first).
    MembershipApplied {
        group: GroupId,
        /// The change's barrier, as the Enroll/Evict carried it.
        barrier: u64,
    },
    /// The store's answer to the room's member list (from the store's thread).
    RoomLoaded {
        group: GroupId,
        /// `Ok(None)`: no such group.
        result: Result<Option<Group>, StoreError>,
    },
    /// The store's answer to a message's append (from the store's thread).
    Stored {
        group: GroupId,
        /// The id the room gave the message.
        id: MessageId,
        /// Its hops, `committed` stamped by the store's thread.
        trace: Trace,
        result: Result<Appended, StoreError>,
    },
    /// The store's answer to `getMessages` (from the store's thread): up to `limit` + 1
    /// messages, so that the ack can say whether there are more.
    HistoryRead {
        origin: Origin,
        limit: usize,
        result: Result<Vec<corecast_storage::StoredMessage>, StoreError>,
    },
    /// The store's answer to one of a recovering CONNECT's reads (from the store's thread):
    /// events of one group the client missed, oldest first.
    Replayed {
        conn: ConnId,
        /// The recovering CONNECT it was read for (`Replay::attempt`).
        attempt: u32,
        result: Result<Vec<GroupEvent>, StoreError>,
    },
    /// The store's answer to a read receipt, event `id` of the group (from the store's
    /// thread). `Ok(true)` when the reader was added (then `messageRead` is broadcast).
    ReadStored {
        group: GroupId,
        id: MessageId,
        message: MessageId,
        /// The reader.
        user: UserId,
        result: Result<bool, StoreError>,
    },
    /// Cluster mode: a group message another node published (its owner's), for this node's
    /// connections in the room: delivered to the room's places as a local one is.
    BusDeliver {
        group: GroupId,
        id: MessageId,
        frame: Bytes,
    },
    /// Cluster mode: the owner node's answer to an event this node forwarded, for
    /// connection `conn` of shard `shard` (through the group's owner shard, after the group's
    /// deliveries it handled before).
    BusAnswer {
        group: GroupId,
        shard: ShardId,
        conn: ConnId,
        /// The ack it answers (`None`: an `error` event for a send that asked for none).
        ack: Option<u64>,
        frame: Bytes,
    },
    /// Cluster mode: a forwarded event will get no answer from the owner node (the
    /// publish reached no one or failed): answer it here with `reason`.
    ForwardLost {
        origin: Origin,
        reason: &'static str,
    },
    /// Cluster mode: the bus lost Redis: forwarded events still waiting for their
    /// answer are answered now (theirs may be lost).
    BusDown,
    /// Cluster mode, on a user's owner shard: Redis announced these users to every node
    /// for this node (their first connection anywhere opened here, or their last closed
    /// here and the debounce window passed, or they were reaped): their presence is stored
    /// (see [`corecast_cluster::presence`]).
    ClusterAnnounced {
        users: Vec<UserId>,
        online: bool,
        /// When it happened (wall milliseconds).
        at: i64,
    },
    /// Cluster mode: Redis's answer to a message's shared rate limit: `None` to go on,
    /// `Some(ms)` to refuse (retry in `ms`); an error when Redis could not answer.
    Limited {
        msg: Box<ShardMsg>,
        verdict: Result<Option<u64>, corecast_cluster::BusError>,
    },
    /// Cluster mode: Redis could not be told of a user's first connection here opening or
    /// their last one closing (or of that one's end of window).
    ClusterPresenceUntold {
        user: UserId,
        online: bool,
        groups: Arc<[GroupId]>,
    },
    /// Cluster mode: users of a node found dead that are online nowhere now (the reap); this
    /// shard loads their groups and announces them offline to every node.
    Reaped { users: Vec<UserId> },
    /// Cluster mode: the groups of reaped users, from the store.
    ReapedGroups {
        users: Vec<UserId>,
        result: Result<Vec<Vec<GroupId>>, StoreError>,
    },
    /// Cluster mode: every user online on some node, at this node's start (the replica).
    OnlineSet { users: Arc<[UserId]> },
    /// Cluster mode: the store's answer to a gap fill's read (see [`Shard::bus_up`]).
    GapRead {
        group: GroupId,
        result: Result<Vec<GroupEvent>, StoreError>,
    },
    /// Cluster mode: Redis confirmed (or not) the subscription to the group's channel; the
    /// Subscribes waiting for it are answered now.
    BusSubscribed {
        group: GroupId,
        result: Result<(), corecast_cluster::BusError>,
    },
    // ---- to the shard of a connection ----
    /// An answer to a client request made elsewhere (after a bus call): an ack or an `error`.
    Reply {
        origin: Origin,
        result: Result<Vec<u8>, ClientError>,
    },
    /// The answer to the shard's load in flight (see [`Loads`]): each user's groups, in the
    /// order of the users in the batch.
    UsersGroups {
        result: Result<Vec<Vec<GroupId>>, StoreError>,
    },
    /// The room owner's answer to a [`ShardMsg::Subscribe`].
    SubscribeResult {
        conn: ConnId,
        group: GroupId,
        /// As the Subscribe said; a connect-time answer counts towards the CONNECT barrier.
        reason: SubReason,
        /// The `joinGroup` ack to answer, if any.
        ack: Option<u64>,
        /// In the room, with the room's settled id then (`Room::settled`: what a recovering
        /// CONNECT reads the store up to), or refused.
        result: Result<MessageId, ClientError>,
    },
    /// One frame for one connection (an ack or an `error` event).
    ToConn { conn: ConnId, frame: Bytes },
    /// A frame for the room's connections on this shard.
    Deliver {
        group: GroupId,
        /// The framed event (`newMessage`, `messageRead`), shared by every recipient.
        frame: Bytes,
        /// What it is, for the recipients' recovery offsets.
        event: Event,
        /// A user whose connections skip it.
        except_user: Option<UserId>,
        /// When the owner broadcast it.
        stored_at: Instant,
        /// When the sender's shard parsed it (a client's message only).
        ingress: Option<Instant>,
    },
    /// `users` were added to the group: their connections on this shard join its room, then
    /// this shard answers [`ShardMsg::MembershipApplied`]. One message per shard for the whole
    /// change, however many users it adds.
    Enroll {
        group: GroupId,
        users: Arc<[UserId]>,
        /// The change's barrier at the room (see [`corecast_shard_router::room::Effect`]).
        barrier: u64,
    },
    /// `users` were removed from the group: their connections here leave its room, then this
    /// shard answers [`ShardMsg::MembershipApplied`].
    Evict {
        group: GroupId,
        users: Arc<[UserId]>,
        /// The change's barrier at the room.
        barrier: u64,
    },
    // ---- to a user's presence owner ----
    /// The user's connection is connected; `groups` are its rooms (whose co-members hear of
    /// it if it is the user's first connection).
    PresenceUp {
        user: UserId,
        groups: Arc<[GroupId]>,
    },
    /// The user's connection closed; `groups` are the rooms it was in (whose co-members hear
    /// of it if it was the user's last connection).
    PresenceDown {
        user: UserId,
        groups: Arc<[GroupId]>,
    },
    // ---- to every shard ----
    /// Cluster mode: the live nodes changed (this one included, sorted); group owner nodes
    /// are decided over these.
    Nodes { live: Arc<[Arc<str>]> },
    /// Cluster mode: the bus is connected to Redis again after a loss: fill the gap.
    BusUp,
    /// Cluster mode, on a group's owner node: node `from` asks for the room's settled id (to
    /// fill a gap up to it, or for recovering CONNECTs to read the store up to it).
    SettledAsked { group: GroupId, from: Arc<str> },
    /// Cluster mode: the owner node's answer to that: connect-time Subscribes waiting for it
    /// are answered with it, a gap fill reads up to it.
    GapSettled { group: GroupId, settled: MessageId },
    /// Cluster mode, on a group's previous owner node: node `from` owns the group now and
    /// asks for the room (see [`Shard::taking_over`]).
    ReleaseAsked { group: GroupId, from: Arc<str> },
    /// Cluster mode, on a group's new owner node: the previous owner released the room
    /// (`settled`: everything it minted up to there is delivered and published), or did not
    /// answer in time (`None`).
    Released {
        group: GroupId,
        settled: Option<MessageId>,
    },
    /// The user's connectivity changed (`online`: whether they have a connection anywhere;
    /// every shard's replica follows it). With `announce`, co-members in those rooms are told
    /// (the `userOnline` frame); without, the change is inside the presence debounce window
    /// and co-members hear nothing yet (see [`corecast_shard_router::presence`]).
    PresenceChanged {
        user: UserId,
        online: bool,
        announce: Option<(Arc<[GroupId]>, Bytes)>,
    },
    /// Several messages from one shard, handed over at once (one queue slot, at most one
    /// wake-up); handled in order.
    Batch { msgs: Vec<ShardMsg> },
    /// An HTTP connection whose request names a session of this shard (see polling.rs): its
    /// socket and the bytes already read from it.
    AdoptHttp {
        fd: std::os::fd::OwnedFd,
        buffered: Vec<u8>,
    },
    /// Time for [`Shard::tick`], from the process's ticker thread (see server.rs).
    Tick,
    /// Stop accepting and close every connection, spread over `window` (a graceful drain).
    Drain { window: Duration },
    /// Stop now: a drain with no window.
    Shutdown,
}

/// How a room's effects are carried out on its owner shard (see
/// [`corecast_shard_router::room`]): places are this process's shards, answers go to a
/// connection's [`Origin`], operations waiting for the member list are the [`ShardMsg`]s that
/// asked for it.
pub struct OwnerShard;

impl Carrier for OwnerShard {
    type Place = ShardId;
    type Origin = SendOrigin;
    type Parked = ShardMsg;
    type Stored = Rc<Committed>;
    type Error = Unstored;
    type Done = std::sync::mpsc::Sender<()>;
}

/// A group's room on its owner shard.
pub type Room = corecast_shard_router::Room<OwnerShard>;

/// An event of a group's stream that the store accepted.
pub enum Committed {
    /// A message, and its way there (for the hop metrics).
    Message { appended: Appended, trace: Trace },
    /// A read receipt: event `id` says `user` read `message`.
    Receipt {
        id: MessageId,
        message: MessageId,
        user: UserId,
    },
}

/// Cluster mode: a presence change Redis could not be told: online or not, and the groups.
type Untold = (bool, Arc<[GroupId]>);

/// An event of a group's stream that the store did not take, and why.
#[derive(Clone)]
pub enum Unstored {
    Message(StoreError),
    Receipt(StoreError),
}

/// Users in one merged membership load (one store request; see [`Loads`]). At 512 a load
/// is a few milliseconds of the embedded store's time, so messages queued behind it wait
/// for no more than that.
const LOAD_BATCH: usize = 512;

/// Group ids the store said do not exist, per shard, at most this many...
const UNKNOWN_GROUPS: usize = 4096;
/// ... each for this long (a group created through this node's admin API is taken off at once;
/// the TTL covers a store changed behind this node's back).
const UNKNOWN_GROUP_TTL_MS: u64 = 30_000;

/// The connections of one user on one shard: almost always one, so no allocation for it.
enum UserConns {
    One(Rc<Conn>),
    Many(Vec<Rc<Conn>>),
}

pub struct Shard {
    pub id: ShardId,
    /// This shard itself, for spawning tasks from a message handler.
    me: std::rc::Weak<Shard>,
    pub shared: Arc<Shared>,
    pub stats: Arc<ShardStats>,
    pub conns: RefCell<HashMap<ConnId, Rc<Conn>>>,
    rooms: RefCell<HashMap<GroupId, Room>>,
    /// This shard's connections of each logged-in user, so a membership change finds a user's
    /// connections without a scan of every connection (a 100,000-member PUT with 15,000
    /// sockets open froze every shard for 3 s with the scan). Kept from login
    /// ([`Shard::authenticated`]) to close or DISCONNECT.
    by_user: RefCell<HashMap<UserId, UserConns>>,
    /// The debounced presence of the users this shard owns, counting their connections on
    /// all shards.
    presence: RefCell<Presence<UserId, Arc<[GroupId]>>>,
    /// Every user online anywhere (a replica kept by `PresenceChanged`).
    online: RefCell<HashSet<UserId>>,
    /// Messages per user per minute, for the users this shard owns the presence of.
    limiter: RefCell<RateLimiter<UserId>>,
    /// Client events per connection, for this shard's connections.
    event_limiter: RefCell<RateLimiter<ConnId>>,
    /// Groups the store said do not exist (see [`UNKNOWN_GROUPS`]).
    unknown_groups: RefCell<Recent<GroupId>>,
    /// Presence announced lately, for recovered clients (`Shard::presence_news`).
    presence_log: RefCell<crate::recovery::PresenceLog>,
    /// The membership loads of this shard's connects, merged: one store request in flight.
    loads: RefCell<Loads<UserId, ConnId>>,
    /// When idle rooms were last looked for.
    rooms_swept: Cell<Instant>,
    /// The time of the last tick: a clock for rooms' idle time that costs no clock read per
    /// room operation.
    last_tick: Cell<Instant>,
    ids: RefCell<IdGenerator>,
    /// Per destination shard: messages that found its inbox full, in order. Once a destination
    /// has overflow, later messages to it queue behind it, so per-pair order holds.
    overflow: RefCell<Vec<VecDeque<ShardMsg>>>,
    /// Per destination shard: messages the running task produced, handed over as one batch
    /// when it yields (by the flusher task, see [`Shard::flush`]). Batching saves queue
    /// operations and wake-ups: one per destination per task turn instead of one per message.
    outgoing: RefCell<Vec<Vec<ShardMsg>>>,
    /// Store requests the running task produced, submitted together the same way.
    store_outgoing: RefCell<Vec<Request>>,
    /// Set while something waits in `outgoing`, `store_outgoing` or `overflow`.
    flush_pending: Cell<bool>,
    flusher_waker: RefCell<Option<Waker>>,
    next_conn: Cell<u64>,
    pub stopping: Cell<bool>,
    /// When the shard started; connection deadlines count from here (see [`crate::conn::Tick`]).
    pub epoch: Instant,
    pub stop_waker: RefCell<Option<Waker>>,
    /// A shard-wide read buffer: connections read into it and keep only partial frames, so an
    /// idle connection holds no read buffer of its own.
    pub scratch: RefCell<Vec<u8>>,
    /// This shard's connections in each room, written to on a delivery, and room pacing.
    pub fanout: Fanout,
    /// Connections with frames for the sender's next batch (send.rs).
    pub due: RefCell<crate::send::Due>,
    /// Connections that have not logged in yet (see admission.rs).
    admission: RefCell<crate::admission::Admission>,
    pub accept_rate: RefCell<crate::admission::AcceptRate>,
    /// The drain in progress, if any (see [`Shard::begin_drain`]).
    drain: RefCell<Option<Drain>>,
    /// HTTP tasks waiting for a request head, by task number: an eviction sets the flag and
    /// wakes the task.
    http_waiting: RefCell<HashMap<u64, Rc<HttpWaiting>>>,
    next_http: Cell<u64>,
    pub sender: RefCell<crate::send::Sender>,
    /// Cluster mode: the live nodes (see [`ShardMsg::Nodes`]); this node alone until the
    /// registry's first check.
    nodes: RefCell<Arc<[Arc<str>]>>,
    /// Cluster mode: the bus subscriptions of the rooms this shard owns (see
    /// [`Shard::when_on_bus`]).
    bus_rooms: RefCell<HashMap<GroupId, BusRoom>>,
    /// Cluster mode: events (`sendMessage`, `markAsRead`) this shard forwarded to their
    /// group's owner node, waiting
    /// for its answer (by origin shard, connection and ack id), since when. One that waits
    /// longer than [`FORWARD_TIMEOUT`], or while the bus is lost, is answered here.
    forwards: RefCell<HashMap<(ShardId, ConnId, u64), Instant>>,
    /// Cluster mode: users whose first connection here opened, or last one closed, while
    /// Redis could not be told (the latest of the two, and their groups); told when the bus
    /// is back ([`Shard::restore_presence`]).
    presence_untold: RefCell<HashMap<UserId, Untold>>,
    /// Cluster mode: rooms changing owner node (see [`Shard::taking_over`]).
    handover: RefCell<Handover>,
    /// Cluster mode: reaped users whose groups are asked for again ([`Shard::retry_reaps`]).
    reap_retries: RefCell<Vec<ReapRetry>>,
}

/// Rooms changing owner node, on the new owner and on the previous one.
#[derive(Default)]
struct Handover {
    /// Groups this node owns and took from their previous owner since the live list last
    /// changed: released by it, or it did not answer in time.
    taken: HashSet<GroupId>,
    /// Groups this node owns whose previous owner has not released them yet: the events
    /// held meanwhile, in order, and since when.
    waiting: HashMap<GroupId, (Instant, Vec<ShardMsg>)>,
    /// Groups this node released to a node that asked, which this node's live list may not
    /// show yet: where their events go, since when.
    moved: HashMap<GroupId, (Arc<str>, Instant)>,
    /// Groups asked for while their room still waited for the store: the nodes to tell once
    /// it does not.
    releasing: HashMap<GroupId, Vec<Arc<str>>>,
    /// Nodes that left the live list lately, since when: a group of one is taken over from it
    /// (a draining node releases it; a dead one is not waited for).
    left: Vec<(Arc<str>, Instant)>,
}

/// Users reaped from a gone node whose groups the store could not give yet.
struct ReapRetry {
    /// When to ask the store again.
    next: Instant,
    /// When it first failed.
    since: Instant,
    users: Vec<UserId>,
}

/// How often, and for how long, the groups of reaped users are asked for again.
const REAPED_RETRY_EVERY: Duration = Duration::from_secs(1);
const REAPED_RETRY_FOR: Duration = Duration::from_secs(120);

/// How long a group's new owner node holds its events for the previous owner's release:
/// past it, that node is taken to be gone.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a node sends a group it released to the node that asked, while its own live list
/// does not show that node (it shows joining nodes within a registry check).
const MOVED_FOR: Duration = Duration::from_secs(10);

/// How long a forwarded `sendMessage` waits for the owner node's answer before its sender
/// is told to retry (the owner node died, or its answer was lost with Redis).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(15);

/// A room's subscription to its group's bus channel, and what this node delivered from it.
struct BusRoom {
    /// The Subscribes to answer once Redis confirms the subscription; `None` once it has (or
    /// the bus was down: the channel is still wanted, and subscribed again before `Up`).
    waiting: Option<Vec<WaitingSubscribe>>,
    /// The room's settled id when the subscription was confirmed: a gap fill with nothing
    /// delivered since reads after it.
    since: MessageId,
    /// The newest group message delivered from the bus or a gap fill; older ones that come
    /// again are not delivered twice.
    delivered: Option<MessageId>,
    /// From the loss of the bus until its gap is filled: the bus's messages that arrived
    /// meanwhile (after it connected again), to deliver after the messages read.
    held: Option<Vec<(MessageId, Bytes)>>,
    /// A gap fill is under way: the owner node was asked for its room's settled id (since
    /// when), or the store read is out.
    filling: bool,
    /// When the owner node was asked for its settled id, until it answers.
    asked: Option<Instant>,
    /// How far the gap fill reads: the owner's settled id (every event up to it was answered
    /// by the store and published), or, if the owner did not answer, everything stored.
    upto: MessageId,
    /// Connect-time Subscribes waiting for the owner node's settled id, and since when (see
    /// [`Shard::subscribed_on_bus`]).
    settling: Option<(Instant, Vec<WaitingSubscribe>)>,
}

impl BusRoom {
    fn subscribing(waiting: WaitingSubscribe) -> BusRoom {
        BusRoom {
            waiting: Some(vec![waiting]),
            since: MessageId(0),
            delivered: None,
            held: None,
            filling: false,
            asked: None,
            upto: MessageId(0),
            settling: None,
        }
    }
}

/// Messages one gap-fill read brings at most; a longer gap is read in several.
const GAP_READ: usize = 1000;

/// How long a gap fill waits for the owner node's settled id.
const GAP_ASK_TIMEOUT: Duration = Duration::from_secs(3);

/// A Subscribe's answer, held until the room is on the bus.
struct WaitingSubscribe {
    origin: Origin,
    reason: SubReason,
    result: Result<MessageId, ClientError>,
}

thread_local! {
    /// Answers of bus calls that the bus refused at once, on the calling shard's own thread
    /// (queue full, bus stopped): handled when the call returns (see [`Shard::bus_call`]).
    static BUS_REFUSED: RefCell<Vec<ShardMsg>> = const { RefCell::new(Vec::new()) };
}

pub const SCRATCH_BYTES: usize = 64 * 1024;

/// A drain in progress: connections close in `order`, spread over `window` from `started`.
struct Drain {
    started: Instant,
    window: Duration,
    order: Vec<ConnId>,
    /// How many of `order` have been closed.
    closed: usize,
}

/// An HTTP task waiting for a request head; evicted when too many connections wait to log in.
#[derive(Default)]
pub struct HttpWaiting {
    pub id: u64,
    pub evicted: Cell<bool>,
    pub waker: RefCell<Option<Waker>>,
}

impl Shard {
    pub fn new(id: ShardId, shared: Arc<Shared>) -> Rc<Shard> {
        let n = shared.nr_shards();
        let stats = shared.stats[id.index()].clone();
        let limits = &shared.config.limits;
        let rate = Rate::per_minute(limits.rate_limit_per_min);
        let event_rate = match limits.event_rate_per_sec {
            0 => Rate::off(),
            n => Rate::per_second(n, limits.event_burst),
        };
        let debounce = shared.config.server.presence_debounce_ms;
        Rc::new_cyclic(|me| Shard {
            id,
            me: me.clone(),
            stats,
            conns: RefCell::new(HashMap::new()),
            rooms: RefCell::new(HashMap::new()),
            by_user: RefCell::new(HashMap::new()),
            presence: RefCell::new(Presence::new(debounce)),
            online: RefCell::new(HashSet::new()),
            limiter: RefCell::new(RateLimiter::new(rate)),
            event_limiter: RefCell::new(RateLimiter::new(event_rate)),
            unknown_groups: RefCell::new(Recent::new(UNKNOWN_GROUPS, UNKNOWN_GROUP_TTL_MS)),
            presence_log: RefCell::new(crate::recovery::PresenceLog::new()),
            loads: RefCell::new(Loads::new(LOAD_BATCH)),
            rooms_swept: Cell::new(Instant::now()),
            last_tick: Cell::new(Instant::now()),
            ids: RefCell::new(IdGenerator::new(
                shared.cluster.as_ref().map_or(0, |c| c.generator_base) + id.0,
            )),
            overflow: RefCell::new((0..n).map(|_| VecDeque::new()).collect()),
            outgoing: RefCell::new((0..n).map(|_| Vec::new()).collect()),
            store_outgoing: RefCell::new(Vec::new()),
            flush_pending: Cell::new(false),
            flusher_waker: RefCell::new(None),
            next_conn: Cell::new(1),
            stopping: Cell::new(false),
            epoch: Instant::now(),
            stop_waker: RefCell::new(None),
            scratch: RefCell::new(vec![0; SCRATCH_BYTES]),
            fanout: Fanout::default(),
            due: RefCell::new(crate::send::Due::default()),
            admission: RefCell::new(crate::admission::Admission::new(
                shared.config.server.max_pending_connections.div_ceil(n),
                match shared.config.server.max_pending_per_ip {
                    0 => u32::MAX,
                    per_ip => per_ip.div_ceil(n as u32),
                },
            )),
            accept_rate: RefCell::new(crate::admission::AcceptRate::new(
                shared.config.server.accept_rate.div_ceil(n as u32),
                Instant::now(),
            )),
            drain: RefCell::new(None),
            http_waiting: RefCell::new(HashMap::new()),
            next_http: Cell::new(0),
            sender: RefCell::new(crate::send::Sender::open(
                id,
                shared.config.server.send_ring,
            )),
            nodes: RefCell::new(match &shared.cluster {
                Some(c) => c.live(),
                None => Arc::from(Vec::new()),
            }),
            bus_rooms: RefCell::new(HashMap::new()),
            forwards: RefCell::new(HashMap::new()),
            presence_untold: RefCell::new(HashMap::new()),
            handover: RefCell::new(Handover::default()),
            reap_retries: RefCell::new(Vec::new()),
            shared,
        })
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// A connection number for a new connection. Numbers stay within 32 bits (the session id
    /// carries 32; see [`crate::engine::Sid`]) and wrap after four billion connections.
    pub fn next_conn_id(&self) -> ConnId {
        let id = self.next_conn.get();
        self.next_conn
            .set(if id >= u64::from(u32::MAX) { 1 } else { id + 1 });
        ConnId(id)
    }

    /// Milliseconds since the shard started: the monotonic clock of the event limit, the
    /// presence debounce and the negative cache.
    fn mono_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Now, as connection deadlines count it.
    pub fn tick_now(&self) -> crate::engine::Tick {
        crate::engine::Tick::since(self.epoch, Instant::now())
    }

    /// The Engine.IO heartbeat and upgrade timings.
    pub fn timing(&self) -> crate::engine::Timing {
        let s = &self.config().server;
        crate::engine::Timing {
            ping_interval_ms: s.ping_interval_ms,
            ping_timeout_ms: s.ping_timeout_ms,
            upgrade_timeout_ms: s.upgrade_timeout_ms,
        }
    }

    /// Registers an HTTP task that will wait for request heads (see [`Shard::admit_pending`]).
    pub fn http_task(&self) -> Rc<HttpWaiting> {
        let id = self.next_http.get();
        self.next_http.set(id + 1);
        let w = Rc::new(HttpWaiting {
            id,
            ..Default::default()
        });
        self.http_waiting.borrow_mut().insert(id, w.clone());
        w
    }

    pub fn http_task_done(&self, w: &HttpWaiting) {
        self.http_waiting.borrow_mut().remove(&w.id);
    }

    /// Admits a connection that has not logged in yet; `None` when its address already has too
    /// many. At the total cap the oldest such connection is evicted here.
    pub fn admit_pending(
        &self,
        ip: std::net::IpAddr,
        holder: crate::admission::Holder,
    ) -> Option<crate::admission::Ticket> {
        use crate::admission::Holder;
        let admitted = self.admission.borrow_mut().admit(ip, holder);
        let (ticket, evicted) = admitted.ok()?;
        match evicted {
            Some(Holder::Http(id)) => {
                let w = self.http_waiting.borrow().get(&id).cloned();
                if let Some(w) = w {
                    w.evicted.set(true);
                    if let Some(wk) = w.waker.borrow_mut().take() {
                        wk.wake();
                    }
                }
            }
            Some(Holder::Session(conn)) => {
                if let Some(c) = self.conn(ConnId(conn)) {
                    c.take_ticket();
                    c.close(self, Close::TooManyPending);
                }
            }
            None => {}
        }
        if evicted.is_some() {
            self.stats.admission_evictions.fetch_add(1, Relaxed);
        }
        Some(ticket)
    }

    pub fn transfer_ticket(&self, ticket: crate::admission::Ticket, conn: &Conn) {
        self.admission
            .borrow_mut()
            .transfer(ticket, crate::admission::Holder::Session(conn.id.0));
        conn.set_ticket(ticket);
    }

    pub fn release_ticket(&self, ticket: Option<crate::admission::Ticket>) {
        if let Some(t) = ticket {
            self.admission.borrow_mut().release(t);
        }
    }

    /// What the public port accepts.
    pub fn policy(&self) -> crate::http::Policy<'_> {
        let s = &self.config().server;
        crate::http::Policy {
            path: &s.path,
            allowed_origins: &s.allowed_origins,
            polling: s.polling_enabled(),
            websocket: s.websocket_enabled(),
        }
    }

    // ---- sending between shards ----

    /// Sends `msg` to shard `to` (this shard included: it goes through the inbox too, which
    /// keeps handling out of the caller's borrows). Never blocks, never drops. The message
    /// leaves when the running task yields, batched with the others for the same shard.
    pub fn send_to_shard(&self, to: ShardId, msg: ShardMsg) {
        self.outgoing.borrow_mut()[to.index()].push(msg);
        self.schedule_flush();
    }

    /// Submits a store request when the running task yields, batched with the others.
    fn submit(&self, req: Request) {
        self.store_outgoing.borrow_mut().push(req);
        self.schedule_flush();
    }

    fn schedule_flush(&self) {
        if !self.flush_pending.replace(true) {
            if let Some(w) = self.flusher_waker.borrow_mut().take() {
                w.wake();
            }
        }
    }

    /// Sends what `make` makes to every shard, this one included.
    fn send_to_every_shard(&self, mut make: impl FnMut() -> ShardMsg) {
        for s in 0..self.shared.nr_shards() {
            self.send_to_shard(ShardId(s as u16), make());
        }
    }

    /// Hands everything produced since the last flush to its destinations, and retries the
    /// overflow. Returns true when nothing is left waiting (no overflow).
    pub fn flush(&self) -> bool {
        self.flush_pending.set(false);
        let reqs = std::mem::take(&mut *self.store_outgoing.borrow_mut());
        match reqs.len() {
            0 => {}
            1 => self
                .shared
                .store
                .submit(reqs.into_iter().next().expect("invariant: one")),
            _ => self.shared.store.submit(Request::Batch(reqs)),
        }
        let mut outgoing = self.outgoing.borrow_mut();
        let mut overflow = self.overflow.borrow_mut();
        for (to, out) in outgoing.iter_mut().enumerate() {
            let msg = match out.len() {
                0 => continue,
                1 => out.pop().expect("invariant: one"),
                _ => ShardMsg::Batch {
                    msgs: std::mem::take(out),
                },
            };
            let q = &mut overflow[to];
            if q.is_empty() {
                match self.shared.inboxes[to].try_send(msg) {
                    Ok(()) => continue,
                    Err(m) => q.push_back(m),
                }
            } else {
                q.push_back(msg);
            }
            self.stats.overflow_depth.fetch_add(1, Relaxed);
        }
        // Move overflow into inboxes that have room again, in order.
        let mut empty = true;
        for (to, q) in overflow.iter_mut().enumerate() {
            while let Some(m) = q.pop_front() {
                match self.shared.inboxes[to].try_send(m) {
                    Ok(()) => {
                        self.stats.overflow_depth.fetch_sub(1, Relaxed);
                    }
                    Err(m) => {
                        q.push_front(m);
                        empty = false;
                        break;
                    }
                }
            }
        }
        empty
    }

    /// True when there is something for [`Shard::flush`] to do; otherwise keeps `w` to be
    /// woken when there is.
    pub fn flush_ready(&self, w: &Waker) -> bool {
        if self.flush_pending.get() {
            return true;
        }
        *self.flusher_waker.borrow_mut() = Some(w.clone());
        false
    }

    /// Answers a client request: an ack if it asked for one, else an `error` event on failure.
    pub fn reply(&self, origin: &Origin, result: Result<Vec<u8>, ClientError>) {
        let Some(frame) = self.reply_frame(origin.ack, result) else {
            return;
        };
        if origin.shard == self.id {
            self.to_conn(origin.conn, frame);
        } else {
            self.send_to_shard(
                origin.shard,
                ShardMsg::ToConn {
                    conn: origin.conn,
                    frame,
                },
            );
        }
    }

    /// The frame answering a request (see [`Shard::reply`]); `None` when there is nothing to
    /// send (a success nobody asked an ack for). Counts errors.
    fn reply_frame(&self, ack: Option<u64>, result: Result<Vec<u8>, ClientError>) -> Option<Bytes> {
        if let Err(e) = &result {
            self.stats.error(e.code);
        }
        Some(match (ack, result) {
            (Some(id), Ok(json)) => ack_frame(Role::Server, id, &[&json]),
            (Some(id), Err(e)) => ack_frame(Role::Server, id, &[&e.to_ack_json()]),
            (None, Ok(_)) => return None,
            (None, Err(e)) => event_frame(Role::Server, "error", &[&e.to_json()]),
        })
    }

    /// Answers a `sendMessage`: on this node through [`Shard::reply`], on another over the
    /// bus, to its node's channel (after every group message this shard published before).
    fn reply_to(&self, origin: &SendOrigin, result: Result<Vec<u8>, ClientError>) {
        match origin {
            SendOrigin::Local(o) => self.reply(o, result),
            SendOrigin::Remote(r) => {
                let Some(frame) = self.reply_frame(r.ack, result) else {
                    return;
                };
                let Some(c) = &self.shared.cluster else {
                    return;
                };
                let answer = crate::cluster::Answer {
                    group: r.group.clone(),
                    shard: r.shard,
                    conn: r.conn,
                    ack: r.ack,
                    frame,
                };
                c.publish(crate::cluster::node_channel(&r.node), answer.encode());
            }
        }
    }

    /// Takes one client event from `conn`'s budget (`limits.event_rate_per_sec`, bursts of
    /// `limits.event_burst`). Every event counts, whatever its name and whether or not it
    /// parses, so no event a client sends (nor one a later version adds) can make this shard,
    /// the owner shards or the store do more than the budget's worth of work. An event over
    /// it is answered `rate_limited` (its ack, or an `error` event) and the session goes on.
    /// Returns whether the event may go on.
    pub fn admit_event(&self, conn: &Conn, ack: Option<u64>) -> bool {
        let now = self.mono_ms() as i64;
        let mut limiter = self.event_limiter.borrow_mut();
        if limiter.try_acquire(conn.id, now) {
            return true;
        }
        let wait = limiter.retry_after_ms(conn.id, now);
        let rate = limiter.rate();
        drop(limiter);
        let e = ClientError::new(
            Code::RateLimited,
            format!(
                "too many events on this connection: the limit is {} a second (bursts of {}); \
                 retry in {wait} ms",
                rate.amount, rate.burst
            ),
        );
        let origin = Origin {
            shard: self.id,
            conn: conn.id,
            ack,
        };
        self.reply(&origin, Err(e));
        false
    }

    fn to_conn(&self, conn: ConnId, frame: Bytes) {
        let c = self.conns.borrow().get(&conn).cloned();
        if let Some(c) = c {
            c.push(self, frame);
        }
    }

    /// Submits a store request whose answer comes back into this shard's inbox.
    fn store_to_inbox<T: Send + 'static>(
        &self,
        make_req: impl FnOnce(corecast_storage::Reply<T>) -> Request,
        make_msg: impl FnOnce(Result<T, StoreError>) -> ShardMsg + Send + 'static,
    ) {
        let shared = self.shared.clone();
        let me = self.id;
        let req = make_req(Box::new(move |r| shared.send_blocking(me, make_msg(r))));
        self.submit(req);
    }

    // ---- the inbox ----

    /// Handles this shard's inbox until the process ends. With nothing to do it sleeps on the
    /// inbox's doorbell inside the reactor (see [`corecast_shard_router::mesh`]).
    pub async fn run_inbox(self: Rc<Self>, mut inbox: Inbox<ShardMsg>) {
        use futures_lite::AsyncReadExt;
        use std::os::fd::{FromRawFd, IntoRawFd};
        let bell = inbox
            .take_doorbell()
            .expect("invariant: each inbox's doorbell is taken once, here");
        // SAFETY: the doorbell's socket is ours alone; its ownership moves to glommio.
        let mut bell = unsafe { glommio::net::UnixStream::from_raw_fd(bell.into_raw_fd()) };
        let mut batch = Vec::with_capacity(256);
        let mut rung = [0u8; 64];
        loop {
            if inbox.drain(&mut batch, 256) == 0 {
                if inbox.arm() {
                    match bell.read(&mut rung).await {
                        Ok(n) if n > 0 => {}
                        // Every sender is gone: the process is ending.
                        _ => return,
                    }
                }
                continue;
            }
            for msg in batch.drain(..) {
                if let ShardMsg::Shutdown = msg {
                    self.begin_shutdown();
                    continue;
                }
                self.handle(msg);
            }
            // Give the connection writers this batch woke a turn before the next batch, so
            // queued frames go out while more arrive.
            futures_lite::future::yield_now().await;
        }
    }

    fn handle(&self, msg: ShardMsg) {
        match msg {
            ShardMsg::SendMessage {
                admitted: false, ..
            } => self.admit(msg),
            ShardMsg::SendMessage {
                ref group,
                origin: SendOrigin::Local(_),
                ..
            }
            | ShardMsg::MarkRead {
                ref group,
                origin: SendOrigin::Local(_),
                ..
            } if self.owner_node_elsewhere(group).is_some() => self.forward(msg),
            // Forwarded here, but another node owns the group now: on to it.
            ShardMsg::SendMessage { ref group, .. } | ShardMsg::MarkRead { ref group, .. }
                if self.owner_node_elsewhere(group).is_some() =>
            {
                self.forward(msg)
            }
            ShardMsg::SendMessage { ref group, .. } | ShardMsg::MarkRead { ref group, .. }
                if self.taking_over(group) =>
            {
                self.hold_for_release(msg)
            }
            ShardMsg::Subscribe { ref group, .. }
            | ShardMsg::SendMessage { ref group, .. }
            | ShardMsg::MarkRead { ref group, .. }
            | ShardMsg::Query { ref group, .. } => {
                if let Some(msg) = self.room_ready_or_wait(group.clone(), msg) {
                    self.room_op(msg);
                }
            }
            ShardMsg::MembersChanged { ref group, .. } => {
                // The group exists now (the admin API stored it before sending this).
                self.unknown_groups.borrow_mut().remove(group);
                if let Some(msg) = self.room_ready_or_wait(group.clone(), msg) {
                    self.room_op(msg);
                }
            }
            ShardMsg::Unsubscribe { group, shard } => {
                if let Some(room) = self.rooms.borrow_mut().get_mut(&group) {
                    room.unsubscribe(shard);
                    room.touch(self.coarse_ms());
                }
            }
            ShardMsg::MembershipApplied { group, barrier } => {
                let released = self
                    .rooms
                    .borrow_mut()
                    .get_mut(&group)
                    .and_then(|r| r.applied(barrier));
                if let Some(e) = released {
                    self.carry_out(&group, vec![e]);
                }
            }
            ShardMsg::RoomLoaded { group, result } => self.room_loaded(group, result),
            ShardMsg::BusDeliver { group, id, frame } => self.bus_delivered(&group, id, &frame),
            ShardMsg::BusAnswer {
                shard,
                conn,
                ack,
                frame,
                ..
            } => {
                // An answer given up on (see `forwards`) is not given twice.
                let waited = ack.is_none_or(|ack| {
                    self.forwards
                        .borrow_mut()
                        .remove(&(shard, conn, ack))
                        .is_some()
                });
                if waited {
                    self.send_to_shard(shard, ShardMsg::ToConn { conn, frame });
                }
            }
            ShardMsg::ForwardLost { origin, reason } => self.forward_lost(origin, reason),
            ShardMsg::BusDown => self.bus_down(),
            ShardMsg::BusSubscribed { group, result } => self.bus_subscribed(group, result),
            ShardMsg::Reply { origin, result } => self.reply(&origin, result),
            ShardMsg::Nodes { live } => self.nodes_changed(live),
            ShardMsg::ReleaseAsked { group, from } => self.release_asked(group, from),
            ShardMsg::Released { group, settled } => self.released(group, settled),
            ShardMsg::BusUp => self.bus_up(),
            ShardMsg::SettledAsked { group, from } => self.settled_asked(group, &from),
            ShardMsg::GapSettled { group, settled } => self.owner_settled(group, Some(settled)),
            ShardMsg::GapRead { group, result } => self.gap_read(group, result),
            ShardMsg::ClusterAnnounced { users, online, at } => {
                for user in users {
                    self.store_presence(user, online, at);
                }
            }
            ShardMsg::ClusterPresenceUntold {
                user,
                online,
                groups,
            } => {
                self.presence_untold
                    .borrow_mut()
                    .insert(user, (online, groups));
            }
            ShardMsg::Limited { msg, verdict } => self.cluster_limited(*msg, verdict),
            ShardMsg::Reaped { users } => self.load_reaped_groups(users),
            ShardMsg::ReapedGroups { users, result } => self.reaped_groups(users, result),
            ShardMsg::OnlineSet { users } => self.online.borrow_mut().extend(users.iter().copied()),
            ShardMsg::Stored {
                group,
                id,
                mut trace,
                result,
            } => {
                let now = Instant::now();
                if let (Some(submitted), Some(committed)) = (trace.submitted, trace.committed) {
                    self.stats.store_latency.observe(now - submitted);
                    self.stats.hop(Hop::Store, committed - submitted);
                    self.stats
                        .hop(Hop::StoreReply, now.saturating_duration_since(committed));
                }
                trace.answered = Some(now);
                self.stored(group, id, trace, result)
            }
            ShardMsg::ReadStored {
                group,
                id,
                message,
                user,
                result,
            } => self.read_stored(group, id, message, user, result),
            ShardMsg::HistoryRead {
                origin,
                limit,
                result,
            } => self.history_read(origin, limit, result),
            ShardMsg::UsersGroups { result } => self.users_groups(result),
            ShardMsg::SubscribeResult {
                conn,
                group,
                reason,
                ack,
                result,
            } => self.subscribe_result(conn, group, reason, ack, result),
            ShardMsg::ToConn { conn, frame } => self.to_conn(conn, frame),
            ShardMsg::Replayed {
                conn,
                attempt,
                result,
            } => self.replayed(conn, attempt, result),
            ShardMsg::Deliver {
                group,
                frame,
                event,
                except_user,
                stored_at,
                ingress,
            } => self.delivered(&group, &frame, event, except_user, stored_at, ingress),
            ShardMsg::Enroll {
                group,
                users,
                barrier,
            } => self.enroll(group, &users, barrier),
            ShardMsg::Evict {
                group,
                users,
                barrier,
            } => self.evict(group, &users, barrier),
            ShardMsg::PresenceUp { user, groups } => self.presence_up(user, groups),
            ShardMsg::PresenceDown { user, groups } => self.presence_down(user, groups),
            ShardMsg::PresenceChanged {
                user,
                online,
                announce,
            } => self.presence_changed(user, online, announce),
            ShardMsg::Batch { msgs } => {
                for m in msgs {
                    self.handle(m);
                }
            }
            ShardMsg::AdoptHttp { fd, buffered } => self.adopt_http(fd, buffered),
            ShardMsg::Tick => self.tick(Instant::now()),
            ShardMsg::Drain { window } => self.begin_drain(window),
            ShardMsg::Shutdown => self.begin_shutdown(),
        }
    }

    fn adopt_http(&self, fd: std::os::fd::OwnedFd, buffered: Vec<u8>) {
        use std::os::fd::{FromRawFd, IntoRawFd};
        let Some(me) = self.me.upgrade() else { return };
        if self.stopping.get() {
            return; // dropping the descriptor closes the connection
        }
        // SAFETY: a connected TCP socket whose ownership moves here.
        let stream = unsafe { glommio::net::TcpStream::from_raw_fd(fd.into_raw_fd()) };
        let buf = bytes::BytesMut::from(&buffered[..]);
        (self.shared.adopt_http)(me, stream, buf);
    }

    fn begin_shutdown(&self) {
        self.begin_drain(Duration::ZERO);
    }

    /// Stops accepting, then closes every connection (1001) spread evenly over `window` in a
    /// random order, so their clients reconnect spread out too (see [`Shard::drain_step`]).
    fn begin_drain(&self, window: Duration) {
        self.stopping.set(true);
        if let Some(w) = self.stop_waker.borrow_mut().take() {
            w.wake();
        }
        let mut order: Vec<ConnId> = self.conns.borrow().keys().copied().collect();
        fastrand::shuffle(&mut order);
        let mut drain = self.drain.borrow_mut();
        match drain.as_mut() {
            // A second request (SIGTERM after an admin drain) only ever shortens the window.
            Some(d) if d.started + d.window <= Instant::now() + window => {}
            _ => {
                *drain = Some(Drain {
                    started: Instant::now(),
                    window,
                    order,
                    closed: 0,
                })
            }
        }
        drop(drain);
        self.drain_step(Instant::now());
    }

    /// Closes the connections whose turn in the drain has come by `now`.
    fn drain_step(&self, now: Instant) {
        let due = {
            let mut drain = self.drain.borrow_mut();
            let Some(d) = drain.as_mut() else { return };
            let total = d.order.len();
            let want = if d.window.is_zero() || now >= d.started + d.window {
                total
            } else {
                let part =
                    now.saturating_duration_since(d.started).as_secs_f64() / d.window.as_secs_f64();
                ((total as f64 * part).ceil() as usize).min(total)
            };
            let due: Vec<ConnId> = d.order[d.closed..want.max(d.closed)].to_vec();
            d.closed = want.max(d.closed);
            due
        };
        for id in due {
            if let Some(c) = self.conn(id) {
                c.close(self, Close::ShuttingDown);
            }
        }
    }

    /// The window of the drain in progress (zero when none).
    pub fn drain_window(&self) -> Duration {
        self.drain
            .borrow()
            .as_ref()
            .map_or(Duration::ZERO, |d| d.window)
    }

    /// Whether the shard has stopped accepting and every connection is gone; in cluster
    /// mode, also every event its rooms minted is answered by the store (delivered and
    /// published), and every room asked for by its new owner node released.
    pub fn drained(&self) -> bool {
        self.stopping.get()
            && self.conns.borrow().is_empty()
            && (self.shared.cluster.is_none()
                || (self.rooms.borrow().values().all(|r| !r.awaiting_store())
                    && self.handover.borrow().releasing.is_empty()))
    }

    // ---- rooms (on the group's owner shard) ----

    /// Returns the message back when the room's members are known; otherwise parks it and
    /// starts loading the room. A group the store recently said does not exist is refused
    /// here, without a room and without asking the store again.
    fn room_ready_or_wait(&self, group: GroupId, msg: ShardMsg) -> Option<ShardMsg> {
        if !matches!(msg, ShardMsg::MembersChanged { .. })
            && self
                .unknown_groups
                .borrow()
                .contains(&group, self.coarse_ms())
        {
            self.refuse(msg, &Self::not_member(&group));
            return None;
        }
        let mut rooms = self.rooms.borrow_mut();
        let n = self.shared.nr_shards();
        let now = self.coarse_ms();
        let before = rooms.len();
        let room = rooms
            .entry(group.clone())
            .or_insert_with(|| Room::new((0..n).map(|s| ShardId(s as u16)), now));
        room.touch(now);
        if room.is_loaded() {
            return Some(msg);
        }
        let creates = matches!(msg, ShardMsg::MembersChanged { .. });
        let first = room.park(msg, creates);
        if rooms.len() != before {
            self.stats.rooms.store(rooms.len() as i64, Relaxed);
        }
        drop(rooms);
        if first {
            self.load_room(group);
        }
        None
    }

    fn load_room(&self, group: GroupId) {
        let loaded = group.clone();
        self.store_to_inbox(
            |reply| Request::GetGroup { group, reply },
            move |result| ShardMsg::RoomLoaded {
                group: loaded,
                result,
            },
        );
    }

    /// Answers a room operation that cannot be carried out with `err`.
    /// Tells a connection's shard how its Subscribe went.
    fn answer_subscribe(
        &self,
        origin: Origin,
        group: GroupId,
        reason: SubReason,
        result: Result<MessageId, ClientError>,
    ) {
        self.send_to_shard(
            origin.shard,
            ShardMsg::SubscribeResult {
                conn: origin.conn,
                group,
                reason,
                ack: origin.ack,
                result,
            },
        );
    }

    fn refuse(&self, msg: ShardMsg, err: &ClientError) {
        match msg {
            ShardMsg::Subscribe {
                group,
                origin,
                reason,
                ..
            } => self.answer_subscribe(origin, group, reason, Err(err.clone())),
            ShardMsg::SendMessage { origin, .. } | ShardMsg::MarkRead { origin, .. } => {
                self.reply_to(&origin, Err(err.clone()))
            }
            ShardMsg::Query { origin, .. } => self.reply(&origin, Err(err.clone())),
            ShardMsg::MembersChanged { done, .. } => {
                // The store already holds the change and the room loads it next time; release
                // the admin caller.
                let _ = done.send(());
            }
            _ => {}
        }
    }

    /// Forgets `group`'s room if nothing depends on it (see
    /// [`corecast_shard_router::Room::unused`]).
    fn forget_room(&self, group: &GroupId) {
        let mut rooms = self.rooms.borrow_mut();
        if let Some(room) = rooms.get(group) {
            if room.unused() {
                rooms.remove(group);
                self.stats.rooms.store(rooms.len() as i64, Relaxed);
                drop(rooms);
                self.off_bus(group);
            }
        }
    }

    fn room_loaded(&self, group: GroupId, result: Result<Option<Group>, StoreError>) {
        let loaded = {
            let mut rooms = self.rooms.borrow_mut();
            let Some(room) = rooms.get_mut(&group) else {
                return;
            };
            match &result {
                Ok(Some(g)) => room.loaded(Load::Found(g.members.iter().copied())),
                Ok(None) => room.loaded(Load::<[UserId; 0]>::Missing),
                Err(_) => room.loaded(Load::<[UserId; 0]>::Failed),
            }
        };
        match loaded {
            Loaded::Ready(waiting) => {
                for msg in waiting {
                    self.room_op(msg);
                }
            }
            // The group was created while it loaded (the admin API stores it, then tells this
            // shard): the answer is already stale. Load it again, once.
            Loaded::Reload => self.load_room(group),
            Loaded::Missing(waiting) => {
                // No such group: no room for it, and no store read for it for a while.
                self.forget_room(&group);
                self.unknown_groups
                    .borrow_mut()
                    .insert(group.clone(), self.coarse_ms());
                let err = Self::not_member(&group);
                for msg in waiting {
                    self.refuse(msg, &err);
                }
            }
            Loaded::Failed(waiting) => {
                if let Err(e) = &result {
                    tracing::warn!(%group, error = %e, "cannot load group members");
                }
                let err =
                    ClientError::new(Code::StorageUnavailable, "the store is unavailable; retry");
                for msg in waiting {
                    self.refuse(msg, &err);
                }
                // Forget the room so the next use loads it again, keeping subscriber counts.
                self.forget_room(&group);
            }
        }
    }

    /// Forgets rooms idle for `server.idle_room_secs` (no subscriber, nothing in flight; see
    /// [`corecast_shard_router::Room::expired`]), looking every quarter of that (between 250 ms and 10 s), so rooms of
    /// groups nobody uses any more do not pile up. A forgotten room loads again from the
    /// store when next used.
    fn sweep_rooms(&self, now: Instant) {
        let idle = Duration::from_secs(self.config().server.idle_room_secs);
        let every = (idle / 4).clamp(Duration::from_millis(250), Duration::from_secs(10));
        if now < self.rooms_swept.get() + every {
            return;
        }
        self.rooms_swept.set(now);
        let mut rooms = self.rooms.borrow_mut();
        let before = rooms.len();
        let (now_ms, idle_ms) = (self.coarse_ms(), idle.as_millis() as u64);
        let mut forgotten = Vec::new();
        rooms.retain(|g, r| {
            let keep = !r.expired(now_ms, idle_ms);
            if !keep && self.shared.cluster.is_some() {
                forgotten.push(g.clone());
            }
            keep
        });
        if rooms.len() != before {
            if rooms.capacity() > 64 && rooms.len() < rooms.capacity() / 4 {
                rooms.shrink_to_fit();
            }
            self.stats.rooms.store(rooms.len() as i64, Relaxed);
        }
        drop(rooms);
        for g in &forgotten {
            self.off_bus(g);
        }
        self.unknown_groups.borrow_mut().sweep(self.coarse_ms());
    }

    /// [`Shard::mono_ms`] as of the last tick.
    fn coarse_ms(&self) -> u64 {
        self.last_tick
            .get()
            .saturating_duration_since(self.epoch)
            .as_millis() as u64
    }

    fn is_member(&self, group: &GroupId, user: UserId) -> bool {
        self.rooms
            .borrow()
            .get(group)
            .is_some_and(|r| r.is_member(user))
    }

    fn not_member(group: &GroupId) -> ClientError {
        ClientError::new(
            Code::NotMember,
            format!("you are not a member of group {:?}", group.as_str()),
        )
    }

    fn room_op(&self, msg: ShardMsg) {
        match msg {
            ShardMsg::Subscribe {
                group,
                user,
                origin,
                reason,
            } => {
                let settled = self.rooms.borrow_mut().get_mut(&group).and_then(|r| {
                    r.subscribe(user, origin.shard)
                        .then(|| r.settled(events::now_ms() as u64))
                });
                let result = settled.ok_or_else(|| Self::not_member(&group));
                if result.is_ok() && self.shared.cluster.is_some() {
                    let waiting = WaitingSubscribe {
                        origin,
                        reason,
                        result,
                    };
                    return self.when_on_bus(group, waiting);
                }
                self.answer_subscribe(origin, group, reason, result);
            }
            ShardMsg::SendMessage {
                group,
                user,
                text,
                attachments,
                client_msg_id,
                origin,
                trace,
                ..
            } => {
                let from = trace.admitted.unwrap_or(trace.ingress);
                self.stats
                    .hop(Hop::Owner, Instant::now().saturating_duration_since(from));
                let message = (text, attachments, client_msg_id);
                self.room_send_message(group, user, message, origin, trace)
            }
            ShardMsg::MarkRead {
                group,
                message,
                user,
                origin,
            } => {
                let now = events::now_ms();
                let id = self
                    .rooms
                    .borrow_mut()
                    .get_mut(&group)
                    .expect("invariant: room loaded before room_op")
                    .receipt(user, origin.clone(), || self.ids.borrow_mut().next(now));
                let Some(id) = id else {
                    return self.reply_to(&origin, Err(Self::not_member(&group)));
                };
                let stored = group.clone();
                self.store_to_inbox(
                    |reply| Request::MarkRead {
                        group,
                        message,
                        user,
                        event: id,
                        reply,
                    },
                    move |result| ShardMsg::ReadStored {
                        group: stored,
                        id,
                        message,
                        user,
                        result,
                    },
                );
            }
            ShardMsg::Query {
                group,
                user,
                query,
                origin,
            } => {
                if !self.is_member(&group, user) {
                    return self.reply(&origin, Err(Self::not_member(&group)));
                }
                match query {
                    events::Query::Online => {
                        let online = self.online.borrow();
                        let mut ids: Vec<UserId> = self
                            .rooms
                            .borrow()
                            .get(&group)
                            .map(|r| r.members().filter(|u| online.contains(u)).collect())
                            .unwrap_or_default();
                        ids.sort_unstable_by_key(|u| u.0);
                        self.reply(&origin, Ok(events::online_ack_json(&group, &ids)));
                    }
                    events::Query::Messages { before, limit } => self.store_to_inbox(
                        |reply| Request::History {
                            group,
                            limit: limit + 1,
                            before,
                            reply,
                        },
                        move |result| ShardMsg::HistoryRead {
                            origin,
                            limit,
                            result,
                        },
                    ),
                }
            }
            ShardMsg::MembersChanged {
                group,
                change,
                done,
            } => {
                // Every shard applies the change to its connections, then tells this shard
                // (after its Subscribes/Unsubscribes, so they are counted first); when all
                // have, the room releases the admin caller. One message per shard carries all
                // the users, however many (a 100,000-member PUT was 200,000 messages).
                let effects = self
                    .rooms
                    .borrow_mut()
                    .get_mut(&group)
                    .map(|r| r.members_changed(&change.added, &change.removed, done))
                    .unwrap_or_default();
                self.carry_out(&group, effects);
            }
            _ => unreachable!("invariant: only room operations reach room_op"),
        }
    }

    fn room_send_message(
        &self,
        group: GroupId,
        user: UserId,
        (text, attachments, client_msg_id): (String, Vec<Attachment>, Option<String>),
        origin: SendOrigin,
        mut trace: Trace,
    ) {
        let now = events::now_ms();
        let sent = {
            let mut rooms = self.rooms.borrow_mut();
            let room = rooms
                .get_mut(&group)
                .expect("invariant: room loaded before room_op");
            let online = self.online.borrow();
            room.send(
                user,
                client_msg_id.clone(),
                origin.clone(),
                || self.ids.borrow_mut().next(now),
                |m| online.contains(&m),
            )
        };
        let (id, notify) = match sent {
            RoomSend::Store { id, notify } => (id, notify),
            // A resend while the first is still being stored: answered with its outcome.
            RoomSend::Merged => return,
            RoomSend::NotMember => return self.reply_to(&origin, Err(Self::not_member(&group))),
        };
        let message = NewMessage {
            id,
            group: group.clone(),
            sender: user,
            text,
            attachments,
            timestamp: now,
            client_msg_id,
        };
        trace.submitted = Some(Instant::now());
        self.store_to_inbox(
            |reply| Request::AppendMessage {
                message,
                notify,
                reply,
            },
            // On the store's thread, as it answers.
            move |result| ShardMsg::Stored {
                group,
                id,
                trace: Trace {
                    committed: Some(Instant::now()),
                    ..trace
                },
                result,
            },
        );
    }

    /// The store answered for message `id`: the room says what is now due, in id order.
    fn stored(
        &self,
        group: GroupId,
        id: MessageId,
        trace: Trace,
        result: Result<Appended, StoreError>,
    ) {
        let outcome = match result {
            Ok(appended) => {
                let duplicate = appended.duplicate;
                let c = Rc::new(Committed::Message { appended, trace });
                if duplicate {
                    Outcome::Duplicate(c)
                } else {
                    Outcome::New(c)
                }
            }
            Err(e) => Outcome::Failed(Unstored::Message(e)),
        };
        self.room_stored(&group, id, outcome);
    }

    fn room_stored(
        &self,
        group: &GroupId,
        id: MessageId,
        outcome: Outcome<Rc<Committed>, Unstored>,
    ) {
        let effects = match self.rooms.borrow_mut().get_mut(group) {
            Some(room) => room.stored(id, outcome),
            None => return,
        };
        self.carry_out(group, effects);
        if self.shared.cluster.is_some() {
            self.release_if_done(group);
        }
    }

    /// Carries out what `group`'s room decided.
    fn carry_out(&self, group: &GroupId, effects: Vec<Effect<OwnerShard>>) {
        // Cluster mode: whether a group message went onto the bus in this turn, and the
        // answers to this node's senders that follow it: they go once Redis has taken the
        // publish (see below), so an ack means the other nodes have the message too.
        let mut published = false;
        let mut after_publish = Vec::new();
        for e in effects {
            match e {
                Effect::Deliver { to, message } => match &*message {
                    Committed::Message { appended, trace } => {
                        self.stats.messages_in.fetch_add(1, Relaxed);
                        let m = &appended.message;
                        let frame = events::new_message_frame(m);
                        let stored_at = Instant::now();
                        if let Some(answered) = trace.answered {
                            self.stats.hop(Hop::Order, stored_at - answered);
                        }
                        let ingress = Some(trace.ingress);
                        let event = Event::Stored(m.id);
                        self.publish_to_group(group, m.id, &frame, &mut published);
                        self.deliver_to_shards(&to, group, &frame, event, stored_at, ingress);
                    }
                    &Committed::Receipt { id, message, user } => {
                        let frame = events::message_read_frame(group, message, user);
                        let event = Event::Stored(id);
                        self.publish_to_group(group, id, &frame, &mut published);
                        self.deliver_to_shards(&to, group, &frame, event, Instant::now(), None);
                    }
                },
                Effect::Reply { origin, result } => {
                    let result = Self::answer(group, result);
                    match origin {
                        SendOrigin::Local(o) if published => after_publish.push((o, result)),
                        // A remote origin's answer is published after the group's events.
                        origin => self.reply_to(&origin, result),
                    }
                }
                Effect::Enroll { to, users, barrier } => self.send_to_shard(
                    to,
                    ShardMsg::Enroll {
                        group: group.clone(),
                        users,
                        barrier,
                    },
                ),
                Effect::Evict { to, users, barrier } => self.send_to_shard(
                    to,
                    ShardMsg::Evict {
                        group: group.clone(),
                        users,
                        barrier,
                    },
                ),
                Effect::Released(done) => {
                    let _ = done.send(());
                }
            }
        }
        if !after_publish.is_empty() {
            // A PING after the publishes: the bus sends commands in order on one connection,
            // so its answer comes after Redis took them. Answered also when the bus is down
            // (the message is stored; other nodes fill the gap from the store).
            self.bus_call(
                |c, done| c.bus.flushed(done),
                move |_| {
                    Some(ShardMsg::Batch {
                        msgs: after_publish
                            .into_iter()
                            .map(|(origin, result)| ShardMsg::Reply { origin, result })
                            .collect(),
                    })
                },
            );
        }
    }

    /// Cluster mode: publishes event `id` of `group`'s stream (a message or a read receipt,
    /// framed once) on the group's channel, for the other nodes' members.
    fn publish_to_group(
        &self,
        group: &GroupId,
        id: MessageId,
        frame: &Bytes,
        published: &mut bool,
    ) {
        if let Some(c) = &self.shared.cluster {
            let on_bus = crate::cluster::GroupMessage {
                from: &c.me,
                id,
                frame: frame.clone(),
            };
            c.publish(crate::cluster::group_channel(group), on_bus.encode());
            *published = true;
        }
    }

    /// The store's answer to read receipt `id`: the room answers and delivers it in its turn.
    fn read_stored(
        &self,
        group: GroupId,
        id: MessageId,
        message: MessageId,
        user: UserId,
        result: Result<bool, StoreError>,
    ) {
        let receipt = || Rc::new(Committed::Receipt { id, message, user });
        let outcome = match result {
            Ok(true) => Outcome::New(receipt()),
            Ok(false) => Outcome::Duplicate(receipt()),
            Err(e) => Outcome::Failed(Unstored::Receipt(e)),
        };
        self.room_stored(&group, id, outcome);
    }

    /// The ack for an event of `group`'s stream the store took, or did not.
    fn answer(
        group: &GroupId,
        result: Result<Rc<Committed>, Unstored>,
    ) -> Result<Vec<u8>, ClientError> {
        match result {
            Ok(c) => match &*c {
                Committed::Message { appended, .. } => {
                    let m = &appended.message;
                    Ok(events::sent_ack_json(m.id, m.timestamp))
                }
                Committed::Receipt { .. } => Ok(events::ok_ack_json("")),
            },
            Err(Unstored::Message(e)) => {
                tracing::warn!(%group, error = %e, "message not stored");
                Err(ClientError::new(
                    Code::StorageUnavailable,
                    "the message was not stored (storage unavailable); retry with the same clientMsgId",
                ))
            }
            Err(Unstored::Receipt(StoreError::NoSuchMessage { message, .. })) => {
                Err(ClientError::new(
                    Code::NotFound,
                    format!("message {message} not found in group {:?}", group.as_str()),
                ))
            }
            Err(Unstored::Receipt(e)) => {
                tracing::warn!(%group, error = %e, "read receipt not stored");
                Err(ClientError::new(
                    Code::StorageUnavailable,
                    "the read receipt was not stored; retry",
                ))
            }
        }
    }

    /// The store's answer to a `getMessages`: the page, and whether there are more.
    fn history_read(
        &self,
        origin: Origin,
        limit: usize,
        result: Result<Vec<corecast_storage::StoredMessage>, StoreError>,
    ) {
        match result {
            Ok(mut messages) => {
                let has_more = messages.len() > limit;
                messages.truncate(limit);
                self.reply(&origin, Ok(events::history_ack_json(&messages, has_more)));
            }
            Err(e) => {
                tracing::warn!(error = %e, "history not read");
                self.reply(
                    &origin,
                    Err(ClientError::new(
                        Code::StorageUnavailable,
                        "the history could not be read; retry",
                    )),
                )
            }
        }
    }

    // ---- connections and local rooms (on the connection's shard) ----

    pub fn register_conn(&self, conn: Rc<Conn>) {
        self.stats.connections.fetch_add(1, Relaxed);
        self.stats.connections_total.fetch_add(1, Relaxed);
        self.conns.borrow_mut().insert(conn.id, conn);
    }

    /// A client authenticated as `user`: look up its groups, then subscribe.
    pub fn authenticated(&self, conn: &Rc<Conn>, user: UserId) {
        self.index_user(conn, user);
        let batch = self.loads.borrow_mut().request(user, conn.id);
        if let Some(users) = batch {
            self.load_groups(users);
        }
    }

    /// Sends the shard's one load in flight.
    fn load_groups(&self, users: Vec<UserId>) {
        self.stats.group_load_requests.fetch_add(1, Relaxed);
        self.store_to_inbox(
            |reply| Request::GroupsOfUsers { users, reply },
            |result| ShardMsg::UsersGroups { result },
        );
    }

    fn users_groups(&self, result: Result<Vec<Vec<GroupId>>, StoreError>) {
        let (done, next) = self.loads.borrow_mut().answered();
        if let Some(users) = next {
            self.load_groups(users);
        }
        for (i, (_, conns)) in done.into_iter().enumerate() {
            let groups = match &result {
                Ok(all) => Ok(all.get(i).cloned().unwrap_or_default()),
                Err(e) => Err(e.clone()),
            };
            self.stats
                .group_loads
                .fetch_add(conns.len() as u64, Relaxed);
            for conn in conns {
                self.user_groups(conn, groups.clone());
            }
        }
    }

    fn conn(&self, id: ConnId) -> Option<Rc<Conn>> {
        self.conns.borrow().get(&id).cloned()
    }

    fn user_groups(&self, id: ConnId, result: Result<Vec<GroupId>, StoreError>) {
        let Some(conn) = self.conn(id) else { return };
        // The client may have left the namespace (DISCONNECT) while its groups loaded.
        let (Some(user), ConnState::Subscribing) = (conn.user(), conn.state()) else {
            return;
        };
        match result {
            Ok(groups) => {
                conn.subs.borrow_mut().begin_connect();
                for g in groups {
                    self.subscribe(&conn, user, g, SubReason::Connect, None);
                }
                let released = conn.subs.borrow_mut().connect_sent();
                if released {
                    self.connect_released(&conn);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot load the user's groups");
                conn.connect_error(
                    self,
                    Code::StorageUnavailable,
                    "storage unavailable: cannot load your groups; retry later",
                );
            }
        }
    }

    /// Sends a Subscribe for `conn` to the room's owner unless it is already in (or joining).
    /// Returns false when it already was.
    fn subscribe(
        &self,
        conn: &Rc<Conn>,
        user: UserId,
        group: GroupId,
        reason: SubReason,
        ack: Option<u64>,
    ) -> bool {
        if !conn.subs.borrow_mut().want(&group, reason) {
            return false;
        }
        if reason == SubReason::Enroll {
            // In the local room at once, so that the admin call that added the member
            // returns only once deliveries reach it.
            self.fanout.add(&group, conn);
        }
        let owner = owner_of_group(&group, self.shared.nr_shards());
        let origin = Origin {
            shard: self.id,
            conn: conn.id,
            ack,
        };
        self.send_to_shard(
            owner,
            ShardMsg::Subscribe {
                group,
                user,
                origin,
                reason,
            },
        );
        true
    }

    fn subscribe_result(
        &self,
        id: ConnId,
        group: GroupId,
        reason: SubReason,
        ack: Option<u64>,
        result: Result<MessageId, ClientError>,
    ) {
        let owner = owner_of_group(&group, self.shared.nr_shards());
        let Some(conn) = self.conn(id) else {
            if result.is_ok() {
                // The connection closed meanwhile: give the count back.
                self.send_to_shard(
                    owner,
                    ShardMsg::Unsubscribe {
                        group,
                        shard: self.id,
                    },
                );
            }
            return;
        };
        let answered = conn
            .subs
            .borrow_mut()
            .answered(&group, reason, result.is_ok());
        if let (Ok(settled), SubReason::Connect, true) = (&result, reason, answered.add_local) {
            conn.subscribed_at(&group, *settled);
        }
        if answered.add_local {
            self.fanout.add(&group, &conn);
        }
        if answered.remove_local {
            self.fanout.remove(&group, id);
        }
        if answered.give_back {
            // Left (or evicted) while joining.
            self.send_to_shard(
                owner,
                ShardMsg::Unsubscribe {
                    group: group.clone(),
                    shard: self.id,
                },
            );
        }
        if reason == SubReason::Join {
            let origin = Origin {
                shard: self.id,
                conn: id,
                ack,
            };
            self.reply(&origin, result.map(|_| events::group_ack_json(&group)));
        }
        if answered.connected {
            self.connect_released(&conn);
        }
    }

    /// Every connect-time subscription was answered (the barrier, `Subscriptions`): the
    /// client is connected, unless it went meanwhile; a recovering client once the store has
    /// answered what it missed ([`ShardMsg::Replayed`]).
    fn connect_released(&self, conn: &Rc<Conn>) {
        if conn.state() != ConnState::Subscribing {
            return;
        }
        let (attempt, plan) = conn.replay_plan();
        if plan.is_empty() {
            return self.finish_connect(conn);
        }
        let limit = self.config().recovery.max_events + 1;
        for (group, after, upto) in plan {
            let id = conn.id;
            self.store_to_inbox(
                |reply| Request::Since {
                    group,
                    after,
                    upto,
                    limit,
                    reply,
                },
                move |result| ShardMsg::Replayed {
                    conn: id,
                    attempt,
                    result,
                },
            );
        }
    }

    /// A recovering CONNECT's store read answered ([`ShardMsg::Replayed`]).
    fn replayed(&self, id: ConnId, attempt: u32, result: Result<Vec<GroupEvent>, StoreError>) {
        let Some(conn) = self.conn(id) else { return };
        let cfg = self.config();
        let max_bytes = cfg.server.outbound_queue_bytes;
        if conn.replayed(attempt, result, cfg.recovery.max_events, max_bytes) {
            self.finish_connect(&conn);
        }
    }

    /// Answers the CONNECT (and what a recovery replays), and announces the user online.
    fn finish_connect(&self, conn: &Rc<Conn>) {
        if conn.state() == ConnState::Subscribing {
            conn.set_state(ConnState::Connected);
            if let Some(since) = conn.connected(self) {
                self.presence_news(conn, since);
            }
            self.release_ticket(conn.take_ticket());
            let user = conn
                .user()
                .expect("invariant: connected connections have a user");
            let groups: Arc<[GroupId]> = conn.groups().into();
            self.send_to_shard(
                owner_of_user(user, self.shared.nr_shards()),
                ShardMsg::PresenceUp { user, groups },
            );
        }
    }

    /// A recovered client is told the current state of the co-members whose presence was
    /// announced since `since_ms` (while it was away), once each: the `userOnline` it missed.
    fn presence_news(&self, conn: &Rc<Conn>, since_ms: i64) {
        let Some(user) = conn.user() else { return };
        let groups: HashSet<GroupId> = conn.groups().into_iter().collect();
        let news = self.presence_log.borrow().since(since_ms, user, &groups);
        for (u, online) in news {
            conn.push(self, user_online_frame(u, online));
        }
    }

    /// The client's `joinGroup`.
    pub fn join(&self, conn: &Rc<Conn>, group: GroupId, ack: Option<u64>) {
        let user = conn.user().expect("invariant: only connected clients join");
        if !self.subscribe(conn, user, group.clone(), SubReason::Join, ack) {
            let origin = Origin {
                shard: self.id,
                conn: conn.id,
                ack,
            };
            self.reply(&origin, Ok(events::group_ack_json(&group)));
        }
    }

    /// The client's `leaveGroup`, an eviction, or a closing connection.
    pub fn leave(&self, conn: &Rc<Conn>, group: &GroupId) {
        let left = conn.subs.borrow_mut().leave(group);
        match left {
            Left::GiveBack => {
                self.fanout.remove(group, conn.id);
                let owner = owner_of_group(group, self.shared.nr_shards());
                self.send_to_shard(
                    owner,
                    ShardMsg::Unsubscribe {
                        group: group.clone(),
                        shard: self.id,
                    },
                );
            }
            // The Subscribe's answer gives the count back (see subscribe_result).
            Left::Forgotten | Left::NotIn => {}
        }
    }

    /// Routes a client's `sendMessage`: through the user's rate limit to the group's owner.
    pub fn send_message(&self, conn: &Rc<Conn>, cmd: events::Command, ack: Option<u64>) {
        let user = conn.user().expect("invariant: only connected clients send");
        let events::Command::SendMessage {
            group,
            text,
            attachments,
            client_msg_id,
        } = cmd
        else {
            unreachable!("invariant: called with sendMessage only")
        };
        let origin = SendOrigin::Local(Origin {
            shard: self.id,
            conn: conn.id,
            ack,
        });
        let limited = self.config().limits.rate_limit_per_min > 0;
        let (to, admitted) = if limited {
            (owner_of_user(user, self.shared.nr_shards()), false)
        } else {
            (owner_of_group(&group, self.shared.nr_shards()), true)
        };
        self.send_to_shard(
            to,
            ShardMsg::SendMessage {
                group,
                user,
                text,
                attachments,
                client_msg_id,
                origin,
                admitted,
                trace: Trace::new(Instant::now()),
            },
        );
    }

    /// On the sender's presence owner: applies the user's rate limit, then passes the message
    /// on to the group's owner.
    fn admit(&self, mut msg: ShardMsg) {
        let ShardMsg::SendMessage { user, trace, .. } = &mut msg else {
            unreachable!("invariant: admit is called with SendMessage only")
        };
        let user = *user;
        let at = Instant::now();
        trace.admitted = Some(at);
        self.stats
            .hop(Hop::Limiter, at.saturating_duration_since(trace.ingress));
        let per_min = self.config().limits.rate_limit_per_min;
        if per_min > 0 && self.shared.cluster.is_some() {
            // Cluster mode: the user's budget is shared by every node, in Redis. Answers come
            // back in the order asked (one connection), so a user's messages keep theirs.
            let msg = Box::new(msg);
            return self.bus_call(
                |c, done| c.limit.take(user.0, per_min, done),
                move |r| Some(ShardMsg::Limited { msg, verdict: r }),
            );
        }
        let wait = self.local_limit(user);
        self.limited(msg, wait);
    }

    /// This node's own limiter takes one of `user`'s tokens: `None`, or the milliseconds
    /// until there is one.
    fn local_limit(&self, user: UserId) -> Option<u64> {
        let now = events::now_ms();
        if self.limiter.borrow_mut().try_acquire(user, now) {
            None
        } else {
            Some(self.limiter.borrow().retry_after_ms(user, now))
        }
    }

    /// Cluster mode: Redis's word on a message's limit (see [`Shard::admit`]); while Redis
    /// cannot answer, this node's own limiter decides.
    fn cluster_limited(
        &self,
        msg: ShardMsg,
        verdict: Result<Option<u64>, corecast_cluster::BusError>,
    ) {
        let wait = match verdict {
            Ok(wait) => wait,
            Err(e) => {
                tracing::debug!(error = %e, "cluster rate limit not reached: this node's decides");
                let ShardMsg::SendMessage { user, .. } = &msg else {
                    unreachable!("invariant: only a SendMessage is limited")
                };
                self.local_limit(*user)
            }
        };
        self.limited(msg, wait);
    }

    /// A message through its sender's limit: refused, retry in `wait` ms, or on to the
    /// group's owner.
    fn limited(&self, msg: ShardMsg, wait: Option<u64>) {
        let ShardMsg::SendMessage {
            group,
            user,
            text,
            attachments,
            client_msg_id,
            origin,
            trace,
            ..
        } = msg
        else {
            unreachable!("invariant: only a SendMessage is limited")
        };
        if let Some(wait) = wait {
            let e = ClientError::new(
                Code::RateLimited,
                format!(
                    "too many messages: the limit is {} per minute; retry in {} ms",
                    self.config().limits.rate_limit_per_min,
                    wait
                ),
            );
            return self.reply_to(&origin, Err(e));
        }
        let owner = owner_of_group(&group, self.shared.nr_shards());
        self.send_to_shard(
            owner,
            ShardMsg::SendMessage {
                group,
                user,
                text,
                attachments,
                client_msg_id,
                origin,
                admitted: true,
                trace,
            },
        );
    }

    pub fn mark_read(&self, conn: &Rc<Conn>, group: GroupId, message: MessageId, ack: Option<u64>) {
        self.to_group_owner(conn, ack, group, |group, user, origin| ShardMsg::MarkRead {
            group,
            message,
            user,
            origin: SendOrigin::Local(origin),
        });
    }

    /// A client's `getMessages` or `getOnline`: to the group's owner.
    pub fn query_room(
        &self,
        conn: &Rc<Conn>,
        group: GroupId,
        query: events::Query,
        ack: Option<u64>,
    ) {
        self.to_group_owner(conn, ack, group, |group, user, origin| ShardMsg::Query {
            group,
            user,
            query,
            origin,
        });
    }

    /// Sends a connected client's request about `group` to the group's owner, answered to
    /// the connection (`ack`).
    fn to_group_owner(
        &self,
        conn: &Conn,
        ack: Option<u64>,
        group: GroupId,
        make: impl FnOnce(GroupId, UserId, Origin) -> ShardMsg,
    ) {
        let user = conn
            .user()
            .expect("invariant: only connected clients ask their groups' owners");
        let origin = Origin {
            shard: self.id,
            conn: conn.id,
            ack,
        };
        let owner = owner_of_group(&group, self.shared.nr_shards());
        self.send_to_shard(owner, make(group, user, origin));
    }

    /// Lists `conn` among `user`'s connections on this shard.
    fn index_user(&self, conn: &Rc<Conn>, user: UserId) {
        let mut by_user = self.by_user.borrow_mut();
        let Some(e) = by_user.get_mut(&user) else {
            by_user.insert(user, UserConns::One(conn.clone()));
            return;
        };
        match e {
            UserConns::One(c) => {
                if c.id != conn.id {
                    let first = c.clone();
                    *e = UserConns::Many(vec![first, conn.clone()]);
                }
            }
            UserConns::Many(list) => {
                if !list.iter().any(|c| c.id == conn.id) {
                    list.push(conn.clone());
                }
            }
        }
    }

    /// Takes `conn` off its user's connections (it closed, or left the namespace).
    fn unindex_user(&self, conn: &Conn) {
        let Some(user) = conn.user() else { return };
        let mut by_user = self.by_user.borrow_mut();
        let empty = match by_user.get_mut(&user) {
            None => return,
            Some(UserConns::One(c)) => c.id == conn.id,
            Some(UserConns::Many(list)) => {
                list.retain(|c| c.id != conn.id);
                if list.len() == 1 {
                    let last = list.pop().expect("invariant: one left");
                    by_user.insert(user, UserConns::One(last));
                    false
                } else {
                    list.is_empty()
                }
            }
        };
        if empty {
            by_user.remove(&user);
        }
    }

    /// This shard's connections of `user` (see `by_user`).
    fn user_conns(&self, user: UserId) -> Vec<Rc<Conn>> {
        match self.by_user.borrow().get(&user) {
            None => Vec::new(),
            Some(UserConns::One(c)) => vec![c.clone()],
            Some(UserConns::Many(list)) => list.clone(),
        }
    }

    fn enroll(&self, group: GroupId, users: &[UserId], barrier: u64) {
        for &user in users {
            for c in self.user_conns(user) {
                if matches!(c.state(), ConnState::Connected | ConnState::Subscribing) {
                    self.subscribe(&c, user, group.clone(), SubReason::Enroll, None);
                }
            }
        }
        let owner = owner_of_group(&group, self.shared.nr_shards());
        self.send_to_shard(owner, ShardMsg::MembershipApplied { group, barrier });
    }

    fn evict(&self, group: GroupId, users: &[UserId], barrier: u64) {
        for &user in users {
            for c in self.user_conns(user) {
                self.leave(&c, &group);
            }
        }
        let owner = owner_of_group(&group, self.shared.nr_shards());
        self.send_to_shard(owner, ShardMsg::MembershipApplied { group, barrier });
    }

    /// A connection is gone: leave its rooms and give back its presence.
    pub fn conn_closed(&self, conn: &Rc<Conn>) {
        if self.conns.borrow_mut().remove(&conn.id).is_none() {
            return;
        }
        self.stats.connections.fetch_sub(1, Relaxed);
        self.release_ticket(conn.take_ticket());
        self.event_limiter.borrow_mut().forget(&conn.id);
        self.leave_all(conn);
        self.unindex_user(conn);
        conn.set_gone();
    }

    /// The client sent DISCONNECT for the namespace: it leaves its rooms and gives back its
    /// presence, and the Engine.IO session stays open for another CONNECT.
    pub fn socket_disconnected(&self, conn: &Rc<Conn>) {
        self.leave_all(conn);
        self.unindex_user(conn);
        conn.reset_socket();
    }

    fn leave_all(&self, conn: &Rc<Conn>) {
        let groups: Arc<[GroupId]> = conn.groups().into();
        for g in groups.iter() {
            self.leave(conn, g);
        }
        if let (Some(user), true) = (conn.user(), conn.was_connected()) {
            self.send_to_shard(
                owner_of_user(user, self.shared.nr_shards()),
                ShardMsg::PresenceDown { user, groups },
            );
        }
    }

    // ---- presence ----

    fn presence_up(&self, user: UserId, groups: Arc<[GroupId]>) {
        let change = self
            .presence
            .borrow_mut()
            .up(user, groups.clone(), self.mono_ms());
        self.presence_effects(user, groups, change);
    }

    fn presence_down(&self, user: UserId, groups: Arc<[GroupId]>) {
        let change = self
            .presence
            .borrow_mut()
            .down(user, groups.clone(), self.mono_ms());
        self.presence_effects(user, groups, change);
        if self.stopping.get() {
            // Nobody will be here when the window ends: announce now.
            let due = self.presence.borrow_mut().flush();
            for a in due {
                self.announce(a);
            }
        }
    }

    /// Carries out what the presence debouncer decided on a connection's up or down (of a
    /// connection in `groups`).
    fn presence_effects(
        &self,
        user: UserId,
        groups: Arc<[GroupId]>,
        change: corecast_shard_router::presence::Change<UserId, Arc<[GroupId]>>,
    ) {
        if self.shared.cluster.is_some() {
            // Redis hears every flip of this node's reachability at once, and tells every
            // node's replica if the user's cluster-wide one flipped; the announcements are
            // Redis's to decide too (see `announce`).
            if let Some(online) = change.reachable {
                self.tell_cluster(user, online, groups);
            }
            if let Some(a) = change.announce {
                self.announce(a);
            }
            return;
        }
        match (change.announce, change.reachable) {
            (Some(a), _) => self.announce(a),
            (None, Some(online)) => self.send_to_every_shard(|| ShardMsg::PresenceChanged {
                user,
                online,
                announce: None,
            }),
            (None, None) => {}
        }
    }

    /// Tells co-members (every shard, for its local rooms) and the store that `a.user` is
    /// online or offline now.
    fn announce(&self, a: Announce<UserId, Arc<[GroupId]>>) {
        let Announce {
            user,
            online,
            at_ms,
            groups,
        } = a;
        // `at_ms` is on the shard's monotonic clock: the wall time as long ago as that.
        let ago = self.mono_ms().saturating_sub(at_ms) as i64;
        let at = events::now_ms() - ago;
        if self.shared.cluster.is_some() {
            // Online: Redis announced it with the flip if it was due (`tell_cluster`).
            // Offline: the user's last connection here closed a window ago; Redis announces
            // it if they have no connection on any node now and were announced online.
            if !online {
                self.settle_in_cluster(vec![(user, groups)], at);
            }
            return;
        }
        self.store_presence(user, online, at);
        let frame = user_online_frame(user, online);
        self.send_to_every_shard(|| ShardMsg::PresenceChanged {
            user,
            online,
            announce: Some((groups.clone(), frame.clone())),
        });
    }

    fn store_presence(&self, user: UserId, online: bool, at: i64) {
        self.submit(Request::SetPresence {
            user,
            online,
            at,
            reply: Box::new(move |r| {
                if let Err(e) = r {
                    tracing::warn!(%user, error = %e, "presence not stored");
                }
            }),
        });
    }

    /// Cluster mode: this node's first connection of `user` opened (`online`), in `groups`,
    /// or its last one closed. Redis's script publishes the change to every node (this one
    /// included) if it was the user's first node or last, and announces them online if
    /// co-members do not think so already (stored here then).
    fn tell_cluster(&self, user: UserId, online: bool, groups: Arc<[GroupId]>) {
        let at = events::now_ms();
        let untold = move |e: corecast_cluster::BusError, groups| {
            tracing::warn!(%user, online, error = %e, "cluster presence not recorded");
            Some(ShardMsg::ClusterPresenceUntold {
                user,
                online,
                groups,
            })
        };
        if online {
            let json = crate::cluster::groups_json(&groups);
            self.bus_call(
                |c, done| c.presence.up(user.0, &json, done),
                move |r| match r {
                    Ok(corecast_cluster::presence::Up::Announced) => {
                        Some(ShardMsg::ClusterAnnounced {
                            users: vec![user],
                            online,
                            at,
                        })
                    }
                    Ok(_) => None,
                    Err(e) => untold(e, groups),
                },
            );
        } else {
            self.bus_call(
                |c, done| c.presence.down(user.0, done),
                move |r| r.err().and_then(|e| untold(e, groups)),
            );
        }
    }

    /// Cluster mode: these users' window after their last connection here ended (or they
    /// were reaped): Redis announces offline, to every node, those of them with no connection
    /// anywhere who were last announced online; stored here then, as of `at`.
    fn settle_in_cluster(&self, users: Vec<(UserId, Arc<[GroupId]>)>, at: i64) {
        for step in users.chunks(corecast_cluster::presence::STEP) {
            let pairs: Vec<(u64, Bytes)> = step
                .iter()
                .map(|(u, g)| (u.0, crate::cluster::groups_json(g)))
                .collect();
            let step = step.to_vec();
            self.bus_call(
                |c, done| c.presence.settle(&pairs, done),
                move |r| match r {
                    Ok(users) => Some(ShardMsg::ClusterAnnounced {
                        users: users.into_iter().map(UserId).collect(),
                        online: false,
                        at,
                    }),
                    Err(e) => {
                        // Told again when the bus is back (`restore_presence`).
                        tracing::warn!(users = step.len(), error = %e, "cluster: offline announcements not made");
                        let untold = step
                            .into_iter()
                            .map(|(user, groups)| ShardMsg::ClusterPresenceUntold {
                                user,
                                online: false,
                                groups,
                            })
                            .collect();
                        Some(ShardMsg::Batch { msgs: untold })
                    }
                },
            );
        }
    }

    /// Cluster mode: reaped users (see [`ShardMsg::Reaped`]) are announced offline in their
    /// groups, which the store has.
    fn load_reaped_groups(&self, users: Vec<UserId>) {
        let asked = users.clone();
        self.store_to_inbox(
            |reply| Request::GroupsOfUsers {
                users: asked,
                reply,
            },
            move |result| ShardMsg::ReapedGroups { users, result },
        );
    }

    fn reaped_groups(&self, users: Vec<UserId>, result: Result<Vec<Vec<GroupId>>, StoreError>) {
        let groups = match result {
            Ok(g) => g,
            Err(e) => {
                // Their replicas still say online until this is told: asked again (the store
                // may still be connecting, at a node's start), for a while.
                let now = Instant::now();
                let mut retries = self.reap_retries.borrow_mut();
                let since = retries
                    .iter()
                    .find(|r| r.users == users)
                    .map_or(now, |r| r.since);
                retries.retain(|r| r.users != users);
                if now.saturating_duration_since(since) < REAPED_RETRY_FOR {
                    tracing::debug!(users = users.len(), error = %e, "cluster: reaped users' groups not read yet; asking again");
                    retries.push(ReapRetry {
                        next: now + REAPED_RETRY_EVERY,
                        since,
                        users,
                    });
                } else {
                    tracing::warn!(users = users.len(), error = %e, "cluster: reaped users' groups not read; they stay online elsewhere until they connect and leave again");
                }
                return;
            }
        };
        self.reap_retries.borrow_mut().retain(|r| r.users != users);
        let users = users
            .into_iter()
            .zip(groups)
            .map(|(u, g)| (u, Arc::from(g)))
            .collect();
        self.settle_in_cluster(users, events::now_ms());
    }

    fn presence_changed(
        &self,
        user: UserId,
        online: bool,
        announce: Option<(Arc<[GroupId]>, Bytes)>,
    ) {
        if online {
            self.online.borrow_mut().insert(user);
        } else {
            self.online.borrow_mut().remove(&user);
        }
        let Some((groups, frame)) = announce else {
            return;
        };
        self.presence_log
            .borrow_mut()
            .record(events::now_ms(), user, online, groups.clone());
        let n = self.fanout.deliver_presence(self, user, &groups, &frame);
        self.stats.deliveries.fetch_add(n, Relaxed);
    }

    /// Periodic duties: pings, pong and connect deadlines, forgetting idle rate-limit buckets,
    /// the drain's next closes, presence announcements whose debounce window has ended, idle
    /// rooms.
    pub fn tick(&self, now: Instant) {
        self.last_tick.set(now);
        self.drain_step(now);
        let due = if self.stopping.get() {
            self.presence.borrow_mut().flush()
        } else {
            let mono = now.saturating_duration_since(self.epoch).as_millis() as u64;
            self.presence.borrow_mut().tick(mono)
        };
        for a in due {
            self.announce(a);
        }
        self.sweep_rooms(now);
        if self.shared.cluster.is_some() {
            self.expire_forwards(now);
            self.expire_gap_asks(now);
            self.expire_handovers(now);
            self.retry_reaps(now);
        }
        let now = crate::conn::Tick::since(self.epoch, now);
        let conns: Vec<Rc<Conn>> = self.conns.borrow().values().cloned().collect();
        for c in conns {
            c.tick(self, now);
            if c.polling_close_overdue() {
                // Nobody fetched the close of this long-polling session in time.
                self.conn_closed(&c);
            }
        }
        self.limiter.borrow_mut().sweep(events::now_ms());
        self.event_limiter
            .borrow_mut()
            .sweep(self.coarse_ms() as i64);
    }
}

/// Cluster mode: a group's owner node, forwarding, and rooms on the bus (see
/// [`crate::cluster`]). Without `CORECAST_CLUSTER` none of this runs.
impl Shard {
    /// The group's owner node when it is not this one (cluster mode only).
    fn owner_node_elsewhere(&self, group: &GroupId) -> Option<Arc<str>> {
        let c = self.shared.cluster.as_ref()?;
        if let Some((to, _)) = self.handover.borrow().moved.get(group) {
            return Some(to.clone());
        }
        let nodes = self.nodes.borrow();
        if c.is_leaving() {
            // Draining: every group is another node's (this one alone keeps its own).
            let others: Vec<&Arc<str>> = nodes.iter().filter(|n| ***n != *c.me).collect();
            return corecast_shard_router::owner_node_of_group(group, &others)
                .map(|n| (*n).clone());
        }
        let owner = corecast_shard_router::owner_node_of_group(group, &nodes)?;
        (**owner != *c.me).then(|| owner.clone())
    }

    /// The node that owned `group` before this one took it, if another: its owner among the
    /// other live nodes and those that left lately (a node that joined takes groups from live
    /// nodes; one that left gives its groups to the others).
    fn previous_owner(&self, group: &GroupId) -> Option<Arc<str>> {
        let c = self.shared.cluster.as_ref()?;
        let h = self.handover.borrow();
        let nodes = self.nodes.borrow();
        let candidates: Vec<&Arc<str>> = nodes
            .iter()
            .chain(h.left.iter().map(|(n, _)| n))
            .filter(|n| ***n != *c.me)
            .collect();
        corecast_shard_router::owner_node_of_group(group, &candidates).map(|n| (*n).clone())
    }

    /// A `sendMessage` or `markAsRead` of a connection of this node, for a group another node
    /// owns: published on that node's channel (the owner gives it its id in the group's
    /// stream). Its answer comes back over the bus ([`ShardMsg::BusAnswer`]);
    /// a publish that reached no one (the owner node is not subscribed: gone) or failed is
    /// answered here.
    fn forward(&self, msg: ShardMsg) {
        let (group, user, event, origin) = match msg {
            ShardMsg::SendMessage {
                group,
                user,
                text,
                attachments,
                client_msg_id,
                origin,
                ..
            } => {
                let event = crate::cluster::Forwarded::SendMessage {
                    text,
                    attachments,
                    client_msg_id,
                };
                (group, user, event, origin)
            }
            ShardMsg::MarkRead {
                group,
                message,
                user,
                origin,
            } => {
                let event = crate::cluster::Forwarded::MarkRead { message: message.0 };
                (group, user, event, origin)
            }
            _ => unreachable!("invariant: forward is called with a sendMessage or markAsRead"),
        };
        let (Some(c), Some(owner)) = (&self.shared.cluster, self.owner_node_elsewhere(&group))
        else {
            return;
        };
        // One forwarded here goes on with its first node as the origin: the owner answers
        // there, and that node's own timeout covers a loss on the way.
        let (node, shard, conn, ack, local) = match origin {
            SendOrigin::Local(o) => (c.me.to_string(), o.shard, o.conn, o.ack, Some(o)),
            SendOrigin::Remote(r) => (r.node.to_string(), r.shard, r.conn, r.ack, None),
        };
        let forward = crate::cluster::Forward {
            group: group.as_str().to_owned(),
            user: user.0,
            event,
            node,
            shard: shard.0,
            conn: conn.0,
            ack,
        };
        c.stats.forwarded.fetch_add(1, Relaxed);
        c.stats.published.fetch_add(1, Relaxed);
        if let (Some(o), Some(ack)) = (&local, ack) {
            self.forwards
                .borrow_mut()
                .insert((o.shard, o.conn, ack), Instant::now());
        }
        let channel = crate::cluster::node_channel(&owner);
        let payload = forward.encode();
        self.bus_call(
            |c, done| c.bus.publish(channel, payload, Some(done)),
            move |r| {
                let reason = match r {
                    Ok(n) if n > 0 => return None,
                    Ok(_) => "the group's owner node is not reachable",
                    Err(_) => "the cluster bus is unavailable",
                };
                let origin = local?;
                Some(ShardMsg::ForwardLost { origin, reason })
            },
        );
    }

    /// Cluster mode: a live-list change. A group's owner follows it; groups released to a
    /// node the list now shows follow it too, and every group this node owns is taken from
    /// its previous owner again before its next event (the list may have moved it).
    fn nodes_changed(&self, live: Arc<[Arc<str>]>) {
        let mut h = self.handover.borrow_mut();
        h.taken.clear();
        h.moved.retain(|_, (to, _)| !live.contains(to));
        let now = Instant::now();
        for gone in self.nodes.borrow().iter().filter(|n| !live.contains(n)) {
            h.left.push((gone.clone(), now));
        }
        h.left.retain(|(n, _)| !live.contains(n));
        drop(h);
        *self.nodes.borrow_mut() = live;
    }

    /// Whether an event of `group` must wait for its previous owner node to release the room:
    /// this node owns the group, has not taken it since the live list last changed, and the
    /// group would be another live node's without this one. That node may still be minting,
    /// storing and publishing events of the group (its list may not show this node yet), so
    /// this node holds the group's events until it answers ([`Shard::release_asked`]), and
    /// the group's events stay in id order across the move.
    fn taking_over(&self, group: &GroupId) -> bool {
        let Some(c) = &self.shared.cluster else {
            return false;
        };
        if self.handover.borrow().waiting.contains_key(group) {
            return true;
        }
        if c.is_leaving() || self.handover.borrow().taken.contains(group) {
            return false;
        }
        match self.previous_owner(group) {
            Some(_) => true,
            None => {
                self.handover.borrow_mut().taken.insert(group.clone());
                false
            }
        }
    }

    /// Holds an event of a group this node is taking over; the first one asks the previous
    /// owner node to release the room.
    fn hold_for_release(&self, msg: ShardMsg) {
        let group = match &msg {
            ShardMsg::SendMessage { group, .. } | ShardMsg::MarkRead { group, .. } => group.clone(),
            _ => unreachable!("invariant: only events of a group's stream are held"),
        };
        let first = {
            let mut h = self.handover.borrow_mut();
            let (_, held) = h
                .waiting
                .entry(group.clone())
                .or_insert_with(|| (Instant::now(), Vec::new()));
            held.push(msg);
            held.len() == 1
        };
        if !first {
            return;
        }
        let (Some(c), Some(previous)) = (&self.shared.cluster, self.previous_owner(&group)) else {
            return self.released(group, None);
        };
        let ask = crate::cluster::SettledAsk {
            from: &c.me,
            group: &group,
        }
        .encode_release();
        c.stats.published.fetch_add(1, Relaxed);
        let channel = crate::cluster::node_channel(&previous);
        self.bus_call(
            |c, done| c.bus.publish(channel, ask, Some(done)),
            move |r| match r {
                Ok(n) if n > 0 => None,
                // The previous owner is gone (no one took the request): nothing to wait for.
                _ => Some(ShardMsg::Released {
                    group,
                    settled: None,
                }),
            },
        );
    }

    /// On a group's previous owner node: node `from` owns the group now. From here on the
    /// group's events go to it, whatever this node's live list says (for a while: see
    /// [`MOVED_FOR`]); once the room has nothing waiting for the store, every event this node
    /// minted is delivered and published, and `from` is told so, with the last one.
    fn release_asked(&self, group: GroupId, from: Arc<str>) {
        let Some(c) = &self.shared.cluster else {
            return;
        };
        if *from == *c.me {
            return;
        }
        let held = {
            let mut h = self.handover.borrow_mut();
            h.moved
                .insert(group.clone(), (from.clone(), Instant::now()));
            h.taken.remove(&group);
            h.waiting.remove(&group)
        };
        // Events this node held to take the group itself go to `from` too.
        for msg in held.map(|(_, held)| held).unwrap_or_default() {
            self.handle(msg);
        }
        let busy = self
            .rooms
            .borrow()
            .get(&group)
            .is_some_and(|r| r.awaiting_store());
        if busy {
            self.handover
                .borrow_mut()
                .releasing
                .entry(group)
                .or_default()
                .push(from);
        } else {
            self.answer_release(&group, &from);
        }
    }

    fn answer_release(&self, group: &GroupId, to: &str) {
        let Some(c) = &self.shared.cluster else {
            return;
        };
        let now = events::now_ms() as u64;
        let settled = match self.rooms.borrow().get(group) {
            Some(room) => room.settled(now),
            None => MessageId(MessageId::new(now as i64, 0, 0).0.saturating_sub(1)),
        };
        let answer = crate::cluster::SettledAnswer {
            group: group.clone(),
            settled,
        };
        // After every publish of the group's events (one queue, in order): the new owner
        // hears of them first.
        c.publish(crate::cluster::node_channel(to), answer.encode_released());
    }

    /// A room asked for by a new owner node is done with the store: that node is told.
    fn release_if_done(&self, group: &GroupId) {
        if !self.handover.borrow().releasing.contains_key(group) {
            return;
        }
        let busy = self
            .rooms
            .borrow()
            .get(group)
            .is_some_and(|r| r.awaiting_store());
        if busy {
            return;
        }
        let to = self.handover.borrow_mut().releasing.remove(group);
        for node in to.unwrap_or_default() {
            self.answer_release(group, &node);
        }
    }

    /// On a group's new owner node: the previous owner released the room (or did not answer
    /// in time: `None`). Ids minted from now on follow the last it minted; the events held
    /// meanwhile are handled in order.
    fn released(&self, group: GroupId, settled: Option<MessageId>) {
        let held = {
            let mut h = self.handover.borrow_mut();
            let Some((_, held)) = h.waiting.remove(&group) else {
                return; // answered already (a late answer, or after the timeout)
            };
            h.taken.insert(group.clone());
            held
        };
        match settled {
            Some(s) => self.ids.borrow_mut().after(s),
            None => {
                tracing::debug!(%group, "cluster: the group's previous owner node is gone or did not answer in time; taking it")
            }
        }
        for msg in held {
            self.handle(msg);
        }
    }

    /// Releases not answered in time, and groups sent on to a node the live list never
    /// showed.
    fn expire_handovers(&self, now: Instant) {
        let late: Vec<GroupId> = {
            let mut h = self.handover.borrow_mut();
            h.moved
                .retain(|_, (_, since)| now.saturating_duration_since(*since) < MOVED_FOR);
            h.left
                .retain(|(_, since)| now.saturating_duration_since(*since) < MOVED_FOR);
            h.waiting
                .iter()
                .filter(|(_, (since, _))| now.saturating_duration_since(*since) >= RELEASE_TIMEOUT)
                .map(|(g, _)| g.clone())
                .collect()
        };
        for group in late {
            self.released(group, None);
        }
    }

    /// Asks the store again for the groups of reaped users whose retry is due.
    fn retry_reaps(&self, now: Instant) {
        let due: Vec<Vec<UserId>> = self
            .reap_retries
            .borrow_mut()
            .iter_mut()
            .filter(|r| r.next <= now)
            .map(|r| {
                r.next = now + REAPED_RETRY_FOR; // asked: waits for the answer
                r.users.clone()
            })
            .collect();
        for users in due {
            self.load_reaped_groups(users);
        }
    }

    /// A forwarded `sendMessage` gets no answer from the owner node: its sender is told to
    /// retry (a resend with the same `clientMsgId` is answered with the original if the
    /// owner did store it). Once only: an answer given up on is dropped when it comes.
    fn forward_lost(&self, origin: Origin, reason: &str) {
        if let Some(ack) = origin.ack {
            let key = (origin.shard, origin.conn, ack);
            if self.forwards.borrow_mut().remove(&key).is_none() {
                return;
            }
        }
        let e = ClientError::new(
            Code::StorageUnavailable,
            format!("{reason}; retry with the same clientMsgId"),
        );
        self.reply(&origin, Err(e));
    }

    /// The bus lost Redis: answers published for this node meanwhile are lost, so every
    /// forwarded `sendMessage` still waiting is answered now; and the rooms on the bus hold
    /// for the gap ([`Shard::hold_for_gap`]).
    fn bus_down(&self) {
        self.hold_for_gap();
        let waiting: Vec<_> = self.forwards.borrow().keys().copied().collect();
        self.forwards_lost(
            waiting,
            "the cluster bus was lost before the group's owner node answered (the message may be stored)",
        );
    }

    /// [`Shard::forward_lost`] for each of `forwards`, as `forwards` keys them.
    fn forwards_lost(&self, forwards: Vec<(ShardId, ConnId, u64)>, reason: &str) {
        for (shard, conn, ack) in forwards {
            let origin = Origin {
                shard,
                conn,
                ack: Some(ack),
            };
            self.forward_lost(origin, reason);
        }
    }

    /// Forwarded `sendMessage`s that waited too long for their answer (see
    /// [`FORWARD_TIMEOUT`]).
    fn expire_forwards(&self, now: Instant) {
        let late: Vec<_> = self
            .forwards
            .borrow()
            .iter()
            .filter(|(_, &at)| now.saturating_duration_since(at) >= FORWARD_TIMEOUT)
            .map(|(&k, _)| k)
            .collect();
        self.forwards_lost(
            late,
            "the group's owner node did not answer in time (the message may be stored)",
        );
    }

    /// Answers `waiting` once `group`'s room is on the bus: the room subscribes to the
    /// group's channel at its first Subscribe, and no Subscribe is answered before Redis
    /// confirmed it, so a connection that is in the room gets every message the owner node
    /// publishes from then on.
    fn when_on_bus(&self, group: GroupId, waiting: WaitingSubscribe) {
        let mut rooms = self.bus_rooms.borrow_mut();
        match rooms.get_mut(&group) {
            Some(BusRoom { waiting: None, .. }) => {
                drop(rooms);
                self.subscribed_on_bus(group, waiting);
            }
            Some(BusRoom {
                waiting: Some(list),
                ..
            }) => list.push(waiting),
            None => {
                rooms.insert(group.clone(), BusRoom::subscribing(waiting));
                drop(rooms);
                let channel = crate::cluster::group_channel(&group);
                self.bus_call(
                    |c, done| c.bus.subscribe(channel, done),
                    move |result| Some(ShardMsg::BusSubscribed { group, result }),
                );
            }
        }
    }

    /// Redis's answer to a room's subscription.
    fn bus_subscribed(&self, group: GroupId, result: Result<(), corecast_cluster::BusError>) {
        use corecast_cluster::BusError;
        let settled = self
            .rooms
            .borrow()
            .get(&group)
            .map(|r| r.settled(events::now_ms() as u64));
        let waiting = {
            let mut rooms = self.bus_rooms.borrow_mut();
            let Some(room) = rooms.get_mut(&group) else {
                return; // forgotten meanwhile (its Subscribes were answered then)
            };
            let waiting = room.waiting.take().unwrap_or_default();
            match &result {
                // Down: still wanted, subscribed again before the bus is up.
                Ok(()) | Err(BusError::Down) => {
                    room.since = settled.unwrap_or(MessageId(0));
                }
                // Not counted by the bus: the next Subscribe asks again.
                Err(_) => {
                    rooms.remove(&group);
                }
            }
            waiting
        };
        if let Err(e) = &result {
            tracing::warn!(%group, error = %e, "room not subscribed on the cluster bus: other nodes' messages do not reach it live");
        }
        for w in waiting {
            self.subscribed_on_bus(group.clone(), w);
        }
    }

    /// A Subscribe whose room is on the bus is answered; a connect-time one of a group another
    /// node owns, with that node's settled id for the room. A recovering CONNECT reads the
    /// store up to the id it is given and takes the deliveries that follow: this node's room
    /// does not know what waits for the store on the owner (an event the store answered while
    /// an earlier one still waits, held back there), the owner's settled id does. Asked once
    /// for every Subscribe waiting meanwhile (`Q`, answered `W`); without an answer in
    /// [`GAP_ASK_TIMEOUT`], this node's own settled id is given.
    fn subscribed_on_bus(&self, group: GroupId, w: WaitingSubscribe) {
        let ask = w.reason == SubReason::Connect
            && w.result.is_ok()
            && self.config().recovery.enabled
            && self.owner_node_elsewhere(&group).is_some();
        if !ask {
            return self.answer_subscribe(w.origin, group, w.reason, w.result);
        }
        let first = {
            let mut rooms = self.bus_rooms.borrow_mut();
            let Some(r) = rooms.get_mut(&group) else {
                drop(rooms);
                return self.answer_subscribe(w.origin, group, w.reason, w.result);
            };
            match &mut r.settling {
                Some((_, list)) => {
                    list.push(w);
                    false
                }
                None => {
                    r.settling = Some((Instant::now(), vec![w]));
                    true
                }
            }
        };
        if first {
            self.ask_owner_settled(&group);
        }
    }

    /// Asks the group's owner node for its room's settled id ([`ShardMsg::SettledAsked`]).
    fn ask_owner_settled(&self, group: &GroupId) {
        let (Some(c), Some(owner)) = (&self.shared.cluster, self.owner_node_elsewhere(group))
        else {
            return;
        };
        let ask = crate::cluster::SettledAsk { from: &c.me, group };
        c.publish(crate::cluster::node_channel(&owner), ask.encode());
    }

    /// The owner node's settled id for the room: the connect-time Subscribes waiting for it
    /// are answered with it (`None`: it did not answer in time: with their own), and a gap
    /// fill waiting for it reads up to it.
    fn owner_settled(&self, group: GroupId, settled: Option<MessageId>) {
        let waiting = self
            .bus_rooms
            .borrow_mut()
            .get_mut(&group)
            .and_then(|r| r.settling.take())
            .map(|(_, list)| list)
            .unwrap_or_default();
        for w in waiting {
            let result = match (settled, w.result) {
                (Some(s), Ok(_)) => Ok(s),
                (_, r) => r,
            };
            self.answer_subscribe(w.origin, group.clone(), w.reason, result);
        }
        if let Some(s) = settled {
            self.gap_settled(group, s);
        }
    }

    /// The room of `group` is forgotten: its bus subscription is given back.
    fn off_bus(&self, group: &GroupId) {
        let Some(c) = &self.shared.cluster else {
            return;
        };
        let Some(was) = self.bus_rooms.borrow_mut().remove(group) else {
            return;
        };
        let settling = was.settling.map(|(_, list)| list);
        for w in was.waiting.into_iter().chain(settling).flatten() {
            self.answer_subscribe(w.origin, group.clone(), w.reason, w.result);
        }
        c.bus
            .unsubscribe(crate::cluster::group_channel(group), Box::new(|_| {}));
    }

    /// A group message another node published: to this node's places in the room, as the
    /// owner's own deliveries go. Held while a gap fill reads the store; one this node
    /// delivered already (from a gap fill) is dropped.
    fn bus_delivered(&self, group: &GroupId, id: MessageId, frame: &Bytes) {
        {
            let mut rooms = self.bus_rooms.borrow_mut();
            if let Some(r) = rooms.get_mut(group) {
                if let Some(held) = &mut r.held {
                    held.push((id, frame.clone()));
                    return;
                }
                if r.delivered.is_some_and(|d| id <= d) {
                    return;
                }
                r.delivered = Some(id);
            }
        }
        self.deliver_here(group, id, frame);
    }

    /// Hands a group message to the shards with connections in the room.
    fn deliver_here(&self, group: &GroupId, id: MessageId, frame: &Bytes) {
        let to = match self.rooms.borrow().get(group) {
            Some(room) => room.fanout(),
            None => return,
        };
        self.deliver_to_shards(&to, group, frame, Event::Stored(id), Instant::now(), None);
    }

    /// The bus lost Redis: what the owner nodes publish until it is back does not arrive.
    /// From now on each room on the bus whose group another node owns holds what the bus
    /// brings (the bus may hand over messages of the new connection before it says it is up),
    /// until its gap is filled from the store ([`Shard::bus_up`]).
    fn hold_for_gap(&self) {
        let groups: Vec<GroupId> = self
            .bus_rooms
            .borrow()
            .iter()
            .filter(|(_, r)| r.waiting.is_none() && r.held.is_none())
            .map(|(g, _)| g.clone())
            .collect();
        for group in groups {
            if self.owner_node_elsewhere(&group).is_none() {
                continue; // this node's own messages were delivered here as they were stored
            }
            if let Some(r) = self.bus_rooms.borrow_mut().get_mut(&group) {
                r.held = Some(Vec::new());
            }
        }
    }

    /// The bus is connected again after a loss: each room holding for a gap asks the group's
    /// owner node for its room's settled id, then reads the store after the last event it
    /// delivered up to that id ([`Shard::gap_settled`]). Every event up to the owner's
    /// settled id was answered by the store and published, so one the bus did not bring is
    /// in the store; every later one is published after the answer, and the bus (subscribed
    /// again before `Up`) brings it, held meanwhile.
    fn bus_up(&self) {
        self.restore_presence();
        let Some(c) = &self.shared.cluster else {
            return;
        };
        let now = Instant::now();
        let groups: Vec<GroupId> = self
            .bus_rooms
            .borrow_mut()
            .iter_mut()
            .filter(|(_, r)| r.held.is_some() && !r.filling)
            .map(|(g, r)| {
                r.filling = true;
                r.asked = Some(now);
                g.clone()
            })
            .collect();
        for group in groups {
            match self.owner_node_elsewhere(&group) {
                Some(owner) => {
                    let ask = crate::cluster::SettledAsk {
                        from: &c.me,
                        group: &group,
                    };
                    c.publish(crate::cluster::node_channel(&owner), ask.encode());
                }
                // This node owns the group now: nothing of it travels on the bus to here.
                None => self.gap_settled(group, MessageId(i64::MAX as u64)),
            }
        }
    }

    /// The bus is back after a loss (Redis may have restarted empty). The users whose
    /// arrival or departure Redis could not be told are told now, if it is still so (and
    /// announced if due); this shard's other users announced online are put back in the
    /// cluster's presence without a new announcement: those with a connection as being on
    /// this node, those whose last connection here closed within the window only as
    /// announced (their offline announcement is due here).
    fn restore_presence(&self) {
        let untold: Vec<_> = self.presence_untold.borrow_mut().drain().collect();
        let mut told = HashSet::new();
        let mut settle = Vec::new();
        for (user, (online, groups)) in untold {
            let (conns, leaving) = {
                let p = self.presence.borrow();
                (p.conns(&user), p.leaving(&user))
            };
            // Only if it is still so (the user may have come and gone again meanwhile).
            if (conns > 0) != online {
                continue;
            }
            told.insert(user);
            self.tell_cluster(user, online, groups.clone());
            if !online && !leaving {
                // The window ended while Redis could not be told: announced offline now if
                // it was announced online (restored so below, in case Redis lost that too).
                settle.push((user, groups));
            }
        }
        let (here, mut leaving): (Vec<u64>, Vec<u64>) = {
            let p = self.presence.borrow();
            p.announced()
                .filter(|u| !told.contains(u))
                .map(|u| u.0)
                .partition(|&u| p.conns(&UserId(u)) > 0)
        };
        leaving.extend(settle.iter().map(|(u, _)| u.0));
        for (users, here) in [(here, true), (leaving, false)] {
            for step in users.chunks(corecast_cluster::presence::STEP) {
                let step = step.to_vec();
                self.bus_call(
                    |c, done| c.presence.restore(&step, here, done),
                    |r| {
                        if let Err(e) = r {
                            tracing::warn!(error = %e, "cluster presence not restored");
                        }
                        None
                    },
                );
            }
        }
        self.settle_in_cluster(settle, events::now_ms());
    }

    /// On the group's owner node: another node asks for the room's settled id (see
    /// [`Shard::bus_up`]). A room not in memory has nothing waiting for the store.
    fn settled_asked(&self, group: GroupId, from: &str) {
        let Some(c) = &self.shared.cluster else {
            return;
        };
        let now = events::now_ms() as u64;
        let settled = match self.rooms.borrow().get(&group) {
            Some(room) => room.settled(now),
            None => MessageId(MessageId::new(now as i64, 0, 0).0.saturating_sub(1)),
        };
        let answer = crate::cluster::SettledAnswer { group, settled };
        c.publish(crate::cluster::node_channel(from), answer.encode());
    }

    /// The owner node's settled id for a gap fill (or, when it did not answer in time,
    /// everything stored): read the store up to it.
    fn gap_settled(&self, group: GroupId, upto: MessageId) {
        let after = {
            let mut rooms = self.bus_rooms.borrow_mut();
            let Some(r) = rooms.get_mut(&group) else {
                return;
            };
            if r.asked.take().is_none() {
                return; // answered already (a late answer, or after the timeout)
            }
            r.upto = upto;
            r.delivered.unwrap_or(r.since)
        };
        self.read_gap(group, after, upto);
    }

    /// Gap fills whose owner node did not say its settled id within [`GAP_ASK_TIMEOUT`] read
    /// everything stored (the owner may be gone; see docs/architecture.md for the window
    /// this leaves).
    fn expire_gap_asks(&self, now: Instant) {
        let late: Vec<GroupId> = self
            .bus_rooms
            .borrow()
            .iter()
            .filter(|(_, r)| {
                r.asked
                    .is_some_and(|at| now.saturating_duration_since(at) >= GAP_ASK_TIMEOUT)
            })
            .map(|(g, _)| g.clone())
            .collect();
        for group in late {
            tracing::warn!(%group, "cluster bus: the group's owner node did not say how far to fill the gap; reading all");
            self.gap_settled(group, MessageId(i64::MAX as u64));
        }
        let late: Vec<GroupId> = self
            .bus_rooms
            .borrow()
            .iter()
            .filter(|(_, r)| {
                r.settling
                    .as_ref()
                    .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= GAP_ASK_TIMEOUT)
            })
            .map(|(g, _)| g.clone())
            .collect();
        for group in late {
            tracing::warn!(%group, "cluster bus: the group's owner node did not say its settled id; recovering clients get this node's");
            self.owner_settled(group, None);
        }
    }

    fn read_gap(&self, group: GroupId, after: MessageId, upto: MessageId) {
        let read = group.clone();
        self.store_to_inbox(
            |reply| Request::Since {
                group: read,
                after,
                upto,
                limit: GAP_READ,
                reply,
            },
            move |result| ShardMsg::GapRead { group, result },
        );
    }

    /// A gap fill's store read answered: deliver what the bus did not bring, in id order and
    /// below the first message the bus brought since (later ones come from the bus), then the
    /// held ones. A failed read leaves the gap (the members' clients get it by recovery).
    fn gap_read(&self, group: GroupId, result: Result<Vec<GroupEvent>, StoreError>) {
        let (boundary, mut last) = match self.bus_rooms.borrow().get(&group) {
            Some(r) => (
                r.held.as_ref().and_then(|h| h.first()).map(|&(id, _)| id),
                r.delivered.unwrap_or(r.since),
            ),
            None => return,
        };
        let mut more = false;
        match result {
            Ok(stream) => {
                more = stream.len() >= GAP_READ;
                let mut filled = 0u64;
                for e in &stream {
                    let id = e.id();
                    if id <= last {
                        continue;
                    }
                    if boundary.is_some_and(|b| id >= b) {
                        more = false;
                        break;
                    }
                    let frame = match e {
                        GroupEvent::Message(m) => events::new_message_frame(m),
                        GroupEvent::Read(r) => {
                            events::message_read_frame(&group, r.message, r.user)
                        }
                    };
                    self.deliver_here(&group, id, &frame);
                    last = id;
                    filled += 1;
                }
                if filled > 0 {
                    tracing::info!(%group, filled, "cluster bus: gap filled from the store");
                    if let Some(c) = &self.shared.cluster {
                        c.stats.gap_filled.fetch_add(filled, Relaxed);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(%group, error = %e, "cluster bus: the gap could not be read from the store");
            }
        }
        let held = {
            let mut rooms = self.bus_rooms.borrow_mut();
            let Some(r) = rooms.get_mut(&group) else {
                return;
            };
            if last > r.delivered.unwrap_or(MessageId(0)) {
                r.delivered = Some(last);
            }
            r.filling = more;
            let down = self.shared.cluster.as_ref().is_some_and(|c| !c.bus.is_up());
            if more || down {
                // More to read; or lost again meanwhile: the next `Up` reads on from here.
                None
            } else {
                r.held.take()
            }
        };
        if more {
            let upto = self
                .bus_rooms
                .borrow()
                .get(&group)
                .map_or(MessageId(0), |r| r.upto);
            return self.read_gap(group, last, upto);
        }
        for (id, frame) in held.into_iter().flatten() {
            self.bus_delivered(&group, id, &frame);
        }
    }

    /// Calls the bus with a `done` whose outcome `answer` turns into a message for this
    /// shard's inbox. From the bus thread it waits for room in the inbox; a call the bus
    /// refuses at once (queue full, stopped) is answered on this thread, which must not wait
    /// on its own inbox: that answer is queued as this shard's next message instead.
    fn bus_call<T: 'static>(
        &self,
        call: impl FnOnce(&crate::cluster::ClusterHandle, corecast_cluster::Done<T>),
        answer: impl FnOnce(Result<T, corecast_cluster::BusError>) -> Option<ShardMsg> + Send + 'static,
    ) {
        let Some(c) = &self.shared.cluster else {
            return;
        };
        let shared = self.shared.clone();
        let me = self.id;
        let here = std::thread::current().id();
        call(
            c,
            Box::new(move |r| {
                let Some(msg) = answer(r) else { return };
                if std::thread::current().id() == here {
                    BUS_REFUSED.with(|q| q.borrow_mut().push(msg));
                } else {
                    shared.send_blocking(me, msg);
                }
            }),
        );
        let refused = BUS_REFUSED.with(|q| std::mem::take(&mut *q.borrow_mut()));
        for msg in refused {
            self.send_to_shard(self.id, msg);
        }
    }
}

/// Fan-out across shards (the per-connection part is [`Fanout`], fanout.rs).
impl Shard {
    /// On a group's owner shard: hands `frame` to each of the shards `to` (the room's places
    /// with subscribers), for their connections in `group`'s room. `stored_at`: when the
    /// owner broadcast it; `ingress`: when the sender's shard parsed it (a client's message).
    pub fn deliver_to_shards(
        &self,
        to: &[ShardId],
        group: &GroupId,
        frame: &Bytes,
        event: Event,
        stored_at: Instant,
        ingress: Option<Instant>,
    ) {
        for &shard in to {
            self.send_to_shard(
                shard,
                ShardMsg::Deliver {
                    group: group.clone(),
                    frame: frame.clone(),
                    event,
                    except_user: None,
                    stored_at,
                    ingress,
                },
            );
        }
    }

    /// On a shard with connections in the room: a [`ShardMsg::Deliver`] arrived. Writes it
    /// and records how long it took to get here.
    pub(crate) fn delivered(
        &self,
        group: &GroupId,
        frame: &Bytes,
        event: Event,
        except_user: Option<UserId>,
        stored_at: Instant,
        ingress: Option<Instant>,
    ) {
        let n = self.fanout.deliver(self, group, frame, event, except_user);
        self.stats.deliveries.fetch_add(n, Relaxed);
        let now = Instant::now();
        self.due.borrow_mut().queued_at(now);
        let fanout = now.saturating_duration_since(stored_at);
        self.stats.delivery_latency.observe(fanout);
        if let Some(ingress) = ingress {
            self.stats.hop(Hop::Fanout, fanout);
            self.stats.hop(Hop::Total, now - ingress);
        }
    }
}

/// The `userOnline` frame saying `user` is `online` (or not), framed once for every recipient.
pub(crate) fn user_online_frame(user: UserId, online: bool) -> Bytes {
    event_frame(
        Role::Server,
        "userOnline",
        &[&events::user_online_json(user, online)],
    )
}

/// What a connection asks of its shard ([`crate::outbox`]), each a call of the shard's own
/// pub fns; here, so that outbox.rs, conn.rs and send.rs import nothing of this file.
mod outbox_impl {
    use super::{Origin, Shard};
    use crate::auth::Verifier;
    use crate::config::Config;
    use crate::conn::{Conn, ConnId};
    use crate::engine::{Tick, Timing};
    use crate::events::{ClientError, Command, Query};
    use crate::metrics::ShardStats;
    use crate::outbox::Outbox;
    use crate::recovery::PidKey;
    use crate::send::{Due, SendSide, Sender};
    use corecast_shard_router::ShardId;
    use corecast_storage::{GroupId, MessageId, UserId};
    use std::cell::{Ref, RefCell, RefMut};
    use std::collections::HashMap;
    use std::rc::Rc;

    impl Outbox for Shard {
        fn shard_id(&self) -> ShardId {
            self.id
        }

        fn node_tag(&self) -> u32 {
            self.shared.cluster.as_ref().map_or(0, |c| c.tag)
        }

        fn config(&self) -> &Config {
            Shard::config(self)
        }

        fn tick_now(&self) -> Tick {
            Shard::tick_now(self)
        }

        fn timing(&self) -> Timing {
            Shard::timing(self)
        }

        fn stats(&self) -> &ShardStats {
            &self.stats
        }

        fn verifier(&self) -> &Verifier {
            &self.shared.verifier
        }

        fn pids(&self) -> &PidKey {
            &self.shared.pids
        }

        fn scratch(&self) -> RefMut<'_, Vec<u8>> {
            self.scratch.borrow_mut()
        }

        fn schedule_socket_write(&self, conn: ConnId) {
            self.due.borrow_mut().add(conn);
        }

        fn next_conn_id(&self) -> ConnId {
            Shard::next_conn_id(self)
        }

        fn register(&self, conn: Rc<Conn>) {
            self.register_conn(conn);
        }

        fn transfer_ticket(&self, ticket: crate::admission::Ticket, conn: &Conn) {
            Shard::transfer_ticket(self, ticket, conn);
        }

        fn authenticated(&self, conn: &Rc<Conn>, user: UserId) {
            Shard::authenticated(self, conn, user);
        }

        fn left_namespace(&self, conn: &Rc<Conn>) {
            self.socket_disconnected(conn);
        }

        fn closed(&self, conn: &Rc<Conn>) {
            self.conn_closed(conn);
        }

        fn admit_event(&self, conn: &Conn, ack: Option<u64>) -> bool {
            Shard::admit_event(self, conn, ack)
        }

        fn join(&self, conn: &Rc<Conn>, group: GroupId, ack: Option<u64>) {
            Shard::join(self, conn, group, ack);
        }

        fn leave(&self, conn: &Rc<Conn>, group: &GroupId) {
            Shard::leave(self, conn, group);
        }

        fn submit_message(&self, conn: &Rc<Conn>, cmd: Command, ack: Option<u64>) {
            self.send_message(conn, cmd, ack);
        }

        fn mark_read(&self, conn: &Rc<Conn>, group: GroupId, message: MessageId, ack: Option<u64>) {
            Shard::mark_read(self, conn, group, message, ack);
        }

        fn query_room(&self, conn: &Rc<Conn>, group: GroupId, query: Query, ack: Option<u64>) {
            Shard::query_room(self, conn, group, query, ack);
        }

        fn reply(&self, conn: &Conn, ack: Option<u64>, result: Result<Vec<u8>, ClientError>) {
            let origin = Origin {
                shard: self.id,
                conn: conn.id,
                ack,
            };
            Shard::reply(self, &origin, result);
        }
    }

    impl SendSide for Shard {
        fn due(&self) -> &RefCell<Due> {
            &self.due
        }

        fn ring(&self) -> &RefCell<Sender> {
            &self.sender
        }

        fn conns(&self) -> Ref<'_, HashMap<ConnId, Rc<Conn>>> {
            self.conns.borrow()
        }
    }
}
