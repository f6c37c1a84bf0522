//! What a connection asks of its shard, and nothing more: [`Outbox`].
//!
//! A [`Conn`] (conn.rs) and the shard's sender (send.rs) see their shard only through these
//! traits, so neither imports `crate::shard`: the shard drives its connections, and the
//! connections hand their requests back through a narrow door. `Shard` implements both (at the
//! end of shard.rs), each method a call of one of its own pub fns, so this file imports no shard.
//!
//! Three kinds of "send" meet at a connection, and the names keep them apart:
//! - *to the socket*: a frame queued on the connection goes out with the shard's sender's next
//!   batch ([`Outbox::schedule_socket_write`], send.rs);
//! - *a client's `sendMessage`*: the event, routed to the group's owner
//!   ([`Outbox::submit_message`]);
//! - *between shards*: `Shard::send_to_shard`, which a connection never calls itself.
//!
//! Like the shard, an outbox belongs to its thread: its methods never block and never hold a
//! `RefCell` borrow past their return, except [`Outbox::scratch`], which the caller holds only
//! while it reads from a socket.

use crate::auth::Verifier;
use crate::config::Config;
use crate::conn::{Conn, ConnId};
use crate::engine::{Tick, Timing};
use crate::events::{ClientError, Command, Query};
use crate::metrics::ShardStats;
use corecast_shard_router::ShardId;
use corecast_storage::{GroupId, MessageId, UserId};
use std::cell::RefMut;
use std::rc::Rc;

/// A connection's view of its shard.
pub trait Outbox {
    // ---- what a connection reads ----

    /// The shard the connection lives on (named in its session id).
    fn shard_id(&self) -> ShardId;
    /// The node's tag, named in session ids too ([`crate::engine::node_tag`]; 0 outside a
    /// cluster).
    fn node_tag(&self) -> u32;
    fn config(&self) -> &Config;
    /// Now, as connection deadlines count it.
    fn tick_now(&self) -> Tick;
    /// The Engine.IO heartbeat and upgrade timings.
    fn timing(&self) -> Timing;
    /// The shard's counters (errors, writes, slow consumers, events in).
    fn stats(&self) -> &ShardStats;
    /// Checks the tokens of CONNECT and `refreshToken`.
    fn verifier(&self) -> &Verifier;
    /// Makes and checks the session ids of connection state recovery.
    fn pids(&self) -> &crate::recovery::PidKey;
    /// The shard's read buffer, shared by its WebSocket sessions; held only while one reads.
    fn scratch(&self) -> RefMut<'_, Vec<u8>>;

    // ---- to the socket ----

    /// Lists the connection for the shard's sender's next batch (send.rs): what is queued on
    /// it goes out in that batch's one submission.
    fn schedule_socket_write(&self, conn: ConnId);

    // ---- a connection's life ----

    /// A number for a new connection.
    fn next_conn_id(&self) -> ConnId;
    /// A new connection: the shard holds it from now until [`Outbox::closed`].
    fn register(&self, conn: Rc<Conn>);
    /// A connection that waited to log in moves its admission ticket onto `conn`.
    fn transfer_ticket(&self, ticket: crate::admission::Ticket, conn: &Conn);
    /// CONNECT's token is good: join the user's rooms, then answer the CONNECT.
    fn authenticated(&self, conn: &Rc<Conn>, user: UserId);
    /// The client sent DISCONNECT: it leaves its rooms, the Engine.IO session stays.
    fn left_namespace(&self, conn: &Rc<Conn>);
    /// The connection is over: the shard forgets it (its rooms, its presence).
    fn closed(&self, conn: &Rc<Conn>);

    // ---- a client's events ----

    /// Takes one event from the connection's budget; false (answered `rate_limited`) if over.
    fn admit_event(&self, conn: &Conn, ack: Option<u64>) -> bool;
    /// `joinGroup`.
    fn join(&self, conn: &Rc<Conn>, group: GroupId, ack: Option<u64>);
    /// `leaveGroup` (unanswered: the caller acks).
    fn leave(&self, conn: &Rc<Conn>, group: &GroupId);
    /// The client's `sendMessage` (`cmd` is `Command::SendMessage`): through the user's rate
    /// limit to the group's owner, acked once stored and broadcast.
    fn submit_message(&self, conn: &Rc<Conn>, cmd: Command, ack: Option<u64>);
    /// `markAsRead`.
    fn mark_read(&self, conn: &Rc<Conn>, group: GroupId, message: MessageId, ack: Option<u64>);
    /// `getMessages` and `getOnline`: asked of the group's owner, answered in the ack.
    fn query_room(&self, conn: &Rc<Conn>, group: GroupId, query: Query, ack: Option<u64>);
    /// Answers one of the connection's events: its ack if it asked for one (`ack`), else an
    /// `error` event on failure.
    fn reply(&self, conn: &Conn, ack: Option<u64>, result: Result<Vec<u8>, ClientError>);
}
