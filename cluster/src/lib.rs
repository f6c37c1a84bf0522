//! The bus between corecast nodes.
//!
//! A node reaches Redis (7, or Valkey) through one [`Bus`]: a thread of its own running the
//! `redis` crate on a single-threaded tokio runtime, reached through a bounded queue that never
//! blocks the caller, the way the store's backends are reached. The bus
//!
//! - keeps a pub/sub connection for the channels the node is subscribed to (counted: a channel
//!   is subscribed in Redis while at least one caller wants it), and hands every message on
//!   them to the node's handler;
//! - publishes on a second, multiplexed connection, in the order the calls were made, many
//!   publishes in one pipeline when they queue up;
//! - runs any other command there too (keys for presence, the node registry);
//! - notices a lost connection (the pub/sub stream ends, or a ping goes unanswered), tells the
//!   handler [`BusEvent::Down`], fails calls at once while down, reconnects by itself with
//!   backoff, subscribes again to everything wanted, and tells the handler [`BusEvent::Up`].
//!   Messages published while a node was down are not received by it: Redis pub/sub keeps no
//!   history. The store is the source of truth; the node fills the gap from it after `Up`.
//!
//! On top of it, [`Registry`] keeps this node registered and tells who else is alive (a key
//! with a time to live per node, refreshed every check), and [`ClusterPresence`] keeps who is
//! connected on which node, answering each change with whether it was the user's first node
//! or last; [`ClusterLimit`] is a per-user message limit every node shares.
//!
//! Nothing here knows about groups or frames: channel names and payloads are the caller's.

pub mod bus;
pub mod limit;
pub mod presence;
pub mod registry;

pub use bus::{Bus, BusConfig, BusError, BusEvent, BusHandle, Done, Handler};
pub use limit::ClusterLimit;
pub use presence::ClusterPresence;
pub use registry::{
    claim_generators, Change, ChangeHandler, ClaimError, Membership, Registry, RegistryConfig,
};
