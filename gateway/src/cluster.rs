//! Cluster mode (`CORECAST_CLUSTER=redis://...`): this node's way to the other gateway nodes,
//! over the bus of `corecast-cluster` (Redis pub/sub on a thread of its own).
//!
//! What goes over the bus, and on which channel (every name starts with [`PREFIX`]):
//! - `g:{group}` (`M`): each event of the group's stream (a message or a read receipt),
//!   published once by the group's owner node (the event id and the encoded frame). Every node
//!   with connections in the group's room is subscribed (its room's owner shard subscribes
//!   before it answers the first Subscribe) and hands the frame to its shards as it does a
//!   local delivery. One publisher per group and Redis's per-connection order give every node
//!   the owner's order.
//! - `n:{node}`: what is for one node: a `sendMessage` or `markAsRead` forwarded by a node
//!   that does not own the group (`S`) and the answer to one, published after the group's
//!   event (`A`); a gap fill's question for the owner's settled id (`Q`) and its answer
//!   (`W`); a node's word that it applied a membership change (`D`).
//! - `members` (`C`): a membership change made through one node's admin API, for the others'
//!   rooms; a node's word that it is live (`J`, at start: so that a node restarted under the
//!   same id before the others saw it leave is counted again) or leaving (`X`, at the start
//!   of a drain: the others stop giving it groups at once).
//! - `n:{node}` also carries the hand-over of a group's room when its owner changes: the new
//!   owner's request (`R`) and the previous owner's release (`L`), sent once every event it
//!   minted was published (shard.rs, "Hand-over").
//!
//! The owner node of a group is [`corecast_shard_router::owner_node_of_group`] over the live
//! nodes of the [`Registry`]; each shard holds a replica of that list (`ShardMsg::Nodes`).
//!
//! Everything arriving on the bus is decoded on the bus thread ([`BusMessage::decode`], pure:
//! anyone with access to Redis can publish, so it must refuse any bytes without panicking) and
//! handed to a shard's inbox (waiting for room when the inbox is full, as the store's threads
//! do: Redis then buffers for this node). Nothing here runs on a reactor except the encoding
//! of what a shard publishes.

