//! corecast's gateway: the Socket.IO server, one glommio shard per core.

pub use error::{Error, Result};
pub mod admin;
pub mod admission;
pub mod auth;
pub mod cluster;
/// The configuration, from the `corecast-config` crate that the notifier shares.
pub use corecast_config as config;
pub mod conn;
pub mod demo;
pub mod engine;
pub mod error;
pub mod events;
pub mod fanout;
pub mod http;
pub mod metrics;
pub mod outbox;
pub mod polling;
pub mod recovery;
pub mod send;
pub mod server;
pub mod shard;
pub mod startup;
