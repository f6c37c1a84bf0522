//! corecast's storage: the data model (users, groups and members, messages with their readers,
//! presence, the notification outbox) and the backends that persist it.
//!
//! Every backend is reached the same way: a [`StoreHandle`] sends a [`Request`] over a bounded
//! channel to the backend's own threads, and the backend calls the request's [`Reply`] when the
//! work is durable (or has failed). Nothing here ever runs on a gateway shard's reactor, and a
//! caller on a reactor never blocks: [`StoreHandle::submit`] hands the request back when the
//! queue is full.
//!
//! Backends:
//! - [`embedded`]: SQLite in a local data folder, the zero-setup default. One writer thread
//!   group-commits everything queued since its last commit in one transaction.

pub mod embedded;
mod error;
pub mod model;
mod request;

pub use error::Error;
pub use model::*;
pub use request::{Blocking, Reply, Request, StoreHandle};

/// Which backend to open, and its settings.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// SQLite files in `data_dir`.
    Embedded { data_dir: std::path::PathBuf },
}

/// Opens the configured backend and starts its threads.
pub fn open(config: &StoreConfig) -> Result<StoreHandle, Error> {
    match config {
        StoreConfig::Embedded { data_dir } => embedded::open(data_dir, embedded::Options::default()),
    }
}