use crate::shard::{RemoteOrigin, SendOrigin, ShardMsg, Trace};
use bytes::{BufMut, Bytes, BytesMut};
use corecast_cluster::{
    Bus, BusConfig, BusEvent, BusHandle, Change, ClusterLimit, ClusterPresence, Registry,
    RegistryConfig,
};
use corecast_shard_router::{owner_of_group, InboxHandle, ShardId};
use corecast_storage::{Attachment, GroupId, MembershipChange, MessageId, UserId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The start of every channel and key name of corecast in Redis.
pub const PREFIX: &str = "corecast:";

/// How long a node waits at start for Redis to confirm its own channels.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The channel of a group's messages.
pub fn group_channel(group: &GroupId) -> String {
    format!("{PREFIX}g:{}", group.as_str())
}

/// The channel of what is for one node.
pub fn node_channel(node: &str) -> String {
    format!("{PREFIX}n:{node}")
}

/// The channel of membership changes.
pub fn members_channel() -> String {
    format!("{PREFIX}members")
}

/// The groups whose co-members a presence announcement is for, as the announcement carries
/// them on [`ClusterPresence::channel`] (a JSON array of their ids).
pub fn groups_json(groups: &[GroupId]) -> Bytes {
    let groups: Vec<&str> = groups.iter().map(|g| g.as_str()).collect();
    Bytes::from(serde_json::to_vec(&groups).expect("invariant: strings always serialize"))
}

/// What the shards and the admin listener use of the cluster (in `Shared`).
pub struct ClusterHandle {
    pub bus: BusHandle,
    /// Who is connected on which node (Redis).
    pub presence: ClusterPresence,
    /// The per-user message limit every node shares (Redis).
    pub limit: ClusterLimit,
    /// This node's id.
    pub me: Arc<str>,
    /// The tag this node's session ids carry ([`crate::engine::node_tag`] of `me`).
    pub tag: u32,
    /// The first of this node's id generators (shard `s` mints with `generator_base + s`),
    /// claimed in Redis so that no two live nodes share one.
    pub generator_base: u16,
    /// Where the other live nodes' public listeners are, by tag.
    peers: Arc<Peers>,
    /// The live nodes as last told to the shards.
    live: Arc<Mutex<Arc<[Arc<str>]>>>,
    /// Set at the start of a drain: this node owns no group from then on.
    leaving: std::sync::atomic::AtomicBool,
    pub stats: Arc<ClusterStats>,
    waiters: Arc<Waiters>,
}

/// The other live nodes' public addresses by the tag their session ids carry, as the
/// registry last saw them (written by its thread, read by a shard for a request that names
/// another node's session).
#[derive(Default)]
struct Peers(std::sync::RwLock<std::collections::HashMap<u32, std::net::SocketAddr>>);

impl Peers {
    fn joined(&self, id: &str, info: &str) {
        let Some(addr) = info
            .strip_prefix("public=")
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        else {
            tracing::warn!(node = %id, %info, "cluster: a node without a public address; its sessions' requests are not forwarded");
            return;
        };
        let tag = crate::engine::node_tag(id);
        let mut peers = self.0.write().expect("invariant: no panic while held");
        peers.insert(tag, addr);
    }

    fn left(&self, id: &str) {
        let mut peers = self.0.write().expect("invariant: no panic while held");
        peers.remove(&crate::engine::node_tag(id));
    }
}

/// The bus's counters, for `/metrics`.
#[derive(Default)]
pub struct ClusterStats {
    /// Live nodes, this one included, as the registry saw them last.
    pub nodes: AtomicI64,
    /// 1 while connected to Redis.
    pub bus_up: AtomicI64,
    /// Bus messages published (group messages, forwards, answers, membership changes).
    pub published: AtomicU64,
    /// Publishes that failed (Redis unreachable, the bus queue full): for a group message,
    /// the other nodes' members did not get it live.
    pub publish_failures: AtomicU64,
    /// Bus messages received.
    pub received: AtomicU64,
    /// `sendMessage`s forwarded to the group's owner node.
    pub forwarded: AtomicU64,
    /// Bus messages that could not be decoded (a node of another version?).
    pub undecodable: AtomicU64,
    /// Times the bus connected to Redis (the first time included).
    pub connects: AtomicU64,
    /// Group messages delivered from the store after a bus reconnection (the gap).
    pub gap_filled: AtomicU64,
    /// TCP connections forwarded to another node: they brought a long-polling request or an
    /// upgrade for a session of that node.
    pub sessions_forwarded: AtomicU64,
    /// Such requests answered "Session ID unknown" here: the node is gone, or unreachable.
    pub forward_failures: AtomicU64,
    /// From a publish being handed to the bus to Redis having taken it.
    pub publish_latency: crate::metrics::Histogram,
    /// A group event from another node, from its id's making (on the owner, before the
    /// store) to this node handing it to its shards: the lag of the bus path.
    pub bus_delivery_age: crate::metrics::Histogram,
}

impl ClusterHandle {
    /// A drain begins: this node gives up its groups (each goes to its owner among the
    /// others, which takes the room over from this node), and the others are told at once.
    pub fn leave(&self) {
        if !self.leaving.swap(true, Relaxed) {
            self.publish(members_channel(), node_word(b'X', &self.me, ""));
        }
    }

    /// Whether this node is leaving ([`ClusterHandle::leave`]).
    pub fn is_leaving(&self) -> bool {
        self.leaving.load(Relaxed)
    }

    /// The live nodes, as the registry's last check saw them (a shard starts with them: the
    /// first check is made before the node listens).
    pub fn live(&self) -> Arc<[Arc<str>]> {
        self.live
            .lock()
            .expect("invariant: no panic while held")
            .clone()
    }

    /// Where the live node whose session ids carry `tag` listens; `None` for a node gone.
    pub fn peer(&self, tag: u32) -> Option<std::net::SocketAddr> {
        let peers = self.peers.0.read().expect("invariant: no panic while held");
        peers.get(&tag).copied()
    }

    /// Publishes `payload` on `channel`, counting it, and its failure.
    pub fn publish(&self, channel: String, payload: Bytes) {
        self.stats.published.fetch_add(1, Relaxed);
        let stats = self.stats.clone();
        let start = std::time::Instant::now();
        self.bus.publish(
            channel,
            payload,
            Some(Box::new(move |r| match r {
                Ok(_) => stats.publish_latency.observe(start.elapsed()),
                Err(_) => {
                    stats.publish_failures.fetch_add(1, Relaxed);
                }
            })),
        );
    }

    /// Publishes a membership change this node applied (from its admin API) for the other
    /// nodes, and waits (blocking: the admin listener's thread) until every other live node
    /// said it applied it to its connections, or [`MEMBERS_TIMEOUT`]. Returns how many did
    /// not answer in time.
    pub fn members_changed(&self, group: &GroupId, change: &MembershipChange) -> usize {
        let req = fastrand::u64(..);
        let (tx, rx) = std::sync::mpsc::channel();
        self.waiters
            .waiting
            .lock()
            .expect("invariant: no panic while held")
            .insert(req, tx);
        let others = (self.stats.nodes.load(Relaxed).max(1) - 1) as usize;
        let members = Members {
            group: group.as_str().to_owned(),
            added: change.added.clone(),
            removed: change.removed.clone(),
            req,
        };
        self.publish(members_channel(), members.encode(&self.me));
        let deadline = std::time::Instant::now() + MEMBERS_TIMEOUT;
        let mut answered = 0;
        while answered < others {
            let wait = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(wait) {
                Ok(()) => answered += 1,
                Err(_) => break,
            }
        }
        self.waiters
            .waiting
            .lock()
            .expect("invariant: no panic while held")
            .remove(&req);
        others - answered
    }

    /// Renders the counters in Prometheus text.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let s = &self.stats;
        for (name, kind, help, v) in [
            (
                "corecast_cluster_nodes",
                "gauge",
                "Live gateway nodes in the cluster, this one included.",
                s.nodes.load(Relaxed) as u64,
            ),
            (
                "corecast_bus_up",
                "gauge",
                "1 while the cluster bus is connected to Redis.",
                s.bus_up.load(Relaxed) as u64,
            ),
            (
                "corecast_bus_connects_total",
                "counter",
                "Times the cluster bus connected to Redis.",
                s.connects.load(Relaxed),
            ),
            (
                "corecast_bus_published_total",
                "counter",
                "Messages published on the cluster bus.",
                s.published.load(Relaxed),
            ),
            (
                "corecast_bus_publish_failures_total",
                "counter",
                "Publishes on the cluster bus that failed (Redis unreachable or the bus queue full).",
                s.publish_failures.load(Relaxed),
            ),
            (
                "corecast_bus_received_total",
                "counter",
                "Messages received from the cluster bus.",
                s.received.load(Relaxed),
            ),
            (
                "corecast_bus_forwarded_total",
                "counter",
                "sendMessage events forwarded to the group's owner node.",
                s.forwarded.load(Relaxed),
            ),
            (
                "corecast_bus_gap_filled_total",
                "counter",
                "Group messages read from the store after a bus reconnection, that the bus did not bring.",
                s.gap_filled.load(Relaxed),
            ),
            (
                "corecast_cluster_forwarded_connections_total",
                "counter",
                "TCP connections forwarded to another node for a long-polling request or upgrade of its session.",
                s.sessions_forwarded.load(Relaxed),
            ),
            (
                "corecast_cluster_forward_failures_total",
                "counter",
                "Requests for another node's session answered Session ID unknown here (the node gone or unreachable).",
                s.forward_failures.load(Relaxed),
            ),
            (
                "corecast_bus_undecodable_total",
                "counter",
                "Cluster bus messages that could not be decoded.",
                s.undecodable.load(Relaxed),
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
        crate::metrics::one_histogram(
            out,
            "corecast_bus_publish_latency_seconds",
            "From a publish handed to the cluster bus to Redis having taken it.",
            &s.publish_latency,
        );
        crate::metrics::one_histogram(
            out,
            "corecast_bus_delivery_age_seconds",
            "Age of a group event from another node when this node hands it to its shards (from its id's making on the owner node).",
            &s.bus_delivery_age,
        );
    }
}

/// The cluster parts a running node owns: its registration and the bus thread. Dropping it
/// deregisters the node, then stops the bus.
pub struct Node {
    registry: Option<Registry>,
    bus: Option<Bus>,
}

impl Drop for Node {
    fn drop(&mut self) {
        drop(self.registry.take());
        drop(self.bus.take());
    }
}

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cluster.url (CORECAST_CLUSTER): {0}")]
    Bus(#[from] corecast_cluster::BusError),
    #[error(
        "the cluster bus at {url} did not confirm this node's channels within {secs} s \
         (is redis-server running there?): {reason}"
    )]
    Unreachable {
        url: String,
        secs: u64,
        reason: String,
    },
}

/// Starts the bus and the registration; returns once Redis confirmed this node's channels.
/// The other nodes learn that this node's public listener is at `advertise`.
pub fn start(
    config: &corecast_config::ClusterConfig,
    inboxes: Vec<InboxHandle<ShardMsg>>,
    advertise: std::net::SocketAddr,
) -> Result<(Node, ClusterHandle), StartError> {
    let shards = u16::try_from(inboxes.len()).unwrap_or(u16::MAX);
    let info = format!("public={advertise}");
    let url = config.url.clone().unwrap_or_default();
    let me: Arc<str> = match &config.node_id {
        Some(id) => id.as_str().into(),
        None => format!("node-{:08x}", fastrand::u32(..)).into(),
    };
    let stats = Arc::new(ClusterStats::default());
    stats.nodes.store(1, Relaxed);
    let waiters = Arc::new(Waiters::default());
    let live: Arc<Mutex<Arc<[Arc<str>]>>> = Arc::new(Mutex::new(Arc::from(vec![me.clone()])));
    let peers = Arc::new(Peers::default());
    let router = Arc::new(Router {
        inboxes,
        me: me.clone(),
        live: live.clone(),
        others: Mutex::new(BTreeSet::new()),
        peers: peers.clone(),
        stats: stats.clone(),
        bus: std::sync::OnceLock::new(),
        waiters: waiters.clone(),
    });
    let on_bus = router.clone();
    let bus = Bus::start(
        BusConfig::new(url.clone()),
        Arc::new(move |ev| on_bus.on_bus(ev)),
    )?;
    let handle = bus.handle();
    let _ = router.bus.set(handle.clone());
    // This node's own channels, confirmed before any client can connect. The bus connects in
    // the background: a subscribe before it is up is only noted (and made at `Up`).
    let deadline = std::time::Instant::now() + START_TIMEOUT;
    let unreachable = |reason: String| StartError::Unreachable {
        url: url.clone(),
        secs: START_TIMEOUT.as_secs(),
        reason,
    };
    while !handle.is_up() {
        if std::time::Instant::now() >= deadline {
            return Err(unreachable("not connected".into()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let presence = ClusterPresence::new(handle.clone(), PREFIX, me.to_string());
    let (tx, rx) = std::sync::mpsc::channel();
    let channels = [node_channel(&me), members_channel(), presence.channel()];
    for channel in channels.iter().cloned() {
        let tx = tx.clone();
        handle.subscribe(channel, Box::new(move |r| drop(tx.send(r))));
    }
    for _ in 0..channels.len() {
        let wait = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(wait) {
            // Down: lost again at once; still wanted, and subscribed before the next `Up`.
            Ok(Ok(())) | Ok(Err(corecast_cluster::BusError::Down)) => {}
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => return Err(unreachable("no answer".into())),
        }
    }
    // What this node held before a restart under the same id (a kill -9 leaves it in Redis)
    // is not held now: reaped as a dead node's would be. Then the replicas learn who is
    // online anywhere.
    reap(presence.clone(), router.clone(), me.to_string());
    let (tx, rx) = std::sync::mpsc::channel();
    presence.online(Box::new(move |r| drop(tx.send(r))));
    let wait = deadline.saturating_duration_since(std::time::Instant::now());
    match rx.recv_timeout(wait) {
        Ok(Ok(users)) => {
            let users: Arc<[UserId]> = users.into_iter().map(UserId).collect();
            for s in 0..router.inboxes.len() {
                router.send(
                    ShardId(s as u16),
                    ShardMsg::OnlineSet {
                        users: users.clone(),
                    },
                );
            }
        }
        Ok(Err(e)) => return Err(unreachable(e.to_string())),
        Err(_) => return Err(unreachable("no answer".into())),
    }
    let on_peers = peers.clone();
    let on_change = router.clone();
    let reaper = presence.clone();
    let mut registry_config = RegistryConfig::new(PREFIX, me.to_string(), info.clone());
    registry_config.dead_after = Duration::from_secs(config.dead_after_secs);
    // A block of id generators of this node's own, one per shard: message ids are unique
    // across the nodes, even for one group while its owner moves.
    let wait = deadline.saturating_duration_since(std::time::Instant::now());
    let generator_base = corecast_cluster::claim_generators(
        &handle,
        &registry_config,
        shards,
        corecast_storage::GENERATORS,
        wait,
    )
    .map_err(|e| unreachable(e.to_string()))?;
    registry_config.generators = (generator_base, shards);
    registry_config.check_every = registry_config
        .check_every
        .min(registry_config.dead_after / 3);
    let registry = Registry::start(
        handle.clone(),
        registry_config,
        Arc::new(move |change| match change {
            Change::Joined { id, info } => {
                tracing::info!(node = %id, %info, "cluster: a node joined");
                on_peers.joined(&id, &info);
                on_change.node_is(&id, true);
            }
            Change::Left { id } => {
                tracing::info!(node = %id, "cluster: a node left");
                on_peers.left(&id);
                on_change.node_is(&id, false);
                // Its users who have no other node go offline (every survivor reaps;
                // Redis gives each user to one of them).
                reap(reaper.clone(), on_change.clone(), id);
            }
        }),
    );
    // The others count this node again, even those that never saw it leave.
    handle.publish(members_channel(), node_word(b'J', &me, &info), None);
    tracing::info!(node = %me, bus = %url, "cluster mode: this node is on the bus");
    Ok((
        Node {
            registry: Some(registry),
            bus: Some(bus),
        },
        ClusterHandle {
            limit: ClusterLimit::new(handle.clone(), PREFIX),
            bus: handle,
            presence,
            tag: crate::engine::node_tag(&me),
            generator_base,
            live,
            leaving: std::sync::atomic::AtomicBool::new(false),
            me,
            peers,
            stats,
            waiters,
        },
    ))
}

/// Takes node `dead`'s users off it in Redis, step by step (on the bus thread), handing
/// those who are online nowhere now to shard 0, which announces them offline.
fn reap(presence: ClusterPresence, router: Arc<Router>, dead: String) {
    let again = presence.clone();
    presence.reap(
        &dead.clone(),
        Box::new(move |r| match r {
            Ok((left, gone)) => {
                if !gone.is_empty() {
                    tracing::info!(node = %dead, users = gone.len(), "cluster: a gone node's users are offline");
                    let users = gone.into_iter().map(UserId).collect();
                    router.send(ShardId(0), ShardMsg::Reaped { users });
                }
                if left > 0 {
                    reap(again, router, dead);
                }
            }
            Err(e) => tracing::warn!(node = %dead, error = %e, "cluster: a gone node's users not reaped"),
        }),
    );
}

/// Hands what arrives on the bus to the shards (on the bus and registry threads).
struct Router {
    inboxes: Vec<InboxHandle<ShardMsg>>,
    me: Arc<str>,
    /// The live nodes as last told to the shards ([`ShardMsg::Nodes`]).
    live: Arc<Mutex<Arc<[Arc<str>]>>>,
    /// The other live nodes: as the registry saw them, less those leaving.
    others: Mutex<BTreeSet<String>>,
    /// Where they listen.
    peers: Arc<Peers>,
    stats: Arc<ClusterStats>,
    /// The bus, once started (the router is its handler, so it exists first).
    bus: std::sync::OnceLock<BusHandle>,
    waiters: Arc<Waiters>,
}

/// Membership changes this node's admin API published, waiting for the other nodes to say
/// they applied them: by request number, each with where to count the answers.
#[derive(Default)]
pub struct Waiters {
    waiting: Mutex<std::collections::HashMap<u64, std::sync::mpsc::Sender<()>>>,
}

/// How long an admin call waits for the other nodes to apply its membership change.
const MEMBERS_TIMEOUT: Duration = Duration::from_secs(10);

impl Router {
    fn send(&self, to: ShardId, msg: ShardMsg) {
        crate::shard::send_blocking(&self.inboxes, to, msg);
    }

    fn owner(&self, group: &GroupId) -> ShardId {
        owner_of_group(group, self.inboxes.len())
    }

    /// Node `id` is live (`true`) or not: the shards are told the new list if it changed
    /// it (or always, when the registry says so).
    fn node_is(&self, id: &str, live: bool) {
        let mut others = self.others.lock().expect("invariant: no panic while held");
        if live {
            others.insert(id.to_owned());
        } else {
            others.remove(id);
        }
        self.nodes_changed(&others);
    }

    fn nodes_changed(&self, others: &BTreeSet<String>) {
        let mut live: Vec<Arc<str>> = others.iter().map(|s| Arc::from(s.as_str())).collect();
        live.push(self.me.clone());
        live.sort();
        let live: Arc<[Arc<str>]> = live.into();
        *self.live.lock().expect("invariant: no panic while held") = live.clone();
        self.stats.nodes.store(live.len() as i64, Relaxed);
        for s in 0..self.inboxes.len() {
            self.send(ShardId(s as u16), ShardMsg::Nodes { live: live.clone() });
        }
    }

    fn on_bus(&self, ev: BusEvent) {
        match ev {
            BusEvent::Message { channel, payload } => {
                self.stats.received.fetch_add(1, Relaxed);
                if self.route(&channel, payload).is_none() {
                    self.stats.undecodable.fetch_add(1, Relaxed);
                    tracing::warn!(%channel, "cluster bus: a message that cannot be decoded");
                }
            }
            BusEvent::Up { epoch } => {
                self.stats.bus_up.store(1, Relaxed);
                self.stats.connects.fetch_add(1, Relaxed);
                if epoch > 1 {
                    // Redis pub/sub keeps no history: what was published while this node was
                    // away is in the store; each room reads it there (`Shard::bus_up`).
                    tracing::info!(epoch, "cluster bus: connected again; filling the gap");
                    for s in 0..self.inboxes.len() {
                        self.send(ShardId(s as u16), ShardMsg::BusUp);
                    }
                }
            }
            BusEvent::Down { .. } => {
                self.stats.bus_up.store(0, Relaxed);
                for s in 0..self.inboxes.len() {
                    self.send(ShardId(s as u16), ShardMsg::BusDown);
                }
            }
        }
    }

    /// Routes one bus message: [`BusMessage::decode`], then [`Router::dispatch`]; `None`
    /// when it cannot be decoded (nothing was done with it then).
    fn route(&self, channel: &str, payload: Bytes) -> Option<()> {
        let msg = BusMessage::decode(channel, payload, &self.me, self.inboxes.len())?;
        self.dispatch(msg);
        Some(())
    }

    /// Hands a decoded bus message to the shard it is for (or to every shard, or to the
    /// admin call waiting for it). What this node published itself is dropped here.
    fn dispatch(&self, msg: BusMessage) {
        match msg {
            BusMessage::Group { group, message: m } => {
                if m.from != *self.me {
                    let age = crate::events::now_ms().saturating_sub(m.id.millis()).max(0);
                    self.stats
                        .bus_delivery_age
                        .observe(Duration::from_millis(age as u64));
                    let msg = ShardMsg::BusDeliver {
                        group: group.clone(),
                        id: m.id,
                        frame: m.frame,
                    };
                    self.send(self.owner(&group), msg);
                }
            }
            BusMessage::Presence {
                user,
                online,
                announce,
            } => {
                // In Redis's order: reachability for the replicas, or an announcement too.
                let announce =
                    announce.map(|groups| (groups, crate::shard::user_online_frame(user, online)));
                for s in 0..self.inboxes.len() {
                    let announce = announce.clone();
                    self.send(
                        ShardId(s as u16),
                        ShardMsg::PresenceChanged {
                            user,
                            online,
                            announce,
                        },
                    );
                }
            }
            BusMessage::NodeWord { live, node, info } => {
                if node != *self.me {
                    tracing::info!(%node, live, "cluster: a node says it is live or leaving");
                    if live {
                        self.peers.joined(&node, &info);
                    }
                    self.node_is(&node, live);
                }
            }
            BusMessage::Members { from, change } => {
                if from != *self.me {
                    self.apply_remote_change(from, change);
                }
            }
            BusMessage::NotMine => {}
            BusMessage::Forward(f) => {
                let group = GroupId::new(f.group);
                let origin = SendOrigin::Remote(RemoteOrigin {
                    node: f.node.into(),
                    group: group.clone(),
                    shard: ShardId(f.shard),
                    conn: crate::conn::ConnId(f.conn),
                    ack: f.ack,
                });
                let user = UserId(f.user);
                let msg = match f.event {
                    Forwarded::SendMessage {
                        text,
                        attachments,
                        client_msg_id,
                    } => ShardMsg::SendMessage {
                        group: group.clone(),
                        user,
                        text,
                        attachments,
                        client_msg_id,
                        origin,
                        // The origin node applied the sender's rate limit.
                        admitted: true,
                        trace: Trace::new(std::time::Instant::now()),
                    },
                    Forwarded::MarkRead { message } => ShardMsg::MarkRead {
                        group: group.clone(),
                        message: MessageId(message),
                        user,
                        origin,
                    },
                };
                self.send(self.owner(&group), msg);
            }
            BusMessage::SettledAsked { from, group } => {
                let msg = ShardMsg::SettledAsked {
                    group: group.clone(),
                    from: from.into(),
                };
                self.send(self.owner(&group), msg);
            }
            BusMessage::ReleaseAsked { from, group } => {
                let msg = ShardMsg::ReleaseAsked {
                    group: group.clone(),
                    from: from.into(),
                };
                self.send(self.owner(&group), msg);
            }
            BusMessage::GapSettled { group, settled } => {
                let msg = ShardMsg::GapSettled {
                    group: group.clone(),
                    settled,
                };
                self.send(self.owner(&group), msg);
            }
            BusMessage::Released { group, settled } => {
                let msg = ShardMsg::Released {
                    group: group.clone(),
                    settled: Some(settled),
                };
                self.send(self.owner(&group), msg);
            }
            BusMessage::Applied { req } => {
                let waiting = self
                    .waiters
                    .waiting
                    .lock()
                    .expect("invariant: no panic while held");
                if let Some(tx) = waiting.get(&req) {
                    let _ = tx.send(());
                }
            }
            BusMessage::Answer(a) => {
                // `decode` checked `a.shard` against this node's shards.
                let msg = ShardMsg::BusAnswer {
                    group: a.group.clone(),
                    shard: a.shard,
                    conn: a.conn,
                    ack: a.ack,
                    frame: a.frame,
                };
                self.send(self.owner(&a.group), msg);
            }
        }
    }

    /// Another node's membership change, for this node's rooms: applied by the group's owner
    /// shard here, then confirmed to node `from` (`D`).
    fn apply_remote_change(&self, from: String, change: Members) {
        let group = GroupId::new(change.group);
        let (done, applied) = std::sync::mpsc::channel();
        let msg = ShardMsg::MembersChanged {
            group: group.clone(),
            change: MembershipChange {
                added: change.added,
                removed: change.removed,
            },
            done,
        };
        self.send(self.owner(&group), msg);
        // The room releases `done` once every shard here applied the change; the node that
        // made it waits for that (admin calls are rare: a thread each).
        if let Some(bus) = self.bus.get().cloned() {
            let req = change.req;
            let spawned = std::thread::Builder::new()
                .name("cc-members".into())
                .spawn(move || {
                    if applied.recv_timeout(MEMBERS_TIMEOUT).is_ok() {
                        bus.publish(node_channel(&from), applied_word(req), None);
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot confirm a membership change");
            }
        }
    }
}

/// One message from the bus, decoded but not acted on: [`BusMessage::decode`] is pure (no
/// state but this node's id and shard count), so that it is unit-tested and fuzzed
/// (`fuzz/fuzz_targets/bus_payload.rs`) without Redis or shards; the router dispatches it.
///
/// The channel says which kinds may come (the module's doc); on `n:{node}` the payload's first
/// byte is the kind. What this node published itself is decoded too (the router drops it).
#[derive(Debug, Clone, PartialEq)]
pub enum BusMessage {
    /// `g:{group}`, `M` ([`GroupMessage`]): an event of the group's stream.
    Group {
        /// From the channel's name.
        group: GroupId,
        message: GroupMessageIn,
    },
    /// `presence` ([`corecast_cluster::presence::parse_news`]): a user reachable or not, and
    /// for an announcement the groups whose co-members are told ([`groups_json`]).
    Presence {
        user: UserId,
        online: bool,
        announce: Option<Arc<[GroupId]>>,
    },
    /// `members`, `J` or `X` ([`node_word`]): a node says it is live (`live`, where its
    /// public listener is in `info`) or leaving.
    NodeWord {
        live: bool,
        node: String,
        info: String,
    },
    /// `members`, `C` ([`Members`]): a membership change made on node `from`.
    Members { from: String, change: Members },
    /// `n:{node}` of another node: not read (a channel just unsubscribed).
    NotMine,
    /// `n:{me}`, `S`: a client's event forwarded by node `node` ([`Forward`]).
    Forward(Forward),
    /// `n:{me}`, `Q` ([`SettledAsk::encode`]): node `from` asks for the group's settled id.
    SettledAsked { from: String, group: GroupId },
    /// `n:{me}`, `R` ([`SettledAsk::encode_release`]): the group's new owner node `from` asks
    /// this node to release the room.
    ReleaseAsked { from: String, group: GroupId },
    /// `n:{me}`, `W` ([`SettledAnswer::encode`]): the answer to a `Q`.
    GapSettled { group: GroupId, settled: MessageId },
    /// `n:{me}`, `L` ([`SettledAnswer::encode_released`]): the answer to an `R`.
    Released { group: GroupId, settled: MessageId },
    /// `n:{me}`, `D` ([`applied_word`]): another node applied membership change `req`.
    Applied { req: u64 },
    /// `n:{me}`, `A` ([`Answer`]): the answer to an event this node forwarded, for one of
    /// its `nr_shards` shards.
    Answer(Answer),
}

impl BusMessage {
    /// Decodes what arrived on `channel` for node `me`, which has `nr_shards` shards; `None`
    /// when it cannot be decoded (another version's kind, or bytes that are not ours: anyone
    /// with access to Redis can publish). Never panics, whatever the bytes.
    pub fn decode(channel: &str, payload: Bytes, me: &str, nr_shards: usize) -> Option<Self> {
        let name = channel.strip_prefix(PREFIX)?;
        if let Some(group) = name.strip_prefix("g:") {
            return Some(BusMessage::Group {
                group: GroupId::new(group),
                message: GroupMessage::decode(payload)?,
            });
        }
        if name == "presence" {
            let news = corecast_cluster::presence::parse_news(&payload)?;
            let announce = match news.announce {
                Some(groups) => {
                    let groups: Vec<String> = serde_json::from_slice(groups).ok()?;
                    Some(groups.into_iter().map(GroupId::new).collect())
                }
                None => None,
            };
            return Some(BusMessage::Presence {
                user: UserId(news.user),
                online: news.online,
                announce,
            });
        }
        if name == "members" {
            if let Some((word, node, info)) = parse_node_word(&payload) {
                return Some(BusMessage::NodeWord {
                    live: word == b'J',
                    node: node.to_owned(),
                    info: info.to_owned(),
                });
            }
            let (from, change) = Members::decode(&payload)?;
            return Some(BusMessage::Members { from, change });
        }
        if name.strip_prefix("n:")? != me {
            return Some(BusMessage::NotMine);
        }
        Some(match payload.first()? {
            b'S' => BusMessage::Forward(serde_json::from_slice(&payload[1..]).ok()?),
            &tag @ (b'Q' | b'R') => {
                let (from, group) = SettledAsk::decode(&payload)?;
                let group = GroupId::new(group);
                if tag == b'Q' {
                    BusMessage::SettledAsked { from, group }
                } else {
                    BusMessage::ReleaseAsked { from, group }
                }
            }
            &tag @ (b'W' | b'L') => {
                let (group, settled) = SettledAnswer::decode(&payload)?;
                if tag == b'W' {
                    BusMessage::GapSettled { group, settled }
                } else {
                    BusMessage::Released { group, settled }
                }
            }
            b'D' => BusMessage::Applied {
                req: u64::from_be_bytes(payload.get(1..9)?.try_into().ok()?),
            },
            b'A' => {
                let a = Answer::decode(payload)?;
                if a.shard.index() >= nr_shards {
                    return None;
                }
                BusMessage::Answer(a)
            }
            _ => return None,
        })
    }
}

// ---- what travels on the bus ----

/// A group's message: `M`, the publishing node, the message id, the encoded frame.
pub struct GroupMessage<'a> {
    pub from: &'a str,
    pub id: MessageId,
    pub frame: Bytes,
}

/// Decoded [`GroupMessage`] (the node id copied, the frame a slice of the payload).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupMessageIn {
    pub from: String,
    pub id: MessageId,
    pub frame: Bytes,
}

impl GroupMessage<'_> {
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(2 + self.from.len() + 8 + self.frame.len());
        b.put_u8(b'M');
        put_short(&mut b, self.from.as_bytes());
        b.put_u64(self.id.0);
        b.extend_from_slice(&self.frame);
        b.freeze()
    }

    fn decode(payload: Bytes) -> Option<GroupMessageIn> {
        if payload.first() != Some(&b'M') {
            return None;
        }
        let (from, at) = get_short(&payload, 1)?;
        let from = std::str::from_utf8(from).ok()?.to_owned();
        let id = u64::from_be_bytes(payload.get(at..at + 8)?.try_into().ok()?);
        Some(GroupMessageIn {
            from,
            id: MessageId(id),
            frame: payload.slice(at + 8..),
        })
    }
}

/// A client's event for the group's owner node (`S` and this, as JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forward {
    pub group: String,
    /// The client's user.
    pub user: u64,
    pub event: Forwarded,
    /// Where the answer goes: the node, its shard, the connection, the ack id.
    pub node: String,
    pub shard: u16,
    pub conn: u64,
    pub ack: Option<u64>,
}

/// What the forwarded event is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Forwarded {
    SendMessage {
        text: String,
        attachments: Vec<Attachment>,
        client_msg_id: Option<String>,
    },
    MarkRead {
        message: u64,
    },
}

impl Forward {
    pub fn encode(&self) -> Bytes {
        let mut out = vec![b'S'];
        serde_json::to_writer(&mut out, self).expect("invariant: a Forward serialises");
        out.into()
    }
}

/// The answer to a forwarded event, for a connection of the origin node: `A`, the
/// group (answers go through its owner shard there, after the group's deliveries), the
/// shard, the connection, the frame (an ack or an `error` event).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub group: GroupId,
    pub shard: ShardId,
    pub conn: crate::conn::ConnId,
    /// The ack id answered (`None`: an `error` event).
    pub ack: Option<u64>,
    pub frame: Bytes,
}

impl Answer {
    pub fn encode(&self) -> Bytes {
        let g = self.group.as_str().as_bytes();
        let mut b = BytesMut::with_capacity(1 + 2 + g.len() + 2 + 8 + 9 + self.frame.len());
        b.put_u8(b'A');
        b.put_u16(g.len() as u16);
        b.extend_from_slice(g);
        b.put_u16(self.shard.0);
        b.put_u64(self.conn.0);
        b.put_u8(u8::from(self.ack.is_some()));
        b.put_u64(self.ack.unwrap_or(0));
        b.extend_from_slice(&self.frame);
        b.freeze()
    }

    fn decode(payload: Bytes) -> Option<Answer> {
        let len = u16::from_be_bytes(payload.get(1..3)?.try_into().ok()?) as usize;
        let group = std::str::from_utf8(payload.get(3..3 + len)?).ok()?;
        let group = GroupId::new(group);
        let at = 3 + len;
        let shard = u16::from_be_bytes(payload.get(at..at + 2)?.try_into().ok()?);
        let conn = u64::from_be_bytes(payload.get(at + 2..at + 10)?.try_into().ok()?);
        let has_ack = *payload.get(at + 10)? == 1;
        let ack = u64::from_be_bytes(payload.get(at + 11..at + 19)?.try_into().ok()?);
        Some(Answer {
            group,
            shard: ShardId(shard),
            conn: crate::conn::ConnId(conn),
            ack: has_ack.then_some(ack),
            frame: payload.slice(at + 19..),
        })
    }
}

/// A membership change for the other nodes: `C`, the node it was made on, then JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Members {
    pub group: String,
    pub added: Vec<UserId>,
    pub removed: Vec<UserId>,
    /// The request the other nodes answer (`D` and it, on the node's channel) once applied.
    #[serde(default)]
    pub req: u64,
}

impl Members {
    pub fn encode(&self, from: &str) -> Bytes {
        let mut out = vec![b'C'];
        put_short_vec(&mut out, from.as_bytes());
        serde_json::to_writer(&mut out, self).expect("invariant: a change serialises");
        out.into()
    }

    fn decode(payload: &[u8]) -> Option<(String, Members)> {
        if payload.first() != Some(&b'C') {
            return None;
        }
        let (from, at) = get_short(payload, 1)?;
        let from = std::str::from_utf8(from).ok()?.to_owned();
        Some((from, serde_json::from_slice(payload.get(at..)?).ok()?))
    }
}

/// A node's word on `members`: `J` (live) or `X` (leaving), its id, and what the registry
/// holds of it (`public=ip:port`; empty for `X`).
pub fn node_word(word: u8, node: &str, info: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(2 + node.len() + info.len());
    b.put_u8(word);
    put_short(&mut b, node.as_bytes());
    b.extend_from_slice(info.as_bytes());
    b.freeze()
}

/// A node's word that it applied membership change `req` ([`Members`]), for the node that
/// made it: `D`, `req` (8 bytes, big-endian).
pub fn applied_word(req: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(9);
    b.put_u8(b'D');
    b.put_u64(req);
    b.freeze()
}

/// (word, node, info)
fn parse_node_word(payload: &[u8]) -> Option<(u8, &str, &str)> {
    let w = *payload.first()?;
    if !matches!(w, b'J' | b'X') {
        return None;
    }
    let (node, at) = get_short(payload, 1)?;
    let node = std::str::from_utf8(node).ok()?;
    let info = std::str::from_utf8(payload.get(at..)?).ok()?;
    Some((w, node, info))
}

/// A node filling a gap asks the group's owner node for its room's settled id: `Q`, the
/// asking node, the group.
pub struct SettledAsk<'a> {
    pub from: &'a str,
    pub group: &'a GroupId,
}

impl SettledAsk<'_> {
    pub fn encode(&self) -> Bytes {
        self.encode_as(b'Q')
    }

    /// The same, as a group's new owner node asks the previous one to release the room: `R`.
    pub fn encode_release(&self) -> Bytes {
        self.encode_as(b'R')
    }

    fn encode_as(&self, tag: u8) -> Bytes {
        let g = self.group.as_str().as_bytes();
        let mut b = BytesMut::with_capacity(2 + self.from.len() + g.len());
        b.put_u8(tag);
        put_short(&mut b, self.from.as_bytes());
        b.extend_from_slice(g);
        b.freeze()
    }

    /// (asking node, group)
    fn decode(payload: &[u8]) -> Option<(String, String)> {
        let (from, at) = get_short(payload, 1)?;
        let from = std::str::from_utf8(from).ok()?.to_owned();
        let group = std::str::from_utf8(payload.get(at..)?).ok()?.to_owned();
        Some((from, group))
    }
}

/// The owner node's answer: `W`, the settled id, the group.
pub struct SettledAnswer {
    pub group: GroupId,
    pub settled: MessageId,
}

impl SettledAnswer {
    pub fn encode(&self) -> Bytes {
        self.encode_as(b'W')
    }

    /// The same, as the previous owner node released the room (`settled`: the last event it
    /// minted, delivered and published before this): `L`.
    pub fn encode_released(&self) -> Bytes {
        self.encode_as(b'L')
    }

    fn encode_as(&self, tag: u8) -> Bytes {
        let g = self.group.as_str().as_bytes();
        let mut b = BytesMut::with_capacity(9 + g.len());
        b.put_u8(tag);
        b.put_u64(self.settled.0);
        b.extend_from_slice(g);
        b.freeze()
    }

    fn decode(payload: &[u8]) -> Option<(GroupId, MessageId)> {
        let settled = u64::from_be_bytes(payload.get(1..9)?.try_into().ok()?);
        let group = std::str::from_utf8(payload.get(9..)?).ok()?;
        Some((GroupId::new(group), MessageId(settled)))
    }
}

/// A node id, at most 255 bytes (config allows 64), with its length first.
fn put_short(b: &mut BytesMut, s: &[u8]) {
    let s = &s[..s.len().min(255)];
    b.put_u8(s.len() as u8);
    b.extend_from_slice(s);
}

fn put_short_vec(b: &mut Vec<u8>, s: &[u8]) {
    let s = &s[..s.len().min(255)];
    b.push(s.len() as u8);
    b.extend_from_slice(s);
}

/// The bytes [`put_short`] wrote at `at`, and where what follows starts.
fn get_short(b: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let len = *b.get(at)? as usize;
    Some((b.get(at + 1..at + 1 + len)?, at + 1 + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_word_decodes_as_encoded() {
        let j = node_word(b'J', "node-a", "public=10.0.0.1:3000");
        assert_eq!(
            parse_node_word(&j),
            Some((b'J', "node-a", "public=10.0.0.1:3000"))
        );
        let x = node_word(b'X', "node-a", "");
        assert_eq!(parse_node_word(&x), Some((b'X', "node-a", "")));
        assert_eq!(
            parse_node_word(b"C\x06node-a{}"),
            None,
            "a membership change"
        );
        assert_eq!(parse_node_word(b"J\x09short"), None);
    }

    #[test]
    fn bus_messages_decode_as_encoded() {
        let frame = Bytes::from_static(b"\x81\x0542[\"newMessage\",{}]");
        let m = GroupMessage {
            from: "node-a",
            id: MessageId(42),
            frame: frame.clone(),
        }
        .encode();
        let back = GroupMessage::decode(m).unwrap();
        assert_eq!(
            (back.from.as_str(), back.id, back.frame),
            ("node-a", MessageId(42), frame.clone())
        );
        let a = Answer {
            group: GroupId::new("Zürich ☕"),
            shard: ShardId(3),
            conn: crate::conn::ConnId(77),
            ack: Some(5),
            frame: frame.clone(),
        }
        .encode();
        let back = Answer::decode(a).unwrap();
        assert_eq!(back.group, GroupId::new("Zürich ☕"));
        assert_eq!(
            (back.shard, back.conn.0, back.ack, back.frame),
            (ShardId(3), 77, Some(5), frame)
        );
        let c = Members {
            group: "g".into(),
            added: vec![UserId(1)],
            removed: vec![],
            req: 9,
        }
        .encode("node-b");
        let (from, back) = Members::decode(&c).unwrap();
        assert_eq!((from.as_str(), back.added), ("node-b", vec![UserId(1)]));
        let g = GroupId::new("team berlin");
        let q = SettledAsk {
            from: "node-c",
            group: &g,
        }
        .encode();
        assert_eq!(
            SettledAsk::decode(&q),
            Some(("node-c".to_string(), "team berlin".to_string()))
        );
        let w = SettledAnswer {
            group: g.clone(),
            settled: MessageId(7),
        }
        .encode();
        assert_eq!(SettledAnswer::decode(&w), Some((g, MessageId(7))));
        assert!(GroupMessage::decode(Bytes::from_static(b"M\x09short")).is_none());
        assert!(Answer::decode(Bytes::from_static(b"A\x00")).is_none());
    }

    /// Decodes `payload` on `channel` as node `me` of 4 shards would.
    fn decode(channel: String, payload: Bytes) -> Option<BusMessage> {
        BusMessage::decode(&channel, payload, "me", 4)
    }

    #[test]
    fn each_kind_decodes_on_its_channel_as_encoded() {
        let g = GroupId::new("team berlin");
        let frame = Bytes::from_static(b"42[\"newMessage\",{}]");
        let message = GroupMessage {
            from: "node-a",
            id: MessageId(42),
            frame: frame.clone(),
        }
        .encode();
        assert_eq!(
            decode(group_channel(&g), message),
            Some(BusMessage::Group {
                group: g.clone(),
                message: GroupMessageIn {
                    from: "node-a".into(),
                    id: MessageId(42),
                    frame: frame.clone(),
                },
            })
        );
        let groups = groups_json(&[g.clone(), GroupId::new("\"quoted\" ☕")]);
        let news = [b"+7\n".as_slice(), &groups].concat();
        assert_eq!(
            decode(format!("{PREFIX}presence"), news.into()),
            Some(BusMessage::Presence {
                user: UserId(7),
                online: true,
                announce: Some(Arc::from([g.clone(), GroupId::new("\"quoted\" ☕")])),
            })
        );
        assert_eq!(
            decode(format!("{PREFIX}presence"), Bytes::from_static(b"<7\n")),
            Some(BusMessage::Presence {
                user: UserId(7),
                online: false,
                announce: None,
            })
        );
        assert_eq!(
            decode(
                members_channel(),
                node_word(b'J', "node-a", "public=[::1]:3000")
            ),
            Some(BusMessage::NodeWord {
                live: true,
                node: "node-a".into(),
                info: "public=[::1]:3000".into(),
            })
        );
        let change = Members {
            group: g.as_str().into(),
            added: vec![UserId(1), UserId(2)],
            removed: vec![UserId(3)],
            req: u64::MAX,
        };
        assert_eq!(
            decode(members_channel(), change.encode("node-b")),
            Some(BusMessage::Members {
                from: "node-b".into(),
                change,
            })
        );
        let forward = Forward {
            group: g.as_str().into(),
            user: 9,
            event: Forwarded::SendMessage {
                text: "hi \u{2028} there".into(),
                attachments: vec![Attachment {
                    url: "https://x/y.png".into(),
                    kind: "image".into(),
                }],
                client_msg_id: Some("c-1".into()),
            },
            node: "node-c".into(),
            shard: 65535,
            conn: 12,
            ack: None,
        };
        let me = node_channel("me");
        assert_eq!(
            decode(me.clone(), forward.encode()),
            Some(BusMessage::Forward(forward))
        );
        let ask = SettledAsk {
            from: "node-d",
            group: &g,
        };
        let (from, group) = ("node-d".to_string(), g.clone());
        assert_eq!(
            decode(me.clone(), ask.encode()),
            Some(BusMessage::SettledAsked { from, group })
        );
        let (from, group) = ("node-d".to_string(), g.clone());
        assert_eq!(
            decode(me.clone(), ask.encode_release()),
            Some(BusMessage::ReleaseAsked { from, group })
        );
        let answer = SettledAnswer {
            group: g.clone(),
            settled: MessageId(5),
        };
        let (group, settled) = (g.clone(), MessageId(5));
        assert_eq!(
            decode(me.clone(), answer.encode()),
            Some(BusMessage::GapSettled { group, settled })
        );
        let (group, settled) = (g.clone(), MessageId(5));
        assert_eq!(
            decode(me.clone(), answer.encode_released()),
            Some(BusMessage::Released { group, settled })
        );
        assert_eq!(
            decode(me.clone(), applied_word(0x0102_0304_0506_0708)),
            Some(BusMessage::Applied {
                req: 0x0102_0304_0506_0708
            })
        );
        let answer = Answer {
            group: g.clone(),
            shard: ShardId(3),
            conn: crate::conn::ConnId(77),
            ack: None,
            frame,
        };
        assert_eq!(
            decode(me.clone(), answer.encode()),
            Some(BusMessage::Answer(answer))
        );
    }

    #[test]
    fn what_is_not_ours_or_not_whole_is_refused_without_reading_further() {
        let me = node_channel("me");
        // Another node's channel is not read at all, whatever it carries.
        assert_eq!(
            decode(node_channel("other"), Bytes::from_static(b"\xff")),
            Some(BusMessage::NotMine)
        );
        assert_eq!(decode("other:n:me".into(), applied_word(1)), None);
        assert_eq!(decode(format!("{PREFIX}x"), applied_word(1)), None);
        assert_eq!(decode(me.clone(), Bytes::new()), None);
        assert_eq!(decode(me.clone(), Bytes::from_static(b"Z")), None);
        assert_eq!(decode(me.clone(), Bytes::from_static(b"D\0\0\0")), None);
        assert_eq!(decode(me.clone(), Bytes::from_static(b"S{}")), None);
        // An answer for a shard this node does not have (it has 4).
        let answer = Answer {
            group: GroupId::new("g"),
            shard: ShardId(4),
            conn: crate::conn::ConnId(1),
            ack: Some(1),
            frame: Bytes::new(),
        };
        assert_eq!(decode(me.clone(), answer.encode()), None);
        // A membership change whose JSON is cut short, a node word with a cut id.
        let cut = Members {
            group: "g".into(),
            added: vec![],
            removed: vec![],
            req: 1,
        }
        .encode("node-a");
        assert_eq!(decode(members_channel(), cut.slice(..cut.len() - 1)), None);
        assert_eq!(
            decode(members_channel(), Bytes::from_static(b"J\x09node")),
            None
        );
        // Announced groups that are not a JSON array of strings.
        assert_eq!(
            decode(format!("{PREFIX}presence"), Bytes::from_static(b"+7\n[1]")),
            None
        );
    }
}
